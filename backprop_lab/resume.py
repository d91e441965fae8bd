"""`backprop-lab resume RUN_DIR [KEY=VALUE ...]`: continue an interrupted run where it stopped.

Reads the run's summary.json and checkpoint.pt (written after every completed epoch), checks
that the config, with any KEY=VALUE given, is the one the run started with (only where it
computes may change: `device` and `threads`), and hands over to `cli.run`, which continues in
the same directory and appends to its metrics.csv. On the same device the continued run is
bitwise identical to one that was never interrupted. Hydra is not involved: the run directory
already holds the resolved config. A lock in the directory (rundir.locked) keeps a second
resume of the same run out for as long as this one lasts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import ConfigError, config_changes, from_container, with_defaults
from .errors import EXIT_BAD_INPUT, EXIT_FAILED, SubcommandParser, error_line
from .rundir import (CHECKPOINT, LOG, METRICS, MULTIRUN_YAML, SUMMARY, RunDirError, RunWriter,
                     effective_status, locked, still_running)
from .runner import run
from .runs import check_files, checked_summary, is_sweep_root

# Where the run computes or what it logs, not what it computes: these may differ from the run's
# own config. After a device change the results are no longer bitwise identical to an uninterrupted run's.
RUNTIME_KEYS = ("device", "threads", "log.tensorboard")


def main(argv: list[str]) -> int:
    parser = SubcommandParser(prog="backprop-lab resume", description=__doc__.splitlines()[0] + (
        " RUN_DIR may also be a sweep's folder: its completed jobs are skipped, the others continue."))
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="the interrupted run's directory, or a sweep's (multirun) folder")
    # default=[]: without it argparse counts an empty KEY=VALUE list as missing, and names it
    # beside RUN_DIR when RUN_DIR is left out
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"must agree with the run's own config, except {' and '.join(RUNTIME_KEYS)}")
    parser.add_argument("--force", action="store_true",
                        help="continue a run marked running on another machine, once you know it no longer runs there")
    args = parser.parse_intermixed_args(argv)
    try:
        if is_sweep_root(args.run_dir):
            return continue_sweep(args.run_dir, args.overrides)
        return resume(args.run_dir, args.overrides, force=args.force)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        return EXIT_BAD_INPUT


def cannot_write(run_dir: Path, e: OSError) -> RunDirError:
    reason = (e.strerror or str(e)).lower()
    advice = ("free some space, or copy the run to another disk and resume the copy" if e.errno == errno.ENOSPC
              else "copy the run to a writable folder and resume the copy")
    return RunDirError(f"cannot write to {run_dir}: {reason}; {advice}")


def continue_sweep(sweep_dir: Path, overrides: list[str]) -> int:
    """`resume SWEEP_DIR`: the sweep's own command again (saved_command) with
    hydra.callbacks.sweep_report.resume=true, in this process's place; completed jobs are
    skipped, interrupted ones continue from their checkpoints."""
    if overrides:
        raise RunDirError(f"{sweep_dir} is a sweep: resume continues it with its own command, so it takes no "
                          f"KEY=VALUE ({' '.join(overrides)})")
    hydra_overrides, task = saved_command(sweep_dir)
    ours = ("hydra.mode=", "hydra.sweep.dir=", "hydra.callbacks.sweep_report.resume=")
    folder = str(sweep_dir.resolve())
    folder = folder if re.fullmatch(r"[\w/.+-]+", folder) else "'" + folder.replace("'", "\\'") + "'"
    args = ["-m", *(o for o in hydra_overrides if not o.startswith(ours)), *task, f"hydra.sweep.dir={folder}",
            "hydra.callbacks.sweep_report.resume=true"]
    print(f"continuing the sweep {sweep_dir}: backprop-lab {shlex.join(args)}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "backprop_lab", *args])
    return EXIT_FAILED  # not reached: execv replaces this process


def saved_command(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """The hydra and task overrides of the command that made the sweep: Hydra's multirun.yaml; an
    Optuna search writes none, and the sweep's start recorded them in PLANNED_FILE instead."""
    import yaml

    from .sweep import read_planned

    again = f"run its command again with hydra.sweep.dir={sweep_dir} hydra.callbacks.sweep_report.resume=true"
    if not (sweep_dir / MULTIRUN_YAML).exists():
        try:
            planned = read_planned(sweep_dir)
            return [str(o) for o in planned["hydra"]], [str(o) for o in planned["overrides"]]
        except (KeyError, TypeError):  # none, an unreadable one, or a grid's / an older search's
            raise RunDirError(f"{sweep_dir} is a sweep with no record of its command (Hydra's {MULTIRUN_YAML}, or "
                              f"for an Optuna search the one backprop-lab keeps since 2026-12-07); {again}") from None
    try:
        saved = yaml.safe_load((sweep_dir / MULTIRUN_YAML).read_text())["hydra"]["overrides"]
        return [str(o) for o in saved["hydra"]], [str(o) for o in saved["task"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        why = e.strerror if isinstance(e, OSError) else f"no overrides in it ({type(e).__name__})"
        raise RunDirError(f"{sweep_dir} is a sweep, but its {MULTIRUN_YAML} cannot be read ({why}); {again}") from None


def not_resumable(path: Path) -> str | None:
    """Why path holds no run that could be resumed, naming it as the user typed it; None if
    it holds a summary.json (whether that run can continue is decided from there)."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    if (path / SUMMARY).is_file():
        return None
    left = [name for name in (METRICS, CHECKPOINT) if (path / name).is_file()]
    if left:
        return (f"{path} has {' and '.join(left)} but no {SUMMARY} (the run stopped before writing one; "
                f"compare lists it as incomplete): it cannot be resumed; start a new run")
    return f"{path} is not a backprop-lab run directory (no {SUMMARY})"


def resume(given: Path, overrides: list[str], force: bool = False) -> int:
    problem = not_resumable(given)  # before the lock, which would leave a file in any folder named
    if problem:
        raise RunDirError(problem)
    run_dir = given.resolve()  # the run's real, current place, wherever it was made
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(run_dir))
        except OSError as e:  # a read-only file system: nothing can be continued, nothing is changed
            summary = checked_summary(run_dir)
            if effective_status(summary) == "completed":
                return _completed(run_dir, summary)
            raise cannot_write(run_dir, e) from None
        return _resume_locked(run_dir, overrides, held, force)


def _completed(run_dir: Path, summary: dict[str, Any]) -> int:
    print(f"{run_dir} already completed {summary.get('epochs_completed')}/{summary.get('epochs_planned')} "
          f"epochs; nothing to do")
    return 0


def _config(saved: dict[str, Any], overrides: list[str]) -> Any:
    """The run's config with the overrides, refused unless only the runtime keys changed."""
    try:
        asked = OmegaConf.to_container(OmegaConf.merge(saved, OmegaConf.from_dotlist(overrides)))
    except Exception as e:  # noqa: BLE001 - OmegaConf's errors for bad KEY=VALUE strings vary
        raise ConfigError(f"cannot read the overrides {' '.join(overrides)!r}: {str(e).splitlines()[0]}") from None
    cfg = from_container(asked)
    changes = [c for c in config_changes(saved, cfg) if c.split(" ", 1)[0] not in RUNTIME_KEYS]
    if changes:
        raise ConfigError(f"resume refused: the config differs from the run's own in {', '.join(changes)}; "
                          f"start a new run for a different config (only {' and '.join(RUNTIME_KEYS)} may change)")
    return cfg


def _resume_locked(run_dir: Path, overrides: list[str], held: contextlib.ExitStack, force: bool = False) -> int:
    summary = checked_summary(run_dir)
    status = effective_status(summary)
    if status == "running" and force and summary.get("host") != platform.node():
        status = "incomplete"  # the user knows its process on that machine is gone
    done, planned = summary.get("epochs_completed"), summary.get("epochs_planned")
    if status == "completed":
        if overrides and isinstance(summary.get("config"), dict):  # a typo, or another config, is not "nothing to do"
            _config(with_defaults(summary["config"]), overrides)
        return _completed(run_dir, summary)
    if status == "running":
        raise RunDirError(still_running(run_dir, summary))
    if status == "diverged":
        raise RunDirError(f"{run_dir} diverged; resuming would diverge again from the same state: "
                          f"start a new run with a smaller optim.lr")
    # Keys added to backprop-lab after the run started take their defaults.
    saved = with_defaults(summary["config"])
    cfg = _config(saved, overrides)

    from .train import resolve_device

    try:
        device = str(resolve_device(cfg.device))
    except ConfigError as e:
        if any(o.split("=", 1)[0].strip() == "device" for o in overrides):
            raise
        raise ConfigError(f"{run_dir} was run with device={cfg.device}, which is not available on this machine; "
                          f"continue it here with: backprop-lab resume {run_dir} device=cpu "
                          f"(results then differ slightly from an uninterrupted run's)") from e

    check_files(run_dir, summary, device)

    try:
        handler = logging.FileHandler(run_dir / LOG)  # the run's log continues, as Hydra wrote it
    except OSError as e:
        raise cannot_write(run_dir, e) from None
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    held.callback(handler.close)
    held.callback(root.removeHandler, handler)

    # What the header, the summary panel, `show` and summary.json say: where the run is now
    # (it may have been moved or copied) and the device it continues on.
    moved = summary.get("run_dir") != str(run_dir)
    before = summary.get("device")
    other_device = before is not None and device != before
    if moved:
        summary["run_dir"] = str(run_dir)
    if other_device:
        summary.setdefault("device_changes", []).append({"after_epoch": done, "from": before, "to": device})
    if moved or device != before:
        summary["device"] = device
        try:
            RunWriter(run_dir, [], resume=True).write_summary(summary)
        except OSError as e:
            raise cannot_write(run_dir, e) from None

    print(f"resuming {run_dir} after epoch {done} of {planned}")
    if other_device:
        print(f"note: the epochs so far ran on {before}, the rest on {device}; results are no longer "
              f"bitwise identical to an uninterrupted run's")
    try:
        run(cfg, run_dir, summary.get("overrides", []), resume=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
