"""`backprop-lab compare` and `show` on hand-written run directories, and on real ones:
a training run whose printout `show` must reproduce, and a 2-job sweep with its report."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backprop_lab.analysis import from_counts, write_confusion_csv
from backprop_lab.compare import compare_main, show_main
from backprop_lab.report import COLUMN_KEYS
from backprop_lab.rundir import GRADS_COLUMNS_BEFORE_DEAD as GRADS_COLUMNS  # the layout of runs before dead_fraction: still read

from .conftest import run_cli

# --- fabricated run directories ------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def config(hidden: int = 128, lr: float = 0.1, epochs: int = 2) -> dict:
    return {
        "model": {"hidden_size": hidden, "init_scale": 0.01},
        "optim": {"lr": lr},
        "train": {"epochs": epochs, "fused": True},
        "data": {"root": None, "batch_size": 64, "train_subset": 1000, "download": True},
        "device": "cpu",
        "seed": 0,
    }


def make_run(run_dir: Path, accs: list[float], status: str = "completed", planned: int = 2, **cfg) -> Path:
    """A run directory as the trainer writes it: metrics.csv rows and a matching summary.json."""
    run_dir.mkdir(parents=True)
    rows = [
        {"epoch": i + 1, "train_loss": 1.0 - acc / 2, "train_acc": acc, "test_loss": 1.0 - acc,
         "test_acc": acc, "seconds": 0.5, "samples_per_s": 2000.0}
        for i, acc in enumerate(accs)
    ]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMN_KEYS)
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r["test_acc"]) if rows else None
    summary = {
        "status": status, "epochs_completed": len(rows), "epochs_planned": planned,
        "final_test_acc": accs[-1] if accs else None, "best_test_acc": best and best["test_acc"],
        "best_epoch": best and best["epoch"], "final_test_loss": rows[-1]["test_loss"] if rows else None,
        "train_seconds": 0.5 * len(rows), "wall_seconds": 0.5 * len(rows) + 2, "device": "cpu", "seed": 0,
        "config": config(epochs=planned, **cfg), "overrides": [],
        "data": {"source": "x", "train_size": 1000, "test_size": 10000, "md5": {}},
        "versions": {}, "started_at": "2026-11-30T01:00:00+00:00", "finished_at": None,
        "run_dir": str(run_dir), "pid": dead_pid(), "host": platform.node(), "weights": None, "error": None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def write_grads(run_dir: Path, rows: list[tuple[int, int, float, float, float]]) -> Path:
    """grads.csv as the trainer writes it: (epoch, layer, grad_norm, weight_norm, update_ratio) rows."""
    with open(run_dir / "grads.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(GRADS_COLUMNS)
        writer.writerows(rows)
    return run_dir


# Two epochs of a two-layer network: |dW| shrinks as training goes on, more so in layer 2.
GRADS_ROWS = [(1, 1, 0.5, 10.0, 2e-3), (1, 2, 0.25, 5.0, 1e-3),
              (2, 1, 0.125, 12.0, 1.5e-3), (2, 2, 0.0625, 6.0, 4.25e-4)]


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Two single runs, a 3-job sweep, a killed run and one with a corrupt summary.json."""
    out = tmp_path / "outputs"
    make_run(out / "2026-11-30/01-00-00", [0.90, 0.95], hidden=128)
    make_run(out / "2026-11-30/02-00-00", [0.91, 0.93], hidden=64)
    sweep = out / "multirun/2026-11-30/03-00-00"
    for job, (lr, accs) in enumerate([(0.05, [0.80, 0.85]), (0.1, [0.86, 0.97]), (0.2, [0.96, 0.94])]):
        make_run(sweep / str(job), accs, hidden=32, lr=lr)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    make_run(out / "2026-11-30/04-00-00", [0.70], status="running", hidden=128)  # its process is gone
    corrupt = make_run(out / "2026-11-30/05-00-00", [0.5, 0.6], hidden=128)
    (corrupt / "summary.json").write_text('{"status": "comp')  # cut off mid-write
    monkeypatch.chdir(tmp_path)
    return out


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Headings and cells of the comparison table (columns are 2+ spaces apart)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("──"))
    split = lambda line: re.split(r"\s{2,}", line.strip())
    body = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        body.append(split(line))
    return split(lines[rule - 1]), body


@pytest.fixture(autouse=True)
def wide_output(monkeypatch):
    """These tests read the tables' cells; how a table fits a narrow terminal is tested apart
    (test_terminal.py, and the 60-column test below)."""
    monkeypatch.setenv("COLUMNS", "200")


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    code = compare_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def labels(text: str) -> list[str]:
    return [row[0] for row in table(text)[1]]


def test_table_has_only_the_differing_keys_and_every_status(outputs, capsys):
    code, out, err = run_compare(capsys)  # default PATH: outputs/
    assert code == 0
    headings, rows = table(out)
    assert headings == ["run", "model.hidden_size", "optim.lr", "test acc", "best acc", "test loss",
                        "epochs", "time", "status"]
    by_run = {row[0]: row for row in rows}
    assert by_run["2026-11-30/01-00-00"] == ["2026-11-30/01-00-00", "128", "0.1", "95.00%", "95.00% (2)",
                                             "0.0500", "2/2", "1.0 s", "completed"]
    assert by_run["multirun/2026-11-30/03-00-00/2"][1:3] == ["32", "0.2"]
    assert by_run["2026-11-30/04-00-00"][-3:] == ["1/2", "0.5 s", "incomplete"]
    assert by_run["2026-11-30/05-00-00"][-1] == "corrupt"
    assert len(rows) == 7
    assert "2026-11-30/05-00-00: corrupt: summary.json is not valid JSON" in out
    assert "summary.json is not valid JSON" in err and "listed as corrupt" in err
    assert "Traceback" not in out + err


def test_sort_is_best_first_for_accuracies_ascending_otherwise(outputs, capsys):
    _, out, _ = run_compare(capsys, "--sort", "test_acc")
    assert labels(out)[:3] == ["multirun/2026-11-30/03-00-00/1", "2026-11-30/01-00-00",
                               "multirun/2026-11-30/03-00-00/2"]
    assert labels(out)[-1] == "2026-11-30/05-00-00"  # no accuracy: last either way
    _, out, _ = run_compare(capsys, "--sort", "test_loss")
    assert labels(out)[0] == "multirun/2026-11-30/03-00-00/1"
    _, out, _ = run_compare(capsys, "--sort", "optim.lr", "--filter", "model.hidden_size=32")
    assert labels(out) == [f"multirun/2026-11-30/03-00-00/{j}" for j in (0, 1, 2)]
    _, out, _ = run_compare(capsys, "--sort", "run")
    assert labels(out) == ["2026-11-30/01-00-00", "2026-11-30/02-00-00", "multirun/2026-11-30/03-00-00/0",
                           "multirun/2026-11-30/03-00-00/1", "multirun/2026-11-30/03-00-00/2", "2026-11-30/04-00-00",
                           "2026-11-30/05-00-00"]  # by date, single runs and sweeps together


