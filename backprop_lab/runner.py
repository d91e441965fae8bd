"""One run, in three steps: start (the run directory, data, model, checkpoint), epochs (train.train's
records handed to the writer and the reporter), finish (weights, plots, the summary). The CLI,
`resume` and the sweep callback all run a run through `run`; it is the one place that installs
the stop handlers for SIGINT and SIGTERM while training."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra

from . import __version__
from .claim import discard_if_empty, release_claim
from .config import ConfigError
from .errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM, cannot_write,
                     first_line, log, refuse, stderr)
from .report import plural
from .rundir import CHECKPOINT, METRICS, RESUME_HINT, SCHEMA, WEIGHTS, RunDirError, boot_id, cpu_description


def set_handlers(handlers: dict[int, Any]) -> dict[int, Any]:
    """Install signal handlers (SIGINT, SIGTERM), returning those they replace. Every handler of
    backprop-lab is installed through here, but __main__'s, which only notes a signal that comes
    while the modules load (a handler from here would have to be imported first)."""
    return {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}


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


def resume_after(run_dir: Path, epochs: int) -> str:
    """For a run that stopped part way: the command that continues it, and what it keeps."""
    return f"{RESUME_HINT} {run_dir} ({saved(epochs)})"


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def new_summary(cfg: Any, data: Any, device: Any, overrides: list[str], run_dir: Path, machine: str) -> dict[str, Any]:
    """summary.json of a run about to start: what it is, on what, and nothing trained yet."""
    import torch

    from .rundir import config_hash
    from .train import planned_epochs

    return {
        "schema": SCHEMA,
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
    summary.update(status="running", error=None, finished_at=None, machine=machine, schema=SCHEMA)
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


# Runs of this process that failed on a write (a full disk): run directory -> the error. Their
# summary.json may still say `running`; a sweep's report takes the run's end from here.
UNSAVED_ENDS: dict[str, str] = {}


@dataclass
class ActiveRun:
    """A run between start and finish: what it trains, where it writes, what it has recorded."""

    cfg: Any
    run_dir: Path
    in_sweep: bool
    resume: bool
    data: Any
    state: Any
    writer: Any
    summary: dict[str, Any]
    start_epoch: int
    wall_before: float  # seconds of the earlier parts of a resumed run
    wall_start: float = field(default_factory=time.perf_counter)
    events: Any = None  # tensorboard_events.EventWriter with log.tensorboard=true
    reporter: Any = None
    pngs: bool = True  # the PNG plots at the end (a vectorised sweep's member: only with hydra.launcher.plots)
    predicted: Any = None  # the test set's predicted classes, when its last test pass kept them (a member's)

    def wall_seconds(self) -> float:  # kept current each epoch, so a killed part's time is not lost
        return self.wall_before + time.perf_counter() - self.wall_start

    def write_failed(self, e: OSError) -> int:  # the run stops; what was written before is kept, for resume
        self.summary.update(status="failed", error=cannot_write(
            self.run_dir, e, resume_after(self.run_dir, self.summary["epochs_completed"])))
        UNSAVED_ENDS[str(self.run_dir.resolve())] = self.summary["error"]  # its summary.json may not say so
        return EXIT_FAILED

    def save_checkpoint(self, epoch: int, row: dict[str, float] | None, layers: Any = ()) -> None:
        self.writer.save_checkpoint({**self.state.state_dict(), "epoch": epoch, "row": row, "layers": list(layers),
                                     "config_hash": self.summary["config_hash"]})

    def undo_start(self) -> None:
        """A new run refused before its first epoch leaves no half-made folder to refuse the rerun:
        the metrics.csv header RunWriter made, an epoch-0 checkpoint, then Hydra's files."""
        if not self.resume:
            for name in (METRICS, CHECKPOINT):
                (self.run_dir / name).unlink(missing_ok=True)
            discard_if_empty(self.run_dir)


