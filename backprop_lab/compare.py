"""`backprop-lab show RUN_DIR` and `backprop-lab compare [PATH ...]`: read saved runs, never retrain.

Both read only what a run wrote (summary.json, metrics.csv, grads.csv, confusion.csv, and
.hydra/config.yaml or the log when those are all a run left), and never import torch, so they
answer in a fraction of a second.

    show     one run's header, per-epoch table, confusion matrix and summary panel, printed by the
             same Reporter calls as during training; then, from grads.csv, a per-layer table of
             |dW| at the first and last epoch, |W| and the update-to-weight ratio at the last
    compare  every run directory under the given paths in one table: the config keys that differ
             between the listed runs (and only those), final and best test accuracy, final test
             loss, epochs, training time, |dW1| (the first layer's gradient norm at the last
             epoch, when a listed run has grads.csv) and status; sorted, filtered, exported,
             plotted: --plot FILE.png draws the test curves, and FILE-grads.png next to it each
             run's per-layer gradient norms over the epochs (log scale, one panel per run)

Broken runs never stop a comparison: each is listed with status `incomplete` (killed: a
`running` summary whose process is gone, or metrics.csv without a summary), `refused` (a sweep
job whose config was rejected: only Hydra's files and the log's error line), or `corrupt`
(unparseable or incomplete files), with a one-line warning on stderr saying what is wrong.
grads.csv and confusion.csv are extras: when one is unreadable, a warning says so and the
rest is shown as usual (the run keeps its status; its |dW1| is `-`, and it has no gradient panel).
Damage that leaves metrics.csv usable is a warning too, and the run keeps its status: a last row
cut off mid-line (the machine lost power while it was written) is left out, and fewer rows than
summary.json's epochs_completed are shown as they are. `show` prints where a moved or copied run
is now, as compare lists it, and the folder it ran in below that; a saved error that names the
folder it ran in (`continue with: backprop-lab resume DIR`) names where it is now, in both.
The sweep callback (sweep.py) uses `collect`, `print_table`, `write_csv` and `write_json` for
its end-of-sweep table and files, so there is one implementation of each.

Left out: metric-threshold filters (`test_acc>0.9`), regex filters, HTML output, and grads.csv's
numbers in the --csv and --json files.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import textwrap
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from .errors import EXIT_BAD_INPUT, EXIT_NO_RUNS, RunError, SubcommandParser, error_line, warning_line
from .report import STATUS_COLOURS, OutputConsole, Reporter, natural_width, plural, print_whole, saved_warnings
from .rundir import CONFUSION_PNG, CURVES_PNG, GRADS, LOG, METRICS, SUMMARY, effective_status
from .runs import (COLUMN_GETTERS, Run, _log_error, as_read_now, by_layer, collect, fewer_epochs, find_run_dirs,
                   is_run_dir, load_confusion, load_layers, load_metrics, load_summary, moved_from, or_newest)

# --- reading one run ---------------------------------------------------------------------


# --- finding runs --------------------------------------------------------------------------


# --- choosing, ordering, describing ----------------------------------------------------------

DESCENDING = {"test_acc", "best_test_acc"}  # higher is better; every other column ascends


def config_keys(runs: Sequence[Run]) -> list[str]:
    """Every config key of the runs, in the order the config lists them."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    return list(keys)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """The config keys whose value is not the same in every listed run that has a config."""
    with_config = [r for r in runs if r.config]
    return [
        key for key in config_keys(with_config)
        if len({json.dumps(_as_number(r.config.get(key, "<missing>")), sort_keys=True) for r in with_config}) > 1
    ]


def _as_number(value: Any) -> Any:
    """A whole float as an int, in lists and dicts too: summary.json writes 100.0 where Hydra's
    config.yaml of the same run says 100, and the two are the same setting. true stays true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_as_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_number(v) for k, v in value.items()}
    return value


def _order(value: Any) -> tuple:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return (0, float(value), ())
    return (1, 0.0, natural(str(value)))


