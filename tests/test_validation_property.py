"""Property test: whatever a user types as an override, the config is valid or refused in one line."""

from __future__ import annotations

import functools
import math

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backprop_lab.overrides import check_overrides, parse_hydra_args
from backprop_lab.config import Config, ConfigError, from_dictconfig, known_keys

from .conftest import CONF_DIR


@pytest.fixture(scope="module", autouse=True)
def hydra_once():
    # One Hydra initialisation for all examples: composing is then cheap enough for many.
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


# The documented range of every key (README's table of keys), stated here independently of config.RULES.
DOCUMENTED = {
    "model.hidden_size": lambda v: is_int(v) and v >= 1,
    "model.hidden_sizes": lambda v: v is None or (isinstance(v, tuple) and len(v) >= 1 and all(is_int(h) and h >= 1 for h in v)),
    "model.activation": lambda v: v in ("relu", "sigmoid", "tanh", "leaky_relu"),
    "model.output": lambda v: v in ("softmax", "sigmoid"),
    "model.init": lambda v: v in ("normal", "uniform", "xavier", "he"),
    "model.init_scale": lambda v: is_finite(v) and v > 0,
    "model.batch_norm": lambda v: isinstance(v, bool),
    "model.dropout": lambda v: is_finite(v) and 0 <= v < 1,
    "optim.lr": lambda v: is_finite(v) and v > 0,
    "optim.momentum": lambda v: is_finite(v) and 0 <= v < 1,
    "optim.nesterov": lambda v: isinstance(v, bool),
    "optim.weight_decay": lambda v: is_finite(v) and v >= 0,
    "train.epochs": lambda v: is_int(v) and v >= 1,
    "train.steps": lambda v: v is None or (is_int(v) and v >= 1),
    "train.fused": lambda v: isinstance(v, bool),
    "train.max_loss_ratio": lambda v: v is None or (is_finite(v) and v > 1),
    "data.root": lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
    "data.batch_size": lambda v: is_int(v) and v >= 1,
    "data.train_subset": lambda v: v is None or (is_int(v) and 1 <= v <= 60000),
    "data.download": lambda v: isinstance(v, bool),
    "data.image_size": lambda v: v in (28, 14) and is_int(v),
    "log.tensorboard": lambda v: isinstance(v, bool),
    "loss": lambda v: v in ("cross_entropy", "mse"),
    "device": lambda v: v in ("auto", "cpu", "mps", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
    "seed": lambda v: is_int(v) and 0 <= v <= 2**63 - 1,
    "threads": lambda v: v is None or (is_int(v) and v >= 1),
}


def assert_valid(cfg: Config) -> None:
    values = {key: functools.reduce(getattr, key.split("."), cfg) for key in known_keys()}  # the typed values
    for key, value in values.items():
        assert DOCUMENTED[key](value), f"{key}={value!r} was accepted"
    # the rules between keys
    assert (values["model.output"], values["loss"]) in (("softmax", "cross_entropy"), ("sigmoid", "mse"))
    assert not values["optim.nesterov"] or values["optim.momentum"] > 0
    n, b = values["data.train_subset"] or 60000, values["data.batch_size"]
    assert not values["model.batch_norm"] or (b > 1 and n % b != 1)


def test_every_key_has_a_documented_range_here():
    assert set(DOCUMENTED) == set(known_keys())


def outcome(overrides: list[str]) -> None:
    """What the CLI does with overrides: pre-check, compose, typed boundary."""
    try:
        check_overrides(overrides)
        # Hydra is handed what its command-line parser leaves of argv: `-m` is a flag, not an override
        cfg = from_dictconfig(compose("config", overrides=parse_hydra_args(overrides)[0].overrides))
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert_valid(cfg)


text_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.integers(-10**25, 10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["null", "true", "False", "nan", "-inf", "1e999", "[1,2]", "{a: 1}", "'64'", "0x10",
                     "cuda:1", "cuda:-1", "1_000", "${seed}", "${oc.env:HOME}", "~", " "]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(known_keys()), value=text_values)
def test_any_override_value_is_valid_or_refused_in_one_line(key, value):
    outcome([f"{key}={value}"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(override=st.text(max_size=30))
@example(override="-m")  # a flag, not an override: a sweep of one job with the defaults
@example(override="hydra=")  # found by this test: Hydra's three lines, now one
@example(override="hydra.0=")  # found by this test: a hydra.* check inside an already started Hydra
def test_any_override_string_is_valid_or_refused_in_one_line(override):
    outcome([override])