def run(cfg: Any, run_dir: Path, overrides: list[str], in_sweep: bool = False, resume: bool = False,
        quiet: bool = False, progress: bool = True) -> float | None:
    """Train one run into `run_dir` (or, with `resume`, continue the one there); return
    its final test accuracy. Every outcome is recorded in summary.json. `quiet` prints no
    header, tables or summary (a sweep's job), `progress` whether a progress bar shows."""
    wall_start = time.perf_counter()
    # the log file is a copy of what summary.json and the terminal say: a full disk must not
    # add logging's "--- Logging error ---" tracebacks to the one line that reports it
    logging.raiseExceptions = False
    active = start(cfg, run_dir, overrides, in_sweep, resume, wall_start)
    if active is None:
        return None
    from .report import Reporter

    active.reporter = Reporter(quiet=quiet, progress=progress)
    early = signal.getsignal(signal.SIGINT)  # main's, which noted any signal while this run was starting
    stop = StopRequest(signum=early.signum if isinstance(early, StopRequest) else None)
    previous = set_handlers({signal.SIGINT: stop, signal.SIGTERM: stop})
    try:
        exit_code = train_epochs(active, stop)
        # The handlers stay until the summary is written: a signal now (a second Ctrl-C raises
        # KeyboardInterrupt) may cost the optional plots, never the weights or the summary.
        exit_code = finish(active, stop, exit_code, previous)
    finally:
        if active.events is not None:
            active.events.close()
        if isinstance(early, StopRequest) and not in_sweep:
            # the record is complete: a signal now could only cut the last lines short, and main's
            # start-up handler would call it a stop "while starting"; a sweep's next job needs it
            early.finished = True
        set_handlers(previous)
    return report_end(active, exit_code)


def start(cfg: Any, run_dir: Path, overrides: list[str], in_sweep: bool, resume: bool,
          wall_start: float, data: Any = None) -> ActiveRun | None:
    """Step 1: the device, the checkpoint to resume, the data (unless given: a vectorised group's
    members share it), the run directory's writer, the model and the summary of a run about to
    train; None when refused (said in one line)."""
    from .mnist_files import prefetch

    if data is None:
        prefetch(cfg.data.root)  # the data is read and checked on another core while torch loads
    # Imported only now, so `--help`, `--cfg` and bad values answer without loading torch.
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    from . import tensorboard_events
    from .data import DataError, load_mnist
    from .report import COLUMN_KEYS
    from .rundir import RunWriter, check_usable, load_checkpoint, read_summary
    from .train import check_fits, does_not_fit, make_state, out_of_memory, resolve_device

    try:
        device = resolve_device(cfg.device)
        check_fits(cfg, device)
        checkpoint = load_checkpoint(run_dir, str(device)) if resume else None
        # resume.py has compared the configs; this ties the checkpoint to this run's summary
        if checkpoint is not None and checkpoint["config_hash"] != read_summary(run_dir).get("config_hash"):
            raise RunDirError(f"{run_dir}/{CHECKPOINT} was written for another config; it cannot be resumed")
        if not resume:
            check_usable(run_dir)
        if cfg.log.tensorboard:
            tensorboard_events.require()  # before anything is written: one line naming what to install
        if data is None:
            data = load_mnist(cfg.data.root, cfg.data.train_subset, device, cfg.data.download,
                              image_size=cfg.data.image_size, keep_files=in_sweep)  # for the sweep's next job
        writer = RunWriter(run_dir, COLUMN_KEYS, resume=resume)
        release_claim()  # metrics.csv holds the folder now: any other run is refused by it
    except (ConfigError, DataError, RunDirError) as e:
        if not resume:
            discard_if_empty(run_dir)
        return refuse(str(e), EXIT_BAD_INPUT, in_sweep)

    active = ActiveRun(cfg=cfg, run_dir=run_dir, in_sweep=in_sweep, resume=resume, data=data, state=None,
                       writer=writer, summary={}, start_epoch=1, wall_before=0.0, wall_start=wall_start)
    try:
        active.state = make_state(cfg, device)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        active.undo_start()
        return refuse(does_not_fit(cfg, f"the memory of {device}", first_line(e)), EXIT_BAD_INPUT, in_sweep)
    machine = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs ({cpu_description()}), "
               f"torch threads {torch.get_num_threads()}")
    if checkpoint is None:
        active.summary = new_summary(cfg, data, device, overrides, run_dir, machine)
    else:
        active.state.load(checkpoint)
        active.summary = continued_summary(run_dir, checkpoint, writer, machine)
        active.start_epoch = checkpoint["epoch"] + 1
    active.summary.update(pid=os.getpid(), host=platform.node(), boot_id=boot_id())  # tells a live run from a killed one
    active.wall_before = active.summary["wall_seconds"]
    return active if first_records(active, checkpoint is None) else None


