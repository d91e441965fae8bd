"""Typed configuration: the boundary between Hydra's DictConfig and the rest of the code.

`from_container` turns the composed config (as plain dicts) into frozen dataclasses,
checking every key's type and range. Anything wrong raises `ConfigError` with a single
line naming the key, the value given and what is allowed, so the CLI can print it as is.
Nothing past this module sees OmegaConf.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import math
import re
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import LabError

N_TRAIN = 60_000  # images in MNIST's training set


class ConfigError(LabError, ValueError):
    """A bad configuration value; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 128
    hidden_sizes: tuple[int, ...] | None = None  # when set, the hidden layers (hidden_size is then unused)
    activation: str = "relu"
    output: str = "softmax"
    init: str = "normal"
    init_scale: float = 0.01
    batch_norm: bool = False
    dropout: float = 0.0

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.hidden_sizes if self.hidden_sizes is not None else (self.hidden_size,)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    steps: int | None = None  # when set, the run length in minibatches (epochs is then unused)
    fused: bool = True
    max_loss_ratio: float | None = 100.0  # diverged above this x the starting loss; None: only NaN/inf


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None
    batch_size: int = 64
    train_subset: int | None = None
    download: bool = True
    image_size: int = 28


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = False  # also write TensorBoard events into the run directory as it trains


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    log: LogConfig = LogConfig()
    loss: str = "cross_entropy"
    device: str = "auto"
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, as JSON and OmegaConf hold them."""
        return asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v for k, v in items})


ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")  # network.ACTIVATIONS implements each
OUTPUTS = ("softmax", "sigmoid")
LOSSES = ("cross_entropy", "mse")
PAIRS = {("softmax", "cross_entropy"), ("sigmoid", "mse")}  # network.HEADS: each output with its loss
INITS = ("normal", "uniform", "xavier", "he")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_SEED = 2**63 - 1
MAX_THREADS = 1024  # torch.set_num_threads accepts more, but no CPU run here gains from it


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def is_memory_gb(v: Any) -> bool:
    """hydra/launcher=vectorized's memory_gb: null (a share of what is free) or finite gigabytes > 0."""
    return v is None or (_is_real(v) and v > 0)


# key -> (accepts the value?, what is allowed). One table, so every rule is visible at once.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.hidden_size": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 128"),
    "model.hidden_sizes": (
        lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(h) and h > 0 for h in v)),
        "null (one hidden layer of hidden_size) or a non-empty list of positive integers, e.g. [256,128,64]",
    ),
    "model.activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "model.output": (lambda v: v in OUTPUTS, f"one of {', '.join(OUTPUTS)}"),
    "model.init": (lambda v: v in INITS, f"one of {', '.join(INITS)}"),
    "model.init_scale": (lambda v: _is_real(v) and v > 0, "a positive finite number, e.g. 0.01"),
    "model.batch_norm": (lambda v: isinstance(v, bool), "true or false"),
    "model.dropout": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.5 (0 = no dropout)"),
    "optim.lr": (lambda v: _is_real(v) and v > 0, "a positive finite number, e.g. 0.1"),
    "optim.momentum": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1), e.g. 0.9 (0 = plain SGD)"),
    "optim.nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "optim.weight_decay": (lambda v: _is_real(v) and v >= 0, "a number >= 0, e.g. 0.0005 (0 = no L2)"),
    "train.epochs": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 20"),
    "train.steps": (lambda v: v is None or (_is_int(v) and v > 0), "null (run for train.epochs) or a positive integer, e.g. 40000"),
    "train.fused": (lambda v: isinstance(v, bool), "true or false"),
    "train.max_loss_ratio": (
        lambda v: v is None or (_is_real(v) and v > 1),
        "null (only a NaN or infinite loss is divergence) or a number > 1, e.g. 100",
    ),
    "data.root": (
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "null (the MNIST copy shipped with backprop-lab) or a folder path",
    ),
    "data.batch_size": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 64"),
    "data.train_subset": (
        lambda v: v is None or (_is_int(v) and 0 < v <= N_TRAIN),
        "null (all 60,000 images) or an integer from 1 to 60000",
    ),
    "data.download": (lambda v: isinstance(v, bool), "true or false"),
    "data.image_size": (lambda v: _is_int(v) and v in (28, 14), "28 (MNIST as it is) or 14 (2x2 mean pooling)"),
    "log.tensorboard": (lambda v: isinstance(v, bool), "true or false"),
    "loss": (lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}"),
    "device": (
        lambda v: isinstance(v, str) and DEVICE_PATTERN.match(v) is not None,
        "auto, cpu, cuda, cuda:N or mps",
    ),
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, "an integer from 0 to 2**63-1"),
    "threads": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_THREADS),
        f"null (torch's default) or an integer from 1 to {MAX_THREADS}, e.g. 1",
    ),
}


