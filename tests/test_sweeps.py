"""Sweeps through real launchers and sweepers, as a user runs them: joblib, submitit_local, an
Optuna search, resuming a sweep, fail-fast, and the `threads` key. Each is a subprocess on 300
training images for one epoch, so the whole file takes about a minute on 2 cores."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from .conftest import run_cli

CONF = Path(__file__).resolve().parent.parent / "conf"

TINY = ("data.train_subset=300", "train.epochs=1", "device=cpu")


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def clean(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert "Callback" not in proc.stderr, proc.stderr


@pytest.mark.slow  # each a 2-job sweep through a launcher's own processes: about 9 s
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_job_sweep_through_a_real_launcher(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model.hidden_size=16,32", *TINY, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    clean(proc)
    sizes = set()
    for job in ("0", "1"):
        s = summary(sweep / job)
        assert s["status"] == "completed"
        sizes.add(s["config"]["model"]["hidden_size"])
        if launcher == "joblib":  # threads=null under joblib: cores // n_jobs, and n_jobs=-1 is one job per core
            assert s["machine"].endswith("torch threads 1")
    assert sizes == {16, 32}
    assert len(json.loads((sweep / "sweep_summary.json").read_text())["runs"]) == 2
    assert "best test acc first" in proc.stdout
    if launcher == "submitit_local":
        assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit


@pytest.mark.slow
def test_optuna_search_names_the_best_parameters(tmp_path):
    sweep = tmp_path / "search"
    # with a search space of our own for the learning rate, as docs/sweeps.md shows it
    proc = run_cli("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=3", "optim.lr=tag(log, interval(0.02, 0.04))",
                   *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    clean(proc)
    assert "alembic" not in proc.stdout + proc.stderr  # Optuna's database layer keeps its INFO lines to itself
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optim.lr", "model.hidden_size", "model.init_scale", "data.batch_size"}
    accs = {job: summary(sweep / job)["final_test_acc"] for job in ("0", "1", "2")}
    assert result["best_value"] == pytest.approx(max(accs.values()))
    best = summary(sweep / max(accs, key=accs.get))["config"]
    assert best["model"]["hidden_size"] == result["best_params"]["model.hidden_size"]
    assert best["optim"]["lr"] == pytest.approx(result["best_params"]["optim.lr"])
    assert all(0.02 <= summary(sweep / job)["config"]["optim"]["lr"] <= 0.04 for job in accs)  # ours, not the preset's


@pytest.mark.slow  # two Optuna passes, about 20 s
def test_an_optuna_search_resumes_its_trials_and_compare_groups_them(tmp_path):
    """Optuna writes no multirun.yaml: the folder is still known as a sweep, so `resume=true`
    continues it (the seeded sampler proposes the same trials again) and --best keeps one trial."""
    search = tmp_path / "search"
    command = ["-m", "hparams_search=mlp", *TINY, f"hydra.sweep.dir={search}"]
    first = run_cli(*command, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {job: (search / job / "summary.json").read_text() for job in ("0", "1")}
    more = run_cli(*command, "hydra.sweeper.n_trials=3", "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    clean(more)
    assert more.stdout.count("already completed") == 2 and summary(search / "2")["status"] == "completed"
    assert {job: (search / job / "summary.json").read_text() for job in ("0", "1")} == before  # skipped, not retrained
    # `resume SWEEP_DIR` rebuilds the search's command from what its start recorded (no multirun.yaml)
    again = run_cli("resume", str(search), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "hparams_search=mlp" in again.stdout.splitlines()[0] and "hydra.sweeper.n_trials=3" in again.stdout
    assert again.stdout.count("already completed") == 3
    best = run_cli("compare", str(tmp_path), "--best", "--json", "-", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    assert len(json.loads(best.stdout)["runs"]) == 1


@pytest.mark.slow
def test_resume_skips_completed_jobs_and_runs_only_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "model.hidden_size=16", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (sweep / "0" / "summary.json").read_text()

    # without the option, the sweep folder that holds jobs is refused, and kept as it is
    again = run_cli("-m", "model.hidden_size=16", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds a sweep" in again.stderr and "sweep_report.resume=true" in again.stderr
    assert (sweep / "0" / "summary.json").read_text() == before

    hydra_files = hydra_files_of(sweep / "0")
    proc = run_cli("-m", "model.hidden_size=16,32", *TINY, f"hydra.sweep.dir={sweep}",
                   "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    clean(proc)
    assert "job 0 (model.hidden_size=16" in proc.stdout and "already completed" in proc.stdout
    assert (sweep / "0" / "summary.json").read_text() == before  # skipped, not retrained
    assert hydra_files_of(sweep / "0") == hydra_files  # the run's own record, not this pass's
    assert yaml.safe_load((sweep / "1" / ".hydra" / "overrides.yaml").read_text())[0] == "model.hidden_size=32"
    # job 1 trained in this pass (its result line), job 0 did not (quiet sweeps print no run headers)
    assert re.search(r"job 1  model.hidden_size=32  ->  test acc [\d.]+%, completed", proc.stdout)
    assert "784-16-10" not in proc.stdout
    assert summary(sweep / "1")["status"] == "completed"
    assert len(json.loads((sweep / "sweep_summary.json").read_text())["runs"]) == 2

    # resumed with a grid whose job 0 is another config: refused, and reported as refused, not
    # with the accuracy of the run its folder holds
    other = run_cli("-m", "model.hidden_size=32", *TINY, f"hydra.sweep.dir={sweep}",
                    "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert "cannot resume" in other.stderr and "model.hidden_size (16 -> 32)" in other.stderr
    assert "job 0  model.hidden_size=32" in other.stdout
    assert "refused: its folder holds a run of another config: model.hidden_size (16 -> 32)" in other.stdout
    assert (sweep / "0" / "summary.json").read_text() == before
    assert hydra_files_of(sweep / "0") == hydra_files  # Hydra wrote hidden_size=32 there; put back
    assert not list(sweep.glob("*/.hydra.kept"))
    listed = {r["run"]: r for r in json.loads((sweep / "sweep_summary.json").read_text())["runs"]}
    assert listed["0"]["status"] == "refused" and listed["0"]["final_test_acc"] is None  # not the old run's result
    assert listed["1"]["status"] == "completed"
    assert other.returncode == 0  # job 1 of this sweep folder is completed

    # a setting of every job changed (the command is not the sweep's): refused whole, up front,
    # and the sweep's record is kept as it is
    record = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    changed = run_cli("-m", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=2", "device=cpu",
                      f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"error: {sweep} was made by a sweep with other overrides (train.epochs=1 there, train.epochs=2 here); to "
        f"resume it, give the same ones; it is kept as it is (for other values, choose another hydra.sweep.dir)"]
    assert "job " not in changed.stdout
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == record


@pytest.mark.slow
def test_a_resumed_sweep_leaves_a_job_another_process_is_resuming(tmp_path):
    import fcntl
    import os

    sweep = tmp_path / "sweep"
    first = run_cli("-m", "model.hidden_size=16", "data.train_subset=300", "train.epochs=2", "device=cpu",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    s = summary(sweep / "0")  # as if it had been stopped after its first epoch
    (sweep / "0" / "summary.json").write_text(json.dumps({**s, "status": "interrupted", "epochs_completed": 1}))
    fd = os.open(sweep / "0" / ".backprop-lab.lock", os.O_RDWR | os.O_CREAT)  # as `backprop-lab resume` holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        proc = run_cli("-m", "model.hidden_size=16", "data.train_subset=300", "train.epochs=2", "device=cpu",
                       f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    finally:
        os.close(fd)
    assert proc.returncode == 1  # its only job was refused
    assert f"is being resumed by another process (pid {os.getpid()})" in proc.stderr
    assert "784-16-10" not in proc.stdout  # not trained
    assert summary(sweep / "0")["epochs_completed"] == 1


def test_a_second_command_on_a_sweeps_folder_is_refused_whole_while_the_sweep_runs(tmp_path):
    """A resume started while the sweep still runs must not touch the folder: it once cleared
    the running sweep's stop marks and recorded its jobs as refused in that sweep's report."""
    import fcntl
    import os

    sweep = tmp_path / "sweep"
    first = run_cli("-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    record = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    fd = os.open(sweep / ".backprop-lab.lock", os.O_RDWR | os.O_CREAT)  # as the running sweep holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        second = run_cli("-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}",
                         "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path, timeout=60)
    finally:
        os.close(fd)
    assert second.returncode == 2 and second.stderr == (
        f"error: {sweep} is the folder of a sweep run by another process (pid {os.getpid()}); wait for it to finish "
        f"or stop it first\n")
    assert "job " not in second.stdout
    (sweep / ".backprop-lab.lock").unlink()
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == record


def hydra_files_of(job: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((job / ".hydra").iterdir())}


def test_a_sweep_folder_holding_other_runs_is_refused(tmp_path):
    run = tmp_path / "outputs" / "2026-11-30" / "10-00-00"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    before = sorted(tmp_path.rglob("*"))
    proc = run_cli("-m", "model.hidden_size=8,16", *TINY, "hydra.sweep.dir=outputs", cwd=tmp_path, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "hydra.sweep.dir=outputs holds other runs (outputs/2026-11-30/10-00-00)" in lines[0]
    # a folder of single runs is not a sweep to resume either
    proc = run_cli("-m", "model.hidden_size=8,16", *TINY, "hydra.sweep.dir=outputs/2026-11-30",
                   "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "holds runs (1) but no sweep (none of multirun.yaml, optimization_results.yaml" in lines[0]
    assert sorted(tmp_path.rglob("*")) == before


def a_sweep(root: Path, *jobs: str) -> None:
    """A sweep's folder as `-m` leaves it: its multirun.yaml and a summary.json per job."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}\n")
    for job in jobs:
        (root / job).mkdir(parents=True)
        (root / job / "summary.json").write_text("{}")


