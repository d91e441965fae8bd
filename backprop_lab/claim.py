"""A fresh run directory for every run, claimed safely, and the checks of the output folders a
user names (hydra.run.dir, hydra.sweep.dir): a run never writes into another run's folder, and a
run refused before it starts leaves no folder behind."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import ConfigError
from .errors import EXIT_BAD_INPUT, error_line
from .rundir import (CHECKPOINT, CONFUSION_CSV, CONFUSION_PNG, CURVES_PNG, ERRORS_PNG, GRADS, LOG, SUMMARY, RunDirError,
                     process_alive, refuse_existing_run)

# What a run writes besides its summary, metrics and weights (refuse_existing_run's): a folder
# holding any of them is another run's, which a new run would add to or overwrite.
LEFT_BY_A_RUN = (GRADS, CHECKPOINT, ".hydra", CONFUSION_CSV, CONFUSION_PNG, ERRORS_PNG, CURVES_PNG)


# Hydra names runs and sweeps by the second they start, so two started together would share
# one folder. The config's hydra.run.dir and hydra.sweep.dir go through this resolver, which
# claims the folder with an atomic mkdir and takes the next free `_N` suffix if it is taken.
_claimed: dict[str, str] = {}
# A claimed folder -> the highest folder above it that fresh_dir made, which discard_if_empty
# takes back too: a refused run in an empty folder leaves no empty outputs/ behind.
_made_above: dict[str, Path | None] = {}


_named: NamedDir | None = None


def nearest_existing(path: Path) -> Path:
    """path, or the nearest folder above it that exists (a dangling link counts: it is there)."""
    while not os.path.lexists(path):
        path = path.parent
    return path


def in_the_way(path: Path) -> str | None:
    """What keeps the folder `path` from being made or used, or None: the nearest entry at or above
    it that exists, when that is not a folder, e.g. "outputs is a link to /gone, which does not exist"."""
    existing = nearest_existing(path)
    if existing.is_dir():
        return None
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a link to {os.readlink(existing)}, which does not exist"
    return f"{existing} is {'a file' if existing.is_file() else 'a special file'}, not a folder"


def not_a_folder(folder: Path) -> str:
    """Why folder cannot be made when mkdir finds something in the way (FileExistsError,
    NotADirectoryError)."""
    return in_the_way(folder) or f"{folder} (or a folder above it) exists but is not a folder"


def probe_folder(folder: Path) -> str | None:
    """Why no folder can be made in the existing folder `folder`, or None: found by making one of
    our own name and removing it again, so a concurrent run making a folder there is not disturbed."""
    try:
        probe = tempfile.mkdtemp(dir=folder, prefix=".backprop-lab-probe-")
    except OSError as e:
        return e.strerror or str(e)
    with contextlib.suppress(OSError):
        os.rmdir(probe)
    return None


def fresh_dir(path: str, kind: str = "run") -> str:
    if path in _claimed:  # Hydra may resolve the key more than once in one process
        return _claimed[path]

    def refuse_dir(folder: str, why: str) -> None:
        error_line(f"cannot create the {kind} directory {folder}: {why}; "
                   f"run from a writable folder or set hydra.{kind}.dir=<writable path>")
        raise SystemExit(EXIT_BAD_INPUT)

    parent = Path(path).parent
    highest = parent.absolute()  # the highest folder this makes (outputs/ in a fresh folder), or None
    while not os.path.lexists(highest.parent):
        highest = highest.parent
    highest_made = None if os.path.lexists(highest) else highest
    try:  # apart from the loop: "exists" here (a file or a dangling link) is a failure, not a taken name
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        refuse_dir(path, not_a_folder(parent))
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
    _made_above[str(Path(candidate).resolve())] = highest_made.resolve() if highest_made else None
    return candidate


# use_cache: the folder made is stored in the config's resolver cache, which Hydra copies into
# every sweep job's config, also into joblib's worker processes, so they name the same folder.
OmegaConf.register_new_resolver("fresh_dir", fresh_dir, replace=True, use_cache=True)


def check_not_inside_a_run(key: str, value: Any, path: Path) -> None:
    """A run or sweep made inside an earlier run's folder (or a sweep's) would be hidden in it:
    `compare` does not look inside runs, and a resumed sweep would find a stranger among its jobs."""
    from .runs import is_run_dir, is_sweep_root

    for parent in path.expanduser().absolute().parents:
        if is_run_dir(parent):
            raise RunDirError(f"{key}={value} is inside the run {parent}, which holds that run only; choose a "
                              f"folder outside it, or leave {key} out for a fresh timestamped one")
        if is_sweep_root(parent):
            raise RunDirError(f"{key}={value} is inside the sweep {parent}, which holds its own jobs only; choose a "
                              f"folder outside it, or leave {key} out for a fresh timestamped one")


def check_not_a_run(sweep_dir: Path) -> None:
    """A sweep's jobs made inside a run's folder would be hidden by it (`compare` lists the run)."""
    from .runs import is_run_dir

    if is_run_dir(sweep_dir):
        raise RunDirError(f"hydra.sweep.dir={sweep_dir} is the folder of a run, which holds that run only; "
                          f"choose a new folder for the sweep")


def check_sweep_subdir(value: Any, search: bool = False) -> None:
    """A job's folder is hydra.sweep.dir/hydra.sweep.subdir: a subdir that climbs out of the
    sweep (or is empty) would put a job's run files where they can overwrite anything, and
    one without an interpolation would give every job the same folder. A grid's folders are
    checked job by job before any starts (sweep.check_planned_jobs); a search's (`search`: Optuna)
    are known only as it proposes its trials, so only the job's number keeps them apart."""
    text = "" if value is None else str(value)
    if not text.strip() or Path(text).is_absolute() or ".." in Path(text).parts:
        where = "in the sweep's folder itself" if not text.strip() else "outside the sweep's folder"
        raise ConfigError(f"hydra.sweep.subdir={text} would put the sweep's jobs {where}; give a folder inside it, e.g. "
                          f"hydra.sweep.subdir='job${{hydra.job.num}}', or leave it out (one folder per job number)")
    if "${" not in text:
        raise ConfigError(f"hydra.sweep.subdir={text} names one folder for every job of the sweep, and each job "
                          f"needs its own: include the job's number, e.g. hydra.sweep.subdir='{text}_${{hydra.job.num}}'")
    if search and "hydra.job.num" not in text and "hydra.job.id" not in text:
        raise ConfigError(f"hydra.sweep.subdir={text} can give two trials of a search the same folder (a search "
                          f"may propose the same values twice): include the trial's number, e.g. "
                          f"hydra.sweep.subdir='{text}_${{hydra.job.num}}'")


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
        from .runs import is_sweep_root

        if is_sweep_root(path):
            raise RunDirError(f"{key}={value} is a sweep's folder, which holds its own jobs only; choose a folder "
                              f"outside it, or leave {key} out for a fresh timestamped one")
        if path.is_dir():
            # e.g. hydra.run.dir=outputs (runs sit 2 levels down, sweep jobs 4); no deeper, so a
            # folder such as a home directory is not searched through
            inner = next((found for depth in range(1, 5) for found in path.glob("*/" * depth + SUMMARY)), None)
            if inner is not None:
                raise RunDirError(f"{key}={value} holds other runs ({inner.parent}); a run needs a folder of its own, "
                                  f"or `compare` would no longer find them: choose a new one, e.g. {path / 'try1'}")
            leftover = sorted(p.name for p in path.iterdir() if p.name in LEFT_BY_A_RUN)
            if leftover:
                raise RunDirError(f"{key}={value} holds what an earlier run left ({', '.join(leftover)}), which this "
                                  f"run would add to; choose a new folder or empty this one")
    if not used:
        return None
    existing, why = nearest_existing(path), in_the_way(path)
    if why is not None:
        raise RunDirError(f"{key}: {'' if existing == path else f'{path} cannot be made: '}{why}")
    if existing != path:  # Hydra makes the missing folders later; see now that it can
        failed = probe_folder(existing)
        if failed is not None:
            raise RunDirError(f"{key}: {path} cannot be created: no folder can be made in {existing} ({failed})")
    elif not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{key}: {path} cannot be used: permission denied")
    return path if key == "hydra.run.dir" else None


# In a folder named with hydra.run.dir, from the checks until the run has its metrics.csv.
CLAIM = ".backprop-lab-claim"


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
        if claimed_only:  # a sweep's folder stays
            discard_above(run_dir, _made_above.get(str(run_dir)))


def discard_above(run_dir: Path, highest_made: Path | None) -> None:
    """The day's folder, if this run was to be its first, and the empty folders above it up to
    the highest one fresh_dir made (rmdir: one another run has put something into stays)."""
    folder = run_dir.parent
    with contextlib.suppress(OSError):
        folder.rmdir()
        while highest_made is not None and highest_made in folder.parents:
            folder = folder.parent
            folder.rmdir()


_claim: Path | None = None