def known_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf key, e.g. 'model.hidden_size'."""
    keys = []
    for f in fields(cls):
        if is_dataclass(f.default):
            keys += known_keys(type(f.default), prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def list_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Keys that take a list, e.g. 'model.hidden_sizes': `KEY=256,128` there most likely
    means the brackets were forgotten, not a sweep."""
    keys = []
    for f in fields(cls):
        if is_dataclass(f.default):
            keys += list_keys(type(f.default), prefix + f.name + ".")
        elif "tuple" in str(f.type) or "list" in str(f.type):
            keys.append(prefix + f.name)
    return keys


def sections() -> list[str]:
    return [f.name for f in fields(Config) if is_dataclass(f.default)]


def unknown_key_message(key: str, groups: Sequence[str] = ()) -> str:
    """`groups`: the config groups (experiment, model, ...), for a misspelt one, where the caller knows them."""
    close = difflib.get_close_matches(key, known_keys() + sections() + list(groups), n=1, cutoff=0.6)
    if close and close[0] in groups and close[0] not in sections():
        hint = f"; did you mean the config group '{close[0]}'?"
    elif close:
        hint = f"; did you mean '{close[0]}'?"
    else:
        hint = f"; known keys: {', '.join(known_keys())}" + (f"; config groups: {', '.join(groups)}" if groups else "")
    return f"unknown config key '{key}'{hint}"


def invalid_value_message(key: str, value: Any, typed: str | None = None) -> str | None:
    """Why `value` cannot be `key`'s, or None. `typed`: the value as given on the command line,
    shown as given, with what it was read as where that differs (seed=1e3 is read as 1000.0)."""
    ok, allowed = RULES[key]
    if ok(value):
        return None
    shown = _show(value)
    plain = lambda text: "".join(text.split()).lower()  # noqa: E731 - [0, 3] is [0,3], True is true
    if typed is not None and plain(typed) not in {plain(shown), plain(repr(value)), plain(str(value))}:
        shown = f"{typed} (read as {shown})"
    elif typed is not None:
        shown = typed
    return f"{key}={shown} is not valid: expected {allowed}"


def _show(v: Any) -> str:
    return "null" if v is None else repr(v) if isinstance(v, str) else str(v)


