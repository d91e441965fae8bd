"""Faults a run must survive: signals, kills, divergence, resume, full disks, random input."""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backprop_lab import rundir
from backprop_lab.config import Config
from backprop_lab.rundir import effective_status

from .conftest import run_cli

SMALL = ["data.train_subset=4000", "train.epochs=3", "device=cpu"]


def small_config(epochs: int, train_subset: int):
    """The typed config of a short CPU run, for runner.run called in-process."""
    cfg = Config()
    return replace(cfg, train=replace(cfg.train, epochs=epochs), data=replace(cfg.data, train_subset=train_subset),
                   device="cpu")


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
    done = summary(run_dir)
    assert done["status"] == "completed" and done["epochs_completed"] == 3
    assert "signal" not in done  # it stopped the first part, not the run (a sweep would stop on it again)
    assert done["wall_seconds"] > done["train_seconds"]  # both parts' wall time, the stopped one too
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


@pytest.mark.slow  # `make test` stays near 5 minutes; `make test-slow` and CI run it
def test_resume_refuses_a_different_config_and_completed_runs(tmp_path, uninterrupted):
    done = run_cli("resume", str(uninterrupted), cwd=tmp_path)
    assert done.returncode == 0 and "nothing to do" in done.stdout
    for mistake, expected in (("optim.lrr=0.5", "did you mean 'optim.lr'?"), ("train.epochs=6", "resume refused"),
                              ("seed=5", "resume refused: the config differs from the run's own in seed (0 -> 5)")):
        refused = run_cli("resume", str(uninterrupted), mistake, cwd=tmp_path)  # not "nothing to do"
        assert refused.returncode == 2 and "nothing to do" not in refused.stdout, refused.stdout
        (line,) = [l for l in refused.stderr.splitlines() if l.strip()]
        assert expected in line
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
    assert missing.returncode == 2 and "nowhere does not exist" in missing.stderr


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

    from backprop_lab import rundir, runner

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
    cfg = small_config(epochs=3, train_subset=500)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_atomic = rundir.atomic_write

    def atomic_until_full(path, write, mode="w"):
        if calls["n"] > 1:
            no_space()
        real_atomic(path, write, mode)

    monkeypatch.setattr(rundir, "atomic_write", atomic_until_full)
    with pytest.raises(SystemExit) as info:
        runner.run(cfg, run_dir, [])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: cannot write to the run directory {run_dir}: no space left on device; free some space, then "
        f"continue with: backprop-lab resume {run_dir} (the 1 completed epoch is saved)"]
    s = summary(run_dir)
    assert s["epochs_completed"] == 1 and len(metrics(run_dir)) == 1  # what was written before is intact


def test_a_disk_full_before_the_first_epoch_leaves_no_half_made_run(tmp_path, monkeypatch, capsys):
    import errno

    from backprop_lab import rundir, runner

    def no_space(self, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.RunWriter, "save_checkpoint", no_space)  # the epoch-0 checkpoint
    cfg = small_config(epochs=1, train_subset=200)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(SystemExit) as info:
        runner.run(cfg, run_dir, [])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: cannot write to the run directory {run_dir}: no space left on device; "
                                       f"free some space, then run it again\n")
    assert list(run_dir.iterdir()) == []  # no metrics.csv header to make the rerun refuse the folder


def test_torch_save_on_a_full_disk_raises_the_disk_error_not_torchs_own(tmp_path):
    import errno

    import torch

    from backprop_lab import rundir

    # /dev/full fails every write with ENOSPC, as a full disk does; torch.save alone says "unexpected pos"
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as info:
        rundir.torch_save({"W1": torch.zeros(784, 128)}, full)
    assert info.value.errno == errno.ENOSPC
    with open(tmp_path / "w.pt", "wb") as f:
        rundir.torch_save({"W1": torch.ones(3)}, f)
    assert torch.load(tmp_path / "w.pt", weights_only=True)["W1"].tolist() == [1.0, 1.0, 1.0]


