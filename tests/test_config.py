"""The real config, composed with Hydra, and the typed boundary's validation."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from backprop_lab.overrides import check_overrides, config_groups
from backprop_lab.config import Config, ConfigError, from_container, known_keys, with_defaults

from .conftest import CONF_DIR, compose


def typed(*overrides: str) -> Config:
    return from_container(OmegaConf.to_container(compose(*overrides), resolve=True))


def test_defaults_are_the_chapters_values():
    cfg = typed()
    assert cfg.model.hidden_size == 128 and cfg.model.init_scale == 0.01
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 20
    assert cfg.data.batch_size == 64 and cfg.data.train_subset is None and cfg.data.root is None
    assert cfg.device == "auto" and cfg.seed == 0


def test_article_preset_pins_the_chapter_run():
    cfg = typed("experiment=article", "model.hidden_size=7", "optim.lr=0.5", "train.epochs=3")
    # Command-line keys win over the preset ...
    assert (cfg.model.hidden_size, cfg.optim.lr, cfg.train.epochs) == (7, 0.5, 3)
    # ... and the preset alone is exactly the chapter's run.
    cfg = typed("experiment=article")
    assert cfg.model.hidden_size == 128
    assert cfg.model.init_scale == 0.01
    assert cfg.optim.lr == 0.1
    assert cfg.data.batch_size == 64
    assert cfg.data.train_subset is None
    assert cfg.data.root is None
    assert cfg.train.epochs == 20


PRESETS = [(group, name) for group, names in sorted(config_groups().items()) for name in names]


@pytest.mark.parametrize("group,name", PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_every_config_file_composes_to_a_valid_config(group, name):
    assert isinstance(typed(f"{group}={name}"), Config)


def test_every_value_has_a_comment():
    for path in CONF_DIR.rglob("*.yaml"):
        for line in path.read_text().split("\nhydra:")[0].splitlines():  # Hydra's own block aside
            stripped = line.strip()
            if ":" in stripped and not stripped.startswith(("#", "-")) and not stripped.endswith(":"):
                assert "#" in line, f"{path.name}: no comment on '{stripped}'"


def test_every_key_in_the_yaml_is_a_typed_key():
    flat = OmegaConf.to_container(compose(), resolve=True)
    leaves = [f"{k}.{s}" if isinstance(v, dict) else k for k, v in flat.items()
              for s in (v if isinstance(v, dict) else [None])]
    assert sorted(leaves) == sorted(known_keys())


BAD = [
    ("model.hidden_size=0", "model.hidden_size=0"),
    ("model.hidden_size=abc", "model.hidden_size='abc'"),
    ("model.hidden_size=1.5", "model.hidden_size=1.5"),
    ("model.init_scale=0", "model.init_scale=0"),
    ("optim.lr=-1", "optim.lr=-1"),
    ("optim.lr=nan", "optim.lr=nan"),
    ("optim.lr=inf", "optim.lr=inf"),
    ("optim.lr=fast", "optim.lr='fast'"),
    ("train.epochs=0", "train.epochs=0"),
    ("train.epochs=true", "train.epochs=True"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.train_subset=-5", "data.train_subset=-5"),
    ("data.train_subset=60001", "data.train_subset=60001"),
    ("data.download=maybe", "data.download='maybe'"),
    ("device=tpu", "device='tpu'"),
    ("device=cuda:x", "device='cuda:x'"),
    ("seed=-1", "seed=-1"),
    ("seed=1.5", "seed=1.5"),
]


@pytest.mark.parametrize("override,shown", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_in_one_line_naming_key_and_value(override, shown):
    with pytest.raises(ConfigError) as info:
        typed(override)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(shown + " is not valid: expected ")


def test_good_edge_values_are_accepted():
    cfg = typed("optim.lr=1", "data.train_subset=60000", "device=cuda:1", "seed=0", "data.root=/x")
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.data.train_subset == 60000 and cfg.device == "cuda:1" and cfg.data.root == "/x"


def test_unknown_keys_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        check_overrides(["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        typed("+optim.lrr=0.1")  # an explicit addition still meets the typed boundary
    with pytest.raises(ConfigError, match="experiment=nope is not a known preset; available: article"):
        check_overrides(["experiment=nope"])
    with pytest.raises(ConfigError, match="experiment=null is not valid"):
        check_overrides(["experiment=null"])
    with pytest.raises(ConfigError, match="is not valid: token recognition error"):
        check_overrides(["model.hidden_size=${)}"])
    with pytest.raises(ConfigError, match="cannot parse the overrides"):
        check_overrides(["model.hidden_size=[1,"])


def test_known_overrides_pass_the_precheck():
    check_overrides(["-m", "model.hidden_size=64,128", "experiment=article", "hydra.run.dir=x",
                     "hydra/launcher=basic", "seed=3", "--cfg", "job"])
    check_overrides(["model.hidden_sizes=[256,128,64]", "optim.momentum=0.9", "loss=mse", "model.output=sigmoid"])


@pytest.mark.parametrize("argv,expected", [
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--"], "unknown option '--'"),
    (["-m", "seed=1", "--cfg", "job", "seed=3"], "'seed=3' follows an option's value"),
])
def test_stray_options_are_refused_in_one_line(argv, expected):
    with pytest.raises(ConfigError, match=expected):
        check_overrides(argv)


def test_from_container_rejects_non_mapping():
    with pytest.raises(ConfigError):
        from_container([1, 2])  # type: ignore[arg-type]
    assert math.isclose(from_container({}).optim.lr, 0.1)


LAB_BAD = [
    (["model.hidden_sizes=[]"], "model.hidden_sizes=[] is not valid: expected null (one hidden layer"),
    (["model.hidden_sizes=[64,0]"], "model.hidden_sizes=[64, 0] is not valid"),
    (["model.hidden_sizes=[64,-3]"], "model.hidden_sizes=[64, -3] is not valid"),
    (["model.hidden_sizes=64"], "model.hidden_sizes=64 is not valid"),
    (["model.dropout=1"], "model.dropout=1 is not valid: expected a number in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 is not valid"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1 is not valid: expected a number >= 0"),
    (["optim.weight_decay=-0.5"], "optim.weight_decay=-0.5 is not valid: expected a number >= 0"),
    (["optim.momentum=1"], "optim.momentum=1 is not valid: expected a number in [0, 1)"),
    (["model.activation=swish"], "model.activation='swish' is not valid: expected one of relu, sigmoid, tanh, leaky_relu"),
    (["model.init=orthogonal"], "model.init='orthogonal' is not valid: expected one of normal, uniform, xavier, he"),
    (["loss=hinge"], "loss='hinge' is not valid"),
    (["loss=mse"], "loss=mse does not go with model.output=softmax: loss=mse needs model.output=sigmoid"),
    (["model.output=sigmoid"], "loss=cross_entropy does not go with model.output=sigmoid"),
    (["optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
    (["model.hidden_size=64", "model.hidden_sizes=[100,50]"], "model.hidden_size=64 and model.hidden_sizes=[100, 50] both given"),
    (["data.image_size=20"], "data.image_size=20 is not valid: expected 28"),
    (["data.image_size=14.0"], "data.image_size=14.0 is not valid: expected 28"),  # 14.0 == 14, but not a size
    (["train.steps=0"], "train.steps=0 is not valid"),
    (["model.batch_norm=true", "data.batch_size=1"],
     "model.batch_norm=true needs at least 2 images per batch, but every batch has 1"),
    (["model.batch_norm=true", "data.train_subset=1001", "data.batch_size=100"],
     "but the last batch of each epoch (1,001 images in batches of 100) has 1; choose another data.batch_size"),
    (["model.batch_norm=true", "data.batch_size=59999"],  # all 60,000 images (no subset): the last batch holds 1
     "but the last batch of each epoch (60,000 images in batches of 59,999) has 1; choose another data.batch_size"),
]


@pytest.mark.parametrize("overrides,expected", LAB_BAD, ids=[" ".join(o) for o, _ in LAB_BAD])
def test_lab_options_refuse_bad_values_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as e:
        typed(*overrides)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_lab_options_compose():
    cfg = typed("model.hidden_sizes=[256,128,64]", "model.activation=tanh", "model.batch_norm=true",
                "model.dropout=0.2", "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.0005",
                "model.init=he", "train.steps=100", "data.image_size=14")
    assert cfg.model.hidden == (256, 128, 64) and cfg.model.activation == "tanh"
    assert cfg.optim.nesterov and cfg.optim.weight_decay == 0.0005 and cfg.train.steps == 100
    assert cfg.to_dict()["model"]["hidden_sizes"] == [256, 128, 64]  # plain lists, as in summary.json
    assert typed().model.hidden == (128,)  # the chapter's single hidden_size


@pytest.mark.parametrize("saved", [
    {"model": {"hidden_size": 64}, "seed": 3},  # an older run: keys missing at both levels
    {"model": {"hidden_size": 32, "hidden_sizes": [64, 32]}, "optim": {"lr": 0.5}, "data": {"root": None}},
    {"model": {"activation": "tanh"}, "gone": {"a": [1, 2]}, "old_key": "x"},  # keys backprop-lab dropped
    Config().to_dict(),
])
def test_with_defaults_fills_a_saved_config_as_omegaconf_merges(saved):
    import copy

    before = copy.deepcopy(saved)
    expected = OmegaConf.to_container(OmegaConf.merge(Config().to_dict(), saved))  # the oracle
    filled = with_defaults(saved)
    assert filled == expected
    assert saved == before  # the caller's dict is not changed ...
    if "gone" in saved:  # ... nor shared
        filled["gone"]["a"].append(3)
        assert saved["gone"]["a"] == [1, 2]


@pytest.mark.parametrize("key, value, typed, shown", [
    ("seed", 1000.0, "1e3", "seed=1e3 (read as 1000.0)"),  # what Hydra made of it, where that is not what was typed
    ("model.hidden_size", True, "true", "model.hidden_size=true"),
    ("model.hidden_sizes", [0, 3], "[0, 3]", "model.hidden_sizes=[0, 3]"),
    ("device", "tpu", "tpu", "device=tpu"),
    ("device", "tpu", None, "device='tpu'"),  # from a config file: as read
])
def test_a_bad_value_is_shown_as_typed(key, value, typed, shown):
    from backprop_lab.config import invalid_value_message

    assert invalid_value_message(key, value, typed).startswith(f"{shown} is not valid: expected ")
    assert invalid_value_message("seed", 3, "3") is None
