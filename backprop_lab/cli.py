"""Command line: `backprop-lab [overrides]` trains one run (or a sweep with -m).

The path from the shell to the epoch loop is three hops: the entry point (`main` checks
the overrides and hands over to Hydra, whose task function `hydra_main` builds the typed
config) -> `run` (data, files, report) -> `train.train` (the loop). Subcommands (resume,
show, compare, bench, predict, gradcheck) live in their own modules and are imported only when named.
Every error the user can cause ends in one line on stderr and a non-zero exit status, never
a traceback; the full traceback of an unexpected failure goes to the run's log file.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import errno
import importlib.resources
import logging
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from . import __version__
from .config import ConfigError, from_dictconfig, known_keys, list_keys, unknown_key_message
from .report import ErrorConsole, error_line, plural, to_devnull
from .analysis import CONFUSION_CSV, CONFUSION_PNG, CURVES_PNG, ERRORS_PNG
from .rundir import (CHECKPOINT, GRADS, LOG, RunDirError, boot_id, cpu_description, process_alive,
                     refuse_existing_run)

# What a run writes besides its summary, metrics and weights (refuse_existing_run's): a folder
# holding any of them is another run's, which a new run would add to or overwrite.
LEFT_BY_A_RUN = (GRADS, CHECKPOINT, ".hydra", CONFUSION_CSV, CONFUSION_PNG, ERRORS_PNG, CURVES_PNG)

# conf/ at the top of a clone, installed as the package backprop_lab.conf (pyproject.toml)
CONF_DIR = Path(str(importlib.resources.files("backprop_lab.conf")))
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

log = logging.getLogger("backprop_lab")
stderr = ErrorConsole()


# --- a fresh run directory per run -------------------------------------------------------

# Hydra names runs and sweeps by the second they start, so two started together would share
# one folder. The config's hydra.run.dir and hydra.sweep.dir go through this resolver, which
# claims the folder with an atomic mkdir and takes the next free `_N` suffix if it is taken.
_claimed: dict[str, str] = {}
_named: NamedDir | None = None


def fresh_dir(path: str, kind: str = "run") -> str:
    if path in _claimed:  # Hydra may resolve the key more than once in one process
        return _claimed[path]

    def refuse_dir(folder: str, why: str) -> None:
        error_line(f"cannot create the {kind} directory {folder}: {why}; "
                   f"run from a writable folder or set hydra.{kind}.dir=<writable path>")
        raise SystemExit(EXIT_BAD_INPUT)

    parent = Path(path).parent
    try:  # apart from the loop: "exists" here (a file or a dangling link) is a failure, not a taken name
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        refuse_dir(path, f"{parent} (or a folder above it) exists but is not a folder")
    except OSError as e:
        refuse_dir(path, e.strerror or str(e))
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"
        except OSError as e:
            refuse_dir(candidate, e.strerror or str(e))
    _claimed[path] = candidate
    return candidate


# use_cache: the folder made is stored in the config's resolver cache, which Hydra copies into
# every sweep job's config, also into joblib's worker processes, so they name the same folder.
OmegaConf.register_new_resolver("fresh_dir", fresh_dir, replace=True, use_cache=True)


# --- hop 1: the entry point --------------------------------------------------------------


def config_groups() -> dict[str, list[str]]:
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in CONF_DIR.iterdir()
        if d.is_dir() and any(d.glob("*.yaml"))  # not __pycache__
    }


def parse_hydra_args(argv: list[str]) -> tuple[Any, list[str]]:
    """Hydra's own argument parser, raising ConfigError where it would print its whole usage
    text (e.g. for --cfg jobb: its line already names the valid choices)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        raise ConfigError(f"{message}; see backprop-lab --help")

    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_known_args(argv)


def split_overrides_message(argv: list[str], overrides: list[str], unknown: list[str]) -> str:
    """Hydra's argparse takes the KEY=VALUE overrides as one group and refuses any after an
    option that ends it: name that option, and the command line that works."""
    # argparse itself tells where the group ended: at the first prefix of argv with a stray.
    first = len(argv) - 1
    for i in range(len(argv)):
        try:
            if parse_hydra_args(argv[: i + 1])[1]:
                first = i
                break
        except ConfigError:  # a prefix may end inside an option, e.g. before --cfg's value
            continue
    stray, before = argv[first], argv[first - 1]
    if before.startswith("-") and "=" not in before:
        where = f"comes after {before}, apart from the overrides before it"
    else:
        option = before if before.startswith("-") else f"{argv[max(first - 2, 0)]} {before}"
        where = f"follows an option's value ({option})"
    all_overrides = overrides + [u for u in unknown if not u.startswith("-")]
    options = list(argv)
    for o in all_overrides:
        options.remove(o)
    return (f"{stray!r} {where}: Hydra takes the KEY=VALUE overrides as one group; give them together, "
            f"e.g. backprop-lab {' '.join(options + all_overrides)}")


def several_values_message(o: Any) -> str:
    """Hydra's 'Ambiguous value' for KEY=A,B without -m, in one line, with what was most
    likely meant: a list for a list key, else a sweep."""
    from hydra.core.override_parser.types import ValueType

    line, key = o.input_line, o.key_or_group
    if o.value_type != ValueType.SIMPLE_CHOICE_SWEEP:  # range(...), glob(...), choice(...)
        return f"{line} is a sweep: add -m to run it (backprop-lab -m {line})"
    if key in list_keys():
        return f"{line} gives several values: for a list write {key}=[{line.split('=', 1)[1]}]; to sweep over them, add -m"
    return f"{line} gives several values, and one run takes one: to sweep over them, add -m (backprop-lab -m {line})"


def check_not_inside_a_run(key: str, value: Any, path: Path) -> None:
    """A run or sweep made inside an earlier run's folder (or a sweep's) would be hidden in it:
    `compare` does not look inside runs, and a resumed sweep would find a stranger among its jobs."""
    from .compare import is_run_dir, is_sweep_root

    for parent in path.expanduser().absolute().parents:
        if is_run_dir(parent):
            raise RunDirError(f"{key}={value} is inside the run {parent}, which holds that run only; choose a "
                              f"folder outside it, or leave {key} out for a fresh timestamped one")
        if is_sweep_root(parent):
            raise RunDirError(f"{key}={value} is inside the sweep {parent}, which holds its own jobs only; choose a "
                              f"folder outside it, or leave {key} out for a fresh timestamped one")


