"""A vectorised sweep's group of jobs, run as one: each member's run directory is started,
recorded and finished by the runner's own steps (start, record_epoch, finish, report_end), as a
basic job's is, so every member's folder holds the same files; the training in between is done
once for all members by members.Group.

What differs from a basic job: the data is loaded once for the group; members resumed from
different epochs train as separate sub-groups, one after another; one Ctrl-C or SIGTERM stops
every member after the current batch (each keeps its last epoch's checkpoint and is marked
`interrupted`); each member's log lines go to its own log file; one progress bar shows the
group's mean loss. A member's PNG plots are drawn only with `pngs` (hydra.launcher.plots=true):
drawing three figures per member (~0.5 s each) would cost a group of 16 about as much as its training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import log
from .rundir import LOG
from .runner import (ActiveRun, StopRequest, finish, mark_broken_pipe, mark_diverged, mark_failed, mark_stopped,
                     record_epoch, report_end, set_handlers, start)
from .sweep import Pending, job_score


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format, as a basic job's


class MemberLogs:
    """Each member's log file, switched in while the group works on that member: the logging
    module has one root logger, and a member's lines belong in its own folder."""

    def __init__(self) -> None:
        self.handlers: dict[Path, logging.Handler] = {}

    @contextlib.contextmanager
    def of(self, run_dir: Path) -> Iterator[None]:
        root = logging.getLogger()
        handler = self.handlers.get(run_dir)
        if handler is None:
            handler = logging.FileHandler(run_dir / LOG, delay=True)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            self.handlers[run_dir] = handler
        saved, root.handlers = root.handlers, [handler]
        try:
            yield
        finally:
            root.handlers = saved

    def close(self) -> None:
        for handler in self.handlers.values():
            handler.close()


def run_group(pending: Sequence[Pending], pngs: bool = False, progress: bool = True) -> list[float]:
    """Train the pending jobs (one group: members.group_key equal) as one model; each job's score
    for the sweeper, in order. A job refused at its start is reported and scored as in a basic sweep."""
    from .report import Reporter

    wall_start = time.perf_counter()
    logging.raiseExceptions = False  # as runner.run: a full disk is one line, not logging's tracebacks
    logs, actives, data = MemberLogs(), {}, None
    for i, p in enumerate(pending):
        with logs.of(p.job.run_dir):
            active = start(p.cfg, p.job.run_dir, p.overrides, True, p.resume, wall_start, data=data)
        if active is not None:
            data = active.data  # the first member's load serves the group
            # each member's own tables would be K tables an epoch: a verbose sweep gets one table per epoch instead
            active.reporter, active.pngs = Reporter(quiet=True, progress=False), pngs
            actives[i] = active
    for active in actives.values():  # what trained it, for the one who reads the folder later
        active.summary["vectorized"] = {"members": len(actives)}
    early = signal.getsignal(signal.SIGINT)  # main's, which noted any signal while the group was starting
    stop = StopRequest(signum=early.signum if isinstance(early, StopRequest) else None)
    previous = set_handlers({signal.SIGINT: stop, signal.SIGTERM: stop})
    codes: dict[int, int] = {}
    try:
        labels = {i: member_label(pending[i]) for i in actives} if pending and pending[0].job.opts["verbose"] is True \
            else None
        codes.update(train_by_start(actives, stop, logs, progress, labels))
        for i, active in actives.items():
            with logs.of(active.run_dir):
                codes[i] = finish(active, stop, codes[i], previous)
    finally:
        for active in actives.values():
            if active.events is not None:
                active.events.close()
        set_handlers(previous)
    scores = []
    for i, p in enumerate(pending):
        acc = None
        if i in actives:
            with logs.of(p.job.run_dir):
                acc = report_end(actives[i], codes[i], who=f"{p.job.what}: ")
        scores.append(job_score(p.job, acc))
    logs.close()
    return scores


def member_label(p: Pending) -> tuple[str, dict[str, str]]:
    """e.g. ('3', {'optim.lr': '0.2', 'seed': '1'}): the job's folder and the overrides it varies,
    as the user would type them."""
    from .sweep import fixed_overrides, shown_words, varied

    words = shown_words(varied(p.overrides, fixed_overrides(p.job.sweep_dir)))
    return p.job.run_dir.name, dict(word.split("=", 1) for word in words if "=" in word)