def test_a_log_file_on_a_full_disk_adds_no_logging_traceback(tmp_path, capsys):
    import errno
    import logging

    from backprop_lab import runner

    class FullDisk(logging.Handler):  # Hydra's file handler, once the disk is full
        def emit(self, record):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                self.handleError(record)

    handler, logger = FullDisk(), logging.getLogger("backprop_lab")
    logger.addHandler(handler)
    raising, level = logging.raiseExceptions, logger.level
    logger.setLevel(logging.INFO)  # as Hydra's job logging sets it
    try:
        cfg = small_config(epochs=1, train_subset=500)
        (tmp_path / "run").mkdir()
        assert runner.run(cfg, tmp_path / "run", []) is not None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logging.raiseExceptions = raising
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert summary(tmp_path / "run")["status"] == "completed"


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


@pytest.mark.slow  # a full-data run until its plots start, about 15 s
@pytest.mark.parametrize("gap", [0.0, 0.05, 0.3])
def test_a_second_signal_after_the_run_ended_keeps_the_exit_status_and_prints_no_traceback(tmp_path, gap):
    """Ctrl-C pressed twice as the run finishes: the first skips the plots; the second may land in
    matplotlib's weakref callbacks, in the last lines printed or in Python's exit."""
    run_dir = tmp_path / "run"
    proc = start("train.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    deadline = time.time() + 120
    while not (run_dir / "weights.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # not -2, a process killed by the signal
    assert "Traceback" not in err and "Exception ignored" not in err and "while starting" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGINT after training; the run is complete")
    assert summary(run_dir)["status"] == "completed"


def test_a_model_too_large_for_memory_is_one_line(tmp_path):
    proc = run_cli("model.hidden_size=1000000000", "train.epochs=1", "data.train_subset=100", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "784-1000000000-10 model does not fit in the memory" in lines[0], proc.stderr
    assert not list(tmp_path.rglob("*/*"))  # no run directory, nor an empty day folder (outputs/ may stay)


# --- resume: read-only folders, concurrent resumes, moved runs, devices, bad checkpoints ---


@pytest.fixture(scope="module")
def stopped_template(tmp_path_factory):
    """A run stopped by Ctrl-C after the first of its two epochs (made in-process: cheap); tests
    resume copies of it (`stopped`), each somewhere else than where it was made."""

    from backprop_lab import report, runner

    cfg = small_config(epochs=2, train_subset=500)
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    run_dir.mkdir()
    real_epoch = report.Reporter.epoch

    def epoch_then_ctrl_c(self, row):
        real_epoch(self, row)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.Reporter, "epoch", epoch_then_ctrl_c)
        with pytest.raises(SystemExit) as info:
            runner.run(cfg, run_dir, ["train.epochs=2", "data.train_subset=500", "device=cpu"])
    assert info.value.code == 130
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["epochs_completed"] == 1
    return run_dir


@pytest.fixture
def stopped(tmp_path, stopped_template):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(stopped_template, run_dir, symlinks=True)  # as `cp -a` would
    return run_dir


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def resume_here(run_dir: Path, *overrides: str) -> int:
    from backprop_lab import resume

    return resume.main([str(run_dir), *overrides])


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def marked_running(run_dir: Path, **fields) -> None:
    s = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**s, "status": "running", **fields}))