def test_jobs_sort_by_number_and_lists_by_their_numbers(tmp_path, capsys):
    for job in range(12):
        run = make_run(tmp_path / "sweep" / str(job), [0.5, 0.6])
        summary = json.loads((run / "summary.json").read_text())
        summary["config"]["model"]["hidden_sizes"] = [[64], [128], [8, 4]][job % 3]
        (run / "summary.json").write_text(json.dumps(summary))
    _, out, _ = run_compare(capsys, str(tmp_path / "sweep"))
    assert labels(out) == [str(job) for job in range(12)]  # not 0, 1, 10, 11, 2, ...
    _, out, _ = run_compare(capsys, str(tmp_path / "sweep"), "--sort", "model.hidden_sizes")
    assert [row[1] for row in table(out)[1]][::4] == ["[8, 4]", "[64]", "[128]"]


def test_unknown_sort_column_is_one_line_listing_the_choices(outputs, capsys):
    code, out, err = run_compare(capsys, "--sort", "accuracy")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: unknown --sort column 'accuracy'")
    for choice in ("test_acc", "best_test_acc", "test_loss", "time", "run", "optim.lr", "model.hidden_size"):
        assert choice in line


def test_filter_top_and_best(outputs, capsys):
    _, out, _ = run_compare(capsys, "--filter", "model.hidden_size=32", "--filter", "optim.lr=1e-1")
    assert labels(out) == ["multirun/2026-11-30/03-00-00/1"]
    _, out, _ = run_compare(capsys, "--filter", "status=incomplete")
    assert labels(out) == ["2026-11-30/04-00-00"]
    code, out, _ = run_compare(capsys, "--filter", "status=completed", "--sort", "test_acc", "--top", "2")
    assert code == 0 and labels(out) == ["multirun/2026-11-30/03-00-00/1", "2026-11-30/01-00-00"]
    _, out, _ = run_compare(capsys, "--best")  # one per sweep; single runs are their own group
    assert labels(out) == ["2026-11-30/01-00-00", "2026-11-30/02-00-00", "multirun/2026-11-30/03-00-00/1",
                           "2026-11-30/04-00-00"]
    code, _, err = run_compare(capsys, "--filter", "model.hidden_size=7")
    assert code == 1 and "no runs match" in err


@pytest.mark.parametrize("mark", ["optimization_results.yaml", ".backprop-lab-sweep"],
                         ids=["a finished Optuna search", "a sweep stopped before its sweeper wrote anything"])
def test_best_keeps_one_run_of_any_sweeper(tmp_path, capsys, mark):
    """Only Hydra's basic sweeper writes multirun.yaml; Optuna's trials are a sweep all the same."""
    search = tmp_path / "search"
    for trial, accs in enumerate([[0.5, 0.6], [0.7, 0.8], [0.4, 0.3]]):
        make_run(search / str(trial), accs, lr=0.01 * (trial + 1))
    (search / mark).write_text("best_value: 0.8\n")
    make_run(tmp_path / "single", [0.2, 0.3])
    _, out, _ = run_compare(capsys, str(tmp_path), "--best")
    assert labels(out) == ["search/1", "single"]


