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
import platform
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .cli import EXIT_BAD_INPUT, error_line, run
from .config import ConfigError, config_changes, from_container, with_defaults
from .report import SubcommandParser
from .rundir import (CHECKPOINT, LOG, METRICS, SUMMARY, RunDirError, RunWriter, effective_status, load_checkpoint,
                     locked, read_summary, still_running)

# Where the run computes or what it logs, not what it computes: these may differ from the run's
# own config. After a device change the results are no longer bitwise identical to an uninterrupted run's.
RUNTIME_KEYS = ("device", "threads", "log.tensorboard")


def main(argv: list[str]) -> int:
    parser = SubcommandParser(prog="backprop-lab resume", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the interrupted run's directory")
    # default=[]: without it argparse counts an empty KEY=VALUE list as missing, and names it
    # beside RUN_DIR when RUN_DIR is left out
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"must agree with the run's own config, except {' and '.join(RUNTIME_KEYS)}")
    parser.add_argument("--force", action="store_true",
                        help="continue a run marked running on another machine, once you know it no longer runs there")
    args = parser.parse_intermixed_args(argv)
    try:
        return resume(args.run_dir, args.overrides, force=args.force)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        return EXIT_BAD_INPUT


def cannot_write(run_dir: Path, e: OSError) -> RunDirError:
    reason = (e.strerror or str(e)).lower()
    advice = ("free some space, or copy the run to another disk and resume the copy" if e.errno == errno.ENOSPC
              else "copy the run to a writable folder and resume the copy")
    return RunDirError(f"cannot write to {run_dir}: {reason}; {advice}")


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


def checked_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json, refused (RunDirError) when unreadable or, for a run that is to continue, damaged."""
    try:
        summary = read_summary(run_dir)
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a backprop-lab run directory (no {SUMMARY})") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read {run_dir / SUMMARY}: {e}") from None
    if not isinstance(summary, dict):
        raise RunDirError(f"cannot read {run_dir / SUMMARY}: it holds no run summary")
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    damaged = [key for key, ok in (("config", isinstance(summary.get("config"), dict)),
                                   ("epochs_completed", count(summary.get("epochs_completed"))),
                                   ("epochs_planned", count(summary.get("epochs_planned"))),
                                   ("best_test_acc", summary.get("best_test_acc") is None
                                    or number(summary.get("best_test_acc"))),  # none before the first epoch
                                   ("train_seconds", number(summary.get("train_seconds"))),  # the resumed run adds to them
                                   ("wall_seconds", number(summary.get("wall_seconds")))) if not ok]
    if damaged and summary.get("status") != "completed":
        raise RunDirError(f"{run_dir / SUMMARY} is damaged ({', '.join(damaged)} missing or of the wrong type); "
                          f"it cannot be resumed: start a new run")
    return summary


def _check_metrics(run_dir: Path, done: int, rows_may_follow: bool) -> None:
    """metrics.csv must hold the header and one whole row for each of the `done` epochs the
    summary counts, in order, and nothing after them but what a kill can leave: the rows of
    the checkpoint's epoch (written again on resume) or a row cut off. Rows appended to a
    damaged file would be lost to every reader."""
    from .report import COLUMN_KEYS

    path = run_dir / METRICS

    def refuse(why: str) -> RunDirError:
        return RunDirError(f"{path} {why}; the run cannot be resumed without losing its rows: start a new run "
                           f"(its completed epochs stay readable with backprop-lab show)")

    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        raise refuse("is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise refuse(f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not lines or lines[0].rstrip("\r\n").split(",") != COLUMN_KEYS:
        raise refuse("does not start with the metrics header")
    epochs = []
    for line in lines[1: done + 1]:
        try:
            epochs.append(int(line.split(",", 1)[0]) if line.endswith("\n") else None)
        except ValueError:
            epochs.append(None)
    if epochs != list(range(1, done + 1)):
        raise refuse(f"does not hold one whole row for each of the {done} completed epoch(s) the summary counts")
    if len(lines) > done + 1 and not rows_may_follow:
        raise refuse(f"holds more than the rows of the {done} completed epoch(s) the summary counts")


def check_files(run_dir: Path, summary: dict[str, Any], device: str) -> None:
    """RunDirError unless the checkpoint and metrics.csv are those of the summary's run, as it
    left them. Read before anything is written, so a run that cannot continue is left as it is.
    Used by `resume` and by a resumed sweep's jobs."""
    done = summary["epochs_completed"]
    checkpoint = load_checkpoint(run_dir, device)
    if checkpoint["config_hash"] != summary.get("config_hash"):
        raise RunDirError(f"{run_dir / CHECKPOINT} was written for another config than its {SUMMARY}; "
                          f"it cannot be resumed")
    ahead = checkpoint["epoch"] == done + 1
    if not done <= checkpoint["epoch"] <= done + 1:  # one ahead: killed after the checkpoint, before the summary
        raise RunDirError(f"{run_dir / CHECKPOINT} is of epoch {checkpoint['epoch']}, but {SUMMARY} counts {done} "
                          f"completed epoch(s): they are not of the same run; it cannot be resumed")
    del checkpoint
    _check_metrics(run_dir, done, rows_may_follow=ahead)


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