def natural(text: str) -> tuple:
    """A sort key that orders the numbers in text as numbers: job 2 before job 10, [64] before [128]."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def by_date(run: Run) -> tuple:
    """Runs are named by the day and second they started (a sweep's under multirun/, then its job
    number), so the label without `multirun/` orders single runs and sweeps together by date."""
    return natural(run.label.removeprefix("multirun/"))


def sort_runs(runs: list[Run], column: str) -> list[Run]:
    """Sorted by `column`, best first for accuracies; runs without a value always last, and so
    are corrupt runs (their numbers, recovered from metrics.csv, should not top a ranking)."""
    def last(r: Run) -> bool:
        v = r.value(column)
        return v is None or (isinstance(v, float) and math.isnan(v)) or (r.status == "corrupt" and column != "run")

    runs = sorted(runs, key=by_date)  # ties keep chronological order
    if column == "run":
        return runs
    present = [r for r in runs if not last(r)]
    present.sort(key=lambda r: _order(r.value(column)), reverse=column in DESCENDING)
    return present + [r for r in runs if last(r)]


def sort_choices(runs: Sequence[Run]) -> list[str]:
    return list(COLUMN_GETTERS) + config_keys(runs)


FILTER_EXAMPLE = "e.g. model.hidden_size=128 or status=completed"


def parse_filter(text: str, runs: Sequence[Run]) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise RunError(f"--filter expects KEY=VALUE, {FILTER_EXAMPLE}; got {text!r}")
    valid = ["status"] + config_keys(runs)
    if key not in valid:
        raise RunError(f"unknown --filter key {key!r}; choose from: {', '.join(valid)}")
    return key, value.strip()


def matches(run: Run, key: str, wanted: str) -> bool:
    """`wanted` as typed on the command line against the run's value: numbers compare as
    numbers (lr=0.1 matches 0.1 and 1e-1), true/false and null as YAML spells them, and a list
    item by item as YAML (and so Hydra) reads it, so [32,16] matches [32, 16] however spaced."""
    if key != "status" and not run.config:
        return False
    value = run.value(key)
    if _same(value, wanted):
        return True
    # Only for these: YAML's reading of a scalar (yes, 1_0, 0x10) would stray from the rules above.
    return isinstance(value, (list, dict, str)) and _same(value, _yaml(wanted))


def _yaml(text: str) -> Any:
    import yaml  # Hydra's dependency; only needed for lists and quoted text

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _same(value: Any, wanted: Any) -> bool:
    """`value` from a run's config against `wanted`: text, or what YAML read from it."""
    if isinstance(value, list):
        if isinstance(wanted, str):
            return str(value) == wanted  # as the table prints it
        return isinstance(wanted, list) and len(wanted) == len(value) and all(map(_same, value, wanted))
    if isinstance(value, dict):
        if isinstance(wanted, str):
            return str(value) == wanted
        return (isinstance(wanted, dict) and {str(k) for k in wanted} == set(value)
                and all(_same(value[str(k)], v) for k, v in wanted.items()))
    if isinstance(wanted, (list, dict)):
        return False
    text = "null" if wanted is None else str(wanted).lower() if isinstance(wanted, bool) else str(wanted)
    if value is None:
        return text.lower() in ("null", "none", "")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return str(value) == text


def best_per_sweep(runs: Sequence[Run]) -> list[Run]:
    """The run with the highest final test accuracy (ties: best test accuracy) of each sweep;
    a single run is its own group. Corrupt runs and runs without an accuracy are never the best."""
    best: dict[Path, Run] = {}
    for run in runs:
        if run.status == "corrupt" or run.final_test_acc is None or math.isnan(run.final_test_acc):
            continue
        rank = (run.final_test_acc, run.best_test_acc or 0.0)
        held = best.get(run.group)
        if held is None or rank > (held.final_test_acc, held.best_test_acc or 0.0):
            best[run.group] = run
    return [r for r in runs if best.get(r.group) is r]


def describe(run: Run, keys: Sequence[str]) -> str:
    """A run's differing keys as `key=value, ...`, its plot label; the run name if none differ."""
    if not keys or not run.config:
        return run.label
    return ", ".join(f"{k}={_cell(run.config.get(k))}" for k in keys)


# --- rendering and files ---------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"  # norms and ratios span decades: 3 significant digits


def _epochs(run: Run) -> str:
    if run.epochs_completed is None:
        return "-"
    return f"{run.epochs_completed}/{'?' if run.epochs_planned is None else run.epochs_planned}"


