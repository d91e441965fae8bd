"""Terminal rendering with rich: a progress bar per epoch, one table row per epoch, a summary.

The reporter only renders records it is given; it computes nothing and writes no files.
`COLUMNS` lists the per-epoch columns of the table and metrics.csv, in the order of
train.EpochMetrics's fields (as_dict), which the tests hold equal.
"""

from __future__ import annotations

import errno
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import to_devnull

# (key in records and metrics.csv, table heading, format)
COLUMNS: list[tuple[str, str, str]] = [
    ("epoch", "epoch", "{:.0f}"),
    ("train_loss", "train loss", "loss"),
    ("train_acc", "train acc", "{:.2%}"),
    ("test_loss", "test loss", "loss"),
    ("test_acc", "test acc", "{:.2%}"),
    ("seconds", "seconds", "{:.2f}"),
    ("samples_per_s", "samples/s", "{:,.0f}"),
]
COLUMN_KEYS = [key for key, _, _ in COLUMNS]
# A run's status as the summary panel and compare's table colour it; any other (failed, diverged, ...) is red.
STATUS_COLOURS = {"completed": "green", "running": "cyan", "interrupted": "yellow", "incomplete": "yellow",
                  "not started": "dim"}
WIDTH = 11


def plural(n: int, noun: str) -> str:
    """'1 run', '2 runs': every count printed here takes a regular plural."""
    return f"{n:,} {noun}{'s' * (n != 1)}"


def format_loss(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.3e}"  # a diverging loss still fits its column


def format_row(row: dict[str, float]) -> list[str]:
    return [format_loss(row[key]) if fmt == "loss" else fmt.format(row[key]) for key, _, fmt in COLUMNS]


def epoch_table(rows: Sequence[dict[str, float]], header: bool) -> Table:
    """Fixed-width columns, so rows printed one at a time line up under one header."""
    table = Table(show_header=header, box=None, pad_edge=False, header_style="bold")
    for _, heading, _ in COLUMNS:
        table.add_column(heading, justify="right", width=WIDTH, no_wrap=True)
    for row in rows:
        table.add_row(*format_row(row))
    return table


MemberRow = tuple[str, dict[str, str], "dict[str, float] | str"]  # job, its varied values, metrics or its rule


def members_table(keys: Sequence[str], rows: Sequence[MemberRow], short: bool = False) -> Table:
    """A vectorised group's epoch, one row per member: its job, a column for each key the sweep
    varies (as the sweep's table has them), then its metrics, or "diverged" and the rule.
    `short` heads each key by its last part (optim.lr -> lr), for a narrow terminal."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("job", no_wrap=True)
    for key in keys:
        table.add_column(key.rsplit(".", 1)[-1] if short else key, justify="right", no_wrap=True)
    shown = [(key, heading, fmt) for key, heading, fmt in COLUMNS if key in ("train_loss", "train_acc", "test_loss",
                                                                              "test_acc")]
    for _, heading, _ in shown:
        table.add_column(heading, justify="right", no_wrap=True)
    for job, values, row in rows:
        cells = [values.get(key, "") for key in keys]
        if isinstance(row, str):
            table.add_row(job, *cells, "diverged", row, "", "")
        else:
            table.add_row(job, *cells, *(format_loss(row[k]) if f == "loss" else f.format(row[k]) for k, _, f in shown))
    return table


def fitting_members_table(console: Console, keys: Sequence[str], rows: Sequence[MemberRow]) -> tuple[Table, list[str]]:
    """members_table as wide as the console allows, and the keys it left out: keys headed in full,
    else by their last parts (where those are distinct), else the last keys left out."""
    short_names = [key.rsplit(".", 1)[-1] for key in keys]
    short = len(set(short_names)) == len(short_names)
    for form in dict.fromkeys([False, short]):
        table = members_table(keys, rows, form)
        if natural_width(console, table) <= console.width:
            return table, []
    kept = list(keys)
    while kept:
        kept.pop()
        table = members_table(kept, rows, short)
        if natural_width(console, table) <= console.width:
            break
    return table, list(keys[len(kept):])


def describe_config(cfg: dict[str, Any]) -> str:
    """e.g. '784-128-10, lr 0.1, batch 64, 20 epochs': the model and its training in one line,
    from a saved config (keys added after a run was made take their defaults)."""
    model, optim, data, train = (cfg.get(k, {}) for k in ("model", "optim", "data", "train"))
    hidden = model.get("hidden_sizes") or [model.get("hidden_size", 128)]
    sizes = [data.get("image_size", 28) ** 2, *hidden, 10]
    activation = model.get("activation", "relu")
    parts = ["-".join(map(str, sizes)) + ("" if activation == "relu" else f" {activation}")]
    if model.get("batch_norm"):
        parts.append("batch norm")
    if model.get("dropout"):
        parts.append(f"dropout {model['dropout']:g}")
    if model.get("output", "softmax") != "softmax" or cfg.get("loss", "cross_entropy") != "cross_entropy":
        parts.append(f"{model.get('output')} + {cfg.get('loss')}")
    parts.append(f"lr {optim.get('lr', 0.1):g}")
    if optim.get("momentum"):
        parts.append(f"momentum {optim['momentum']:g}" + (" (Nesterov)" if optim.get("nesterov") else ""))
    if optim.get("weight_decay"):
        parts.append(f"weight decay {optim['weight_decay']:g}")
    parts.append(f"batch {data.get('batch_size', 64)}")
    steps, epochs = train.get("steps"), train.get("epochs", 20)
    parts.append(plural(steps, "step") if steps else plural(epochs, "epoch"))
    return ", ".join(parts)


class OutputConsole(Console):
    """Rich's Console, except when the reader of stdout goes away (`backprop-lab | head`):
    rich then exits the process (SystemExit 1) in the middle of whatever it was printing;
    this one stops printing and raises BrokenPipeError, so the run can record how it ended
    and every command ends as a closed pipe ends it (cli.main: exit 141, no message)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        to_devnull(sys.stdout)
        raise BrokenPipeError(errno.EPIPE, "standard output was closed")

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Text is never broken at a pipe's default 80 columns: a line stays one line for grep and
        for files (a terminal still wraps it at its width); tables and panels render as ever."""
        if not self.is_terminal and objects and all(isinstance(o, str) for o in objects):
            kwargs.setdefault("soft_wrap", True)
        super().print(*objects, **kwargs)


def natural_width(console: Console, table: Table) -> int:
    """The columns a table takes with every cell whole, whatever the console's width."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def fitting(console: Console, build: Callable[[bool], Table]) -> Table:
    """build(False), or build(True), its compact form (no vertical lines, short headings), when the
    first is wider than the console (a pipe's 80 columns included)."""
    table = build(False)
    if natural_width(console, table) > console.width:
        table = build(True)
    return table