def check_not_a_run(sweep_dir: Path) -> None:
    """A sweep's jobs made inside a run's folder would be hidden by it (`compare` lists the run)."""
    from .compare import is_run_dir

    if is_run_dir(sweep_dir):
        raise RunDirError(f"hydra.sweep.dir={sweep_dir} is the folder of a run, which holds that run only; "
                          f"choose a new folder for the sweep")


def check_sweep_subdir(value: Any) -> None:
    """A job's folder is hydra.sweep.dir/hydra.sweep.subdir: a subdir that climbs out of the
    sweep (or is empty) would put a job's run files where they can overwrite anything, and
    one without an interpolation would give every job the same folder."""
    text = "" if value is None else str(value)
    if not text.strip() or Path(text).is_absolute() or ".." in Path(text).parts:
        where = "in the sweep's folder itself" if not text.strip() else "outside the sweep's folder"
        raise ConfigError(f"hydra.sweep.subdir={text} would put the sweep's jobs {where}; give a folder inside it, e.g. "
                          f"hydra.sweep.subdir='job${{hydra.job.num}}', or leave it out (one folder per job number)")
    if "${" not in text:
        raise ConfigError(f"hydra.sweep.subdir={text} names one folder for every job of the sweep, and each job "
                          f"needs its own: include the job's number, e.g. hydra.sweep.subdir='{text}_${{hydra.job.num}}'")


def check_output_dir(key: str, value: Any, used: bool) -> Path | None:
    """Refuse hydra.run.dir or hydra.sweep.dir values Hydra would fail on with a traceback, or
    act on wrongly: an empty one means the current folder, which would fill with run files.
    `used`: Hydra will make this folder in this command (not for --cfg, or the other mode's).
    Returns the run folder this command is to claim (claim_run_dir), if it names one."""
    if isinstance(value, str) and "${" in value:
        return None  # resolved by Hydra later; fresh_dir makes its own checks
    if value is None or isinstance(value, (list, dict)):
        shown = "null" if value is None else value
        raise ConfigError(f"{key}={shown} is not valid: expected a folder, e.g. {key}=outputs/try1")
    if not str(value).strip():
        raise ConfigError(f"{key} is empty: the current folder would take the run's files; name a folder, "
                          f"e.g. {key}=outputs/try1, or leave {key} out for a fresh timestamped one")
    path = Path(str(value))
    check_not_inside_a_run(key, value, path)
    if key == "hydra.sweep.dir":
        check_not_a_run(path)
    if key == "hydra.run.dir":
        # Hydra would rewrite the folder's .hydra/ files before any check of ours runs.
        refuse_existing_run(path)
        from .compare import is_sweep_root

        if is_sweep_root(path):
            raise RunDirError(f"{key}={value} is a sweep's folder, which holds its own jobs only; choose a folder "
                              f"outside it, or leave {key} out for a fresh timestamped one")
        if path.is_dir():
            # e.g. hydra.run.dir=outputs (runs sit 2 levels down, sweep jobs 4); no deeper, so a
            # folder such as a home directory is not searched through
            inner = next((found for depth in range(1, 5) for found in path.glob("*/" * depth + "summary.json")), None)
            if inner is not None:
                raise RunDirError(f"{key}={value} holds other runs ({inner.parent}); a run needs a folder of its own, "
                                  f"or `compare` would no longer find them: choose a new one, e.g. {path / 'try1'}")
            leftover = sorted(p.name for p in path.iterdir() if p.name in LEFT_BY_A_RUN)
            if leftover:
                raise RunDirError(f"{key}={value} holds what an earlier run left ({', '.join(leftover)}), which this "
                                  f"run would add to; choose a new folder or empty this one")
    if not used:
        return None
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "a link to nothing" if existing.is_symlink() else "a special file"
        inside = "" if existing == path else f"{path} cannot be made: "
        raise RunDirError(f"{key}: {inside}{existing} is {kind}, not a folder")
    if existing != path:
        # Hydra makes the missing folders later; see now that it can, leaving nothing behind
        # (a probe of our own name, so a concurrent run making the same folder is not disturbed).
        try:
            probe = tempfile.mkdtemp(dir=existing, prefix=".backprop-lab-probe-")
        except OSError as e:
            raise RunDirError(f"{key}: {path} cannot be created: no folder can be made in {existing} "
                              f"({e.strerror or e})") from None
        with contextlib.suppress(OSError):
            os.rmdir(probe)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{key}: {path} cannot be used: permission denied")
    return path if key == "hydra.run.dir" else None


# In a folder named with hydra.run.dir, from the checks until the run has its metrics.csv.
CLAIM = ".backprop-lab-claim"
_claim: Path | None = None


def claim_run_dir(path: Path) -> None:
    """Take the folder for this run before Hydra writes its .hydra/ files there. Two runs
    started together into one folder both pass the checks above, and Hydra's files of the
    one refused later would overwrite the other's record; the second is refused here instead.
    A claim whose process is gone (killed while starting) is taken over."""
    global _claim, _named
    marker = path / CLAIM
    made = path.absolute()
    while not made.parent.exists():  # the highest folder this claim makes, removed again if it comes to nothing
        made = made.parent
    made_any, had_log = not path.exists(), (path / LOG).exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = marker.read_text().strip()
                if holder.isdigit() and process_alive(int(holder)):
                    raise RunDirError(f"hydra.run.dir={path}: another run is starting in it (pid {holder}); choose "
                                      f"another folder, or leave hydra.run.dir out for a fresh timestamped one") from None
                marker.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            _claim = marker
            _named = NamedDir(path.resolve(), made.resolve() if made_any else None, had_log)
            atexit.register(release_claim)
            return
    except OSError as e:
        raise RunDirError(f"hydra.run.dir: {path} cannot be used: {e.strerror or e}") from None
    raise RunDirError(f"hydra.run.dir={path}: other runs are starting in it; choose another folder")


@dataclass(frozen=True)
class NamedDir:
    """The hydra.run.dir this process claimed, and what was there before it."""

    path: Path
    made: Path | None  # the highest folder the claim created; None if the folder existed
    had_log: bool  # a backprop-lab.log was there already: it is not this run's to remove


