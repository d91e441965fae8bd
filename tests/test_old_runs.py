"""Run directories written by the previous release (0.1.0, before summary.json had a `schema`,
grads.csv a dead_fraction column, and the config train.max_loss_ratio and log.tensorboard) stay
readable by compare, show and TensorBoard's export, and resume continues them.

tests/fixtures/release-0.1.0/ holds two such runs, made by commit 08be7b7 (784-8-10, cpu):
`completed` (2 epochs on 200 images; its PNGs left out) and `interrupted` (Ctrl-C after epoch 1
of 3 on 30,000 images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.fixture
def outputs(tmp_path) -> Path:
    shutil.copytree(FIXTURES, tmp_path / "outputs")
    return tmp_path / "outputs"


def test_the_fixtures_are_of_the_old_layout():
    summary = json.loads((FIXTURES / "completed" / "summary.json").read_text())
    assert "schema" not in summary and "max_loss_ratio" not in summary["config"]["train"]
    assert (FIXTURES / "completed" / "grads.csv").read_text().splitlines()[0] == \
        "epoch,layer,grad_norm,weight_norm,update_ratio"


def test_compare_and_show_read_the_previous_releases_runs(outputs):
    proc = run_cli("compare", str(outputs), "--sort", "run", cwd=outputs.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing reads as damaged
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip().startswith(("completed", "interrupted"))}
    assert rows["completed"].rstrip().endswith("completed") and "2/2" in rows["completed"]
    assert rows["interrupted"].rstrip().endswith("interrupted") and "1/3" in rows["interrupted"]
    assert "max_loss_ratio" not in proc.stdout and "log.tensorboard" not in proc.stdout  # defaults, not differences
    shown = run_cli("show", str(outputs / "completed"), cwd=outputs.parent)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    assert "completed" in shown.stdout and "confusion matrix" in shown.stdout


@pytest.mark.slow  # a resumed run to its end: about 6 s
def test_resume_continues_a_previous_releases_interrupted_run(outputs):
    run_dir = outputs / "interrupted"
    proc = run_cli("resume", str(run_dir), cwd=outputs.parent)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["schema"] == 1 and summary["warnings"] == []
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2", "3"]
    grads = (run_dir / "grads.csv").read_text().splitlines()
    assert grads[0] == "epoch,layer,grad_norm,weight_norm,update_ratio"  # the file keeps its columns
    assert all(len(line.split(",")) == 5 for line in grads) and len(grads) == 1 + 3 * 2


def test_a_summary_of_a_newer_schema_is_refused_in_one_line(outputs):
    path = outputs / "completed" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": 99}))
    proc = run_cli("show", str(outputs / "completed"), cwd=outputs.parent)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "summary.json has schema 99: it was written by a newer backprop-lab" in proc.stderr