def print_whole(console: Console, table: Table) -> None:
    """Print a table with every cell in full, whatever the width of the output: rich would cut
    the last columns short to fit a narrow window, or a pipe's default 80 columns, without a
    word. A terminal narrower than the table wraps its lines instead."""
    width, title = console.width, table.title
    table.title = None  # measured without it: a long title wraps to the columns' width, it never widens them
    needed = natural_width(console, table)
    table.title = title
    console.width = max(width, needed)
    try:
        console.print(table, highlight=False)
    finally:
        console.width = width


class Reporter:
    """What a run shows on the terminal. `quiet` (a sweep's job): nothing but the progress bar,
    and that only with `progress`; the files hold the rest."""

    def __init__(self, console: Console | None = None, quiet: bool = False, progress: bool = True):
        self.console = console or OutputConsole()
        self.quiet, self.show_progress = quiet, progress
        self.header_printed = False
        self.next_epoch = 1  # for the progress bar's label

    def start(self, summary: dict[str, Any]) -> None:
        """The run's header, from its summary record (so `show` can print it again)."""
        if self.quiet:
            return
        self.console.print(f"[bold]backprop-lab: {describe_config(summary['config'])}[/bold]", highlight=False)
        self.console.print(
            f"  device {summary['device']}, seed {summary['seed']}, "
            + plural(summary["data"]["train_size"], "training image"),
            highlight=False,
        )
        self.console.print(f"  run directory {summary['run_dir']}", highlight=False)

    @contextmanager
    def progress(self, epochs: int, batches: int | None = None) -> Iterator[Any]:
        """Yield an on_batch(done, total, loss) callback that drives a transient progress bar;
        `batches` per epoch, if known, shows the bar's length before the first report."""
        if not self.show_progress or (self.quiet and not self.console.is_terminal):  # a log file gets no bar
            yield None
            return
        bar = Progress(
            TextColumn("epoch {task.fields[epoch]}/" + str(epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        task = bar.add_task("train", total=batches, epoch=self.next_epoch, loss="-")  # no loss until the first report

        def on_batch(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, epoch=self.next_epoch, loss=f"{loss:.4f}")

        with bar:
            yield on_batch

    def epoch(self, row: dict[str, float]) -> None:
        self.next_epoch = int(row["epoch"]) + 1
        if self.quiet:
            return
        self.console.print(epoch_table([row], header=not self.header_printed))
        self.header_printed = True

    def table(self, rows: Sequence[dict[str, float]]) -> None:
        self.console.print(epoch_table(rows, header=True))

    def confusion(self, conf: Any) -> None:
        """The test set's confusion matrix (analysis.Confusion) as a rich table."""
        if self.quiet:
            return
        from .views import confusion_table

        title = "confusion matrix (test set): rows true digit, columns predicted"
        table = fitting(self.console, lambda compact: confusion_table(conf, title=title, compact=compact))
        self.console.print()
        print_whole(self.console, table)

    def summary(self, summary: dict[str, Any], status: str | None = None) -> None:
        if self.quiet:
            return
        status = status or summary["status"]
        colour = STATUS_COLOURS.get(status, "red")
        lines = [f"status            [{colour}]{status}[/{colour}]"]
        if summary.get("final_test_acc") is not None:
            lines += [
                f"final test acc    {summary['final_test_acc']:.2%}",
                f"best test acc     {summary['best_test_acc']:.2%} (epoch {summary['best_epoch']})",
            ]
        lines += [
            f"epochs            {summary['epochs_completed']}/{summary['epochs_planned']}",
            f"training time     {summary['train_seconds']:.1f} s (wall {summary['wall_seconds']:.1f} s)",
            f"run directory     {summary['run_dir']}",
        ]
        if summary.get("error"):
            lines.append(f"error             {summary['error']}")
        lines += [f"warning           {w}" for w in saved_warnings(summary)]
        self.console.print(Panel("\n".join(lines), title="summary", expand=False, highlight=False))


def saved_warnings(summary: dict[str, Any]) -> list[str]:
    """summary.json's warnings as lines: a list as the run wrote it, or one string (a hand edit),
    which is one warning, not one per character."""
    warnings = summary.get("warnings")
    if not warnings:
        return []
    return [str(w) for w in warnings] if isinstance(warnings, list) else [str(warnings)]