def discard_named() -> None:
    """Undo what a run refused or stopped while starting put into the folder the user named:
    Hydra's .hydra/ and log, and the folders the claim made (what was there before stays)."""
    global _named
    if _named is None:
        return
    named, _named = _named, None
    release_claim()
    if not named.path.is_dir() or any(p.name not in {".hydra", LOG} for p in named.path.iterdir()):
        return
    shutil.rmtree(named.path / ".hydra", ignore_errors=True)
    if not named.had_log:
        (named.path / LOG).unlink(missing_ok=True)
    if named.made is not None:
        folder = named.path
        with contextlib.suppress(OSError):
            while True:
                folder.rmdir()  # only if empty
                if folder == named.made:
                    break
                folder = folder.parent


def release_claim() -> None:
    """The run holds its folder by its metrics.csv now (or is over): the claim has done its work."""
    global _claim
    if _claim is not None:
        with contextlib.suppress(OSError):
            _claim.unlink()
        _claim = None


def hydra_group_options(group: str) -> tuple[list[str], list[str]]:
    """The options Hydra finds for one of its own groups (hydra/launcher: basic, joblib, ...),
    and its groups. Plugins add theirs when imported, so they are loaded first: a third of a
    second, spent only when such a group is named."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.plugins import Plugins

    Plugins.instance()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    return loader.get_group_options(group), [f"hydra/{g}" for g in loader.list_groups("hydra")]


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Settings of the Optuna sweeper and the joblib launcher that their plugins take without a check
# and then fail on mid-sweep with a traceback (or, for a wrong type, with many lines).
PLUGIN_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hydra.sweeper.n_trials": (lambda v: _whole(v) and v >= 1, "a whole number of trials >= 1"),
    "hydra.sweeper.n_jobs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1 of trials proposed at once"),
    "hydra.sweeper.direction": (lambda v: v in ("maximize", "minimize"),
                                "maximize or minimize (backprop-lab's jobs return the test accuracy: maximize)"),
    "hydra.sweeper.sampler.seed": (lambda v: v is None or _whole(v), "a whole number, or null for a random seed"),
    "hydra.sweeper.max_failure_rate": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                                       "a fraction from 0 to 1"),
    "hydra.launcher.n_jobs": (lambda v: _whole(v) and v != 0,
                              "a whole number of parallel jobs: 1, 2, ..., or -1 for one per core"),
}


def check_overrides(argv: list[str]) -> Path | None:
    """Reject what Hydra would stop on, or act on wrongly, before it starts, with one line
    each: stray options, unknown keys and group options, several values without -m, run
    folders that cannot be made. Returns the hydra.run.dir folder to claim, if one is named
    (the last one given: Hydra uses that).

    Hydra would stop on most of them too, but with several lines of usage text, OmegaConf
    detail or a traceback. Values are checked later, per job, by config.from_container.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    args, unknown = parse_hydra_args(argv)
    unknown += [a for a in argv if a == "--"]  # argparse swallows it; Hydra's parser would not
    if unknown and "=" in unknown[0] and not unknown[0].startswith("-"):
        raise ConfigError(split_overrides_message(argv, args.overrides, unknown))
    if unknown and not unknown[0].startswith("-"):
        raise ConfigError(f"{unknown[0]!r} is neither an option nor a KEY=VALUE override; see backprop-lab --help")
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}: overrides are KEY=VALUE; see backprop-lab --help")
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        first = re.sub(r" expecting \{.*\}", "", str(e).strip().splitlines()[0])  # the grammar's token names
        hint = ""
        if "LexerNoViableAlt" in first:  # e.g. data.root=~/data: Hydra's grammar has no bare ~ or space
            hint = "; quote a value with spaces or characters such as ~ in single quotes: \"data.root='~/my data'\""
        elif "'<EOF>'" in first:  # e.g. optim.lr=0.1,
            hint = "; a value is missing at the end of one (after a ',' or '=')"
        raise ConfigError(f"cannot parse the overrides {' '.join(args.overrides)!r}: {first}{hint}") from None
    makes_dirs = not (args.help or args.hydra_help or args.cfg or args.info is not None or args.shell_completion)
    groups = config_groups()
    to_claim: Path | None = None
    for o in overrides:
        key = o.key_or_group
        if not key:
            raise ConfigError(f"{o.input_line!r} has no key before its '=': overrides are KEY=VALUE, e.g. optim.lr=0.05")
        if o.is_sweep_override() and not args.multirun:
            raise ConfigError(several_values_message(o))
        if o.is_sweep_override() and key.startswith("hydra.sweeper.params."):
            value = o.input_line.split("=", 1)[1]
            raise ConfigError(f"{o.input_line}: Hydra cannot set a search space here; give it on the key itself, "
                              f"which replaces the preset's: '{key.removeprefix('hydra.sweeper.params.')}={value}'")
        if o.is_sweep_override() and o.is_hydra_override():
            raise ConfigError(f"{o.input_line}: Hydra's own settings take one value, even in a sweep (-m)")
        if o.value_type == ValueType.INTERVAL_SWEEP:  # Optuna's search spaces: nothing to enumerate
            if not any(a.split("=")[0].lstrip("+~") in ("hparams_search", "hydra/sweeper") for a in args.overrides):
                raise ConfigError(f"{o.input_line}: an interval is a search space for the Optuna sweeper "
                                  f"(add hparams_search=mlp, see docs/sweeps.md); a plain -m sweep takes lists "
                                  f"and ranges, e.g. {key}=0.01,0.1 or {key}='range(1,4)'")
            if not (o.is_add() or o.is_force_add()) and key not in known_keys():
                raise ConfigError(unknown_key_message(key))
            space = o.value()
            if not space.start < space.end:  # Optuna fails on either mid-search, with a traceback
                raise ConfigError(f"{o.input_line}: the interval's low end must be below its high end")
            if "log" in space.tags and space.start <= 0:
                raise ConfigError(f"{o.input_line}: a log interval needs a low end above 0")
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            if isinstance(value, str) and "${" in value:  # Hydra fails on a malformed one in many lines
                try:
                    OmegaConf.create({"value": value})
                except OmegaConfBaseException as e:
                    raise ConfigError(f"{key}={value} is not valid: {str(e).splitlines()[0]}") from None
        if key in ("hydra.run.dir", "hydra.sweep.dir") and not o.is_delete():
            named = check_output_dir(key, o.value(), makes_dirs and (key == "hydra.sweep.dir") == args.multirun)
            if key == "hydra.run.dir":  # the last one given is the folder Hydra uses
                to_claim = named
        if key == "hydra.sweep.subdir" and not o.is_delete():
            check_sweep_subdir(o.value())
        if key == "hydra/job_logging" and o.value() != "default":
            raise ConfigError(f"{o.input_line}: backprop-lab keeps each run's log in its folder ({LOG}), which "
                              f"`compare` and `resume` read, so Hydra's job logging cannot be changed; the terminal "
                              f"shows no log lines as it is")
        if key.startswith("hydra/") and not (o.is_add() or o.is_force_add() or o.is_delete()) and o.value() is not None:
            options, hydra_groups = hydra_group_options(key)
            if not options:
                raise ConfigError(f"'{key}' is not one of Hydra's config groups; they are: {', '.join(hydra_groups)}")
            if o.value() not in options:
                raise ConfigError(f"{key}={o.value()} is not a known option; available: {', '.join(options)}")
        if key in PLUGIN_VALUES and not o.is_delete():
            valid, expected = PLUGIN_VALUES[key]
            if not valid(o.value()):
                raise ConfigError(f"{key}={o.value()} is not valid: expected {expected}")
        if o.is_add() and key in known_keys():  # Hydra: "Could not append to config" over six lines
            raise ConfigError(f"{o.input_line}: {key} is already in the config, so '+' cannot add it; "
                              f"set it without the '+': {o.input_line[1:]}")
        if key.split(".")[0].split("/")[0] == "hydra" or o.is_add() or o.is_force_add() or o.is_delete():
            continue  # Hydra's own settings (check_hydra_settings), and deliberate additions checked later
        if key in groups:
            for choice in values:
                if choice is None:
                    raise ConfigError(f"{key}=null is not valid: to run without a {key} choice, leave {key}=... out")
                if choice not in groups[key]:
                    raise ConfigError(f"{key}={choice} is not a known preset; available: {', '.join(groups[key])}")
        elif key not in known_keys():
            raise ConfigError(unknown_key_message(key))
    if not (args.config_name or args.config_dir):
        check_hydra_settings(overrides)
    return to_claim