def parse_keys(text: str, runs: Sequence[Run]) -> list[str]:
    """--keys a,b: config keys that some listed run has, in the order given; RunError otherwise."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise RunError(f"--keys {text!r} names no key; give config keys separated by commas, {KEYS_EXAMPLE}")
    known = config_keys(runs)
    unknown = [k for k in keys if k not in known]
    if unknown:
        are = "is not a config key" if len(unknown) == 1 else "are not config keys"
        raise RunError(f"--keys {text!r}: {', '.join(unknown)} {are} of these runs; keys: {', '.join(known)}")
    return keys


KEYS_EXAMPLE = "e.g. --keys optim.lr,model.hidden_size"


def empty_option(args: argparse.Namespace) -> str | None:
    """Why an option given an empty value (`--sort "$COLUMN"` with the variable unset) is refused,
    or None: read as if it were left out, it would quietly do something else than was asked."""
    wanted = [("--sort", args.sort, "a column, e.g. --sort test_acc"),
              ("--keys", args.keys, f"config keys separated by commas, {KEYS_EXAMPLE}"),
              *(("--filter", text, f"KEY=VALUE, {FILTER_EXAMPLE}") for text in args.filter),
              ("--csv", args.csv, "a file name, or - for standard output"),
              ("--json", args.json, "a file name, or - for standard output"),
              ("--plot", args.plot, f"a file name, e.g. --plot {CURVES_PNG}"),
              ("--tensorboard", args.tensorboard, "a folder, e.g. --tensorboard tb")]
    return next((f"{flag} is empty ({value!r}); give {what}" for flag, value, what in wanted
                 if value is not None and not value.strip()), None)


# Columns a narrow terminal does without, in this order, before the runs' differing keys go.
OPTIONAL_COLUMNS = ("best acc", "|dW1|", "test loss", "time")


def print_table(console: Console, runs: Sequence[Run], keys: Sequence[str], title: str | None = None,
                chosen: bool = False, hint: str = "choose columns with --keys KEY,KEY") -> None:
    """The comparison table, then one line per run with a note (its error, or what is broken).
    The |dW1| column is there when at least one listed run has grads.csv. The table fits the
    console's width (80 columns on a pipe, as rich counts them): first OPTIONAL_COLUMNS go, then
    differing keys from the last (unless `chosen`), and a line says which were left out."""
    keys, dropped, left_out = list(keys), [], []
    while True:
        table = comparison_table(runs, keys, None, dropped)  # the title wraps, the columns must fit
        if natural_width(console, table) <= console.width:
            table.title = title
            break
        if len(dropped) < len(OPTIONAL_COLUMNS):
            dropped.append(OPTIONAL_COLUMNS[len(dropped)])
        elif keys and not chosen:
            left_out.insert(0, keys.pop())
        else:
            break  # the labels alone are wider: a terminal wraps the lines
    print_whole(console, table)
    if left_out:
        _print_indented(console, f"  {plural(len(left_out), 'differing key')} left out to fit {console.width} "
                                 f"columns: {', '.join(left_out)}; {hint}")
    for run in runs:
        if run.note:
            _print_indented(console, f"  {run.label}: {run.status}: {run.note}")


def _print_indented(console: Console, line: str) -> None:
    """A line under the table, wrapped to the width between words (a path stays whole), its
    continuation lines indented under it: rich would start them at the margin."""
    text = textwrap.fill(line, width=console.width, subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def comparison_table(runs: Sequence[Run], keys: Sequence[str], title: str | None, dropped: Sequence[str]) -> Table:
    grads = any(run.layers for run in runs)
    rows = [
        [
            run.label,
            *(_cell(run.config.get(k)) if run.config else "?" for k in keys),
            _pct(run.final_test_acc),
            "-" if run.best_test_acc is None else f"{run.best_test_acc:.2%} ({run.best_epoch})",
            "-" if run.final_test_loss is None else f"{run.final_test_loss:.4f}",
            _epochs(run),
            "-" if run.train_seconds is None else f"{run.train_seconds:.1f} s",
            *([_sci(run.grad_norm_1)] if grads else []),
            run.status,
        ]
        for run in runs
    ]
    headings = ["run", *keys, "test acc", "best acc", "test loss", "epochs", "time", *(["|dW1|"] if grads else []),
                "status"]
    shown = [i for i, heading in enumerate(headings) if heading not in dropped]
    narrow = bool(dropped)  # no outer padding either
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left", pad_edge=not narrow,
                  collapse_padding=narrow)
    for i in shown:
        table.add_column(headings[i], justify="left" if headings[i] in ("run", "status") else "right", no_wrap=True)
    for run, row in zip(runs, rows):
        colour = STATUS_COLOURS.get(run.status, "red")
        cells = [row[i] for i in shown]
        table.add_row(*cells[:-1], f"[{colour}]{cells[-1]}[/{colour}]")
    return table


RESULT_FIELDS = ["final_test_acc", "best_test_acc", "best_epoch", "final_test_loss",
                 "epochs_completed", "epochs_planned", "train_seconds", "status", "note"]


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v  # strict JSON has no NaN


def records(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [
        {"run": r.label, **{name: _finite(getattr(r, name)) for name in RESULT_FIELDS},
         "run_dir": str(r.path.resolve()), "config": {k: _finite(v) for k, v in r.config.items()}}
        for r in runs
    ]


def _open(dest: str) -> tuple[TextIO, bool]:
    return (sys.stdout, False) if dest == "-" else (open(dest, "w", newline=""), True)


def write_csv(dest: str, runs: Sequence[Run], keys: Sequence[str]) -> None:
    """One row per run: its name, the differing config keys, the results (accuracies as fractions,
    as in metrics.csv), status, note, and the run directory's absolute path."""
    f, close = _open(dest)
    try:
        writer = csv.writer(f)
        writer.writerow(["run", *keys, *RESULT_FIELDS, "run_dir"])
        for rec, run in zip(records(runs), runs):
            config = [rec["config"].get(k) for k in keys]
            writer.writerow([_csv_cell(v) for v in [rec["run"], *config, *(rec[n] for n in RESULT_FIELDS), rec["run_dir"]]])
    finally:
        if close:
            f.close()