def with_hidden_sizes(run_dir: Path, sizes: list[int] | None) -> Path:
    """A run of a deeper network: model.hidden_sizes as the trainer records it (a JSON list)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["model"]["hidden_sizes"] = sizes
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


@pytest.mark.parametrize("typed,expected", [
    ("[32,16]", ["a"]),  # as a Hydra override spells it
    ("[32, 16]", ["a"]),  # as the table prints it
    (" [ 32 ,16 ] ", ["a"]),
    ("[3.2e1,16.0]", ["a"]),  # numbers in a list compare as numbers, as on their own
    ("[64]", ["b"]),
    ("null", ["c"]),
    ("[16,32]", []),
    ("[32]", []),
])
def test_filter_matches_a_list_however_it_is_spaced(tmp_path, capsys, typed, expected):
    for name, sizes in (("a", [32, 16]), ("b", [64]), ("c", None)):
        with_hidden_sizes(make_run(tmp_path / "runs" / name, [0.5, 0.6]), sizes)
    code, out, err = run_compare(capsys, str(tmp_path / "runs"), "--filter", f"model.hidden_sizes={typed}")
    if expected:
        assert code == 0 and labels(out) == expected, err
    else:
        assert code == 1 and "no runs match" in err


def test_a_run_with_hidden_sizes_lists_no_hidden_size_and_matches_no_filter_on_it(tmp_path, capsys):
    # model.hidden_size keeps its default 128 in a run of hidden_sizes=[32, 16], which never used it
    with_hidden_sizes(make_run(tmp_path / "runs" / "a", [0.5, 0.6]), [32, 16])
    make_run(tmp_path / "runs" / "b", [0.5, 0.6])
    code, out, err = run_compare(capsys, str(tmp_path / "runs"))
    heads, rows = table(out)
    cells = {row[0]: dict(zip(heads, row)) for row in rows}
    assert code == 0, err
    assert cells["a"]["model.hidden_size"] == "-" and cells["a"]["model.hidden_sizes"] == "[32, 16]"
    assert cells["b"]["model.hidden_size"] == "128" and cells["b"]["model.hidden_sizes"] == "null"
    code, out, err = run_compare(capsys, str(tmp_path / "runs"), "--filter", "model.hidden_size=128")
    assert code == 0 and labels(out) == ["b"], err


def test_a_number_saved_as_int_or_float_is_one_value(tmp_path, capsys):
    """summary.json writes 100.0 where the same run's .hydra/config.yaml says 100: one value, not a
    differing key. A boolean is not the number 1, though."""
    import yaml

    from backprop_lab.config import with_defaults

    a = make_run(tmp_path / "runs" / "a", [0.5, 0.6])
    saved = json.loads((a / "summary.json").read_text())
    saved["config"] = with_defaults(saved["config"])
    saved["config"]["train"]["max_loss_ratio"] = 100.0
    (a / "summary.json").write_text(json.dumps(saved))
    b = shutil.copytree(a, tmp_path / "runs" / "b")  # killed before its summary: Hydra's config is all it has
    (b / "summary.json").unlink()
    (b / ".hydra").mkdir()
    (b / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**saved["config"], "train": {
        **saved["config"]["train"], "max_loss_ratio": 100}}))
    c = shutil.copytree(a, tmp_path / "runs" / "c")
    saved["config"]["train"]["fused"] = 1
    (c / "summary.json").write_text(json.dumps(saved))
    _, out, _ = run_compare(capsys, str(tmp_path / "runs"), "--json", "-")
    assert json.loads(out)["differing_keys"] == ["train.fused"]
    assert [r["config"]["train.max_loss_ratio"] for r in json.loads(out)["runs"]] == [100.0, 100, 100.0]


@pytest.mark.parametrize("bad", ["hidden", "nope=1", "=3"])
def test_malformed_or_unknown_filter_is_a_clear_error(outputs, capsys, bad):
    code, out, err = run_compare(capsys, "--filter", bad)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and ("KEY=VALUE" in line or "status, model.hidden_size" in line)


@pytest.mark.parametrize("option,value,expected", [
    ("--keys", "", "--keys is empty (''); give config keys separated by commas, e.g. --keys optim.lr,model.hidden_size"),
    ("--keys", " , ", "--keys ' , ' names no key; give config keys separated by commas, "
                      "e.g. --keys optim.lr,model.hidden_size"),
    ("--sort", "", "--sort is empty (''); give a column, e.g. --sort test_acc"),  # was: sorted by run, exit 0
    ("--filter", "", "--filter is empty (''); give KEY=VALUE, e.g. model.hidden_size=128 or status=completed"),
    ("--csv", "", "--csv is empty (''); give a file name, or - for standard output"),  # was: no file, exit 0
    ("--plot", " ", "--plot is empty (' '); give a file name, e.g. --plot curves.png"),
    ("--tensorboard", "", "--tensorboard is empty (''); give a folder, e.g. --tensorboard tb"),
], ids=["keys", "keys-commas", "sort", "filter", "csv", "plot", "tensorboard"])
def test_an_empty_option_value_is_a_clear_error(outputs, capsys, option, value, expected):
    """`--sort "$COLUMN"` with the variable unset: refused in one line, not read as if left out."""
    code, out, err = run_compare(capsys, option, value)
    assert (code, out, err) == (2, "", f"error: {expected}\n")


def test_csv_and_json_files(outputs, capsys, tmp_path):
    code, out, _ = run_compare(capsys, "--sort", "test_acc", "--top", "3",
                               "--csv", str(tmp_path / "runs.csv"), "--json", str(tmp_path / "runs.json"))
    assert code == 0 and "test acc" in out
    with open(tmp_path / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "model.hidden_size", "optim.lr", "final_test_acc", "best_test_acc", "best_epoch",
                             "final_test_loss", "epochs_completed", "epochs_planned", "train_seconds", "status",
                             "note", "run_dir"]
    assert [r["run"] for r in rows] == labels(out)
    assert float(rows[0]["final_test_acc"]) == 0.97 and rows[0]["optim.lr"] == "0.1"
    assert rows[0]["run_dir"] == str((outputs / "multirun/2026-11-30/03-00-00/1").resolve())
    data = json.loads((tmp_path / "runs.json").read_text())
    assert data["differing_keys"] == ["model.hidden_size", "optim.lr"]
    assert [r["run"] for r in data["runs"]] == labels(out)
    assert data["runs"][0]["config"]["seed"] == 0 and data["runs"][0]["best_epoch"] == 2


def test_csv_and_json_on_stdout_are_clean(outputs, capsys):
    code, out, _ = run_compare(capsys, "--csv", "-", "--filter", "status=corrupt")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["run"], r["status"]) for r in rows] == [("2026-11-30/05-00-00", "corrupt")]
    assert "not valid JSON" in rows[0]["note"]
    code, out, _ = run_compare(capsys, "--json", "-", "--filter", "model.hidden_size=64")
    assert [r["status"] for r in json.loads(out)["runs"]] == ["completed"]


def test_plot_is_a_png_of_the_expected_size(outputs, capsys, tmp_path):
    from matplotlib.image import imread

    code, _, _ = run_compare(capsys, "--filter", "model.hidden_size=32", "--plot", str(tmp_path / "curves.png"))
    assert code == 0
    assert imread(tmp_path / "curves.png").shape[:2] == (400 + 3 * 20, 1000)  # the plots, and a legend row per run
    assert not (tmp_path / "curves-grads.png").exists()  # no listed run has grads.csv


def test_unsupported_plot_extension_is_one_line_before_anything_is_written(outputs, capsys, tmp_path):
    code, out, err = run_compare(capsys, "--csv", str(tmp_path / "runs.csv"), "--plot", str(tmp_path / "curves.txt"))
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --plot {tmp_path / 'curves.txt'}: ") and ".txt" in line
    assert all(ext in line for ext in ("png", "pdf", "svg")) and "Traceback" not in err
    assert not any(tmp_path.glob("runs.csv")) and not any(tmp_path.glob("curves*"))
    code, _, _ = run_compare(capsys, "--filter", "model.hidden_size=64", "--plot", str(tmp_path / "curves.SVG"))
    assert code == 0 and (tmp_path / "curves.SVG").read_bytes().lstrip().startswith(b"<?xml")


@pytest.mark.parametrize("case", ["plot folder missing", "csv folder missing", "json is a folder", "csv under a file",
                                  "both on stdout", "a run's own metrics.csv", "the gradient figure is a folder",
                                  "writing fails", "tensorboard where writing fails", "tensorboard is a file",
                                  "a good csv beside a bad json", "tensorboard through a dangling link"])
def test_an_output_that_cannot_be_written_is_refused_before_the_table(outputs, capsys, tmp_path, case):
    (tmp_path / "afile").write_text("")
    run = tmp_path / "outputs" / "2026-11-30" / "01-00-00"
    record = (run / "metrics.csv").read_bytes()
    args, expected = {
        "a run's own metrics.csv": (["--csv", str(run / "metrics.csv")], f"is inside the run {run}, whose files are"),
        "plot folder missing": (["--plot", "/nonexist/x.png"], "--plot /nonexist/x.png: its folder /nonexist does not exist"),
        "csv folder missing": (["--csv", str(tmp_path / "nope" / "r.csv")], "nope does not exist"),
        "json is a folder": (["--json", str(tmp_path)], f"--json {tmp_path} is a folder; give a file name"),
        "csv under a file": (["--csv", str(tmp_path / "afile" / "r.csv")], "afile is a file, not a folder"),
        "both on stdout": (["--csv", "-", "--json", "-"], "--csv - and --json - would both write to standard output"),
        "the gradient figure is a folder": (["--plot", str(tmp_path / "c.png")],
                                            f"--plot's gradient figure {tmp_path / 'c-grads.png'} is a folder"),
        # /proc passes a permission check (and every one for root) but takes no new file
        "writing fails": (["--plot", "/proc/x.png"], "--plot /proc/x.png cannot be written (no such file or directory)"),
        "tensorboard where writing fails": (["--tensorboard", "/proc/tb"], "--tensorboard /proc/tb: cannot write in /proc"),
        "tensorboard is a file": (["--tensorboard", str(tmp_path / "afile")], "is a file; give a folder"),
        "a good csv beside a bad json": (["--csv", str(tmp_path / "r.csv"), "--json", "/proc/r.json"],
                                         "--json /proc/r.json cannot be written"),  # the csv's trial file is gone again
        "tensorboard through a dangling link": (["--tensorboard", str(tmp_path / "dangling" / "tb")],
                                                f"{tmp_path / 'dangling'} is a link to {tmp_path / 'gone'}, which does "
                                                f"not exist"),
    }[case]
    if case == "tensorboard through a dangling link":
        (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    if case == "the gradient figure is a folder":  # --plot c.png draws c-grads.png beside it too
        (tmp_path / "c-grads.png").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_compare(capsys, *args)
    assert code == 2 and out == ""  # not the table first, then the failure
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (run / "metrics.csv").read_bytes() == record


def test_outputs_through_a_link_or_into_a_pipe_are_written_as_before(outputs, tmp_path):
    """The trial write before the table follows a link to a file not made yet, and leaves a pipe
    alone: opening it would end its reader's input, and the real write would then wait forever."""
    import threading

    (tmp_path / "link.csv").symlink_to(tmp_path / "later.csv")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()), daemon=True)
    reader.start()
    proc = run_cli("compare", str(outputs), "--csv", str(tmp_path / "link.csv"), "--json", str(pipe),
                   cwd=tmp_path, timeout=120)
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "later.csv").read_text().startswith("run,")
    assert json.loads(got[0])["runs"]