def test_a_run_marked_running_on_another_machine_resumes_only_with_force(stopped, capsys):
    """E.g. a cluster job's folder, its job preempted: this machine cannot see that process."""
    marked_running(stopped, host="cluster-node-7", pid=12345)
    before = files_of(stopped)
    assert resume_here(stopped) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{stopped} is marked running (pid 12345 on cluster-node-7, another machine" in line
    assert line.endswith(f"continue it here with: backprop-lab resume {stopped} --force")
    assert files_of(stopped) == before
    assert resume_here(stopped, "--force") == 0
    done = json.loads((stopped / "summary.json").read_text())
    assert done["status"] == "completed" and done["epochs_completed"] == 2 and done["host"] == platform.node()
    assert done["boot_id"] == rundir.boot_id()  # kept, so a restart of this machine is told from a live run


def test_a_run_running_here_is_not_resumed_even_with_force(stopped, capsys):
    marked_running(stopped, host=platform.node(), pid=os.getpid(), boot_id=rundir.boot_id())  # alive: this test
    before = files_of(stopped)
    assert resume_here(stopped, "--force") == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {stopped} is still running (pid {os.getpid()} on {platform.node()}); wait for it to " \
                   f"finish, or stop it first"
    assert files_of(stopped) == before


def test_a_pid_from_before_a_restart_of_this_machine_is_no_running_run(monkeypatch):
    monkeypatch.setattr(rundir, "boot_id", lambda: "this-boot")
    alive = {"status": "running", "host": platform.node(), "pid": os.getpid()}
    assert rundir.effective_status({**alive, "boot_id": "this-boot"}) == "running"
    assert rundir.effective_status({**alive, "boot_id": "another-boot"}) == "incomplete"
    assert rundir.effective_status(alive) == "running"  # a summary from before boot ids were kept


def test_resume_on_a_read_only_file_system_is_one_line_and_changes_nothing(stopped, monkeypatch, capsys):
    import builtins
    import errno

    inside = str(stopped)

    def read_only(path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *a, **k):
        if str(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            read_only(path)
        return real_os_open(path, flags, *a, **k)

    def opener(real):
        def open_(file, mode="r", *a, **k):
            if str(file).startswith(inside) and any(c in mode for c in "wax+"):
                read_only(file)
            return real(file, mode, *a, **k)
        return open_

    before = files_of(stopped)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", opener(real_open))  # logging.FileHandler's too
    assert resume_here(stopped) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write to {stopped}: read-only file system" in line and "resume the copy" in line
    assert files_of(stopped) == before

    # A completed run needs no writing: on read-only media it still says so.
    monkeypatch.undo()
    (stopped / "summary.json").write_text(json.dumps({**summary(stopped), "status": "completed"}))
    monkeypatch.setattr(os, "open", os_open)
    assert resume_here(stopped) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resume_after_a_kill_mid_row_rewrites_the_epoch_from_its_checkpoint(stopped, capsys):
    assert resume_here(stopped) == 0  # both epochs now; checkpoint.pt holds epoch 2 and its rows
    whole = {name: (stopped / name).read_bytes() for name in ("metrics.csv", "grads.csv")}
    # as if killed while epoch 2's rows were being written: metrics.csv's row cut mid-line,
    # grads.csv with one whole row of epoch 2 and the next cut, summary.json still at epoch 1
    text = whole["metrics.csv"]
    (stopped / "metrics.csv").write_bytes(text[:text.rstrip(b"\r\n").rfind(b"\n") + 1 + 30])
    text = whole["grads.csv"]
    second_row_of_epoch_2 = text.find(b"\n2,", text.find(b"\n2,") + 1) + 1
    (stopped / "grads.csv").write_bytes(text[:second_row_of_epoch_2 + 20])
    assert not (stopped / "metrics.csv").read_bytes().endswith(b"\n")
    s = summary(stopped)
    (stopped / "summary.json").write_text(json.dumps({**s, "epochs_completed": 1, "status": "interrupted"}))
    assert resume_here(stopped) == 0
    assert {name: (stopped / name).read_bytes() for name in whole} == whole  # each row once, none cut
    assert summary(stopped)["epochs_completed"] == 2 and summary(stopped)["status"] == "completed"
    capsys.readouterr()


def test_a_second_resume_is_refused_while_one_holds_the_run(stopped, capsys):
    import fcntl

    before = files_of(stopped)
    fd = os.open(stopped / ".backprop-lab.lock", os.O_RDWR | os.O_CREAT)  # as a resume in progress holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        assert resume_here(stopped) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{stopped} is being resumed by another process (pid {os.getpid()})" in line
        after = files_of(stopped)
        after.pop(".backprop-lab.lock")
        assert after == before
    finally:
        os.close(fd)
    assert resume_here(stopped) == 0  # once it is let go
    assert [r["epoch"] for r in metrics(stopped)] == ["1", "2"]
    assert not (stopped / ".backprop-lab.lock").exists()


def test_a_holder_that_has_not_written_its_pid_yet_is_still_named(stopped, capsys):
    import fcntl

    fd = os.open(stopped / ".backprop-lab.lock", os.O_RDWR | os.O_CREAT)  # flocked, pid not yet written
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert resume_here(stopped) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{stopped} is being resumed by another process; wait for it to finish" in line
    finally:
        os.close(fd)


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_two_resumes_started_together_train_each_epoch_once(stopped):
    env = {**os.environ, "COLUMNS": "120"}
    procs = [subprocess.Popen([sys.executable, "-m", "backprop_lab", "resume", str(stopped)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert [r["epoch"] for r in metrics(stopped)] == ["1", "2"]  # neither epoch twice
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            # the pid is named when the holder has written it yet (the test above checks that form)
            assert f"{stopped} is being resumed by another process" in one_error_line(err)
    assert summary(stopped)["status"] == "completed"


@pytest.mark.slow  # `make test-slow` (and CI) run it
def test_a_moved_run_resumes_and_reports_its_new_path(stopped, stopped_template, capsys):
    from backprop_lab import compare

    assert summary(stopped)["run_dir"] == str(stopped_template)  # as `cp -a` leaves it
    assert resume_here(stopped) == 0
    out = capsys.readouterr().out
    assert out.count(str(stopped)) == 3 and str(stopped_template) not in out  # "resuming", header, summary panel
    assert summary(stopped)["run_dir"] == str(stopped)
    assert compare.show_main([str(stopped)]) == 0
    shown = capsys.readouterr().out
    assert shown.count(str(stopped)) == 2 and str(stopped_template) not in shown
    assert [r["epoch"] for r in metrics(stopped)] == ["1", "2"]
    assert summary(stopped_template)["status"] == "interrupted"  # the original is left alone


def as_if_made_on(run_dir: Path, config_device: str, device: str, dropout_state) -> None:
    s = summary(run_dir)
    s["config"]["device"], s["device"] = config_device, device
    (run_dir / "summary.json").write_text(json.dumps(s))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    checkpoint["dropout_generator"] = dropout_state
    torch.save(checkpoint, run_dir / "checkpoint.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_run_resumes_on_a_cpu_only_machine_with_device_cpu(stopped, capsys):
    # as a run made with device=cuda: a CUDA generator's state is 16 bytes (seed, offset)
    as_if_made_on(stopped, "cuda", "cuda", torch.tensor([7] * 8 + [0] * 8, dtype=torch.uint8))
    before = files_of(stopped)
    assert resume_here(stopped) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "device=cuda" in line and f"backprop-lab resume {stopped} device=cpu" in line
    assert files_of(stopped) == before

    assert resume_here(stopped, "device=cpu") == 0, capsys.readouterr().err
    assert "no longer bitwise identical" in capsys.readouterr().out
    s = summary(stopped)
    assert s["status"] == "completed" and s["device"] == "cpu"
    assert s["device_changes"] == [{"after_epoch": 1, "from": "cuda", "to": "cpu"}]
    assert [r["epoch"] for r in metrics(stopped)] == ["1", "2"]


@pytest.mark.slow  # `make test-slow` (and CI) run it
def test_resume_takes_device_and_threads_but_refuses_hyperparameters(stopped, capsys):
    as_if_made_on(stopped, "auto", "cpu", torch.Generator().manual_seed(1).get_state())  # device=auto, ran on the CPU
    assert resume_here(stopped, "device=cpu", "optim.lr=0.5") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "resume refused" in line and "optim.lr (0.1 -> 0.5)" in line and "device" not in line.split("start")[0]
    threads = torch.get_num_threads()
    try:
        assert resume_here(stopped, "device=cpu", "threads=1") == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)  # the run set it for this whole process
    assert summary(stopped)["status"] == "completed" and "device_changes" not in summary(stopped)
    assert summary(stopped)["machine"].endswith("torch threads 1")  # what it continued on


@pytest.mark.parametrize("damage,reason", [
    (lambda p: p.write_text("hello, not a checkpoint\n"), "not a torch save file"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "damaged torch archive"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
])
def test_a_damaged_checkpoint_is_one_clear_line(stopped, capsys, damage, reason):
    damage(stopped / "checkpoint.pt")
    before = files_of(stopped)
    assert resume_here(stopped) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot read {stopped / 'checkpoint.pt'}: not a readable checkpoint (corrupt or truncated: {reason}" in line
    assert "metrics and summary are intact" in line and len(line) < 300
    assert files_of(stopped) == before


def test_a_missing_checkpoint_is_named_as_missing(stopped, capsys):
    (stopped / "checkpoint.pt").unlink()
    before = files_of(stopped)
    assert resume_here(stopped) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint.pt is missing" in line and "resume needs it" in line and "version" not in line
    assert files_of(stopped) == before


def test_a_second_signal_while_the_weights_are_saved_is_recorded_resumably(tmp_path, monkeypatch, capsys):
    """Two signals arrive while weights.pt is being written: the run is recorded as interrupted
    by that signal (a sweep stops on it), in one line, and resume finishes it."""

    from backprop_lab import rundir, runner

    sig, code = signal.SIGTERM, 143  # SIGINT takes the same path; its code was the one used for both
    real_save = rundir.RunWriter.save_weights

    def signalled_twice(self, params):
        os.kill(os.getpid(), sig)  # the first asks to stop after the batch; training is over
        os.kill(os.getpid(), sig)  # the second stops at once
        real_save(self, params)

    monkeypatch.setattr(rundir.RunWriter, "save_weights", signalled_twice)
    cfg = small_config(epochs=2, train_subset=500)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(SystemExit) as info:
        runner.run(cfg, run_dir, [])
    assert info.value.code == code
    err = capsys.readouterr().err
    name = signal.Signals(sig).name
    assert f"error: stopped by {name} while saving the weights" in err and "Traceback" not in err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["signal"] == name and s["epochs_completed"] == 2
    assert s["finished_at"] is not None and not (run_dir / "weights.pt").exists()
    assert not isinstance(signal.getsignal(sig), runner.StopRequest)  # the handlers were put back
    monkeypatch.setattr(rundir.RunWriter, "save_weights", real_save)
    assert runner.run(cfg, run_dir, [], resume=True) is not None  # what `backprop-lab resume` runs, once checked
    assert summary(run_dir)["status"] == "completed" and (run_dir / "weights.pt").is_file()


def test_files_replaced_atomically_get_the_mode_a_plain_write_would(tmp_path):
    from backprop_lab import rundir

    rundir.atomic_write(tmp_path / "summary.json", lambda f: f.write("{}"))
    (tmp_path / "plain.json").write_text("{}")
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("summary.json") == mode("plain.json") != 0o600  # not mkstemp's private 0600


def start_and_signal_while_starting(tmp_path: Path, times: int, *args: str,
                                    made: str = "outputs/*/*") -> tuple[subprocess.Popen, str]:
    """A run (with the default run folder, unless args name one), signalled `times` times as soon as
    Hydra's files are in the folder (`made`): torch and the data are still loading then (seconds),
    nothing is trained yet."""
    proc = start("data.train_subset=500", "train.epochs=1", *args, cwd=tmp_path)
    deadline = time.time() + 60
    while not list(tmp_path.glob(made + "/.hydra")) and time.time() < deadline:
        time.sleep(0.01)
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    return proc, err


@pytest.mark.slow  # a start signalled, then its resume: about 9 s; `make test-slow` (and CI) run it
def test_ctrl_c_while_starting_stops_at_the_first_batch_resumably(tmp_path):
    proc, err = start_and_signal_while_starting(tmp_path, 1)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGINT: stopping at the first batch" in err
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert err.strip().splitlines()[-1] == (f"error: stopped by SIGINT at epoch 1, batch 1; no epoch was completed "
                                            f"yet; continue with: backprop-lab resume {run_dir}")
    assert summary(run_dir)["status"] == "interrupted" and summary(run_dir)["signal"] == "SIGINT"
    resumed = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_a_second_ctrl_c_while_starting_stops_at_once_and_leaves_no_run_folder(tmp_path):
    proc, err = start_and_signal_while_starting(tmp_path, 2)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: stopped by SIGINT while starting; nothing was trained"
    assert list(tmp_path.glob("outputs/*/*")) == [] and list(tmp_path.glob("outputs/*")) == []


@pytest.mark.slow  # two starts and a run, about 8 s
@pytest.mark.parametrize("existed", [False, True], ids=["a new folder", "an empty folder of the user's"])
def test_a_second_ctrl_c_while_starting_leaves_a_named_run_folder_as_it_was(tmp_path, existed):
    if existed:
        (tmp_path / "mine" / "try1").mkdir(parents=True)
    proc, err = start_and_signal_while_starting(tmp_path, 2, "hydra.run.dir=mine/try1", made="mine/try1")
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == (
        "error: stopped by SIGINT while starting; nothing was trained"), err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == (
        ["mine", "mine/try1"] if existed else [])
    again = run_cli("data.train_subset=500", "train.epochs=1", "hydra.run.dir=mine/try1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # the same command runs


@pytest.mark.slow  # two refused starts and a run, about 10 s
def test_a_run_refused_at_the_start_leaves_a_named_run_folder_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "backprop-lab.log").write_text("the user's own line\n")
    for folder in ("mine", "new/deeper"):
        proc = run_cli(f"data.root={tmp_path}", "data.download=false", "train.epochs=1", f"hydra.run.dir={folder}",
                       cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: MNIST files not found in {tmp_path}"), proc.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/backprop-lab.log"]
    assert (tmp_path / "mine" / "backprop-lab.log").read_text().startswith("the user's own line\n")
    again = run_cli("data.train_subset=500", "train.epochs=1", "hydra.run.dir=mine", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # with the data found, the same folder takes the run


# The entry point, with SIGINT sent `times` times as the CLI module starts importing Hydra: the
# first ~0.3 s of a command, before any of backprop_lab.cli has run.
SIGNAL_DURING_IMPORT = """
import os, signal, sys
class SignalOnHydraImport:
    def find_spec(self, name, path, target=None):
        if name == "hydra":
            sys.meta_path.remove(self)
            for _ in range({times}):
                os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, SignalOnHydraImport())
sys.argv = ["backprop-lab", *{args!r}]
from backprop_lab.__main__ import main
main()
"""


@pytest.mark.parametrize("times,args,last_line", [
    (1, ["data.train_subset=500", "train.epochs=1"], "error: stopped by SIGINT at epoch 1, batch 1; no epoch was "
                                                      "completed yet; continue with: backprop-lab resume "),
    (2, ["data.train_subset=500", "train.epochs=1"], "error: stopped by SIGINT while starting; nothing was trained"),
    (1, ["compare", "."], "error: stopped by SIGINT"),
], ids=["a run stops at the first batch", "a second stops it at once", "compare stops"])
def test_ctrl_c_while_the_cli_is_imported_is_no_traceback(tmp_path, times, args, last_line):
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING_IMPORT.format(times=times, args=args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(last_line), proc.stderr
    runs = list(tmp_path.glob("outputs/*/*"))
    if times == 1 and args[0] != "compare":
        assert "SIGINT: stopping at the first batch" in proc.stderr
        assert len(runs) == 1 and summary(runs[0])["status"] == "interrupted"
    else:
        assert runs == []


def damage(run_dir: Path, case: str) -> None:
    s = summary(run_dir)
    s["status"] = "interrupted"  # as Ctrl-C after the last epoch's checkpoint would leave it
    metrics_csv = run_dir / "metrics.csv"
    if case == "metrics.csv missing":
        metrics_csv.unlink()
    elif case == "metrics.csv garbage":
        metrics_csv.write_bytes(bytes(range(256)) * 2)
    elif case == "first row cut":
        metrics_csv.write_bytes(metrics_csv.read_bytes()[:len(metrics_csv.read_text().splitlines()[0]) + 20])
    elif case == "checkpoint of another run":
        s["epochs_completed"] = 1  # its checkpoint is of epoch 3
    elif case == "summary ahead of its checkpoint":
        s["epochs_completed"], s["epochs_planned"] = 5, 6  # its checkpoint is of epoch 3
    elif case == "a row too many":
        metrics_csv.write_text(metrics_csv.read_text() + metrics_csv.read_text().splitlines()[-1] + "\n")
    elif case == "epochs_completed not a count":
        s["epochs_completed"] = "x"
    elif case == "config missing":
        del s["config"]
    elif case == "wall_seconds missing":  # the resumed run adds its time to it
        del s["wall_seconds"]
    elif case == "status missing":  # not read as a run to continue
        del s["status"]
    elif case == "status unknown":
        s["status"] = "paused"
    (run_dir / "summary.json").write_text(json.dumps(s))


DAMAGE = {
    "metrics.csv missing": "metrics.csv is missing; the run cannot be resumed without losing its rows",
    "metrics.csv garbage": "metrics.csv cannot be read",
    "first row cut": "metrics.csv does not hold one whole row for each of the 3 completed epoch(s)",
    "checkpoint of another run": "checkpoint.pt is of epoch 3, but summary.json counts 1 completed epoch(s)",
    "summary ahead of its checkpoint": "checkpoint.pt is of epoch 3, but summary.json counts 5 completed epoch(s)",
    "a row too many": "metrics.csv holds more than the rows of the 3 completed epoch(s) the summary counts",
    "epochs_completed not a count": "summary.json is damaged (epochs_completed missing or of the wrong type)",
    "config missing": "summary.json is damaged (config missing or of the wrong type)",
    "wall_seconds missing": "summary.json is damaged (wall_seconds missing or of the wrong type)",
    "status missing": "summary.json is damaged (its status is null, not one of running, completed, interrupted, "
                      "diverged, failed)",
    "status unknown": "summary.json is damaged (its status is \"paused\", not one of running, completed,",
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_refuses_a_run_whose_files_disagree_and_changes_nothing(tmp_path, uninterrupted, case, capsys):
    """Appending to a damaged metrics.csv, or continuing another run's checkpoint, would lose
    or mix rows; such a run is refused in one line, its files left as they were."""
    import shutil

    from backprop_lab import resume

    run_dir = tmp_path / "copy"
    shutil.copytree(uninterrupted, run_dir)
    damage(run_dir, case)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert resume.main([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and DAMAGE[case] in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_weights_drawn_too_large_to_train_name_the_init_scale(tmp_path, capsys):

    from backprop_lab import runner

    cfg = Config()
    cfg = replace(cfg, model=replace(cfg.model, init_scale=1e300), train=replace(cfg.train, epochs=1),
                  data=replace(cfg.data, train_subset=500), device="cpu")
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as info:
        runner.run(cfg, tmp_path / "run", [])
    assert info.value.code == 3
    assert capsys.readouterr().err.strip().endswith("the loss is no longer finite; try a smaller model.init_scale")


# backprop_lab.__main__.exit_now skips Python's teardown (0.4-0.6 s after importing torch); what
# a normal exit does for the user must still happen.
EXIT_NOW = """
import atexit, sys, threading, time
from pathlib import Path
from backprop_lab.__main__ import exit_now
atexit.register(lambda: Path("handler-ran").write_text("yes"))
print("written before the exit", end="")  # still in stdout's buffer: a pipe is block-buffered
if {thread}:
    threading.Thread(target=lambda: (time.sleep(0.5), Path("thread-done").write_text("yes"))).start()
exit_now({code})
sys.exit(7)  # reached only when exit_now leaves the exit to Python
"""


@pytest.mark.parametrize("code,thread,rc", [(3, False, 3), (None, False, 0), (2, True, 7), ("a message", False, 7)],
                         ids=["a status", "no status", "a thread still working", "a status that is text"])
def test_exit_now_runs_the_exit_handlers_and_flushes_what_was_printed(tmp_path, code, thread, rc):
    proc = subprocess.run([sys.executable, "-c", EXIT_NOW.format(code=repr(code), thread=thread)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=BUFFERED)
    assert (proc.returncode, proc.stdout) == (rc, "written before the exit"), proc.stderr
    assert (tmp_path / "handler-ran").read_text() == "yes"
    assert (tmp_path / "thread-done").exists() == thread  # a working thread is waited for, as Python does


BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as for most users


def test_exit_now_with_stdout_closed_from_the_start_exits_with_the_status(tmp_path):
    script = EXIT_NOW.format(code=3, thread=False)
    proc = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >&-', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=BUFFERED)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "handler-ran").read_text() == "yes"


def test_exit_now_leaves_output_it_cannot_write_to_pythons_exit_which_reports_it(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the buffered line cannot be written
    proc = subprocess.run([sys.executable, "-c", EXIT_NOW.format(code=0, thread=False)], cwd=tmp_path,
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, env=BUFFERED)
    os.close(write_end)
    assert proc.returncode == 120 and "BrokenPipeError" in proc.stderr, proc.stderr  # Python's own exit: not 0
    assert (tmp_path / "handler-ran").read_text() == "yes"