def _csv_cell(value: Any) -> Any:
    """As the table and the YAML config spell it: true/false, not Python's True/False; empty for null."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else value


def write_json(dest: str, runs: Sequence[Run], keys: Sequence[str]) -> None:
    """{"differing_keys": [...], "runs": [{run, results..., run_dir, config: {every key}}]}."""
    f, close = _open(dest)
    try:
        json.dump({"differing_keys": list(keys), "runs": records(runs)}, f, indent=2)
        f.write("\n")
    finally:
        if close:
            f.close()


PLOT_SIZE = (10.0, 4.0)  # inches, without the legend; at PLOT_DPI the PNG is 1000 x 400 pixels
CURVES_RUNS_MAX = 10  # lines in one figure: matplotlib has 10 colours; more could not be told apart
LEGEND_WIDTH, LEGEND_ROW_INCHES = 110, 0.2  # characters per legend line at the small font, and its height
PLOT_DPI = 100
GRADS_PANEL = (4.0, 3.0)  # inches per run in the gradient figure
GRADS_COLUMNS_MAX, GRADS_RUNS_MAX = 3, 12  # a 3 x 4 grid at most: more panels would be too small to read
GRADS_TITLE_CHARS = 50  # about what fits across one panel in the small font


def plot_labels(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """describe() of each run, with the run's name added where two runs would read the same."""
    names = [describe(run, keys) for run in runs]
    return [f"{name} ({run.label})" if names.count(name) > 1 else name for run, name in zip(runs, names)]