# Set in every composition (Hydra's own, or conf/config.yaml's), and checked on their own.
ALWAYS_THERE = {"hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.callbacks.sweep_report.resume",
                "hydra.callbacks.sweep_report.fail_fast"}


def check_hydra_settings(overrides: list[Any]) -> None:
    """A misspelled or mistyped hydra.* setting (hydra.run.dirr, hydra.sweeper.n_trial, one of a
    launcher not chosen) as one line. Composing is the only faithful check, since the
    launcher and sweeper chosen decide which keys exist; it costs ~0.2 s, so only when needed."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    settings = [o for o in overrides if o.key_or_group.startswith("hydra.") and not (o.is_add() or o.is_force_add())
                and not o.is_delete() and o.key_or_group not in ALWAYS_THERE]
    if not settings:
        return
    single = [o.input_line for o in overrides if not o.is_sweep_override()]  # what decides the config's shape
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            compose("config", overrides=single, return_hydra_config=True)
            return
        except HydraException as e:
            failed = next((o for o in settings if f"'{o.key_or_group}'" in str(e) or o.input_line in str(e)), None)
            if failed is None:
                return  # not about a hydra.* setting: Hydra reports it as it would have
            why = str(e.__cause__ or e).strip().splitlines()[0]
            base = compose("config", overrides=[line for line in single if line != failed.input_line],
                           return_hydra_config=True)
    key = failed.key_or_group
    if OmegaConf.select(base, key, default=None) is not None or "Key '" not in why:
        raise ConfigError(f"{failed.input_line} is not valid: {why}")
    settings_there = [k for k in dotted_keys(base.hydra, "hydra") if not k.endswith("._target_")]  # not a setting
    close = difflib.get_close_matches(key, settings_there, n=1, cutoff=0.75)
    hint = f"did you mean '{close[0]}'?" if close else "backprop-lab --hydra-help lists Hydra's options"
    plugin = key.split(".")[1]
    if plugin in ("sweeper", "launcher") and "Basic" in str(base.hydra[plugin].get("_target_", "")) and not close:
        hint = ("it is a setting of the Optuna sweeper: add hparams_search=mlp (docs/sweeps.md)" if plugin == "sweeper"
                else "it is a setting of another launcher: choose it too, e.g. hydra/launcher=joblib (docs/sweeps.md)")
    raise ConfigError(f"'{key}' is not one of Hydra's settings ({why}); {hint}")


def dotted_keys(node: Any, prefix: str) -> list[str]:
    keys = []
    for k in node.keys() if OmegaConf.is_dict(node) else ():
        child = node._get_node(k)  # not node[k]: that would resolve ${...}, and make folders
        keys += dotted_keys(child, f"{prefix}.{k}") if OmegaConf.is_dict(child) else [f"{prefix}.{k}"]
    return keys


def check_mode(argv: list[str]) -> None:
    """Hydra raises a ValueError (a traceback) for more than one of -m, --cfg, --info, ..."""
    args, _ = parse_hydra_args(argv)
    modes = [flag for flag, given in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg is not None),
                                      ("--info", args.info is not None), ("--shell-completion", args.shell_completion))
             if given]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: give one of them "
                          f"(--cfg job prints the config of one run; -m runs a sweep)")
    cp = args.config_path
    if cp is not None and "://" not in cp and not Path(cp).is_absolute():  # Hydra would look for a Python module
        raise ConfigError(f"--config-path {cp}: give it as an absolute folder, e.g. --config-path "
                          f"{Path(cp).absolute()}; to add configs of your own to backprop-lab's, use --config-dir {cp}")
    if cp is not None and "://" not in cp and not Path(cp).is_dir():
        raise ConfigError(f"--config-path {args.config_path}: no such folder; backprop-lab's configs are in "
                          f"{CONF_DIR}; to add configs of your own, use --config-dir FOLDER")
    if args.config_dir is not None and not Path(args.config_dir).is_dir():
        raise ConfigError(f"--config-dir {args.config_dir}: no such folder; it names a folder of extra config files")
    if args.config_name is not None:
        folders = [CONF_DIR] + ([Path(args.config_dir)] if args.config_dir else [])
        name = args.config_name.removesuffix(".yaml")
        if not any((folder / f"{name}.yaml").is_file() for folder in folders):
            raise ConfigError(f"--config-name {args.config_name}: there is no {name}.yaml in "
                              f"{' or '.join(map(str, folders))}; the lab's own config is 'config' (the default)")
    if args.shell_completion:  # Hydra's completion would need its install=SHELL, which is not a config key
        raise ConfigError("shell completion (--shell-completion, -sc) is not available in backprop-lab; "
                          "backprop-lab --help lists every config group and key")
    if args.experimental_rerun is not None:
        raise ConfigError("--experimental-rerun is not available in backprop-lab: to continue a run use "
                          "backprop-lab resume RUN_DIR; to repeat one, give the overrides in RUN_DIR/.hydra/overrides.yaml")


def check_shown_config(argv: list[str]) -> None:
    """`--cfg job` prints the config a run would use; one it would refuse is refused here too,
    rather than printed as if it were fine (exit 0)."""
    args, _ = parse_hydra_args(argv)
    if args.cfg not in ("job", "all") or args.config_name or args.config_dir:
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            dcfg = compose("config", overrides=args.overrides)
        except HydraException:
            return  # Hydra reports it itself, as it would without --cfg
    from_dictconfig(dcfg)


def check_command(argv: list[str]) -> None:
    """A first word that is neither an option nor an override is most likely a mistyped
    command: name the commands rather than fail to parse it as an override."""
    word = argv[0] if argv else "-"
    if word.startswith(("-", "~", "+")) or "=" in word:
        return
    commands = ", ".join(SUBCOMMANDS)
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    if close:
        raise ConfigError(f"unknown command {word!r}; did you mean {close[0]!r}? commands: {commands}")
    raise ConfigError(f"{word!r} is neither a command nor a KEY=VALUE override; commands: {commands}; "
                      f"a run takes overrides such as optim.lr=0.05 (see backprop-lab --help)")


# Subcommands other than training: name -> (module, function taking argv, returning an exit code).
SUBCOMMANDS = {
    "show": ("backprop_lab.compare", "show_main"),
    "compare": ("backprop_lab.compare", "compare_main"),
    "bench": ("backprop_lab.bench", "main"),
    "resume": ("backprop_lab.resume", "main"),
    "predict": ("backprop_lab.analysis", "predict_main"),
    "gradcheck": ("backprop_lab.gradcheck", "main"),
}


def print_help(argv: list[str]) -> None:
    """`--help`, as Hydra's default template lays it out, without the listing of Hydra's own
    ~80 config groups that Hydra computes (and throws away) first: about a second here."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if a not in ("--help", "-h") and not a.startswith("-")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    text = cfg.hydra.help
    groups = "\n".join(f"{name}: {', '.join(options)}" for name, options in sorted(config_groups().items()))
    with open_dict(cfg):
        del cfg["hydra"]
    print(f"{text.header}\n== Configuration groups ==\nCompose your configuration from those groups "
          f"(group=option)\n\n{groups}\n\n\n== Config ==\nOverride anything in the config (foo.bar=value)"
          f"\n\n{OmegaConf.to_yaml(cfg)}\n{text.footer}")