def from_dictconfig(dcfg: Any) -> Config:
    """Resolve Hydra's composed DictConfig and build the typed Config, or raise ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True)
    except OmegaConfBaseException as e:  # e.g. an interpolation such as model.hidden_size='${nothing}'
        key = getattr(e, "full_key", None)
        where = f"{key}: " if key else ""
        raise ConfigError(f"cannot resolve the config: {where}{str(e).splitlines()[0]}") from None
    return from_container(raw)


def from_container(raw: dict[str, Any]) -> Config:
    """Build a Config from the composed config, as plain dicts, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                values[f"{key}.{sub}"] = v
        else:
            values[key] = value
    for key in values:
        if key not in RULES:
            raise ConfigError(unknown_key_message(key))
    defaults = {k: _default(k) for k in RULES}
    for key in RULES:
        v = values.get(key, defaults[key])
        problem = invalid_value_message(key, v)
        if problem:
            raise ConfigError(problem)
        values[key] = v

    def build(cls: type, prefix: str) -> Any:
        kwargs = {}
        for f in fields(cls):
            if is_dataclass(f.default):
                kwargs[f.name] = build(type(f.default), prefix + f.name + ".")
            else:
                v = values[prefix + f.name]
                is_float = f.type in ("float", "float | None") and v is not None
                kwargs[f.name] = float(v) if is_float else tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    cfg = build(Config, "")
    check_combination(cfg)
    return cfg


def check_combination(cfg: Config) -> None:
    """Rules between keys, each valid on its own."""
    m, o = cfg.model, cfg.optim
    if m.hidden_sizes is not None and m.hidden_size != ModelConfig.hidden_size:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} and model.hidden_sizes={list(m.hidden_sizes)} both given: use one "
            f"(one hidden layer of {m.hidden_size} is model.hidden_sizes=[{m.hidden_size}])"
        )
    if (m.output, cfg.loss) not in PAIRS:
        fit = next(out for out, loss in PAIRS if loss == cfg.loss)
        raise ConfigError(f"loss={cfg.loss} does not go with model.output={m.output}: "
                          f"loss={cfg.loss} needs model.output={fit}")
    if o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0, e.g. optim.momentum=0.9")
    n, b = cfg.data.train_subset or N_TRAIN, cfg.data.batch_size
    if m.batch_norm and (b == 1 or n % b == 1):
        # A 1-image batch has no spread: zhat and the layer's weight gradient are 0, and the
        # running variance is pulled towards 0 (torch's BatchNorm1d refuses it too).
        which = "every batch" if b == 1 else f"the last batch of each epoch ({n:,} images in batches of {b:,})"
        raise ConfigError(f"model.batch_norm=true needs at least 2 images per batch, but {which} has 1; "
                          f"choose another data.batch_size or data.train_subset")


def planned_epochs(epochs: int, steps: int | None, n_train: int, batch_size: int) -> int:
    """train.epochs, or with train.steps the epochs those minibatches span (the last may be partial)."""
    if steps is None:
        return epochs
    return math.ceil(steps / math.ceil(n_train / batch_size))


def dotted(d: Any, key: str) -> Any:
    """d['model']['hidden_size'] for key 'model.hidden_size'; KeyError if any part is missing."""
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(key)
        d = d[part]
    return d


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config (summary.json's "config") with the keys added to backprop-lab since
    that run filled in from their defaults, which is what the run had. Plain dicts merged
    (a sweep's report reads every job's summary: OmegaConf's merge took 6 ms a run)."""
    def filled(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        out = dict(defaults)
        for key, value in values.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = filled(out[key], value) if both else copy.deepcopy(value)
        return out

    return filled(Config().to_dict(), saved)


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """'key (old -> new)' for every key where a run's saved config differs from `cfg`;
    keys the saved config lacks (added to backprop-lab later) count as their defaults."""
    def lookup(config: Any, key: str) -> Any:
        try:
            return dotted(config, key)
        except KeyError:
            return _default(key)

    new = cfg.to_dict()
    return [f"{k} ({lookup(saved, k)!r} -> {lookup(new, k)!r})" for k in known_keys() if lookup(saved, k) != lookup(new, k)]


def _default(key: str) -> Any:
    obj: Any = Config()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# conf/ at the top of a clone, installed as the package backprop_lab.conf (pyproject.toml); a clone
# run from its folder on PYTHONPATH, not installed (tools/device_check.sh), has no such package
try:
    CONF_DIR = Path(str(importlib.resources.files("backprop_lab.conf")))
except ModuleNotFoundError:
    CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