def write_plot(dest: str, runs: Sequence[Run], keys: Sequence[str]) -> tuple[int, int]:
    """Test accuracy and test loss per epoch, one line per run, for the first CURVES_RUNS_MAX
    listed runs with metrics; returns (runs drawn, runs with metrics)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg)

    with_metrics = [run for run in runs if run.metrics]
    plotted = with_metrics[:CURVES_RUNS_MAX]
    # one legend row per run, wrapped to the figure's width; the figure grows to hold them
    labels = [textwrap.fill(label, LEGEND_WIDTH) for label in plot_labels(plotted, keys)]
    legend_rows = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(PLOT_SIZE[0], PLOT_SIZE[1] + LEGEND_ROW_INCHES * legend_rows), dpi=PLOT_DPI,
                 layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for run, label in zip(plotted, labels):
        epochs = [r["epoch"] for r in run.metrics]
        (line,) = acc_ax.plot(epochs, [100 * r["test_acc"] for r in run.metrics], marker=".", label=label)
        loss_ax.plot(epochs, [r["test_loss"] for r in run.metrics], marker=".", color=line.get_color())
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="test loss", title="test loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if plotted:  # below both plots, so no curve is hidden behind it
        fig.legend(loc="outside lower center", ncols=1, fontsize="small")
    fig.savefig(dest, dpi=PLOT_DPI)
    return len(plotted), len(with_metrics)


def plot_format_problem(dest: str) -> str | None:
    """Why matplotlib would refuse to draw into dest, or None: asked before any file is read or
    written, so a typo in the extension costs nothing. No extension means PNG, as in savefig."""
    from matplotlib.backend_bases import FigureCanvasBase  # only with --plot: the import takes most of a second

    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = Path(dest).suffix.lower().lstrip(".")
    if suffix and suffix not in supported:
        return f"--plot {dest}: matplotlib cannot write .{suffix} files; use one of: {', '.join(supported)}"
    return None


def output_problem(flag: str, dest: str, example: str) -> str | None:
    """Why a file could not be written at dest, or None. Asked before anything is read,
    printed or measured, so that a wrong path costs nothing (bench's figures, or compare's
    table, would otherwise come first and the file fail at the end)."""
    path = Path(dest).expanduser()
    folder = path.resolve().parent
    if path.is_dir():
        return f"{flag} {dest} is a folder; give a file name, e.g. {flag} {path / example}"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        return f"{flag} {dest}: its folder {folder} {what}; give a path in an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        return f"{flag} {dest}: no permission to write there; give a path in a folder you can write to"
    run = next((d for d in (folder, *folder.parents) if is_run_dir(d)), None)
    if run is not None:  # e.g. --csv RUN/metrics.csv would replace the run's own record
        return f"{flag} {dest} is inside the run {run}, whose files are its record; give a path outside it"
    failed = write_fails(path)
    if failed is not None:
        return f"{flag} {dest} cannot be written ({failed}); give a path in a folder you can write to"
    return None


def write_fails(path: Path) -> str | None:
    """Why a file cannot be written at path, found by trying, or None: a file there is opened for
    appending (its content untouched), else one is created and removed again (through a link,
    its target). os.access says yes where writing fails all the same, e.g. in /proc. A pipe or a
    device is left alone: opening it is not a trial (a pipe's reader would see its end)."""
    target = path.resolve()
    try:
        if target.exists():
            if target.is_file():
                with open(target, "ab"):
                    pass
        else:
            with open(target, "xb"):
                pass
            target.unlink()
    except OSError as e:
        return (e.strerror or type(e).__name__).lower()
    return None


def folder_problem(flag: str, dest: str, example: str) -> str | None:
    """Why files could not be written into the folder dest (made if missing), or None; found by
    making a folder in it, or in the nearest folder above it that exists, and removing it again."""
    from .claim import in_the_way, nearest_existing, probe_folder

    path = Path(dest).expanduser().absolute()
    if path.is_file():
        return f"{flag} {dest} is a file; give a folder, e.g. {flag} {example}"
    why = in_the_way(path)
    if why is not None:
        return f"{flag} {dest}: {why}; give a folder, e.g. {flag} {example}"
    existing = nearest_existing(path)
    failed = probe_folder(existing)
    if failed is not None:
        return f"{flag} {dest}: cannot write in {existing} ({failed.lower()}); give a folder you can write to"
    return None


def grads_plot_path(dest: str) -> Path:
    """curves.png -> curves-grads.png, in the same folder (the suffix kept; .png if there is none)."""
    path = Path(dest)
    return path.with_name(f"{path.stem}-grads{path.suffix or '.png'}")


def write_grads_plot(dest: Path, runs: Sequence[Run], keys: Sequence[str]) -> tuple[int, int]:
    """Each layer's gradient norm per epoch on a log scale, one panel per run (the first
    GRADS_RUNS_MAX listed runs that have grads.csv), all panels on one y axis so that runs compare.
    Writes nothing when no run has grads.csv; returns (runs drawn, runs with grads.csv)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg)

    with_grads = [run for run in runs if run.layers]
    drawn = with_grads[:GRADS_RUNS_MAX]
    if not drawn:
        return 0, 0
    ncols = min(GRADS_COLUMNS_MAX, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    fig = Figure(figsize=(GRADS_PANEL[0] * ncols, GRADS_PANEL[1] * nrows), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).flatten()
    for ax, run, label in zip(axes, drawn, plot_labels(drawn, keys)):
        for layer, rows in by_layer(run.layers).items():
            # a log axis cannot show 0, and a diverged run's nan or inf has no place on it
            points = [(r["epoch"], r["grad_norm"]) for r in rows if 0 < r["grad_norm"] < math.inf]
            if points:
                ax.plot(*zip(*points), marker=".", label=f"layer {layer}")
        ax.set_yscale("log")
        ax.set_title(textwrap.fill(label, GRADS_TITLE_CHARS), fontsize="small")  # too long a line is cut off
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize="x-small")
    for ax in axes[::ncols]:
        ax.set_ylabel("|dW| (gradient norm)")
    for ax in axes[len(drawn):]:
        ax.set_axis_off()
    if len(drawn) < len(with_grads):
        fig.suptitle(f"the first {len(drawn)} of {len(with_grads)} listed runs with {GRADS}", fontsize="medium")
    fig.savefig(dest, dpi=PLOT_DPI)
    return len(drawn), len(with_grads)


# --- the commands ----------------------------------------------------------------------------


def outputs_problem(args: argparse.Namespace) -> str | None:
    """The first reason --csv, --json or --plot could not be written, or None."""
    if args.csv == "-" and args.json == "-":  # the two would run together into one stream
        return "--csv - and --json - would both write to standard output; give a file name for one of them"
    problems = [output_problem(flag, dest, example) for flag, dest, example in
                (("--csv", args.csv, "runs.csv"), ("--json", args.json, "runs.json")) if dest and dest != "-"]
    if args.plot:  # the format first: matplotlib would only refuse it at the end
        problems += [plot_format_problem(args.plot), output_problem("--plot", args.plot, CURVES_PNG),
                     output_problem("--plot's gradient figure", str(grads_plot_path(args.plot)), CURVES_PNG)]
    if args.tensorboard:
        problems.append(folder_problem("--tensorboard", args.tensorboard, "tb"))
    return next((problem for problem in problems if problem), None)


def warn_about(runs: Sequence[Run]) -> None:
    """A warning line for each listed run with damaged files, before the table."""
    for run in runs:
        if run.problem:
            warning_line(f"{run.path}: {run.note}; listed as {run.status}")
        if run.layers_error:
            warning_line(f"{run.path}: {run.layers_error}; listed without its |dW1|")
        for message in run.metrics_warnings:
            warning_line(f"{run.path}: {message}")


def write_outputs(args: Any, runs: Sequence[Run], keys: Sequence[str], to_stdout: bool) -> int:
    """--csv, --json, --tensorboard and --plot for the listed runs; the exit code."""
    dest = None  # the one being written, for an error without a file name (a full disk's)
    try:
        if args.csv:
            dest = args.csv
            write_csv(args.csv, runs, keys)
        if args.json:
            dest = args.json
            write_json(args.json, runs, keys)
        if args.tensorboard:
            dest = args.tensorboard
            export_tensorboard(Path(args.tensorboard), runs, to_stdout)
        if args.plot:
            dest = args.plot
            drawn, with_metrics = write_plot(args.plot, runs, keys)
            if not drawn:
                warning_line(f"no listed run has per-epoch metrics; {args.plot} has empty axes")
            elif drawn < with_metrics:
                warning_line(f"{args.plot} draws the first {drawn} of the {with_metrics} listed runs (more lines "
                             f"could not be told apart); choose which with --sort, --top or --filter")
            dest = grads_dest = grads_plot_path(args.plot)
            drawn, with_grads = write_grads_plot(grads_dest, runs, keys)
            if drawn:
                left_out = f" (the first {drawn} of {with_grads} runs with {GRADS})" if drawn < with_grads else ""
                Console(stderr=to_stdout).print(f"gradient norms per layer: {grads_dest}{left_out}",
                                                highlight=False, soft_wrap=True, markup=False)
    except BrokenPipeError:  # `--csv - | head`: ended as a closed pipe ends any command (cli.main)
        raise
    except OSError as e:
        error_line(f"cannot write {e.filename or dest}: {e.strerror or e}")
        return EXIT_BAD_INPUT
    return 0


def compare_main(argv: list[str]) -> int:
    parser = SubcommandParser(
        prog="backprop-lab compare",
        description="Compare saved runs: every run directory under PATH, in one table. Reads files only.",
        epilog="Columns for --sort: run, test_acc, best_test_acc, test_loss, epochs, time, grad_norm_1, status, "
               "or any config key such as optim.lr. Example: backprop-lab compare outputs/ --sort test_acc --top 3",
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="folders to search (default: outputs); latest: the newest run under outputs")
    parser.add_argument("--sort", metavar="COLUMN",
                        help="accuracies sort best first, everything else ascending (default: run, i.e. by date; "
                             "with --top: test_acc)")
    parser.add_argument("--top", metavar="N", type=_positive_int,
                        help="keep the first N after sorting: the best N by test accuracy unless --sort says otherwise")
    parser.add_argument("--keys", metavar="KEY,KEY",
                        help="the config keys to show as columns (default: those that differ between the runs)")
    parser.add_argument("--filter", metavar="KEY=VALUE", action="append", default=[],
                        help="keep runs whose config key (or status) has this value; repeatable, all must match")
    parser.add_argument("--best", action="store_true", help="only the best run (final test acc) of each sweep")
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV ('-' for stdout)")
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON ('-' for stdout)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="test accuracy and loss per epoch of the listed runs; with grads.csv, also "
                             "FILE-grads.png: each layer's gradient norm per epoch, one panel per run")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write the listed runs' per-epoch scalars and hyperparameters as TensorBoard "
                             "events, one subfolder of DIR per run (replaced when exported again)")
    args = parser.parse_args(argv)
    problem = empty_option(args) or outputs_problem(args)
    if problem:
        error_line(problem)
        return EXIT_BAD_INPUT
    if args.tensorboard:
        from .tensorboard_events import TensorBoardMissing, require

        try:
            require()
        except TensorBoardMissing as e:
            error_line(f"--tensorboard: {e}")
            return EXIT_BAD_INPUT

    try:
        roots = [or_newest(p) for p in args.paths] or [Path("outputs")]
        runs = collect(roots)
        if not runs:
            error_line(f"no runs found under {', '.join(map(str, roots))} (a run directory holds {SUMMARY})")
            return EXIT_NO_RUNS
        args.sort = args.sort or ("test_acc" if args.top else "run")
        choices = sort_choices(runs)
        if args.sort not in choices:
            raise RunError(f"unknown --sort column {args.sort!r}; choose from: {', '.join(choices)}")
        filters = [parse_filter(f, runs) for f in args.filter]
        chosen = parse_keys(args.keys, runs) if args.keys is not None else None
    except RunError as e:
        error_line(str(e))
        return EXIT_BAD_INPUT

    found = len(runs)
    warn_about(runs)
    runs = [r for r in runs if all(matches(r, key, value) for key, value in filters)]
    if args.best:
        runs = best_per_sweep(runs)
    matched = len(runs)
    runs = sort_runs(runs, args.sort)[: args.top]
    if not runs:
        error_line(f"no runs match {' '.join(args.filter) or '--best'} ({plural(found, 'run')} found)")
        return EXIT_NO_RUNS

    keys = chosen if chosen is not None else differing_keys(runs)
    to_stdout = "-" in (args.csv, args.json)
    if not to_stdout:  # the table would break a CSV or JSON stream on stdout
        counted = f"{len(runs)} of {plural(matched, 'run')}" if len(runs) < matched else plural(len(runs), "run")
        title = f"{counted} under {', '.join(map(str, roots))}"
        # the key the runs are sorted by goes first, so a narrow terminal leaves it out last
        shown = [args.sort, *(k for k in keys if k != args.sort)] if args.sort in keys and chosen is None else keys
        print_table(OutputConsole(), runs, shown, title=title + (f", sorted by {args.sort}" if args.sort != "run" else ""),
                    chosen=chosen is not None)
    return write_outputs(args, runs, keys, to_stdout)


def tensorboard_subfolder(label: str) -> str:
    """A run's folder under --tensorboard's DIR: its label (its path, as the table shows it),
    kept inside DIR: a leading '/' and '..' parts dropped."""
    parts = [p for p in PurePosixPath(label).parts if p not in ("/", "..", ".")]
    return "/".join(parts) or "run"


def export_tensorboard(dest: Path, runs: Sequence[Run], to_stdout: bool) -> None:
    """Each listed run's events into dest/<its label>, as far as its metrics.csv goes; a run
    without readable per-epoch metrics is skipped with a line saying why. OSError if dest cannot
    be written."""
    from .tensorboard_events import export_run

    exported = 0
    for run in runs:
        if not run.metrics:
            why = run.note if run.metrics is None and run.note else f"no epochs in {METRICS}"
            warning_line(f"{run.path}: not exported to TensorBoard: {why}")
            continue
        export_run(dest / tensorboard_subfolder(run.label), run.config, run.status, run.metrics,
                   [] if run.layers_error else run.layers)
        exported += 1
    Console(stderr=to_stdout).print(f"TensorBoard: {plural(exported, 'run')} in {dest}; view them with: "
                                    f"tensorboard --logdir {dest}", highlight=False, soft_wrap=True, markup=False)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def show_main(argv: list[str]) -> int:
    parser = SubcommandParser(
        prog="backprop-lab show",
        description="Print a saved run's header, per-epoch table, confusion matrix and summary, as training "
                    "printed them, then its per-layer gradient statistics.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory; latest: the newest run under outputs")
    parser.add_argument("--plot", action="store_true",
                        help="(re)draw RUN_DIR/curves.png and confusion.png from metrics.csv and confusion.csv")
    args = parser.parse_args(argv)
    try:
        args.run_dir = or_newest(args.run_dir)
        summary, rows, warnings = load_for_show(args.run_dir)
        conf = _extra(load_confusion, args.run_dir)
        if args.plot:  # the two PNGs the files hold all of: a vectorised sweep's members draw none
            from .analysis import plot_confusion, plot_curves

            plot_curves(args.run_dir / CURVES_PNG, rows, (summary.get("config") or {}).get("loss", "cross_entropy"))
            if conf is not None:
                plot_confusion(args.run_dir / CONFUSION_PNG, conf)
    except RunError as e:
        error_line(str(e))
        return EXIT_BAD_INPUT
    except OSError as e:
        error_line(f"cannot write {e.filename or args.run_dir / CURVES_PNG}: {e.strerror or e}")
        return EXIT_BAD_INPUT
    for message in warnings:
        warning_line(f"{args.run_dir}: {message}")
    recorded = moved_from(summary, args.run_dir)
    if recorded:  # the header and the panel say where the run is now, so that its paths can be used
        summary = {**summary, "run_dir": str(args.run_dir.resolve()),
                   "error": summary.get("error") and as_read_now(str(summary["error"]), recorded, args.run_dir),
                   "warnings": [as_read_now(w, recorded, args.run_dir) for w in saved_warnings(summary)]}
    reporter = Reporter(OutputConsole())
    reporter.start(summary)
    if recorded:
        reporter.console.print(f"  ran in {recorded} (moved or copied here since)", highlight=False, markup=False)
    if rows:
        reporter.table(rows)
        reporter.console.print()  # training's progress bar leaves this line between table and panel
    if conf is not None:
        reporter.confusion(conf)
    reporter.summary(summary, status=effective_status(summary))
    layers = _extra(load_layers, args.run_dir)
    if layers:  # not printed during training: it comes after what training printed
        reporter.console.print()
        reporter.console.print(layer_table(layers))
    if args.plot:
        reporter.console.print(f"learning curves: {args.run_dir / CURVES_PNG}")
        if conf is not None:  # drawn now; not a file left from before when confusion.csv could not be read
            reporter.console.print(f"confusion matrix: {args.run_dir / CONFUSION_PNG}")
    return 0


def _extra(load: Callable[[Path], Any], run_dir: Path) -> Any:
    """An optional file (grads.csv, confusion.csv): None and a warning when it cannot be read."""
    try:
        return load(run_dir)
    except RunError as e:
        warning_line(f"{run_dir}: {e}; left out")
        return None


def layer_table(rows: Sequence[dict[str, float]]) -> Table:
    """One row per layer from grads.csv: |dW| at the first and last epoch, then |W| and
    lr * |update| / |W| at the last (all measured on training's fixed probe batch)."""
    layers = by_layer(rows)
    first = min(epochs[0]["epoch"] for epochs in layers.values())
    last = max(epochs[-1]["epoch"] for epochs in layers.values())
    table = Table(title="per-layer gradients (fixed probe batch of training images)",
                  title_justify="left", header_style="bold")
    table.add_column("layer", justify="right")
    headings = [f"|dW| epoch {first:.0f}", f"|dW| epoch {last:.0f}", f"|W| epoch {last:.0f}",
                f"update/|W| epoch {last:.0f}"]
    for heading in headings if first != last else headings[1:]:
        table.add_column(heading, justify="right", no_wrap=True)
    for layer, epochs in layers.items():
        at_first = next((r for r in epochs if r["epoch"] == first), None)
        at_last = epochs[-1] if epochs[-1]["epoch"] == last else None  # None: a layer missing from an epoch
        cells = [_sci(at_last and at_last[k]) for k in ("grad_norm", "weight_norm", "update_ratio")]
        if first != last:
            cells.insert(0, _sci(at_first and at_first["grad_norm"]))
        table.add_row(str(layer), *cells)
    return table


def load_for_show(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, float]], list[str]]:
    """summary.json and metrics.csv's rows, and warnings about damage that leaves them usable;
    RunError, one line, when the run cannot be shown."""
    if not run_dir.exists():
        raise RunError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory")
    if not (run_dir / SUMMARY).is_file():
        if (run_dir / METRICS).is_file():
            raise RunError(f"{run_dir} has {METRICS} but no {SUMMARY} (the run stopped before writing it); "
                           f"`backprop-lab compare {run_dir}` lists what it has")
        if is_run_dir(run_dir):  # Hydra's files only: a sweep job refused before it trained
            why = _log_error(run_dir)
            raise RunError(f"{run_dir} holds no results: its run was refused before it started"
                           + (f" ({why})" if why else f"; see {run_dir / LOG}"))
        inside = find_run_dirs(run_dir)
        hint = f"; it holds {plural(len(inside), 'run')}: try `backprop-lab compare {run_dir}`" if inside else ""
        raise RunError(f"{run_dir} is not a run directory (no {SUMMARY}){hint}")
    try:
        summary = load_summary(run_dir)
        rows, cut = load_metrics(run_dir) if (run_dir / METRICS).exists() else ([], None)
    except RunError as e:
        raise RunError(f"{run_dir}: {e}") from None
    if not (run_dir / METRICS).exists() and summary["epochs_completed"]:
        raise RunError(f"{run_dir}: {METRICS} is missing, but {SUMMARY} records "
                       f"{plural(summary['epochs_completed'], 'epoch')}")
    warnings = [f"{cut}; shown without it"] if cut else []
    short = fewer_epochs(len(rows) + bool(cut), summary)
    if short:
        warnings.append(f"{short}; the per-epoch table shows {'that one' if len(rows) == 1 else f'those {len(rows)}'}"
                        if rows else
                        f"{short}; shown without the per-epoch table")
    return summary, rows, warnings