def test_a_run_or_a_sweep_into_a_sweeps_folder_is_refused_with_advice_that_works(tmp_path):
    a_sweep(tmp_path / "sw", "0", "1")
    a_sweep(tmp_path / "deep", "a/0")  # hydra.sweep.subdir='a/${hydra.job.num}'
    before = sorted(tmp_path.rglob("*"))
    run = run_cli(*TINY, "hydra.run.dir=sw", cwd=tmp_path, timeout=60)
    assert run.returncode == 2 and run.stderr == (
        "error: hydra.run.dir=sw is a sweep's folder, which holds its own jobs only; choose a folder outside it, "
        "or leave hydra.run.dir out for a fresh timestamped one\n")
    deep = run_cli("-m", "seed=1,2", *TINY, "hydra.sweep.dir=deep", "hydra.sweep.subdir=a/${hydra.job.num}",
                   cwd=tmp_path, timeout=60)
    assert deep.returncode == 2 and deep.stderr == (
        "error: deep already holds a sweep (jobs such as deep/a/0); it is kept as it is: choose another "
        "hydra.sweep.dir\n")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_file_where_a_jobs_folder_goes_refuses_the_sweep_before_any_job(tmp_path, launcher):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "1").write_text("precious")
    proc = run_cli("-m", "seed=1,2", *TINY, "hydra.sweep.dir=sw", f"hydra/launcher={launcher}", cwd=tmp_path,
                   timeout=60)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: sw/1 is a file, not a folder, and the sweep's job 1 needs a folder there: move "
        f"it, or choose another hydra.sweep.dir\n")
    assert "job " not in proc.stdout
    assert [p.name for p in (tmp_path / "sw").iterdir()] == ["1"] and (tmp_path / "sw" / "1").read_text() == "precious"


def test_the_slurm_launcher_off_a_slurm_cluster_is_one_line_and_leaves_no_folder(tmp_path):
    (tmp_path / "bin").mkdir()  # a PATH without srun, as on a laptop
    proc = run_cli("-m", "hydra/launcher=submitit_slurm", "seed=1,2", *TINY, cwd=tmp_path, timeout=60,
                   env={"PATH": str(tmp_path / "bin")})
    assert proc.returncode == 2 and proc.stderr == (
        "error: hydra/launcher=submitit_slurm needs a SLURM cluster, and this machine has no srun: run the sweep "
        "from the cluster's login node, or here with hydra/launcher=submitit_local or joblib\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_fail_fast_stops_the_sweep_at_the_first_failure(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=1e30,0.1", "data.train_subset=500", "train.epochs=1", "device=cpu",
                   f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_report.fail_fast=true", cwd=tmp_path)
    assert proc.returncode == 1
    clean(proc)
    assert summary(sweep / "0")["status"] == "diverged"
    assert not (sweep / "1").exists()
    assert "job 1  optim.lr=0.1" in proc.stdout and "not run: fail-fast" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("error: fail-fast: job 0 (optim.lr=1e+30")
    assert (sweep / "sweep_summary.json").exists()


@pytest.mark.parametrize("override,shown", [
    ("threads=0", "threads=0"),
    ("threads=abc", "threads=abc is not valid"),  # as typed
    ("hydra.callbacks.sweep_report.fail_fast=maybe", "fail_fast='maybe'"),
])
def test_bad_threads_or_sweep_option_is_one_line(tmp_path, override, shown):
    args = ("-m", "optim.lr=0.1", override) if override.startswith("hydra.") else (override,)
    proc = run_cli(*args, *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and shown in proc.stderr
    assert "is not valid" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("summary.json")) and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("blocker", ["file", "dangling link"])
def test_a_sweep_folder_that_cannot_be_made_is_one_line(tmp_path, blocker):
    outputs = tmp_path / "outputs"
    outputs.write_text("a file") if blocker == "file" else outputs.symlink_to(tmp_path / "gone")
    proc = run_cli("-m", "model.hidden_size=8,16", "data.train_subset=200", "train.epochs=1", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot create the sweep directory outputs/multirun/"), proc.stderr
    why = "outputs is a file, not a folder" if blocker == "file" else f"outputs is a link to {tmp_path / 'gone'}, which"
    assert f": {why}" in lines[0]
    assert "Traceback" not in proc.stdout


@pytest.mark.slow  # a sweep and its resume: about 20 s
def test_a_resumed_sweep_checks_each_interrupted_job_as_resume_does(tmp_path):
    """A job whose summary is damaged, or whose checkpoint is not of the epochs its summary
    counts, is refused and left as it is, as `backprop-lab resume` would refuse it; it is not
    retrained over its rows (or stopped by a KeyError)."""
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=2", "device=cpu",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for job, damage in (("0", {"epochs_completed": 0}), ("1", {"wall_seconds": None})):
        record = summary(sweep / job) | {"status": "interrupted", "final_test_acc": None} | damage
        if damage.get("wall_seconds", 0) is None:
            del record["wall_seconds"]
        (sweep / job / "summary.json").write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in sweep.glob("*/*") if p.is_file()}
    proc = run_cli("-m", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=2", "device=cpu",
                   f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    clean(proc)
    assert proc.returncode == 1  # no job completed
    assert "checkpoint.pt is of epoch 2, but summary.json counts 0 completed epoch(s)" in proc.stderr
    assert "summary.json is damaged (wall_seconds missing or of the wrong type)" in proc.stderr
    listed = {r["run"]: r["status"] for r in json.loads((sweep / "sweep_summary.json").read_text())["runs"]}
    assert listed == {"0": "refused", "1": "refused"}
    after = {p: p.read_bytes() for p in sweep.glob("*/*") if p.is_file()}
    for log in sweep.glob("*/backprop-lab.log"):  # the refusal is added to the job's log
        assert after.pop(log).startswith(before.pop(log))
    assert after == before


def test_a_sweep_folder_is_not_reused_without_resume(tmp_path):
    earlier = tmp_path / "sweep" / "0"  # an earlier sweep's job folder, as a sweep leaves it
    earlier.mkdir(parents=True)
    (earlier.parent / "multirun.yaml").write_text("hydra: {}\n")
    (earlier / "summary.json").write_text(json.dumps({"status": "completed", "final_test_acc": 0.938}))
    (earlier / "metrics.csv").write_text("epoch,test_acc\n1,0.938\n")
    before = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    proc = run_cli("-m", "optim.lr=0.1", "data.train_subset=200", "train.epochs=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already holds a sweep (1 job folder(s))" in lines[0], proc.stderr
    assert "test acc" not in proc.stdout  # the old job is not reported as a new result
    assert {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()} == before


@pytest.mark.slow  # a sweep stopped, then resumed: about 30 s
def test_ctrl_c_stops_the_whole_sweep_and_one_resume_finishes_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    command = ["-m", "optim.lr=0.05,0.1,0.2", "data.train_subset=10000", "train.epochs=10", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", *command], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, metrics = time.time() + 120, sweep / "0" / "metrics.csv"
    # job 0 has trained its first epoch (of 10, about 0.3 s each): it is stopped well before its end
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists() and not (sweep / "2").exists()
    assert "job 1  optim.lr=0.1" in out and "not run: the sweep was stopped by SIGINT" in out
    assert err.strip().splitlines()[-1].startswith("error: sweep stopped by SIGINT in job 0")
    assert "hydra.callbacks.sweep_report.resume=true" in err

    # the command it names finishes every job in one pass: the signal that stopped job 0 is history
    resumed = run_cli(*command, "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for job in ("0", "1", "2"):
        s = json.loads((sweep / job / "summary.json").read_text())
        assert s["status"] == "completed" and s["epochs_completed"] == 10 and "signal" not in s
    assert "not run" not in resumed.stdout


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_a_sweep_started_in_a_taken_folder_moves_to_a_fresh_one(tmp_path):
    """The default sweep folder is named to the second; a second sweep started in the same second
    must not share it (their jobs 0, 1, ... would overwrite each other). Here the name is taken
    on purpose: the year, made beforehand."""
    assert yaml.safe_load((CONF / "config.yaml").read_text())["hydra"]["sweep"]["dir"].startswith("${fresh_dir:")
    year = time.strftime("%Y")
    earlier = tmp_path / "sweeps" / year
    earlier.mkdir(parents=True)
    (earlier / "note.txt").write_text("an earlier sweep's folder")
    proc = run_cli("-m", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=1",
                   "hydra.sweep.dir='${fresh_dir:sweeps/${now:%Y}}'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "sweeps").iterdir()) == [year, f"{year}_1"]
    assert [p.name for p in earlier.iterdir()] == ["note.txt"]
    sizes = [json.loads((tmp_path / "sweeps" / f"{year}_1" / job / "summary.json").read_text())["config"]["model"]["hidden_size"]
             for job in ("0", "1")]
    assert sizes == [16, 32]
    assert f"sweeps/{year}_1" in proc.stdout  # the sweep table names the folder it used



def test_job_lines_spell_swept_booleans_as_the_command_line_does():
    from backprop_lab.sweep import shown

    # Hydra's basic sweeper hands a job `model.batch_norm=True` for `model.batch_norm=true,false`
    assert shown(["model.batch_norm=True", "optim.lr=0.1", "data.root=null", "loss='True'", "+x=[1,2]"]) == \
        "model.batch_norm=true optim.lr=0.1 data.root=null loss='True' +x=[1,2]"
    assert shown([]) == ""


@pytest.mark.slow  # three refused sweeps: about 6 s
def test_a_sweep_subdir_outside_the_sweep_is_refused_before_any_job_writes_there(tmp_path):
    """Set in a config file of the user's, where the command-line check does not see it; or
    through an interpolation that only resolves, per job, to a folder outside the sweep."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "up.yaml").write_text("defaults:\n  - config\n  - _self_\n"
                                              "hydra:\n  sweep:\n    subdir: ../escaped${hydra.job.num}\n")
    (tmp_path / "mine" / "env.yaml").write_text("defaults:\n  - config\n  - _self_\n"
                                               "hydra:\n  sweep:\n    subdir: ${oc.env:JOB_DIR}\n")
    common = ["-m", "--config-dir", str(tmp_path / "mine"), "--config-name"]
    proc = run_cli(*common, "up", *TINY, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hydra.sweep.subdir=../escaped${hydra.job.num} would put the sweep's jobs outside the sweep's folder; "
        "give a folder inside it, e.g. hydra.sweep.subdir='job${hydra.job.num}', or leave it out (one folder per "
        "job number)"], proc.stderr
    proc = run_cli(*common, "env", *TINY, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep2'}", cwd=tmp_path,
                   env={"JOB_DIR": "../escaped"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hydra.sweep.subdir=${oc.env:JOB_DIR} puts job 0 in ../escaped, outside the sweep's folder; give a "
        "folder inside it, e.g. hydra.sweep.subdir='job${hydra.job.num}'; no job was started"], proc.stderr
    # an Optuna search proposes its trials as it goes: each is refused as it comes
    (tmp_path / "mine" / "env_num.yaml").write_text("defaults:\n  - config\n  - _self_\n"
                                                   "hydra:\n  sweep:\n    subdir: ${oc.env:JOB_DIR}${hydra.job.num}\n")
    proc = run_cli(*common, "env_num", "hparams_search=mlp", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                   *TINY, f"hydra.sweep.dir={tmp_path / 'sweep3'}", cwd=tmp_path, env={"JOB_DIR": "../escaped"})
    assert proc.returncode == 1, proc.stderr  # no job completed
    assert proc.stderr.count(f"is not inside the sweep's {tmp_path / 'sweep3'}") == 2
    # and its subdir must hold the trial's number: it may propose the same values twice
    proc = run_cli("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=2", *TINY, "hydra.sweep.subdir=bs${data.batch_size}",
                   f"hydra.sweep.dir={tmp_path / 'sweep4'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hydra.sweep.subdir=bs${data.batch_size} can give two trials of a search the same folder (a search may "
        "propose the same values twice): include the trial's number, e.g. "
        "hydra.sweep.subdir='bs${data.batch_size}_${hydra.job.num}'"], proc.stderr
    assert not (tmp_path / "sweep4").exists()
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("metrics.csv"))


@pytest.mark.slow  # a joblib sweep stopped while its jobs train: about 30 s
def test_ctrl_c_in_a_joblib_sweep_stops_its_jobs_and_still_reports(tmp_path):
    """The terminal's Ctrl-C reaches the waiting process and every job's process (one process
    group). The jobs stop after their batch, resumably; the waiting one prints the table."""
    import os
    import signal
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    command = ["-m", "model.hidden_size=32,64,128", "data.train_subset=20000", "train.epochs=30",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", *command], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while not all((sweep / job / "metrics.csv").exists() for job in "01") and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err and "while starting" not in err, err
    for job in "01":
        assert summary(sweep / job)["status"] == "interrupted" and summary(sweep / job)["signal"] == "SIGINT"
    assert not (sweep / "2").exists() and "not run: the sweep was stopped by SIGINT" in out
    titled = " ".join(out.split())  # the table's title wraps to the table's width
    assert f"sweep {sweep}: 3 jobs" in titled and (sweep / "sweep_summary.csv").is_file()  # job 2: not started
    assert [line.split()[-1] for line in out.splitlines() if line.split()[:1] == ["2"]] == ["started"]
    assert err.strip().splitlines()[-1].startswith("error: sweep stopped by SIGINT")
    assert "hydra.callbacks.sweep_report.resume=true" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=vectorized",)])
def test_two_jobs_given_one_folder_are_refused_before_any_job_starts(tmp_path, launcher):
    """hydra.sweep.subdir='lr_${optim.lr}' with two seeds names one folder for both jobs: Hydra
    would write the second job's .hydra/ over the first's record, so neither may start."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=0.05", "seed=0,1", *TINY, "hydra.sweep.subdir=lr_${optim.lr}", *launcher,
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hydra.sweep.subdir=lr_${optim.lr} gives jobs 0 and 1 the same folder (lr_0.05); each job needs its "
        "own: include the job's number, e.g. hydra.sweep.subdir='lr_${optim.lr}_${hydra.job.num}'; no job was "
        "started"], proc.stderr
    assert not sweep.exists()


@pytest.mark.slow  # a 2-job sweep through the CLI: about 6 s (not_started itself: the tests below)
def test_a_sweep_in_folders_of_its_own_naming_lists_each_job_once(tmp_path):
    """Jobs in hydra.sweep.subdir's folders, not their numbers': the table has one row per job (none
    'not started'), and an override every job shares, a boolean included, is left off each result line."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "seed=0,1", "model.batch_norm=true", *TINY, "hydra.sweep.subdir=s${seed}",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [line.split("->")[0].split() for line in proc.stdout.splitlines() if "->" in line] == [
        ["job", "0", "seed=0"], ["job", "1", "seed=1"]]
    assert "not started" not in proc.stdout
    rows = json.loads((sweep / "sweep_summary.json").read_text())["runs"]
    assert sorted(row["run"] for row in rows) == ["s0", "s1"], rows


def test_jobs_not_started_are_listed_by_their_folders_old_and_new_plan_files(tmp_path):
    from types import SimpleNamespace

    from backprop_lab.rundir import PLANNED_FILE
    from backprop_lab.sweep import not_started

    ran = [SimpleNamespace(path=tmp_path / "s0", config={"seed": 0, "train": {"epochs": 1}})]
    (tmp_path / PLANNED_FILE).write_text(json.dumps([{"overrides": ["seed=0"], "folder": "s0"},
                                                     {"overrides": ["seed=1"], "folder": "s1"}]))
    assert [(r.label, r.status, r.config["seed"]) for r in not_started(tmp_path, ran)] == [("s1", "not started", 1)]
    (tmp_path / PLANNED_FILE).write_text(json.dumps([["seed=0"], ["seed=1"]]))  # a sweep's before 2026-12-07
    ran = [SimpleNamespace(path=tmp_path / "0", config={"seed": 0})]
    assert [(r.label, r.path.name, r.config["seed"]) for r in not_started(tmp_path, ran)] == [("1", "1", 1)]


@pytest.mark.slow  # two sweeps stopped part way: about 13 s
@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=vectorized",)])
def test_a_closed_stdout_stops_a_sweep_as_ctrl_c_does(tmp_path, launcher):
    """`backprop-lab -m ... | head -1`: no later job starts, the table is still written to the
    sweep's folder, and the command ends with 141 and one line saying how to finish the sweep."""
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", "-m", "optim.lr=0.05,0.1,0.2", *TINY, *launcher,
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith("vectorized: 3 jobs" if launcher else "job 0  optim.lr=0.05  ->  test acc")
    assert err.count("\n") == 1 and err.startswith("error: sweep stopped by a closed standard output (broken pipe)")
    rows = json.loads((sweep / "sweep_summary.json").read_text())["runs"]
    assert len(rows) == 3 and all(row["status"] in ("completed", "not started") for row in rows), rows
    if all(row["status"] == "completed" for row in rows):  # a group trains its members together: nothing left
        assert err.rstrip().endswith("every job had completed (only analysis plots may be missing)"), err
    else:
        assert f"hydra.sweep.dir={sweep} hydra.callbacks.sweep_report.resume=true" in err


def test_a_resumed_sweep_with_a_job_folder_it_cannot_change_changes_none(tmp_path, monkeypatch):
    """Each earlier job's .hydra/ is set aside before Hydra writes the new pass's; if one cannot be
    (another user's folder), the resume is refused with every folder as it was."""
    import os

    from backprop_lab.rundir import KEPT_HYDRA, RunDirError
    from backprop_lab.sweep import set_hydra_files_aside

    for job in "01":
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / "metrics.csv").write_text("epoch\n")
    rename, calls = os.rename, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(RunDirError, match="cannot be changed \\(Permission denied\\); make it writable"):
        set_hydra_files_aside(tmp_path)
    monkeypatch.setattr(os, "rename", rename)
    for job in "01":
        assert (tmp_path / job / ".hydra" / "overrides.yaml").read_text() == f"- seed={job}\n"
        assert not (tmp_path / job / KEPT_HYDRA).exists()


def test_a_job_is_matched_to_its_run_by_its_overrides_where_its_folder_was_a_guess(tmp_path):
    """hydra.sweep.subdir='${hydra.job.id}' under joblib names folders by the launcher's job id, not
    the number the plan guessed: the run holding a job's overrides is that job's."""
    from types import SimpleNamespace

    from backprop_lab.rundir import PLANNED_FILE
    from backprop_lab.sweep import not_started

    (tmp_path / PLANNED_FILE).write_text(json.dumps([{"overrides": ["seed=0"], "folder": "0"},
                                                     {"overrides": ["seed=1"], "folder": "1"}]))
    (tmp_path / "backprop-lab_0" / ".hydra").mkdir(parents=True)
    (tmp_path / "backprop-lab_0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    ran = [SimpleNamespace(path=tmp_path / "backprop-lab_0", config={"seed": 0})]
    assert [(r.label, r.config["seed"]) for r in not_started(tmp_path, ran)] == [("1", 1)]


def test_a_job_without_a_hydra_record_is_matched_by_the_overrides_its_summary_keeps(tmp_path):
    """hydra.output_subdir=null writes no .hydra/; with a subdir of the user's naming the planned
    folder is a guess, and the run's summary.json still names its overrides."""
    from types import SimpleNamespace

    from backprop_lab.rundir import PLANNED_FILE, SUMMARY
    from backprop_lab.sweep import not_started

    (tmp_path / PLANNED_FILE).write_text(json.dumps([{"overrides": [f"seed={n}"], "folder": str(n)} for n in range(3)]))
    ran = []
    for n in (0, 2):
        (tmp_path / f"j{n}").mkdir()
        (tmp_path / f"j{n}" / SUMMARY).write_text(json.dumps({"overrides": [f"seed={n}"], "status": "completed"}))
        ran.append(SimpleNamespace(path=tmp_path / f"j{n}", config={"seed": n}))
    assert [(r.label, r.config["seed"]) for r in not_started(tmp_path, ran)] == [("1", 1)]


@pytest.mark.slow  # a sweep, then its resume: about 7 s
def test_a_closed_stdout_while_a_resumed_sweep_skips_a_job_stops_it_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    clean(run_cli("-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", "-m", "seed=0,1,2", *TINY, f"hydra.sweep.dir={sweep}",
                             "hydra.callbacks.sweep_report.resume=true"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})
    assert proc.stdout.readline().startswith(f"resume: {sweep} holds 2 earlier job(s), 2 completed")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err  # was a BrokenPipeError's traceback, exit 1
    assert err.count("\n") == 1 and err.startswith("error: sweep stopped by a closed standard output"), err
    assert not (sweep / "2").exists()  # no job started after it


@pytest.mark.slow  # about 6 s
def test_a_closed_stdout_while_a_finished_sweeps_table_prints_exits_141_quietly(tmp_path, capsys):
    """The sweep is over; only its table's reader went away: no 'stopped' line, no stop mark."""
    from rich.console import Console

    from backprop_lab.rundir import INTERRUPT_FILE
    from backprop_lab.sweep import SweepReport

    class Closed(Console):
        def print(self, *args, **kwargs):
            raise BrokenPipeError(32, "standard output was closed")

    sweep = tmp_path / "sweep"
    clean(run_cli("-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    (sweep / "sweep_summary.json").unlink()
    with pytest.raises(SystemExit) as stop:
        SweepReport(console=Closed()).on_multirun_end_of(sweep)
    assert stop.value.code == 141 and capsys.readouterr().err == ""
    assert not (sweep / INTERRUPT_FILE).exists() and (sweep / "sweep_summary.json").is_file()


@pytest.mark.slow  # a submitit_local sweep stopped while its jobs start: about 15 s
def test_ctrl_c_while_submitit_jobs_start_still_ends_with_the_table(tmp_path):
    """submitit's controllers kill their job a second after passing Ctrl-C on; a job still importing
    torch leaves no result, which submitit raised as an error (a traceback, exit 1, no table)."""
    import os
    import signal
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", "-m", "model.hidden_size=16,32",
                             "data.train_subset=2000", "data.batch_size=8", "train.epochs=10",
                             "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not all((sweep / job / "backprop-lab.log").exists() for job in "01") and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the jobs are importing torch
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "UncompletedJobError" not in err and err.strip().splitlines()[-1].startswith("error: sweep stopped by SIGINT")
    assert (sweep / "sweep_summary.json").is_file() and f"sweep {sweep}: 2 jobs" in " ".join(out.split())


@pytest.mark.slow  # a sweep, then two resumes: about 7 s
def test_a_sweep_with_jobs_in_folders_within_folders_is_not_resumed_as_a_whole(tmp_path):
    sweep = tmp_path / "sweep"
    clean(run_cli("-m", "seed=0,1", *TINY, "hydra.sweep.subdir=a/${hydra.job.num}", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path))
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    proc = run_cli("-m", "seed=0,1", *TINY, "hydra.sweep.subdir=a/${hydra.job.num}", f"hydra.sweep.dir={sweep}",
                   "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.fullmatch(re.escape(f"error: {sweep} already holds a sweep (jobs such as {sweep / 'a'}/") + r"[01]" +
                        re.escape("); it is kept as it is: a sweep whose jobs sit in folders within folders cannot be "
                                  "resumed as a whole: resume each job with backprop-lab resume JOB_DIR"), lines[0])
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_a_sweep_stopped_once_every_job_completed_offers_nothing_to_finish(tmp_path, capsys):
    """Ctrl-C while the last job draws its plots: every job is complete, so the closing line does
    not ask for a resume that would find nothing to do."""
    from backprop_lab.sweep import SweepReport, request_interrupt

    from .test_compare import make_run

    sweep = tmp_path / "sweep"
    for job in "01":
        make_run(sweep / job, [0.5, 0.6])
    (sweep / ".backprop-lab-sweep").write_text("sweeper\n")
    request_interrupt(sweep, "SIGINT", "job 1")
    with pytest.raises(SystemExit) as stopped:
        SweepReport().on_multirun_end_of(sweep)
    assert stopped.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: sweep stopped by SIGINT in job 1; every job had completed (only analysis plots may be "
        "missing)")
    (sweep / "1" / "summary.json").write_text(json.dumps({**json.loads((sweep / "1" / "summary.json").read_text()),
                                                          "status": "interrupted"}))
    request_interrupt(sweep, "SIGINT", "job 1")
    with pytest.raises(SystemExit):
        SweepReport().on_multirun_end_of(sweep)
    assert "no job was started after it; to finish the sweep, run" in capsys.readouterr().err
    # an Optuna search with a trial still to run, its two trials completed: there is something to finish
    (sweep / "1" / "summary.json").write_text(json.dumps({**json.loads((sweep / "1" / "summary.json").read_text()),
                                                          "status": "completed"}))
    (sweep / ".planned_jobs").write_text(json.dumps({"trials": 3, "overrides": [], "hydra": []}))
    request_interrupt(sweep, "SIGINT", "job 1")
    with pytest.raises(SystemExit):
        SweepReport().on_multirun_end_of(sweep)
    assert "no job was started after it; to finish the sweep, run" in capsys.readouterr().err
