"""Typed configuration: the boundary between Hydra's DictConfig and the rest of the code.

`from_container` turns the composed config (as plain dicts) into frozen dataclasses,
checking every key's type and range. Anything wrong raises `ConfigError` with a single
line naming the key, the value given and what is allowed, so the CLI can print it as is.
Nothing past this module sees OmegaConf.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """A bad configuration value; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 128
    init_scale: float = 0.01


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    fused: bool = True


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None
    batch_size: int = 64
    train_subset: int | None = None
    download: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    device: str = "auto"
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_SEED = 2**63 - 1
MAX_THREADS = 1024  # torch.set_num_threads accepts more, but no CPU run here gains from it


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# key -> (accepts the value?, what is allowed). One table, so every rule is visible at once.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.hidden_size": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 128"),
    "model.init_scale": (lambda v: _is_real(v) and v > 0, "a positive finite number, e.g. 0.01"),
    "optim.lr": (lambda v: _is_real(v) and v > 0, "a positive finite number, e.g. 0.1"),
    "train.epochs": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 20"),
    "train.fused": (lambda v: isinstance(v, bool), "true or false"),
    "data.root": (
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        "null (the MNIST copy shipped with backprop-lab) or a folder path",
    ),
    "data.batch_size": (lambda v: _is_int(v) and v > 0, "a positive integer, e.g. 64"),
    "data.train_subset": (
        lambda v: v is None or (_is_int(v) and 0 < v <= 60_000),
        "null (all 60,000 images) or an integer from 1 to 60000",
    ),
    "data.download": (lambda v: isinstance(v, bool), "true or false"),
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


def sections() -> list[str]:
    return [f.name for f in fields(Config) if is_dataclass(f.default)]


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, known_keys() + sections(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known_keys())}"
    return f"unknown config key '{key}'{hint}"


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
    for key, (ok, allowed) in RULES.items():
        v = values.get(key, defaults[key])
        if not ok(v):
            raise ConfigError(f"{key}={_show(v)} is not valid: expected {allowed}")
        values[key] = v

    def build(cls: type, prefix: str) -> Any:
        kwargs = {}
        for f in fields(cls):
            if is_dataclass(f.default):
                kwargs[f.name] = build(type(f.default), prefix + f.name + ".")
            else:
                v = values[prefix + f.name]
                kwargs[f.name] = float(v) if f.type == "float" else v
        return cls(**kwargs)

    return build(Config, "")


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """'key (old -> new)' for every key where a run's saved config differs from `cfg`;
    keys the saved config lacks (added to backprop-lab later) count as their defaults."""
    def lookup(config: Any, key: str) -> Any:
        for part in key.split("."):
            if not isinstance(config, dict) or part not in config:
                return _default(key)
            config = config[part]
        return config

    new = cfg.to_dict()
    return [f"{k} ({lookup(saved, k)!r} -> {lookup(new, k)!r})" for k in known_keys() if lookup(saved, k) != lookup(new, k)]


def _default(key: str) -> Any:
    obj: Any = Config()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj
