"""Faults a run must survive: signals, kills, divergence, resume, full disks, random input."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backprop_lab.rundir import effective_status

from .conftest import ROOT, run_cli

SMALL = ["data.train_subset=4000", "train.epochs=3", "device=cpu"]


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-m", "backprop_lab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    """Read the table until the row of `epoch` has been printed."""
    for line in proc.stdout:
        if line.split()[:1] == [str(epoch)]:
            return
    raise AssertionError("the run ended before epoch %d: %s" % (epoch, proc.stderr.read()))


def metrics(run_dir: Path, drop_times: bool = True) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not (drop_times and k in ("seconds", "samples_per_s"))} for r in rows]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    proc = run_cli(*SMALL, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130),
                                      pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])  # same path, in make test-slow
def test_signal_stops_cleanly_and_resume_is_bitwise_identical(tmp_path, uninterrupted, sig, code):
    run_dir = tmp_path / "run"
    proc = start(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["epochs_completed"] >= 1
    assert len(metrics(run_dir)) == s["epochs_completed"]
    assert f"backprop-lab resume {run_dir}" in err and "Traceback" not in err
    assert not (run_dir / "weights.pt").exists()

    resumed = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["epochs_completed"] == 3
    assert metrics(run_dir) == metrics(uninterrupted)  # rows kept, then appended, all equal
    mine = torch.load(run_dir / "weights.pt", weights_only=True)
    whole = torch.load(uninterrupted / "weights.pt", weights_only=True)
    assert all(torch.equal(mine[k], whole[k]) for k in whole)


def test_second_ctrl_c_stops_at_once_and_leaves_consistent_files(tmp_path):
    run_dir = tmp_path / "run"
    proc = start("data.train_subset=20000", "train.epochs=50", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    s = summary(run_dir)
    assert s["status"] == "interrupted" and len(metrics(run_dir)) == s["epochs_completed"]


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_half_written_files(tmp_path):
    rng = random.Random(1234)
    for i in range(3):
        run_dir = tmp_path / f"run{i}"
        proc = start("data.train_subset=2000", "train.epochs=25", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        wait_for_epoch(proc, 1)
        time.sleep(rng.uniform(0, 0.6))
        proc.kill()
        proc.wait(timeout=30)
        s = summary(run_dir)  # valid JSON, whatever the moment
        assert effective_status(s) == "incomplete"
        rows = metrics(run_dir, drop_times=False)
        assert len(rows) >= s["epochs_completed"] >= 1
        assert all(None not in r.values() and "" not in r.values() for r in rows)  # whole rows only
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    # A killed run resumes too.
    resumed = run_cli("resume", str(tmp_path / "run0"), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(tmp_path / "run0")["epochs_completed"] == 25


def test_resume_refuses_a_different_config_and_completed_runs(tmp_path, uninterrupted):
    done = run_cli("resume", str(uninterrupted), cwd=tmp_path)
    assert done.returncode == 0 and "nothing to do" in done.stdout
    run_dir = tmp_path / "run"
    proc = start(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    other = run_cli("resume", str(run_dir), "optim.lr=0.5", "train.epochs=9", cwd=tmp_path)
    assert other.returncode == 2
    (line,) = [l for l in other.stderr.splitlines() if l.strip()]
    assert "resume refused" in line and "optim.lr (0.1 -> 0.5)" in line and "train.epochs (3 -> 9)" in line
    same = run_cli("resume", str(run_dir), "optim.lr=0.1", cwd=tmp_path)  # agreeing keys are fine
    assert same.returncode == 0, same.stderr
    missing = run_cli("resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "not a backprop-lab run directory" in missing.stderr


def test_divergence_names_epoch_and_batch(tmp_path):
    proc = run_cli("optim.lr=1e30", "data.train_subset=2000", "train.epochs=2", f"hydra.run.dir={tmp_path / 'r'}",
                   cwd=tmp_path)
    assert proc.returncode == 3
    s = summary(tmp_path / "r")
    assert s["status"] == "diverged" and s["diverged_at"]["epoch"] == 1 and s["diverged_at"]["batch"] >= 1
    assert "smaller optim.lr" in proc.stderr
    refused = run_cli("resume", str(tmp_path / "r"), cwd=tmp_path)
    assert refused.returncode == 2 and "diverged" in refused.stderr


def test_full_disk_during_a_run_is_reported_and_earlier_epochs_survive(tmp_path, monkeypatch, capsys):
    """The disk fills up after the first epoch: every later write fails with ENOSPC."""
    import errno

    from backprop_lab import cli, rundir
    from backprop_lab.config import Config
    from dataclasses import replace

    real_append = rundir.RunWriter.append
    calls = {"n": 0}

    def append_then_fill(self, row):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, row)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.RunWriter, "append", append_then_fill)
    cfg = Config()
    cfg = replace(cfg, train=replace(cfg.train, epochs=3), data=replace(cfg.data, train_subset=500), device="cpu")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_atomic = rundir.atomic_write

    def atomic_until_full(path, write, mode="w"):
        if calls["n"] > 1:
            no_space()
        real_atomic(path, write, mode)

    monkeypatch.setattr(rundir, "atomic_write", atomic_until_full)
    with pytest.raises(SystemExit) as info:
        cli.run(cfg, run_dir, [])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    s = summary(run_dir)
    assert s["epochs_completed"] == 1 and len(metrics(run_dir)) == 1  # what was written before is intact


@pytest.mark.slow  # a run and its resume, about 13 s
def test_a_closed_stdout_stops_the_run_resumably(tmp_path, uninterrupted):
    """`backprop-lab ... | head`: the reader goes away after the table's first row."""
    run_dir = tmp_path / "run"
    proc = start(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as a shell reports it
    assert err.count("\n") == 1 and "standard output was closed" in err and f"backprop-lab resume {run_dir}" in err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["epochs_completed"] >= 1 and s["signal"] == "SIGPIPE"
    assert len(metrics(run_dir)) == s["epochs_completed"]
    resumed = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(run_dir) == metrics(uninterrupted)


@pytest.mark.slow  # a run and its resume, about 15 s
def test_resume_after_a_kill_between_the_row_and_the_summary_adds_no_row_twice(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epoch(proc, 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    s = summary(run_dir)
    done = s["epochs_completed"]
    assert len(metrics(run_dir)) == done >= 2
    # as if killed after metrics.csv and the checkpoint got epoch `done`, before summary.json did
    s.update(epochs_completed=done - 1, status="running", pid=2**22 + 1)
    (run_dir / "summary.json").write_text(json.dumps(s))
    resumed = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(run_dir) == metrics(uninterrupted)  # each epoch once
    assert summary(run_dir)["best_test_acc"] == summary(uninterrupted)["best_test_acc"]


@pytest.mark.slow  # a full-data run until its plots start, about 15 s
def test_sigterm_while_the_plots_are_drawn_skips_them_and_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    proc = start("train.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    deadline = time.time() + 120
    while not (run_dir / "weights.pt").exists() and time.time() < deadline:  # the plots come right after
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "the run is complete" in err and "Traceback" not in err
    s = summary(run_dir)
    assert s["status"] == "completed" and s["signal"] == "SIGTERM" and (run_dir / "weights.pt").exists()


def test_a_model_too_large_for_memory_is_one_line(tmp_path):
    proc = run_cli("model.hidden_size=1000000000", "train.epochs=1", "data.train_subset=100", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "784-1000000000-10 model does not fit in the memory" in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").glob("*/*/summary.json"))
