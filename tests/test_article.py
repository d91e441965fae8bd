"""The chapter's full 20-epoch run, end to end (slow: about half a minute of training)."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli


@pytest.mark.slow
def test_article_run_reaches_the_chapters_accuracy(tmp_path):
    proc = run_cli("experiment=article", "device=cpu", f"hydra.run.dir={tmp_path / 'article'}",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "article" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 20
    assert summary["data"]["train_size"] == 60000
    assert 0.970 <= summary["final_test_acc"] <= 0.985


@pytest.mark.slow
def test_book_ch10_run_reaches_the_books_accuracy(tmp_path):
    """The book's 196-100-50-10 sigmoid/MSE network, 40,000 steps (about 35 s of training)."""
    run_dir = tmp_path / "book"
    proc = run_cli("experiment=book_ch10", "device=cpu", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == summary["epochs_planned"] == 43
    assert summary["final_test_acc"] >= 0.965
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    last = dict(zip(rows[0].split(","), map(float, rows[-1].split(","))))
    # 40,000 steps of 64 = 42 full epochs of 938 steps and 604 steps (38,656 images) in the 43rd
    assert round(last["samples_per_s"] * last["seconds"]) == (40_000 - 42 * 938) * 64
    predicted = run_cli("predict", str(run_dir), "--from-test", "0", cwd=tmp_path)
    assert predicted.returncode == 0 and "test image 0 (true label 7)" in predicted.stdout
    first_row = [line for line in predicted.stdout.splitlines() if "test image 0" in line][0]
    assert first_row.split("│")[2].split()[0] == "7"  # the 14x14 model reads the pooled test image right
