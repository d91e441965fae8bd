"""Property test: whatever a user types as an override, the config is valid or refused in one line."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backprop_lab.cli import check_overrides, parse_hydra_args
from backprop_lab.config import Config, ConfigError, from_dictconfig, known_keys

from .conftest import CONF_DIR


@pytest.fixture(scope="module", autouse=True)
def hydra_once():
    # One Hydra initialisation for all examples: composing is then cheap enough for many.
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield


def assert_valid(cfg: Config) -> None:
    """The documented ranges, stated here independently of config.RULES."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    assert is_int(cfg.model.hidden_size) and cfg.model.hidden_size >= 1
    assert isinstance(cfg.model.init_scale, float) and math.isfinite(cfg.model.init_scale) and cfg.model.init_scale > 0
    assert isinstance(cfg.optim.lr, float) and math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
    assert is_int(cfg.train.epochs) and cfg.train.epochs >= 1
    assert isinstance(cfg.train.fused, bool) and isinstance(cfg.data.download, bool)
    assert is_int(cfg.data.batch_size) and cfg.data.batch_size >= 1
    assert cfg.data.train_subset is None or (is_int(cfg.data.train_subset) and 1 <= cfg.data.train_subset <= 60000)
    assert cfg.data.root is None or (isinstance(cfg.data.root, str) and cfg.data.root.strip())
    assert cfg.device in ("auto", "cpu", "mps", "cuda") or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit())
    assert is_int(cfg.seed) and cfg.seed >= 0


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
def test_any_override_string_is_valid_or_refused_in_one_line(override):
    outcome([override])