def first_records(active: ActiveRun, new: bool) -> bool:
    """The epoch-0 checkpoint of a new run and the summary marked running; False (refused in
    one line, the half-made folder taken back) when they cannot be written."""
    from . import tensorboard_events
    from .runs import flatten

    try:
        if new:
            active.save_checkpoint(0, None)
        active.writer.write_summary(active.summary)
    except OSError as e:
        active.undo_start()
        then = f"backprop-lab resume {active.run_dir}" if active.resume else "run it again"
        refuse(cannot_write(active.run_dir, e, then), EXIT_BAD_INPUT, active.in_sweep)
        return False
    log.info("%s: %s", "resumed" if active.resume else "config", active.summary["config"])
    if active.cfg.log.tensorboard:  # a view of the files, for `tensorboard --logdir outputs`
        active.events = tensorboard_events.EventWriter(active.run_dir)
        if new:
            active.events.hparams(flatten(active.summary["config"]))
    return True


def train_epochs(active: ActiveRun, stop: StopRequest) -> int:
    """Step 2: every epoch left, each recorded (checkpoint, metrics, grads, summary) before it is
    shown; the exit code of how training ended, with the summary's status and error set."""
    from .train import Diverged, Stopped, train

    cfg, summary, reporter = active.cfg, active.summary, active.reporter
    try:
        reporter.start(summary)
        reporter.next_epoch = active.start_epoch
        batches = math.ceil(active.data.X_train.shape[0] / cfg.data.batch_size)
        with reporter.progress(summary["epochs_planned"], batches) as on_batch:
            for m in train(cfg, active.data, active.state, on_batch, start_epoch=active.start_epoch,
                           should_stop=stop.requested):
                record_epoch(active, m)
        summary["status"] = "completed"
        return 0
    except Diverged as e:
        return mark_diverged(active, e)
    except (Stopped, KeyboardInterrupt) as e:
        return mark_stopped(active, stop, e)
    except BrokenPipeError:  # `backprop-lab ... | head` (report.OutputConsole has muted stdout): stop as SIGPIPE would
        return mark_broken_pipe(active)
    except OSError as e:
        return active.write_failed(e)
    except Exception as e:  # noqa: BLE001 - recorded, logged with traceback, reported in one line
        log.exception("run failed")
        return mark_failed(active, e)


# How training ended, in the summary (status, error); each returns the run's exit code. A
# vectorised group (group_runner) marks each of its members with the same functions.


def mark_diverged(active: ActiveRun, e: Any) -> int:
    # weights drawn that large (the chapter's scale is 0.01) overflow before any step can
    cfg = active.cfg
    scale = cfg.model.init_scale > 1 and cfg.model.init in ("normal", "uniform")
    active.summary.update(status="diverged", error=f"{e}; try a smaller {'model.init_scale' if scale else 'optim.lr'}",
                          diverged_at=e.record())
    return EXIT_DIVERGED


def mark_stopped(active: ActiveRun, stop: StopRequest, e: BaseException) -> int:
    from .train import Stopped

    summary, signum = active.summary, stop.signum or signal.SIGINT
    where = f" at epoch {e.epoch}, batch {e.batch}" if isinstance(e, Stopped) else ""
    summary.update(status="interrupted", signal=signal.Signals(signum).name,
                   error=f"stopped by {signal.Signals(signum).name}{where}; {saved(summary['epochs_completed'])}; "
                         f"{RESUME_HINT} {active.run_dir}")
    return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


def mark_broken_pipe(active: ActiveRun) -> int:
    summary = active.summary
    summary.update(status="interrupted", signal="SIGPIPE",
                   error=f"standard output was closed (broken pipe); {saved(summary['epochs_completed'])}; "
                         f"{RESUME_HINT} {active.run_dir}")
    return EXIT_SIGPIPE


def mark_failed(active: ActiveRun, e: BaseException) -> int:
    active.summary.update(status="failed", error=f"{type(e).__name__}: {e}")
    return EXIT_FAILED


def record_epoch(active: ActiveRun, m: Any) -> None:
    """One epoch's files, in the order that a kill between any two of them loses nothing; the
    terminal last, so the files are complete whatever the terminal does."""
    from .train import note_dead_layers

    row, summary = m.as_dict(), active.summary
    active.save_checkpoint(m.epoch, row, m.layers)
    active.writer.append(row)
    active.writer.append_layers(m.epoch, m.layers)
    if active.events is not None:
        active.events.epoch(row, m.layers)
    summary.update(epochs_completed=m.epoch, final_test_acc=m.test_acc, final_test_loss=m.test_loss,
                   train_seconds=summary["train_seconds"] + m.seconds, wall_seconds=active.wall_seconds())
    if summary["best_test_acc"] is None or m.test_acc > summary["best_test_acc"]:
        summary.update(best_test_acc=m.test_acc, best_epoch=m.epoch)
    note_dead_layers(summary, m.epoch, m.layers)
    active.writer.write_summary(summary)
    log.info("epoch %s", row)
    active.reporter.epoch(row)