def train_by_start(actives: dict[int, ActiveRun], stop: StopRequest, logs: MemberLogs, progress: bool,
                   labels: dict[int, tuple[str, dict[str, str]]] | None = None) -> dict[int, int]:
    """Members resumed from different epochs: one group per starting epoch, earliest first (a
    group's members step through the same epochs); each member's exit code."""
    codes: dict[int, int] = {}
    for epoch in sorted({a.start_epoch for a in actives.values()}):
        part = {i: a for i, a in actives.items() if a.start_epoch == epoch}
        if stop.requested():  # stopped during an earlier part: these members keep their checkpoints untouched
            codes.update({i: mark_stopped(a, stop, KeyboardInterrupt()) for i, a in part.items()})
            continue
        codes.update(train_members(part, stop, logs, progress, labels))
    return codes


def train_members(actives: dict[int, ActiveRun], stop: StopRequest, logs: MemberLogs, progress: bool,
                  labels: dict[int, tuple[str, dict[str, str]]] | None = None) -> dict[int, int]:
    """Train members that start at the same epoch as one members.Group, each epoch recorded in each
    member's folder as runner.record_epoch records a run's; each member's exit code, its summary's
    status and error set as runner.train_epochs sets a run's. With `labels` (a verbose sweep), a
    table of the members after each epoch."""
    from .members import Group
    from .report import Reporter
    from .train import Diverged, Stopped

    keys = list(actives)
    first = actives[keys[0]]
    group = Group([actives[i].cfg for i in keys], first.data, [actives[i].state for i in keys])
    reporter = Reporter(quiet=True, progress=progress)
    reporter.next_epoch = first.start_epoch
    codes: dict[int, int] = {}
    for active in actives.values():
        active.reporter.start(active.summary)
    try:
        batches = math.ceil(first.data.X_train.shape[0] / first.cfg.data.batch_size)
        with reporter.progress(first.summary["epochs_planned"], batches) as on_batch:
            for found in group.epochs(on_batch, start_epoch=first.start_epoch, should_stop=stop.requested):
                for k, m in found.items():
                    i = keys[k]
                    with logs.of(actives[i].run_dir):
                        if isinstance(m, Diverged):
                            codes[i] = mark_diverged(actives[i], m)
                            continue
                        try:
                            record_epoch(actives[i], m)
                        except OSError as e:  # this member's folder: it stops, the others go on
                            codes[i] = actives[i].write_failed(e)
                            group.drop(k)
                if labels is not None:
                    show_epoch(reporter, labels, keys, found, first.summary["epochs_planned"])
                reporter.next_epoch += 1
        for k, i in enumerate(keys):
            if i not in codes:
                actives[i].summary["status"] = "completed"
                actives[i].predicted = group.test_predictions(k)  # its confusion matrix without another forward pass
                codes[i] = 0
    except (Stopped, KeyboardInterrupt) as e:
        codes.update({i: mark_stopped(actives[i], stop, e) for i in keys if i not in codes})
    except BrokenPipeError:
        codes.update({i: mark_broken_pipe(actives[i]) for i in keys if i not in codes})
    except Exception as e:  # noqa: BLE001 - recorded, logged with traceback (in each member's log), one line each
        for i in keys:
            if i not in codes:
                with logs.of(actives[i].run_dir):
                    log.exception("group failed")
                codes[i] = mark_failed(actives[i], e)
    return codes


def show_epoch(reporter: Any, labels: dict[int, tuple[str, dict[str, str]]], keys: list[int], found: dict[int, Any],
               planned: int) -> None:
    """The members' epoch as one table: a column for each key their sweep varies."""
    from .report import fitting_members_table, plural, print_whole
    from .train import Diverged

    rows = [(*labels[keys[k]], m.rule if isinstance(m, Diverged) else m.as_dict()) for k, m in sorted(found.items())]
    console = reporter.console
    table, left_out = fitting_members_table(console, telling_keys([values for _, values, _ in rows]), rows)
    title = f"epoch {reporter.next_epoch}/{planned}: {plural(len(rows), 'member')}"
    console.print(title + (f" ({', '.join(left_out)} left out to fit {console.width} columns)" if left_out else ""),
                  markup=False, highlight=False)
    print_whole(console, table)


def telling_keys(labels: list[dict[str, str]]) -> list[str]:
    """The keys these members differ in, in the sweep's order: one the sweep varies across groups
    only (a hidden size) is the same in every row of a group, and would take the place, in a
    narrow terminal, of one that tells its rows apart."""
    keys = list(dict.fromkeys(key for values in labels for key in values))
    return [key for key in keys if len({values.get(key) for values in labels}) > 1] or keys
