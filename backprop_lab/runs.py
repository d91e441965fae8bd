"""Saved runs read back: summary.json, metrics.csv, grads.csv and confusion.csv, each by one reader
that checks what it reads and says in one line what is wrong; a run directory as a `Run`; which
folders are runs and sweeps. `compare`, `show`, `resume` and the sweep report read through here."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .analysis import Confusion, from_counts
from .config import N_TRAIN, dotted, planned_epochs, with_defaults
from .errors import RunError
from .report import COLUMN_KEYS, plural, saved_warnings
from .rundir import (CHECKPOINT, CONFUSION_CSV, GRADS, GRADS_COLUMNS_BEFORE_DEAD, LOG, METRICS, RESUME_HINT,
                     STATUSES, SUMMARY, SWEEP_MARKS, RunDirError, checkpoint_looks_whole, effective_status, load_checkpoint,
                     read_summary)

# Fields the header and the summary panel print: (dotted path in summary.json, allowed types).
NUMBER, INT, TEXT, OPTIONAL_NUMBER, OPTIONAL_INT = (int, float), (int,), (str,), (int, float, type(None)), (int, type(None))


SHOW_FIELDS: list[tuple[str, tuple[type, ...]]] = [
    ("status", TEXT),
    ("config.model.hidden_size", INT),
    ("config.optim.lr", NUMBER),
    ("config.data.batch_size", INT),
    ("config.train.epochs", INT),
    ("device", TEXT),
    ("seed", INT),
    ("data.train_size", INT),
    ("run_dir", TEXT),
    ("final_test_acc", OPTIONAL_NUMBER),
    ("best_test_acc", OPTIONAL_NUMBER),
    ("best_epoch", OPTIONAL_INT),
    ("epochs_completed", INT),
    ("epochs_planned", INT),
    ("train_seconds", NUMBER),
    ("wall_seconds", NUMBER),
]


def load_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json, checked to hold every field show and compare print, or RunError."""
    try:
        summary = read_summary(run_dir)
    except json.JSONDecodeError as e:
        raise RunError(f"{SUMMARY} is not valid JSON (half-written or corrupt: {e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {SUMMARY}: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:  # not a run's record, or a newer schema
        raise RunError(str(e)) from None
    missing, wrong = [], []
    for path, types in SHOW_FIELDS:
        try:
            value = dotted(summary, path)
        except KeyError:
            missing.append(path)
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            wrong.append(path)
    if missing:
        raise RunError(f"{SUMMARY} lacks {', '.join(missing)} (an older format or a hand-edited file)")
    if wrong:
        raise RunError(f"{SUMMARY} has a value of the wrong type in {', '.join(wrong)}")
    return summary


QUOTED_CHARS = 40  # how much of a damaged line a message quotes: enough to recognise it, never a screenful


def _quote(line: str) -> str:
    return repr(line if len(line) <= QUOTED_CHARS else line[:QUOTED_CHARS] + "...")


def _read_numbers(run_dir: Path, name: str, columns: Sequence[str]) -> tuple[list[dict[str, float]], str | None]:
    """The rows of `name` as floats, checked to have a header with every one of `columns`, and
    None, or, when the last row was cut off mid-line, a message saying so (that row left out).
    RunError with one line, naming the line at fault, for an empty, short, garbled or unreadable file.

    The writer ends every row with a line break and fsyncs it, so a last line without one was
    being written when the process or the machine stopped; the rows before it are whole."""
    try:
        with open(run_dir / name, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from None
    if not text:
        raise RunError(f"{name} is empty (not even its header)")
    # The csv module's line breaks only (str.splitlines also splits at \f and others), so that
    # the line numbers in messages are the ones an editor shows.
    lines = re.split(r"\r\n|\r|\n", text)
    cut = None
    if lines[-1] and len(lines) > 1:
        cut = (f"{name} line {len(lines)}, its last, was cut off mid-row (the machine or the run stopped "
               f"while writing it): {_quote(lines[-1])}")
    lines = lines[:-1] if len(lines) > 1 else lines  # the cut row, or the "" after the final line break
    try:
        header = next(csv.reader(lines[:1]), [])
    except csv.Error:
        header = []
    missing = [c for c in columns if c not in header]
    if missing:
        raise RunError(f"{name} lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # a blank line, as csv.DictReader skips them
        try:
            values = next(csv.reader([line]))
            if len(values) != len(header):
                raise ValueError
            rows.append({key: float(v) for key, v in zip(header, values)})
        except (ValueError, csv.Error):
            raise RunError(f"{name} line {number} is not a row of {len(header)} numbers: {_quote(line)}") from None
    return rows, cut


def load_metrics(run_dir: Path) -> tuple[list[dict[str, float]], str | None]:
    """metrics.csv, checked to have every column and only numbers, or RunError; with the rows,
    a message when its last row was cut off mid-line (the rows before it are returned)."""
    return _read_numbers(run_dir, METRICS, COLUMN_KEYS)


def fewer_epochs(held: int, summary: dict[str, Any]) -> str | None:
    """What is wrong when metrics.csv holds fewer than the epochs summary.json records, else None.
    The writer appends each row before it rewrites the summary, so this never happens to a
    healthy run, live or killed: the file was truncated, or copied from an earlier state.
    `held` counts a row that was cut off: that one is already warned about."""
    recorded = summary["epochs_completed"]
    if held >= recorded:
        return None
    holds = "no epochs (only its header line)" if not held else plural(held, "epoch")
    return f"{METRICS} holds {holds}, but {SUMMARY} records {recorded} completed"


def load_layers(run_dir: Path) -> list[dict[str, float]]:
    """grads.csv, checked to have every column, only numbers and whole epoch and layer numbers
    from 1, or RunError; [] for a run from before grads.csv existed."""
    if not (run_dir / GRADS).exists():
        return []
    rows, cut = _read_numbers(run_dir, GRADS, GRADS_COLUMNS_BEFORE_DEAD)  # dead_fraction: newer runs only
    if cut:  # an extra: shown whole or left out, as any unreadable grads.csv
        raise RunError(cut)
    if not all(r[k].is_integer() and r[k] >= 1 for r in rows for k in ("epoch", "layer")):
        raise RunError(f"{GRADS} has an epoch or layer that is not a whole number from 1")
    return rows


def by_layer(rows: Sequence[dict[str, float]]) -> dict[int, list[dict[str, float]]]:
    """{layer: its grads.csv rows in epoch order}; an epoch written twice (a resumed run that
    was killed between its checkpoint and its rows) keeps its last row."""
    layers: dict[int, dict[int, dict[str, float]]] = {}
    for row in rows:
        layers.setdefault(int(row["layer"]), {})[int(row["epoch"])] = row
    return {layer: [epochs[e] for e in sorted(epochs)] for layer, epochs in sorted(layers.items())}


def load_confusion(run_dir: Path) -> Confusion | None:
    """confusion.csv as analysis.Confusion (the statistics recomputed from its counts), None when
    the run has none (not completed, or older than the file), RunError when it cannot be read."""
    path = run_dir / CONFUSION_CSV
    if not path.exists():
        return None
    try:
        with open(path, newline="") as f:
            header, *body = list(csv.reader(f)) or [[]]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"cannot read {CONFUSION_CSV}: {getattr(e, 'strerror', None) or e}") from None
    n = len(header) - 4  # true, pred_0 .. pred_{n-1}, precision, recall, accuracy
    if n < 2 or header != ["true", *(f"pred_{p}" for p in range(n)), "precision", "recall", "accuracy"]:
        raise RunError(f"{CONFUSION_CSV} lacks its header true,pred_0,...,precision,recall,accuracy")
    body = [row for row in body if row]  # a trailing blank line
    if [row[0] for row in body] != [str(t) for t in range(n)] or any(len(row) != len(header) for row in body):
        raise RunError(f"{CONFUSION_CSV} does not have one full row for each of its {n} true classes")
    try:
        counts = [[int(c) for c in row[1: n + 1]] for row in body]
    except ValueError:
        raise RunError(f"{CONFUSION_CSV} has a count that is not a whole number") from None
    if any(c < 0 for row in counts for c in row) or not any(map(any, counts)):
        raise RunError(f"{CONFUSION_CSV} has a negative count, or no images at all")
    return from_counts(counts)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'model': {'hidden_size': 128}} -> {'model.hidden_size': 128}."""
    if not isinstance(config, dict):
        return {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


UNUSED = "-"  # a config value the run ignored


def run_config(config: Any) -> dict[str, Any]:
    """The run's config, flat, with model.hidden_size as UNUSED when model.hidden_sizes set the
    layers: otherwise a 64-32 network would list, filter and sort as hidden size 128."""
    flat = flatten(config)
    if flat.get("model.hidden_sizes") is not None and "model.hidden_size" in flat:
        flat["model.hidden_size"] = UNUSED
    return flat


def _hydra_config(run_dir: Path) -> dict[str, Any]:
    """The config Hydra saved, for a run that left no summary.json; {} if there is none."""
    try:
        import yaml  # Hydra's dependency; only needed for these leftovers

        return run_config(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()))
    except Exception:  # noqa: BLE001 - a missing or odd file just means no config columns
        return {}


def moved_from(summary: dict[str, Any], run_dir: Path) -> str | None:
    """Where the run was recorded to be, when that is not run_dir (moved or copied since;
    `resume` records the new place). compare, too, lists a run where it is now."""
    recorded = summary["run_dir"]
    try:
        if os.path.samefile(recorded, run_dir):
            return None
    except OSError:  # nothing there any more: moved
        pass
    return recorded


def as_read_now(text: str, recorded: str, run_dir: Path) -> str:
    """A saved error or warning with the run's recorded folder replaced by the one it is read
    from now, so that e.g. `continue with: backprop-lab resume DIR` names a folder that holds it.
    Only whole folder names: a recorded /runs/a is not the start of /runs/ab."""
    now = str(run_dir.resolve())
    return re.sub(re.escape(recorded) + r"(?=$|[\s/,;:)'\"]|\.(?:\s|$))", lambda _: now, text)


def saved_note(summary: dict[str, Any], run_dir: Path) -> str | None:
    """The run's own error, or a completed run's warnings, naming the folder it is read from now."""
    note = summary.get("error") or "; ".join(saved_warnings(summary)) or None  # warnings: e.g. a dead layer
    recorded = moved_from(summary, run_dir) if note else None  # compare reads many runs: no stat without a note
    return as_read_now(str(note), recorded, run_dir) if recorded else note


def _log_error(run_dir: Path) -> str | None:
    """The last ERROR line of the run's log, e.g. why a sweep job's config was refused."""
    try:
        lines = (run_dir / LOG).read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.split("[ERROR] - ", 1)[1] for line in lines if "[ERROR] - " in line]
    return errors[-1].strip() if errors else None


@dataclass
class Run:
    """One run directory as compare lists it; every field has a value even for a broken run."""

    path: Path
    label: str  # relative to the root it was found under: date/time, or sweep/job
    group: Path  # the sweep root for a sweep job, else the run directory itself (for --best)
    status: str
    config: dict[str, Any] = field(default_factory=dict)  # flat: {'model.hidden_size': 128, ...}
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    best_epoch: int | None = None
    final_test_loss: float | None = None
    epochs_completed: int | None = None
    epochs_planned: int | None = None
    train_seconds: float | None = None
    note: str | None = None  # what is wrong with it, or the run's own error
    problem: bool = False  # the note describes broken files (warned about on stderr)
    metrics: list[dict[str, float]] | None = None
    layers: list[dict[str, float]] = field(default_factory=list)  # grads.csv rows; [] if it has none
    layers_error: str | None = None  # why grads.csv could not be read (the run keeps its status)
    metrics_warnings: list[str] = field(default_factory=list)  # damage to metrics.csv that leaves it usable

    @property
    def grad_norm_1(self) -> float | None:
        """The first layer's gradient norm at the last epoch in grads.csv."""
        first = by_layer(self.layers).get(1)
        return first[-1]["grad_norm"] if first else None

    def value(self, column: str) -> Any:
        """A sortable/filterable value: a COLUMNS name or a config key."""
        if column in COLUMN_GETTERS:
            return COLUMN_GETTERS[column](self)
        return self.config.get(column)


def load_run(run_dir: Path, label: str, group: Path | None = None) -> Run:
    run = Run(path=run_dir, label=label, group=group or run_dir, status="corrupt")
    try:
        run.layers = load_layers(run_dir)
    except RunError as e:
        run.layers_error = str(e)
    metrics_error = cut = None
    if (run_dir / METRICS).exists():
        try:
            run.metrics, cut = load_metrics(run_dir)
            if cut:
                run.metrics_warnings.append(f"{cut}; only the rows before it are read")
        except RunError as e:
            metrics_error = str(e)

    if not (run_dir / SUMMARY).exists():
        run.config = _hydra_config(run_dir)
        if run.metrics is not None or metrics_error:
            run.status, run.problem = "incomplete", True
            run.note = f"no {SUMMARY}: stopped before writing it" + (f"; {metrics_error}" if metrics_error else "")
            if run.metrics:
                _fill_from_metrics(run)
        else:
            error = _log_error(run_dir)
            run.status = "refused" if error else "incomplete"
            run.note = error or "nothing recorded yet (just started, or killed at once)"
            run.problem = error is None
        return run

    try:
        summary = load_summary(run_dir)
    except RunError as e:
        run.config, run.note, run.problem = _hydra_config(run_dir), str(e), True
        if run.metrics:
            _fill_from_metrics(run)
        return run
    run.status = effective_status(summary)
    # keys added to backprop-lab since the run count as their defaults, which is what the run had
    saved = summary["config"]
    run.config = run_config(with_defaults(saved) if isinstance(saved, dict) else saved)
    for name in ("final_test_acc", "best_test_acc", "best_epoch", "final_test_loss",
                 "epochs_completed", "epochs_planned", "train_seconds"):
        setattr(run, name, summary.get(name))
    run.note = saved_note(summary, run_dir)
    if metrics_error:
        run.status, run.note, run.problem = "corrupt", metrics_error, True
    elif run.metrics is None and summary["epochs_completed"]:
        run.status, run.note, run.problem = "corrupt", f"{METRICS} is missing", True
    else:
        short = fewer_epochs(len(run.metrics or []) + bool(cut), summary)
        if short:  # the results are summary.json's; only --plot's curves are short
            run.metrics_warnings.append(f"{short}; listed as {SUMMARY} records it")
    if run.status == "incomplete":
        done = len(run.metrics or [])
        run.note = f"still marked running, but its process is gone (killed?); {plural(done, 'completed epoch')} in {METRICS}"
    if run.status in ("interrupted", "incomplete") and not checkpoint_looks_whole(run_dir):
        kept = (run.note or "").split(f"; {RESUME_HINT}")[0]  # not a command that would fail
        run.note = f"{kept + '; ' if kept else ''}its {CHECKPOINT} is missing or damaged: it cannot be resumed"
    return run


def _fill_from_metrics(run: Run) -> None:
    rows = run.metrics or []
    best = max(rows, key=lambda r: r["test_acc"])
    run.final_test_acc, run.final_test_loss = rows[-1]["test_acc"], rows[-1]["test_loss"]
    run.best_test_acc, run.best_epoch = best["test_acc"], int(best["epoch"])
    run.epochs_completed = len(rows)
    run.epochs_planned = _planned(run.config)
    run.train_seconds = sum(r["seconds"] for r in rows)


def _planned(config: dict[str, Any]) -> int | None:
    """The epochs a run's config plans, as training counts them, or None if it does not say."""
    epochs, steps, batch = (config.get(k) for k in ("train.epochs", "train.steps", "data.batch_size"))
    subset = config.get("data.train_subset")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    if not (whole(epochs) and whole(batch) and (steps is None or whole(steps)) and (subset is None or whole(subset))):
        return None
    return planned_epochs(epochs, steps, subset or N_TRAIN, batch)


def is_sweep_root(path: Path) -> bool:
    return any((path / mark).is_file() for mark in SWEEP_MARKS)


def is_run_dir(path: Path) -> bool:
    """summary.json or metrics.csv; or, for a sweep job refused before it wrote either,
    Hydra's .hydra/ folder with the log (a sweep root has none of these)."""
    return (path / SUMMARY).is_file() or (path / METRICS).is_file() or (
        (path / ".hydra").is_dir() and (path / LOG).is_file()
    )


LATEST = "latest"  # show/compare's name for the newest run under outputs/


def newest_run(root: Path = Path("outputs")) -> Path:
    """The run under `root` that started last (summary.json's started_at; else its folder's time),
    for `show latest` and `compare latest`; RunError when there is none."""
    if not root.is_dir():
        raise RunError(f"{LATEST}: there is no {root} folder here, so no newest run; run from the folder that holds it")
    dirs = find_run_dirs(root)
    if not dirs:
        raise RunError(f"{LATEST}: no run under {root}")

    def started(run_dir: Path) -> str:
        try:
            return str(read_summary(run_dir).get("started_at") or "")
        except (OSError, ValueError):
            return ""

    return max(dirs, key=lambda d: (started(d), d.stat().st_mtime))


def or_newest(path: Path) -> Path:
    """`path`, or the newest run when it is `latest` and no such folder exists."""
    return newest_run() if str(path) == LATEST and not path.exists() else path


def find_run_dirs(root: Path) -> list[Path]:
    if is_run_dir(root):
        return [root]
    found = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skips .hydra and hidden folders
        if is_run_dir(Path(here)) and Path(here) != root:
            found.append(Path(here))
            dirs[:] = []  # runs do not nest
    return found


def collect(roots: Sequence[Path]) -> list[Run]:
    """Every run under the roots, labelled relative to its root (prefixed by the root when
    several are given, so that two sweeps' job `0`s stay apart). RunError for a bad root."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise RunError(f"{root} does not exist")
        if not root.is_dir():
            raise RunError(f"{root} is not a directory")
        for run_dir in find_run_dirs(root):
            resolved = run_dir.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            rel = run_dir.relative_to(root).as_posix()
            if rel == ".":
                label = str(root)
            else:
                label = f"{root.as_posix().rstrip('/')}/{rel}" if len(roots) > 1 else rel
            group = run_dir.parent if is_sweep_root(run_dir.parent) else run_dir
            runs.append(load_run(run_dir, label, group))
    return runs


COLUMN_GETTERS: dict[str, Callable[[Run], Any]] = {
    "run": lambda r: r.label,
    "test_acc": lambda r: r.final_test_acc,
    "best_test_acc": lambda r: r.best_test_acc,
    "test_loss": lambda r: r.final_test_loss,
    "epochs": lambda r: r.epochs_completed,
    "time": lambda r: r.train_seconds,
    "grad_norm_1": lambda r: r.grad_norm_1,
    "status": lambda r: r.status,
}


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
    status = summary.get("status")
    if status not in STATUSES:  # what to do with the run is read from it
        raise RunDirError(f"{run_dir / SUMMARY} is damaged (its status is {json.dumps(status)}, not one of "
                          f"{', '.join(STATUSES)}); it cannot be resumed: start a new run")
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