def test_csv_spells_booleans_as_the_table_and_the_config_do(tmp_path, capsys):
    for name, fused in (("a", True), ("b", False)):
        run = make_run(tmp_path / "runs" / name, [0.5, 0.6])
        summary = json.loads((run / "summary.json").read_text())
        summary["config"]["train"]["fused"] = fused
        (run / "summary.json").write_text(json.dumps(summary))
    code, out, _ = run_compare(capsys, str(tmp_path / "runs"))
    assert code == 0 and [row[1] for row in table(out)[1]] == ["true", "false"]
    code, out, _ = run_compare(capsys, str(tmp_path / "runs"), "--csv", "-")
    assert [r["train.fused"] for r in csv.DictReader(io.StringIO(out))] == ["true", "false"]


def test_a_count_of_one_is_singular(tmp_path, capsys):
    make_run(tmp_path / "sweep" / "0", [0.5, 0.6])
    code, _, err = run_compare(capsys, str(tmp_path / "sweep"), "--filter", "optim.lr=5")
    assert code == 1 and err == "error: no runs match optim.lr=5 (1 run found)\n"
    assert show_main([str(tmp_path / "sweep")]) == 2
    assert "; it holds 1 run: try" in capsys.readouterr().err


@pytest.mark.parametrize("main,args,expected", [
    (compare_main, ["--top", "0"], "argument --top: expected a positive integer, got '0'; see backprop-lab compare --help"),
    (compare_main, ["--frobnicate"], "unrecognized arguments: --frobnicate; see backprop-lab compare --help"),
    (show_main, [], "the following arguments are required: RUN_DIR; see backprop-lab show --help"),
])
def test_a_usage_error_is_one_line(capsys, main, args, expected):
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    assert capsys.readouterr() == ("", f"error: {expected}\n")  # no usage text before it


def test_grads_column_sorts_and_the_grads_figure_has_a_panel_per_run(outputs, capsys, tmp_path):
    from matplotlib.image import imread

    write_grads(outputs / "2026-11-30/01-00-00", GRADS_ROWS)
    write_grads(outputs / "multirun/2026-11-30/03-00-00/1", [(e, l, g / 10, w, r) for e, l, g, w, r in GRADS_ROWS])
    code, out, err = run_compare(capsys, "--filter", "status=completed", "--sort", "grad_norm_1",
                                 "--plot", str(tmp_path / "curves.png"))
    assert code == 0 and "grads" not in err  # (the fixture's corrupt run is warned about)
    headings, rows = table(out)
    assert headings[-3:] == ["time", "|dW1|", "status"]
    assert [(row[0], row[-2]) for row in rows[:3]] == [  # smallest first; runs without grads.csv last
        ("multirun/2026-11-30/03-00-00/1", "1.25e-02"), ("2026-11-30/01-00-00", "1.25e-01"),
        ("2026-11-30/02-00-00", "-")]
    assert f"gradient norms per layer: {tmp_path / 'curves-grads.png'}" in out
    image = imread(tmp_path / "curves-grads.png")
    assert image.shape[:2] == (300, 800)  # two 4 x 3 inch panels side by side, at 100 dpi
    assert image[..., :3].std() > 0.05  # curves, not a blank page


def test_unreadable_grads_csv_warns_and_leaves_the_run_as_it_was(outputs, capsys):
    (outputs / "2026-11-30/02-00-00/grads.csv").write_text("epoch,layer\n1,1\n")
    write_grads(outputs / "2026-11-30/01-00-00", GRADS_ROWS)
    code, out, err = run_compare(capsys, "--filter", "status=completed")
    assert code == 0
    by_run = {row[0]: row for row in table(out)[1]}
    assert by_run["2026-11-30/02-00-00"][-2:] == ["-", "completed"]
    (line,) = [line for line in err.splitlines() if "grads.csv" in line]
    assert line == ("warning: outputs/2026-11-30/02-00-00: grads.csv lacks the columns grad_norm, "
                    "weight_norm, update_ratio; listed without its |dW1|")