def main(noted: Sequence[int] = ()) -> None:
    """`noted`: the signals that came while this module was imported (__main__ noted them)."""
    argv = sys.argv[1:]
    trains = not argv or argv[0] not in SUBCOMMANDS or argv[0] == "resume"
    # Ctrl-C or SIGTERM while Hydra, torch and the data load (seconds) would land in the middle
    # of an import as a traceback; this handler only notes it, and run() stops at the first batch.
    early = StopRequest(starting=True)
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {sig: signal.signal(sig, early if trains else handler) for sig, handler in defaults.items()}
    try:
        for signum in noted:  # the first asks for a stop at the first batch; a second stops now
            if not trains:
                early.signum = early.signum or signum
                raise KeyboardInterrupt
            early(signum, None)
        dispatch(argv)
    except BrokenPipeError:  # `backprop-lab ... | head`: the reader has what it wanted; end as a shell's SIGPIPE would
        to_devnull(sys.stdout)
        sys.exit(EXIT_SIGPIPE)
    except OmegaConfBaseException as e:  # e.g. hydra.run.dir='${oops}', resolved by Hydra outside any check of ours
        key = getattr(e, "full_key", None)
        error_line(f"{'cannot resolve ' + key + ': ' if key else ''}{first_line(e)}")
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # a second signal while starting: stop at once, leaving no empty run folder
        sweep = sys.modules.get(f"{__package__}.sweep")
        waiting = sweep.WaitingForJobs.current if sweep is not None else None
        if waiting is not None and waiting.signum is not None:  # a job's process was stopped while it started
            waiting.finish()
        name = signal.Signals(early.signum or signal.SIGINT).name
        for folder in _claimed.values():
            discard_if_empty(Path(folder).resolve())
        discard_named()
        error_line(f"stopped by {name} while starting; nothing was trained" if trains else f"stopped by {name}")
        sys.exit(EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT)
    finally:
        for sig, handler in previous.items():
            # after a finished run the process only exits: Python's finalization would put SIG_DFL
            # back for a Python handler, and a signal then would kill it (exit -2, not the run's)
            signal.signal(sig, signal.SIG_IGN if early.finished else handler)


