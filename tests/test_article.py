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