def test_partial_refused_and_missing(tmp_path, capsys):
    partial = tmp_path / "runs" / "a"
    partial.mkdir(parents=True)
    (partial / "metrics.csv").write_text(",".join(COLUMN_KEYS) + "\n1,2.0,0.2,1.9,0.3,0.1,100\n")
    refused = tmp_path / "runs" / "b"
    (refused / ".hydra").mkdir(parents=True)
    (refused / "backprop-lab.log").write_text("[t][backprop_lab][ERROR] - optim.lr=-1 is not valid\n")
    code, out, err = run_compare(capsys, str(tmp_path / "runs"))
    assert code == 0
    assert {row[0]: row[-1] for row in table(out)[1]} == {"a": "incomplete", "b": "refused"}
    assert "b: refused: optim.lr=-1 is not valid" in out and "no summary.json" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_compare(capsys, str(tmp_path / "empty"))
    assert code == 1 and err.startswith("error: no runs found under")
    code, _, err = run_compare(capsys, str(tmp_path / "missing"))
    assert code == 2 and err.strip().endswith("does not exist")


@pytest.mark.parametrize("train, data, planned", [
    ("{epochs: 20, steps: null}", "{batch_size: 64, train_subset: null}", "20"),
    ("{epochs: 20, steps: 4000}", "{batch_size: 64, train_subset: null}", "5"),  # 938 steps an epoch
    ("{epochs: 20, steps: 50}", "{batch_size: 64, train_subset: 1000}", "4"),  # 16 steps an epoch
])
def test_a_run_without_summary_counts_its_planned_epochs_as_training_does(tmp_path, capsys, train, data, planned):
    run = tmp_path / "runs" / "a"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"train: {train}\ndata: {data}\n")
    (run / "metrics.csv").write_text(",".join(COLUMN_KEYS) + "\n1,2.0,0.2,1.9,0.3,0.1,100\n")
    code, out, err = run_compare(capsys, str(tmp_path / "runs"))
    heads, (row,) = table(out)
    assert code == 0 and dict(zip(heads, row))["epochs"] == f"1/{planned}", err


# --- show --------------------------------------------------------------------------------


def test_show_of_a_killed_run_shows_its_epochs_as_incomplete(outputs, capsys):
    assert show_main([str(outputs / "2026-11-30/04-00-00")]) == 0
    out = capsys.readouterr().out
    assert "784-128-10, lr 0.1, batch 64, 2 epochs" in out
    assert re.search(r"^\s+1\s+0\.6500\s+70\.00%", out, re.M)
    assert "status            incomplete" in out and "epochs            1/2" in out


@pytest.mark.parametrize("warnings", ["layer 1: 99 % of units dead from epoch 2", ["layer 1: 99 % of units dead from epoch 2"]],
                         ids=["one string (a hand edit)", "a list, as a run writes it"])
def test_show_prints_a_warning_as_one_line(outputs, capsys, warnings):
    run = outputs / "2026-11-30/01-00-00"
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "warnings": warnings}))
    assert show_main([str(run)]) == 0
    lines = [line.strip("│ ") for line in capsys.readouterr().out.splitlines() if "warning  " in line]
    assert lines == ["warning           layer 1: 99 % of units dead from epoch 2"]


def boxed(text: str) -> dict[str, list[str]]:
    """The rows of the boxed tables (per-layer gradients, confusion matrix), by their first cell."""
    lines = [line for line in text.splitlines() if line.startswith(("│", "┃"))]
    rows = [[cell.strip() for cell in re.split("[│┃]", line)[1:-1]] for line in lines]
    return {row[0]: row for row in rows if row}


