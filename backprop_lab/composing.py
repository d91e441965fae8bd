"""Composing a sweep's job configs quickly, with Hydra's result.

Hydra composes each job's config from the config files (defaults list, every file merged, then
the job's overrides), at about 0.1 s a job on the 2-core CPU, and a sweep asks for each job's
config up to three times (the sweeper checks its batch, check_planned_jobs checks every job up
front, the launcher composes it to run). `compose_once` makes the loader compose each job's
overrides once and hand out copies; and a job whose overrides differ from an earlier job's only
in the values of plain config keys is `derived` from that job's composition, as Hydra itself
would compose it: such overrides are applied last, onto the same composed tree, so applying the
new values to a copy gives the same config (the tests compare the two). A derived job is kept as
its recipe (base and values), so each request costs one copy, as a composed job's does; and the
sweeper's check that a batch composes skips the jobs that already did.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from omegaconf import DictConfig


@contextlib.contextmanager
def repository_shared(safe: bool) -> Any:
    """Hydra deep-copies its config repository at every composition (a third of a composition's
    0.13 s), only so that a primary config's hydra.searchpath cannot change the shared one. When
    no searchpath is set (`safe`) that copy protects nothing, and this skips it for the compositions
    made inside. Hydra-internal (hydra-core 1.3, which pyproject pins); without it, nothing changes."""
    try:
        from hydra._internal.config_repository import CachingConfigRepository
    except ImportError:
        safe = False
    if not safe:
        yield
        return
    copying = CachingConfigRepository.__init__

    def sharing(self: Any, delegate: Any) -> None:
        self.delegate, self.cache = delegate, {}

    CachingConfigRepository.__init__ = sharing
    try:
        yield
    finally:
        CachingConfigRepository.__init__ = copying


def differing_values(loader: Any, ours: list[Any], theirs: list[Any]) -> list[Any] | None:
    """Our parsed overrides that differ from theirs, when each is a new scalar value of the same
    plain config key (not a config group, not hydra.*, no +/~ prefix, set once); else None."""
    from hydra.core.override_parser.types import OverrideType, ValueType

    if len(ours) != len(theirs):
        return None
    keys = [o.key_or_group for o in ours]
    changed = []
    for o, t in zip(ours, theirs):
        if o.key_or_group != t.key_or_group or o.type != t.type or o.package != t.package:
            return None
        if o.input_line == t.input_line:
            continue
        plain = (o.type == OverrideType.CHANGE and o.package is None and o.value_type == ValueType.ELEMENT
                 and not o.is_hydra_override() and keys.count(o.key_or_group) == 1)
        if not plain or isinstance(o.value(), (dict, list)) or loader.repository.group_exists(o.key_or_group):
            return None
        changed.append(o)
    return changed


def derived(base: DictConfig, parsed: list[Any], changed: list[Any]) -> DictConfig:
    """`base` (an earlier job's composition) with `changed` applied, as Hydra's composition ends:
    the values set in order, the task overrides and hydra.job.override_dirname remade."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    cfg = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config(changed, cfg)
    app = [o for o in parsed if not o.is_hydra_override()]
    cfg.hydra.overrides.task = [o.input_line for o in app]
    dirname = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=app, kv_sep=dirname.kv_sep,
                                                           item_sep=dirname.item_sep,
                                                           exclude_keys=dirname.exclude_keys)
    return cfg


def compose_once(loader: Any) -> None:
    """From here on the loader composes a job's overrides once (or derives them from an earlier
    job's, see `derived`) and hands each caller a config of its own (callers change theirs: job
    number, output folder)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    compose = loader.load_sweep_config
    if getattr(compose, "composed", None) is not None:
        return
    try:  # Hydra-internal (hydra-core 1.3, which pyproject pins); without them every job is composed
        from hydra._internal import config_loader_impl as impl
        can_derive = hasattr(impl, "get_overrides_dirname") and hasattr(impl.ConfigLoaderImpl,
                                                                         "_apply_overrides_to_config")
    except ImportError:
        can_derive = False
    parser = OverridesParser.create()
    Key = tuple[int, tuple[str, ...]]  # the master config's id, the job's overrides
    composed: dict[Key, tuple[DictConfig, DictConfig, list[Any]]] = {}  # master (kept, so its id stays its own), config, parsed
    recipes: dict[Key, tuple[Key, list[Any], list[Any]]] = {}  # derived jobs: their base's key, parsed, the values changed

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in recipes:
            base_key, parsed, changed = recipes[key]
            return derived(composed[base_key][1], parsed, changed)  # a new config, as a copy would be
        if key not in composed:
            parsed = parser.parse_overrides(list(sweep_overrides))
            for base_key, (_, base, base_parsed) in list(composed.items()):
                changed = differing_values(loader, parsed, base_parsed) if can_derive and base_key[0] == key[0] else None
                if changed is not None:
                    recipes[key] = (base_key, parsed, changed)
                    return derived(base, parsed, changed)
            with repository_shared(not master_config.hydra.get("searchpath")):
                cfg = compose(master_config, list(sweep_overrides))
            composed[key] = (master_config, cfg, parsed)
        return copy.deepcopy(composed[key][1])

    load_sweep_config.composed = composed  # type: ignore[attr-defined]
    load_sweep_config.known = lambda key: key in composed or key in recipes  # type: ignore[attr-defined]
    load_sweep_config.checked = {}  # type: ignore[attr-defined]  # see keep_checked
    loader.load_sweep_config = load_sweep_config
    skip_known_in_batch_checks()


def skip_known_in_batch_checks() -> None:
    """Hydra's sweepers check that each job of a batch composes before launching it (composing it
    once more, then dropping it); a job the loader already composed or derived passed that check.
    Hydra-internal (hydra-core 1.3's Sweeper.validate_batch_is_legal); without it, nothing changes."""
    try:
        from hydra.plugins.sweeper import Sweeper
    except ImportError:
        return
    if getattr(Sweeper.validate_batch_is_legal, "skips_known", False):
        return
    hydras = Sweeper.validate_batch_is_legal

    def validate_batch_is_legal(self: Any, batch: Any) -> None:
        context = getattr(self, "hydra_context", None)
        known = getattr(getattr(getattr(context, "config_loader", None), "load_sweep_config", None), "known", None)
        if known is None or self.config is None:
            return hydras(self, batch)
        return hydras(self, [job for job in batch if not known((id(self.config), tuple(job)))])

    validate_batch_is_legal.skips_known = True  # type: ignore[attr-defined]
    Sweeper.validate_batch_is_legal = validate_batch_is_legal  # type: ignore[method-assign]


def keep_checked(loader: Any, master_config: DictConfig, overrides: list[str], num: int, job_config: DictConfig,
                 typed_config: Any) -> None:
    """A job's config as check_planned_jobs composed (a copy, its hydra.job.num set) and typed it,
    kept for the vectorised launcher to `take_checked` instead of copying and typing it again:
    7-10 ms a job, half a second for 64 members."""
    checked = getattr(loader.load_sweep_config, "checked", None)
    if checked is not None:
        checked[id(master_config), tuple(overrides), num] = (job_config, typed_config)


def take_checked(loader: Any, master_config: DictConfig, overrides: list[str], num: int) -> tuple[DictConfig, Any] | None:
    """What keep_checked kept for job `num` with these overrides (once), else None."""
    checked = getattr(loader.load_sweep_config, "checked", None)
    return None if checked is None else checked.pop((id(master_config), tuple(overrides), num), None)