def dispatch(argv: list[str]) -> None:
    """A subcommand, or Hydra's command line: one run, a sweep, or what --help/--cfg/... print."""
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, function = SUBCOMMANDS[argv[0]]
        sys.exit(getattr(importlib.import_module(module), function)(argv[1:]))
    if "--version" in argv:  # Hydra's own flag would name only Hydra's version
        print(f"backprop-lab {__version__} (Hydra {hydra.__version__})")
        return
    try:
        check_command(argv)
        check_mode(argv)
        to_claim = check_overrides(argv)
        check_shown_config(argv)
        if "--help" in argv or "-h" in argv:
            print_help(argv)
            return
        if to_claim is not None:  # once every check has passed, so a refusal leaves no folder
            claim_run_dir(to_claim)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        sys.exit(EXIT_BAD_INPUT)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(dcfg: DictConfig) -> float | None:
    """Hydra's task function: the typed config at the boundary, then one run."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep:  # resume, fail-fast, threads per launcher; returns a float for every job
        from .sweep import sweep_job

        return sweep_job(dcfg, run_dir, hydra_cfg)
    try:
        cfg = from_dictconfig(dcfg)
    except ConfigError as e:
        discard_if_empty(run_dir)
        return refuse(str(e), EXIT_BAD_INPUT, in_sweep)
    note_sweep_preset(hydra_cfg)
    return run(cfg, run_dir, list(hydra_cfg.overrides.task), in_sweep)


# hydra_main's module attribute is Hydra's wrapper, so joblib's launcher pickles hydra_main by
# value, with every global it names: functions travel by reference, but an object such as the
# stderr Console (it holds a lock) cannot travel at all. Hence this function.
def note_sweep_preset(hydra_cfg: Any) -> None:
    """A preset that defines a sweep, run without -m, trains one configuration: say so."""
    swept = list(hydra_cfg.sweeper.get("params") or {})
    if swept:
        stderr.print(f"[yellow]note:[/yellow] this config sweeps over {', '.join(swept)} with -m; without -m "
                     f"it trains one configuration")


# --- hop 2: one run ----------------------------------------------------------------------


def refuse(message: str, code: int, in_sweep: bool) -> None:
    """Report a run's end in one line; outside a sweep, exit with `code`. In a sweep the
    other jobs must go on, so the job just returns."""
    error_line(message)
    log.error(message)
    if not in_sweep:
        sys.exit(code)


def discard_if_empty(run_dir: Path, claimed_only: bool = True) -> None:
    """Remove a run directory that holds nothing but Hydra's own files, so a run refused at
    the start leaves nothing that looks like a result, and the same command can run again.
    Single runs remove only a folder this process claimed, and of a folder the user named
    only what this process put there; a sweep's job folders are always Hydra's."""
    if claimed_only and _named is not None and run_dir == _named.path:
        discard_named()
        return
    if claimed_only and str(run_dir) not in {str(Path(p).resolve()) for p in _claimed.values()}:
        return
    if run_dir.is_dir() and all(p.name in {".hydra", LOG} for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        if claimed_only:  # the day's folder too, if this run was to be its first (a sweep's folder stays)
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()


EXIT_SIGPIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose output pipe closed


class StopRequest:
    """Signal handler for SIGINT and SIGTERM: the first asks training to stop after the
    current batch; a second one stops at once. Either way summary.json, checkpoint.pt and
    weights.pt are whole, since each is replaced atomically; a second signal in the middle
    of an append can cut the last row of metrics.csv or grads.csv, which `resume` writes
    again from the checkpoint and `show`/`compare` leave out with a warning. Once training
    is over (`trained`), the first stops at once: all that is left then is the optional plots."""

    def __init__(self, starting: bool = False, signum: int | None = None) -> None:
        self.signum = signum
        self.starting = starting  # before training: the stop comes at the first batch
        self.trained = False
        self.finished = False  # main's handler, once the run's record is complete: a signal changes nothing

    def __call__(self, signum: int, frame: Any) -> None:
        if self.finished:
            return
        first = self.signum is None
        self.signum = self.signum or signum
        if not first or self.trained:
            raise KeyboardInterrupt
        when = "at the first batch" if self.starting else "after this batch"
        stderr.print(f"\n{signal.Signals(signum).name}: stopping {when} (again to stop at once)")

    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def quiet_unraisable_interrupts() -> Any:
    """The stop handler's KeyboardInterrupt can land in a weakref callback or __del__ (matplotlib
    makes many), where Python prints it as 'Exception ignored in ...' with a traceback; the
    handler has recorded the signal already, so it is dropped without a word."""
    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            default(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = default


def saved(epochs: int) -> str:
    """What a stopped run keeps, e.g. 'the 2 completed epochs are saved'."""
    if epochs == 0:
        return "no epoch was completed yet"
    return f"the {plural(epochs, 'completed epoch')} {'is' if epochs == 1 else 'are'} saved"


def cannot_write(run_dir: Path, e: OSError, then: str) -> str:
    """One line for a write into the run directory that failed, saying how to go on."""
    fix = "free some space" if e.errno == errno.ENOSPC else "make it writable"
    return f"cannot write to the run directory {run_dir}: {(e.strerror or str(e)).lower()}; {fix}, then {then}"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def resume_after(run_dir: Path, epochs: int) -> str:
    """For a run that stopped part way: the command that continues it, and what it keeps."""
    return f"continue with: backprop-lab resume {run_dir} ({saved(epochs)})"


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def new_summary(cfg: Any, data: Any, device: Any, overrides: list[str], run_dir: Path, machine: str) -> dict[str, Any]:
    """summary.json of a run about to start: what it is, on what, and nothing trained yet."""
    import torch

    from .rundir import config_hash
    from .train import planned_epochs

    return {
        "status": "running",
        "epochs_completed": 0,
        "epochs_planned": planned_epochs(cfg, data.X_train.shape[0]),
        "final_test_acc": None,
        "best_test_acc": None,
        "best_epoch": None,
        "final_test_loss": None,
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "device": str(device),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "config_hash": config_hash(cfg.to_dict()),
        "overrides": overrides,
        "data": {
            "source": str(data.source),
            "train_size": data.X_train.shape[0],
            "test_size": data.X_test.shape[0],
            "md5": data.md5,
        },
        "versions": {
            "backprop_lab": __version__,
            "torch": torch.__version__,
            "hydra": hydra.__version__,
            "python": platform.python_version(),
        },
        "machine": machine,
        "started_at": now(),
        "finished_at": None,
        "run_dir": str(run_dir),
        "weights": None,
        "error": None,
        "warnings": [],
    }


def continued_summary(run_dir: Path, checkpoint: dict[str, Any], writer: Any, machine: str) -> dict[str, Any]:
    """summary.json of a run being resumed, caught up with its checkpoint (and metrics.csv with it)."""
    from .rundir import read_summary
    from .train import note_dead_layers

    summary = read_summary(run_dir)
    summary.setdefault("resumed_at", []).append(now())
    # what it continues on: `resume ... threads=N` (or another machine) may differ from the start
    summary.update(status="running", error=None, finished_at=None, machine=machine)
    summary.pop("signal", None)  # what stopped the earlier part; a sweep would stop on it again
    row = checkpoint["row"]
    if row is not None and summary["epochs_completed"] < checkpoint["epoch"]:
        # killed after the checkpoint, before the summary: the epoch's rows may be missing,
        # partial or cut mid-line, so they are written again from the checkpoint
        writer.keep_rows_before(checkpoint["epoch"])
        writer.append(row)
        writer.append_layers(checkpoint["epoch"], checkpoint.get("layers", []))
        note_dead_layers(summary, checkpoint["epoch"], checkpoint.get("layers", []))
        # killed before the summary caught up: it does now, from the checkpoint's row
        summary.update(epochs_completed=checkpoint["epoch"], final_test_acc=row["test_acc"],
                       final_test_loss=row["test_loss"], train_seconds=summary["train_seconds"] + row["seconds"])
        if summary["best_test_acc"] is None or row["test_acc"] > summary["best_test_acc"]:
            summary.update(best_test_acc=row["test_acc"], best_epoch=checkpoint["epoch"])
    return summary


def run(cfg: Any, run_dir: Path, overrides: list[str], in_sweep: bool = False, resume: bool = False) -> float | None:
    """Train one run into `run_dir` (or, with `resume`, continue the one there); return
    its final test accuracy. Every outcome is recorded in summary.json."""
    wall_start = time.perf_counter()
    # the log file is a copy of what summary.json and the terminal say: a full disk must not
    # add logging's "--- Logging error ---" tracebacks to the one line that reports it
    logging.raiseExceptions = False
    from .mnist_files import prefetch

    prefetch(cfg.data.root)  # the data is read and checked on another core while torch loads
    # Imported only now, so `--help`, `--cfg` and bad values answer without loading torch.
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    from .data import DataError, load_mnist
    from .report import COLUMN_KEYS, Reporter
    from . import tensorboard_events
    from .compare import flatten
    from .rundir import METRICS, RunWriter, check_usable, load_checkpoint, read_summary
    from .train import (Diverged, Stopped, arch_of, check_fits, does_not_fit, make_state, note_dead_layers,
                        out_of_memory, resolve_device, train)

    try:
        device = resolve_device(cfg.device)
        check_fits(cfg, device)
        checkpoint = load_checkpoint(run_dir, str(device)) if resume else None
        # resume.py has compared the configs; this ties the checkpoint to this run's summary
        if checkpoint is not None and checkpoint["config_hash"] != read_summary(run_dir).get("config_hash"):
            raise RunDirError(f"{run_dir}/checkpoint.pt was written for another config; it cannot be resumed")
        if not resume:
            check_usable(run_dir)
        if cfg.log.tensorboard:
            tensorboard_events.require()  # before anything is written: one line naming what to install
        data = load_mnist(cfg.data.root, cfg.data.train_subset, device, cfg.data.download, image_size=cfg.data.image_size)
        writer = RunWriter(run_dir, COLUMN_KEYS, resume=resume)
        release_claim()  # metrics.csv holds the folder now: any other run is refused by it
    except (ConfigError, DataError, RunDirError) as e:
        if not resume:
            discard_if_empty(run_dir)
        return refuse(str(e), EXIT_BAD_INPUT, in_sweep)

    def undo_start() -> None:
        """A new run refused before its first epoch leaves no half-made folder to refuse the rerun:
        the metrics.csv header RunWriter made, an epoch-0 checkpoint, then Hydra's files."""
        if not resume:
            for name in (METRICS, CHECKPOINT):
                (run_dir / name).unlink(missing_ok=True)
            discard_if_empty(run_dir)

    try:
        state = make_state(cfg, device)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        undo_start()
        return refuse(does_not_fit(cfg, f"the memory of {device}", first_line(e)), EXIT_BAD_INPUT, in_sweep)
    machine = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs ({cpu_description()}), "
               f"torch threads {torch.get_num_threads()}")
    if checkpoint is None:
        summary = new_summary(cfg, data, device, overrides, run_dir, machine)
    else:
        state.load(checkpoint)
        summary = continued_summary(run_dir, checkpoint, writer, machine)
    summary.update(pid=os.getpid(), host=platform.node(), boot_id=boot_id())  # tells a live run from a killed one
    start_epoch = 1 if checkpoint is None else checkpoint["epoch"] + 1
    wall_before = summary["wall_seconds"]  # of the earlier parts of a resumed run

    def wall_seconds() -> float:  # kept current each epoch, so a killed part's time is not lost
        return wall_before + time.perf_counter() - wall_start

    def write_failed(e: OSError) -> None:  # the run stops; what was written before is kept, for resume
        summary.update(status="failed", error=cannot_write(run_dir, e, resume_after(run_dir, summary["epochs_completed"])))

    def save_checkpoint(epoch: int, row: dict[str, float] | None, layers: Any = ()) -> None:
        writer.save_checkpoint({**state.state_dict(), "epoch": epoch, "config_hash": summary["config_hash"],
                                "row": row, "layers": list(layers)})

    try:
        if checkpoint is None:
            save_checkpoint(0, None)
        writer.write_summary(summary)
    except OSError as e:
        undo_start()
        return refuse(cannot_write(run_dir, e, f"backprop-lab resume {run_dir}" if resume else "run it again"),
                      EXIT_BAD_INPUT, in_sweep)
    log.info("%s: %s", "resumed" if resume else "config", summary["config"])

    events = None
    if cfg.log.tensorboard:  # a view of the files, for `tensorboard --logdir outputs`
        events = tensorboard_events.EventWriter(run_dir)
        if checkpoint is None:
            events.hparams(flatten(summary["config"]))
    reporter = Reporter()
    early = signal.getsignal(signal.SIGINT)  # main's, which noted any signal while this run was starting
    stop = StopRequest(signum=early.signum if isinstance(early, StopRequest) else None)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        reporter.start(summary)
        reporter.next_epoch = start_epoch
        with reporter.progress(summary["epochs_planned"], math.ceil(data.X_train.shape[0] / cfg.data.batch_size)) as on_batch:
            for m in train(cfg, data, state, on_batch, start_epoch=start_epoch, should_stop=stop.requested):
                row = m.as_dict()
                save_checkpoint(m.epoch, row, m.layers)  # first, so a kill between the two loses nothing
                writer.append(row)
                writer.append_layers(m.epoch, m.layers)
                if events is not None:
                    events.epoch(row, m.layers)
                summary.update(
                    epochs_completed=m.epoch,
                    final_test_acc=m.test_acc,
                    final_test_loss=m.test_loss,
                    train_seconds=summary["train_seconds"] + m.seconds,
                    wall_seconds=wall_seconds(),
                )
                if summary["best_test_acc"] is None or m.test_acc > summary["best_test_acc"]:
                    summary.update(best_test_acc=m.test_acc, best_epoch=m.epoch)
                note_dead_layers(summary, m.epoch, m.layers)
                writer.write_summary(summary)
                log.info("epoch %s", row)
                reporter.epoch(row)  # last: the files are complete whatever the terminal does
        summary["status"] = "completed"
    except Diverged as e:
        # weights drawn that large (the chapter's scale is 0.01) overflow before any step can
        scale = cfg.model.init_scale > 1 and cfg.model.init in ("normal", "uniform")
        summary.update(status="diverged", error=f"{e}; try a smaller {'model.init_scale' if scale else 'optim.lr'}",
                       diverged_at=e.record())
        exit_code = EXIT_DIVERGED
    except (Stopped, KeyboardInterrupt) as e:
        signum = stop.signum or signal.SIGINT
        where = f" at epoch {e.epoch}, batch {e.batch}" if isinstance(e, Stopped) else ""
        summary.update(
            status="interrupted",
            error=f"stopped by {signal.Signals(signum).name}{where}; {saved(summary['epochs_completed'])}; "
            f"continue with: backprop-lab resume {run_dir}",
        )
        exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        summary["signal"] = signal.Signals(signum).name
    except BrokenPipeError:  # `backprop-lab ... | head` (report.OutputConsole has muted stdout): stop as SIGPIPE would
        summary.update(
            status="interrupted",
            error=f"standard output was closed (broken pipe); {saved(summary['epochs_completed'])}; "
            f"continue with: backprop-lab resume {run_dir}",
        )
        exit_code = EXIT_SIGPIPE
        summary["signal"] = "SIGPIPE"
    except OSError as e:
        write_failed(e)
        exit_code = EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - recorded, logged with traceback, reported in one line
        log.exception("run failed")
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        exit_code = EXIT_FAILED

    # The handlers stay until the summary is written: a signal now (a second Ctrl-C raises
    # KeyboardInterrupt) may cost the optional plots, never the weights or the summary.
    try:
        if summary["status"] == "completed":
            writer.save_weights(state.params)
            summary["weights"] = "weights.pt"
            stop.trained = True  # a signal from here on skips the plots at once
            try:  # confusion.csv/.png, errors.png, curves.png: nice to have, never a reason to fail a run
                if stop.requested():
                    raise KeyboardInterrupt
                from .analysis import write_reports

                with quiet_unraisable_interrupts():
                    confusion = write_reports(run_dir, arch_of(cfg), state.params, data)
                reporter.confusion(confusion)
            except BrokenPipeError:
                summary["signal"] = "SIGPIPE"
                exit_code = EXIT_SIGPIPE
            except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - logged with traceback, reported in one line
                if stop.requested():  # the signal's KeyboardInterrupt, or what a library made of it mid-drawing
                    name = signal.Signals(stop.signum).name
                    stderr.print(f"[yellow]warning:[/yellow] analysis plots skipped ({name}); the run is complete")
                    summary["signal"] = name
                    exit_code = EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
                elif isinstance(e, KeyboardInterrupt):
                    raise
                else:
                    log.warning("analysis plots failed", exc_info=True)
                    stderr.print(f"[yellow]warning:[/yellow] could not write the analysis plots: {type(e).__name__}: {e}")
        summary.update(wall_seconds=wall_seconds(), finished_at=now())
        writer.write_summary(summary)
    except OSError as e:
        write_failed(e)
        exit_code = EXIT_FAILED
    except KeyboardInterrupt:  # a second signal while the weights or the last summary were being written
        name = signal.Signals(stop.signum or signal.SIGINT).name
        summary["signal"] = name  # a sweep stops its later jobs on it
        exit_code = EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
        if summary.get("weights") is None:
            summary.update(status="interrupted", error=f"stopped by {name} while saving the weights; the trained "
                           f"epochs are in the checkpoint; finish with: backprop-lab resume {run_dir}")
        if summary["finished_at"] is None:
            summary.update(wall_seconds=wall_seconds(), finished_at=now())
        for sig in previous:  # one more signal must not cut this last write short as well
            signal.signal(sig, signal.SIG_IGN)
        try:
            writer.write_summary(summary)
        except OSError as e:
            write_failed(e)
            exit_code = EXIT_FAILED
    finally:
        if events is not None:
            events.close()
        if isinstance(early, StopRequest) and not in_sweep:
            # the record is complete: a signal now could only cut the last lines short, and main's
            # start-up handler would call it a stop "while starting"; a sweep's next job needs it
            early.finished = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("summary: %s", summary)
    try:
        reporter.summary(summary)
    except BrokenPipeError:
        exit_code = exit_code or EXIT_SIGPIPE
    if exit_code:
        if summary["status"] == "completed":  # stopped after training: nothing of the run is missing
            why = "standard output was closed" if exit_code == EXIT_SIGPIPE else f"stopped by {summary['signal']}"
            refuse(f"{why} after training; the run is complete in {run_dir} (weights saved), "
                   f"only the analysis plots may be missing", exit_code, in_sweep)
        else:
            refuse(summary["error"], exit_code, in_sweep)
        return None
    acc = summary["final_test_acc"]
    return acc if acc is not None and math.isfinite(acc) else None


if __name__ == "__main__":
    main()