def finish(active: ActiveRun, stop: StopRequest, exit_code: int, previous: dict[int, Any]) -> int:
    """Step 3: a completed run's weights and plots, then the final summary; a second signal
    meanwhile may cost the plots, never the weights or the summary."""
    summary = active.summary
    try:
        if summary["status"] == "completed":
            active.writer.save_weights(active.state.params)
            summary["weights"] = WEIGHTS
            stop.trained = True  # a signal from here on skips the plots at once
            exit_code = write_plots(active, stop, exit_code)
        summary.update(wall_seconds=active.wall_seconds(), finished_at=now())
        active.writer.write_summary(summary)
    except OSError as e:
        exit_code = active.write_failed(e)
    except KeyboardInterrupt:  # a second signal while the weights or the last summary were being written
        name = signal.Signals(stop.signum or signal.SIGINT).name
        summary["signal"] = name  # a sweep stops its later jobs on it
        exit_code = EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
        if summary.get("weights") is None:
            summary.update(status="interrupted", error=f"stopped by {name} while saving the weights; the trained "
                           f"epochs are in the checkpoint; finish with: backprop-lab resume {active.run_dir}")
        if summary["finished_at"] is None:
            summary.update(wall_seconds=active.wall_seconds(), finished_at=now())
        set_handlers(dict.fromkeys(previous, signal.SIG_IGN))  # one more signal must not cut this last write short
        try:
            active.writer.write_summary(summary)
        except OSError as e:
            exit_code = active.write_failed(e)
    return exit_code


def write_plots(active: ActiveRun, stop: StopRequest, exit_code: int) -> int:
    """confusion.csv/.png, errors.png, curves.png: nice to have, never a reason to fail a run."""
    summary = active.summary
    try:
        if stop.requested():
            raise KeyboardInterrupt
        from .analysis import write_reports
        from .runs import load_metrics
        from .train import arch_of

        with quiet_unraisable_interrupts():
            rows, _ = load_metrics(active.run_dir)  # the one reader of metrics.csv; a cut last row is left out
            confusion = write_reports(active.run_dir, arch_of(active.cfg), active.state.params, active.data, rows,
                                      active.pngs, active.predicted)
        active.reporter.confusion(confusion)
    except BrokenPipeError:
        summary["signal"] = "SIGPIPE"
        return EXIT_SIGPIPE
    except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - logged with traceback, reported in one line
        if stop.requested():  # the signal's KeyboardInterrupt, or what a library made of it mid-drawing
            name = signal.Signals(stop.signum).name
            stderr.print(f"[yellow]warning:[/yellow] analysis plots skipped ({name}); the run is complete")
            summary["signal"] = name
            return EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
        if isinstance(e, KeyboardInterrupt):
            raise
        log.warning("analysis plots failed", exc_info=True)
        stderr.print(f"[yellow]warning:[/yellow] could not write the analysis plots: {type(e).__name__}: {e}")
    return exit_code


def report_end(active: ActiveRun, exit_code: int, who: str = "") -> float | None:
    """The summary panel and, for a run that did not complete cleanly, its one error line
    (after `who`: a vectorised group's members all end before their result lines); the final
    test accuracy for the sweeper (None if there is none)."""
    summary = active.summary
    log.info("summary: %s", summary)
    try:
        active.reporter.summary(summary)
    except BrokenPipeError:
        exit_code = exit_code or EXIT_SIGPIPE
    if exit_code:
        if summary["status"] == "completed":  # stopped after training: nothing of the run is missing
            why = "standard output was closed" if exit_code == EXIT_SIGPIPE else f"stopped by {summary['signal']}"
            refuse(f"{who}{why} after training; the run is complete in {active.run_dir} (weights saved), "
                   f"only the analysis plots may be missing", exit_code, active.in_sweep)
        else:
            refuse(who + summary["error"], exit_code, active.in_sweep)
        return None
    acc = summary["final_test_acc"]
    return acc if acc is not None and math.isfinite(acc) else None