def test_show_prints_each_layers_gradients_after_what_training_printed(outputs, capsys):
    run = write_grads(outputs / "2026-11-30/01-00-00", GRADS_ROWS)
    assert show_main([str(run)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = boxed(out)
    assert rows["layer"] == ["layer", "|dW| epoch 1", "|dW| epoch 2", "|W| epoch 2", "update/|W| epoch 2"]
    assert rows["1"] == ["1", "5.00e-01", "1.25e-01", "1.20e+01", "1.50e-03"]
    assert rows["2"] == ["2", "2.50e-01", "6.25e-02", "6.00e+00", "4.25e-04"]
    assert out.index("╰") < out.index("per-layer gradients")  # below the summary panel
    assert "confusion matrix" not in out  # this run has no confusion.csv


def test_show_prints_the_confusion_matrix(outputs, capsys):
    run = outputs / "2026-11-30/01-00-00"
    counts = [[98 if t == p else 0 for p in range(10)] for t in range(10)]
    counts[4][9], counts[7][1] = 7, 3
    write_confusion_csv(run / "confusion.csv", from_counts(counts))  # as a completed run writes it
    assert show_main([str(run)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert boxed(out)["4"][:11] == ["4", "0", "0", "0", "0", "98", "0", "0", "0", "0", "7"]
    assert "accuracy 98.99% (980 of 990)" in out
    assert "most confused: 4 -> 9 (7), 7 -> 1 (3)" in out
    assert out.index("confusion matrix (test set)") < out.index("╭")  # where training prints it


@pytest.mark.parametrize("name,text,expected", [
    ("grads.csv", ",".join(GRADS_COLUMNS) + "\n1,1,oops,2.0,0.1\n",
     "grads.csv line 2 is not a row of 5 numbers: '1,1,oops,2.0,0.1'"),
    ("grads.csv", "epoch,layer\n1,1\n", "grads.csv lacks the columns grad_norm, weight_norm, update_ratio"),
    ("grads.csv", ",".join(GRADS_COLUMNS) + "\n0.5,1,1.0,2.0,0.1\n", "not a whole number from 1"),
    ("confusion.csv", "true,pred_0\n0,5\n", "confusion.csv lacks its header"),
    ("confusion.csv", "true,pred_0,pred_1,precision,recall,accuracy\n0,5,x,1,1,1\n1,0,5,1,1,1\n",
     "confusion.csv has a count that is not a whole number"),
    ("confusion.csv", "true,pred_0,pred_1,precision,recall,accuracy\n0,5,0,1,1,1\n", "one full row for each"),
])
def test_show_warns_about_an_unreadable_grads_or_confusion_csv(outputs, capsys, name, text, expected):
    run = outputs / "2026-11-30/01-00-00"
    (run / name).write_text(text)
    assert show_main([str(run)]) == 0
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: {run}: ") and expected in line and line.endswith("left out")
    assert "status            completed" in out and "Traceback" not in out + err
    assert "per-layer gradients" not in out and "confusion matrix" not in out


def broken(tmp_path: Path, what: str) -> Path:
    run = make_run(tmp_path / what, [0.5, 0.6])
    if what == "bad-json":
        (run / "summary.json").write_text("{")
    elif what == "old-format":
        (run / "summary.json").write_text(json.dumps({"status": "completed", "acc": 0.9}))
    elif what == "bad-metrics":
        (run / "metrics.csv").write_text(",".join(COLUMN_KEYS) + "\n1,2.0,oops,1.9,0.3,0.1,100\n")
    elif what == "missing-column":
        (run / "metrics.csv").write_text("epoch,test_acc\n1,0.3\n")
    return run


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"),
    ("sweep-root", "is not a run directory (no summary.json); it holds 3 runs"),
    ("bad-json", "summary.json is not valid JSON"),
    ("old-format", "summary.json lacks config.model.hidden_size"),
    ("bad-metrics", "metrics.csv line 2 is not a row of 7 numbers: '1,2.0,oops,1.9,0.3,0.1,100'"),
    ("missing-column", "metrics.csv lacks the columns train_loss"),
    ("refused-job", "refused-job holds no results: its run was refused before it started (optim.lr=-1 is not valid)"),
])
def test_show_refuses_what_it_cannot_read_in_one_line(outputs, tmp_path, capsys, case, expected):
    if case == "refused-job":  # as a sweep job refused at its config leaves its folder: Hydra's files only
        (tmp_path / "refused-job" / ".hydra").mkdir(parents=True)
        (tmp_path / "refused-job" / "backprop-lab.log").write_text(
            "[2026-11-30 17:36:15,001][backprop_lab][ERROR] - optim.lr=-1 is not valid\n")
    path = {"missing": tmp_path / "nope", "sweep-root": outputs / "multirun/2026-11-30/03-00-00",
            "refused-job": tmp_path / "refused-job"}.get(case)
    code = show_main([str(path or broken(tmp_path, case))])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and expected in line


def damage_metrics(run: Path, how: str) -> str:
    """Cut a 3-epoch run's metrics.csv as a lost machine or a careless copy would; returns
    the line that was cut off mid-row, if any."""
    text = (run / "metrics.csv").read_text()
    lines = text.splitlines(keepends=True)
    if how == "header-only":
        (run / "metrics.csv").write_text(lines[0])
    elif how == "row-boundary":
        (run / "metrics.csv").write_text("".join(lines[:3]))
    elif how == "one-row":
        (run / "metrics.csv").write_text("".join(lines[:2]))
    elif how == "mid-row":
        (run / "metrics.csv").write_text(text[:-20])
        return text[:-20].splitlines()[-1]
    return ""


@pytest.mark.parametrize("how,epochs,warning", [
    ("header-only", [], "metrics.csv holds no epochs (only its header line), but summary.json records 3 "
                        "completed; shown without the per-epoch table"),
    ("row-boundary", ["1", "2"], "metrics.csv holds 2 epochs, but summary.json records 3 completed; "
                                 "the per-epoch table shows those 2"),
    ("one-row", ["1"], "metrics.csv holds 1 epoch, but summary.json records 3 completed; "
                       "the per-epoch table shows that one"),
    ("mid-row", ["1", "2"], "metrics.csv line 4, its last, was cut off mid-row (the machine or the run stopped "
                            "while writing it): {cut!r}; shown without it"),
])
def test_show_of_a_damaged_metrics_csv_shows_what_is_whole_and_says_what_is_not(tmp_path, capsys, how, epochs,
                                                                                warning):
    run = make_run(tmp_path / "run", [0.5, 0.6, 0.7], planned=3)
    cut = damage_metrics(run, how)
    assert show_main([str(run)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"warning: {run}: " + warning.format(cut=cut)]  # one line, not "missing"
    assert re.findall(r"^\s+(\d+)\s+\d\.\d{4}\s+\d+\.\d\d%", out, re.M) == epochs
    assert "status            completed" in out and "epochs            3/3" in out


def test_compare_lists_a_run_with_a_damaged_metrics_csv_under_its_own_status(tmp_path, capsys):
    cut = damage_metrics(make_run(tmp_path / "runs/cut", [0.5, 0.6, 0.7], planned=3), "mid-row")
    damage_metrics(make_run(tmp_path / "runs/short", [0.5, 0.6, 0.7], planned=3), "row-boundary")
    code, out, err = run_compare(capsys, str(tmp_path / "runs"))
    assert code == 0
    assert {row[0]: row[-1] for row in table(out)[1]} == {"cut": "completed", "short": "completed"}
    assert err.splitlines() == [
        f"warning: {tmp_path / 'runs/cut'}: metrics.csv line 4, its last, was cut off mid-row (the machine or the "
        f"run stopped while writing it): {cut!r}; only the rows before it are read",
        f"warning: {tmp_path / 'runs/short'}: metrics.csv holds 2 epochs, but summary.json records 3 completed; "
        f"listed as summary.json records it",
    ]


def test_show_of_a_moved_or_copied_run_prints_where_it_is_now(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # long tmp paths stay on one line of the panel
    first = make_run(tmp_path / "first", [0.5, 0.6])
    moved = first.rename(tmp_path / "moved")
    copied = shutil.copytree(moved, tmp_path / "copied")
    for run in (moved, copied):
        assert show_main([str(run)]) == 0
        out = capsys.readouterr().out
        assert f"  run directory {run.resolve()}\n  ran in {first} (moved or copied here since)\n" in out
        assert f"│ run directory     {run.resolve()} │" in out  # the panel, too
    assert run_compare(capsys, str(copied), "--json", "-")[1].count(f'"run_dir": "{copied.resolve()}"') == 1
    fresh = make_run(tmp_path / "fresh", [0.5, 0.6])  # where it ran: as training printed it, nothing added
    assert show_main([str(fresh)]) == 0
    assert "ran in" not in capsys.readouterr().out


def test_a_moved_or_copied_runs_error_names_where_it_is_now(tmp_path, capsys, monkeypatch):
    """An interrupted run's error says `continue with: backprop-lab resume DIR`: after a move or a
    copy, DIR is the folder it is read from now (the recorded one is gone, or another run)."""
    monkeypatch.setenv("COLUMNS", "400")  # the panel's error row on one line
    first = make_run(tmp_path / "first", [0.5], status="interrupted")
    whole_checkpoint(first)
    saved = json.loads((first / "summary.json").read_text())
    saved["error"] = (f"stopped by SIGINT at epoch 2, batch 1; the 1 completed epoch is saved; see {first}/train.log "
                      f"and {first}-notes; continue with: backprop-lab resume {first}")
    (first / "summary.json").write_text(json.dumps(saved))
    moved = first.rename(tmp_path / "moved")
    copied = shutil.copytree(moved, tmp_path / "copied")
    for run in (moved, copied):
        now = run.resolve()
        error = (f"stopped by SIGINT at epoch 2, batch 1; the 1 completed epoch is saved; see {now}/train.log "
                 f"and {first}-notes; continue with: backprop-lab resume {now}")  # another folder's name is kept
        assert show_main([str(run)]) == 0
        assert f"│ error             {error} │" in capsys.readouterr().out
        _, out, _ = run_compare(capsys, str(run))
        assert f"{run}: interrupted: {error}" in " ".join(out.split())  # the note wraps at the console's width
        _, out, _ = run_compare(capsys, str(run), "--json", "-")
        assert json.loads(out)["runs"][0]["note"] == error
    fresh = make_run(tmp_path / "fresh", [0.5], status="interrupted")  # where it ran: its error as it was
    (fresh / "summary.json").write_text(json.dumps({**saved, "run_dir": str(fresh)}))
    assert show_main([str(fresh)]) == 0
    assert f"resume {first}" in capsys.readouterr().out


def whole_checkpoint(run_dir: Path) -> None:
    """A checkpoint.pt that is a whole zip archive, as torch.save writes (what compare can check)."""
    import zipfile

    with zipfile.ZipFile(run_dir / "checkpoint.pt", "w") as z:
        z.writestr("checkpoint/data.pkl", b"")


@pytest.mark.parametrize("checkpoint", ["whole", "truncated", "missing"])
def test_an_interrupted_run_is_offered_to_resume_only_with_a_whole_checkpoint(tmp_path, capsys, checkpoint):
    run = make_run(tmp_path / "run", [0.5], status="interrupted", planned=3)
    saved = json.loads((run / "summary.json").read_text())
    saved["error"] = f"stopped by SIGINT at epoch 2, batch 1; continue with: backprop-lab resume {run}"
    (run / "summary.json").write_text(json.dumps(saved))
    if checkpoint != "missing":
        whole_checkpoint(run)
    if checkpoint == "truncated":
        (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:40])
    _, out, _ = run_compare(capsys, str(run), "--json", "-")
    note = json.loads(out)["runs"][0]["note"]
    assert note == (f"stopped by SIGINT at epoch 2, batch 1; continue with: backprop-lab resume {run}" if checkpoint == "whole"
                    else "stopped by SIGINT at epoch 2, batch 1; its checkpoint.pt is missing or damaged: it cannot be resumed")


def test_the_docs_errors_and_tables_are_as_the_tool_prints_them(tmp_path, capsys):
    """docs/compare.md's sample --sort and --filter errors list the keys the tool lists (every run
    has every key: those added since count as their defaults), and each of its tables and panels
    fits the terminal width the doc says it was printed at: 100 columns unless it names another."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "compare.md").read_text()
    make_run(tmp_path / "runs" / "a", [0.5, 0.6])
    for args in (["--sort", "accuracy"], ["--filter", "lr=0.1"]):
        _, _, err = run_compare(capsys, str(tmp_path / "runs"), *args)
        assert err.strip() in doc.splitlines(), err
    for block in re.finditer(r"```[a-z]*\n(.*?)```", doc, re.S):
        wider = re.search(r"(\d+)-column\s+terminal", doc[max(0, block.start() - 300): block.start()])
        limit = int(wider.group(1)) if wider else 100
        for line in block.group(1).splitlines():
            assert not line.lstrip().startswith(("─", "┏", "╭")) or len(line) <= limit, line


def test_show_and_compare_do_not_import_torch(outputs):
    code = ("import sys; from backprop_lab import cli, compare; "
            "compare.compare_main(['outputs', '--plot', 'p.png']); compare.show_main(['outputs/2026-11-30/01-00-00']); "
            "print('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=outputs.parent, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
    assert "95.00%" in proc.stdout


# --- real runs -------------------------------------------------------------------------------


def printed(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("[")]


def test_show_prints_what_training_printed(tmp_path):
    train = run_cli("data.train_subset=300", "train.epochs=2", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    show = run_cli("show", str(tmp_path / "run"), cwd=tmp_path)
    assert show.returncode == 0 and show.stderr == ""
    trained = printed(train.stdout)
    assert printed(show.stdout)[: len(trained)] == trained  # then what training does not print:
    assert sum("train loss" in line for line in printed(show.stdout)) == 1
    assert any("╰" in line for line in trained)
    layers = boxed("\n".join(printed(show.stdout)[len(trained):]))
    assert printed(show.stdout)[len(trained)].startswith("per-layer gradients")
    assert list(layers) == ["layer", "1", "2"]  # 784-128-10: two weight matrices
    assert all(re.fullmatch(r"\d\.\d\de[-+]\d\d", cell) for cell in layers["1"][1:] + layers["2"][1:])


def test_sweep_reports_each_job_and_writes_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=1", "device=cpu",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "Callback" not in proc.stderr
    for job, size in (("0", 16), ("1", 32)):  # every job ran, each with its own value
        job_summary = json.loads((sweep / job / "summary.json").read_text())
        assert job_summary["status"] == "completed" and job_summary["config"]["model"]["hidden_size"] == size
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"job {job} "))
        assert f"model.hidden_size={size}" in line and re.search(r"test acc \d+\.\d\d%, completed, [\d.]+ s", line)
    # each job's line as it ends, in order; the jobs' own headers and tables stay in their folders
    assert proc.stdout.index("job 0 ") < proc.stdout.index("job 1 ") and "784-32-10" not in proc.stdout
    with open(sweep / "sweep_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    accs = [float(r["final_test_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True) and {r["model.hidden_size"] for r in rows} == {"16", "32"}
    data = json.loads((sweep / "sweep_summary.json").read_text())
    assert data["differing_keys"] == ["model.hidden_size"] and len(data["runs"]) == 2
    headings, cells = table(proc.stdout[proc.stdout.index("best test acc first"):])
    assert headings[:3] == ["run", "model.hidden_size", "test acc"]
    assert [c[0] for c in cells] == [r["run"] for r in rows] and all(c[-1] == "completed" for c in cells)


@pytest.mark.parametrize("command", [["compare", "{runs}"], ["compare", "{runs}", "--json", "-"],
                                     ["compare", "{runs}", "--csv", "-"], ["show", "{runs}/a"], ["--hydra-help"]],
                         ids=["compare", "compare --json -", "compare --csv -", "show", "--hydra-help"])
def test_a_closed_stdout_ends_any_command_quietly_with_141(tmp_path, command):
    """`backprop-lab ... | head` where the reader has gone before the first line: 128 + SIGPIPE, as a
    shell reports it, and nothing on stderr (it was `cannot write None`, exit 1, or a traceback)."""
    make_run(tmp_path / "runs" / "a", [0.5, 0.6])
    make_run(tmp_path / "runs" / "b", [0.7, 0.8])
    argv = [part.format(runs=tmp_path / "runs") for part in command]
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_a_narrow_terminal_gets_whole_columns_and_the_names_of_those_left_out(tmp_path):
    """rich would cut the last columns (status, the results) to fit 60 columns; instead optional
    columns and then differing keys are left out, each shown column is whole, and a line names them."""
    from rich.console import Console

    from backprop_lab.compare import collect, differing_keys, print_table

    make_run(tmp_path / "runs" / "a-run-with-a-long-name", [0.5, 0.6], hidden=64)
    make_run(tmp_path / "runs" / "b", [0.7, 0.8], hidden=128)
    runs = collect([tmp_path / "runs"])
    console = Console(record=True, width=60, force_terminal=True)
    print_table(console, runs, differing_keys(runs))
    text = console.export_text()
    assert "a-run-with-a-long-name" in text and "…" not in text and text.count("completed") == 2
    assert "80.00%" in text and "60.00%" in text  # the final accuracies stay
    assert max(len(line) for line in text.splitlines()) <= 60
    assert " ".join(text.split()).endswith("1 differing key left out to fit 60 columns: model.hidden_size; "
                                           "choose columns with --keys KEY,KEY")
    assert console.width == 60  # put back for what is printed next


def test_a_plot_of_many_runs_draws_ten_with_a_legend_that_fits(tmp_path, capsys):
    from matplotlib.image import imread

    for job in range(15):
        make_run(tmp_path / "sweep" / str(job), [0.5, 0.6 + job / 100], hidden=16 + job, lr=0.01 * (job + 1))
    code, _, err = run_compare(capsys, str(tmp_path / "sweep"), "--plot", str(tmp_path / "many.png"))
    assert code == 0
    lines = err.strip().splitlines()
    assert lines == [f"warning: {tmp_path / 'many.png'} draws the first 10 of the 15 listed runs (more lines could "
                     f"not be told apart); choose which with --sort, --top or --filter"], err  # no matplotlib warning
    height, width = imread(tmp_path / "many.png").shape[:2]
    assert width == 1000 and height >= 400 + 10 * 20  # a legend row for each run drawn, below the plots
    code, _, err = run_compare(capsys, str(tmp_path / "sweep"), "--top", "3", "--plot", str(tmp_path / "few.png"))
    assert code == 0 and err == ""
    assert imread(tmp_path / "few.png").shape[0] < height


def test_best_acc_sorts_best_first_and_ranks_by_the_rows_when_summary_is_lost(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", [0.90, 0.95])
    make_run(tmp_path / "runs" / "b", [0.97, 0.80])  # best early, worst at the end
    lost = make_run(tmp_path / "runs" / "c", [0.93, 0.85])
    (lost / "summary.json").unlink()  # killed before its first summary: the rows are all there is
    _, out, _ = run_compare(capsys, str(tmp_path / "runs"), "--sort", "best_test_acc")
    assert labels(out) == ["b", "a", "c"]
    row = {r[0]: r for r in table(out)[1]}["c"]
    assert row[1:3] == ["85.00%", "93.00% (1)"]  # final from the last row, best from the best row
    _, out, _ = run_compare(capsys, str(tmp_path / "runs"), "--json", "-")
    c = next(r for r in json.loads(out)["runs"] if r["run"] == "c")
    assert (c["final_test_acc"], c["best_test_acc"], c["best_epoch"]) == (0.85, 0.93, 1)


def test_best_of_a_sweep_breaks_a_tie_in_final_accuracy_by_best_accuracy(tmp_path, capsys):
    for job, accs in enumerate([[0.80, 0.90], [0.95, 0.90], [0.70, 0.90]]):
        make_run(tmp_path / "sweep" / str(job), accs)
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    _, out, _ = run_compare(capsys, str(tmp_path / "sweep"), "--best")
    assert labels(out) == ["1"]


def test_piped_text_lines_stay_whole_and_panels_keep_their_frame():
    """A pipe gets rich's default 80 columns: a long line (a run's header, gradcheck's verdict)
    would be broken mid-phrase into two; it stays one line, and a panel still fits its frame."""
    import io

    from rich.panel import Panel

    from backprop_lab.report import OutputConsole

    out = io.StringIO()  # not a terminal, as a pipe or a file
    console = OutputConsole(file=out, width=80)
    line = "backprop-lab: 784-64-32-10 tanh, batch norm, dropout 0.2, lr 0.1, momentum 0.9 (Nesterov), weight decay 0.001"
    console.print(f"[bold]{line}[/bold]")
    console.print(Panel("an error message " * 8, title="summary"))
    lines = out.getvalue().splitlines()
    assert lines[0] == line
    assert all(len(row) <= 80 for row in lines[1:]) and lines[1].startswith("╭") and lines[-1].startswith("╰")


def test_a_narrow_terminal_keeps_the_column_the_runs_are_sorted_by(tmp_path, capsys, monkeypatch):
    make_run(tmp_path / "runs" / "a", [0.5, 0.6], hidden=64, lr=0.05)
    make_run(tmp_path / "runs" / "b", [0.7, 0.8], hidden=128, lr=0.1)
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run_compare(capsys, str(tmp_path / "runs"), "--sort", "optim.lr")
    assert code == 0
    flat = " ".join(out.split())
    assert "optim.lr" in table(out)[0] and "model.hidden_size" not in table(out)[0]
    assert "1 differing key left out to fit 60 columns: model.hidden_size" in flat
