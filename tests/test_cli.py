"""The command line as a user meets it: real subprocesses, real files in tmp_path."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import run_cli

QUICK = ["data.train_subset=2000", "train.epochs=2", "device=cpu"]


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One small run in the default run directory (no hydra.run.dir), which several tests read."""
    tmp = tmp_path_factory.mktemp("quick")
    proc = run_cli(*QUICK, cwd=tmp)
    run_dirs = list((tmp / "outputs").glob("*/*"))
    return proc, run_dirs[0] if len(run_dirs) == 1 else run_dirs


def test_quick_run_exits_cleanly_and_prints_the_table(quick_run):
    proc, run_dir = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "train loss" in line)
    for heading in ("epoch", "train loss", "train acc", "test loss", "test acc", "seconds", "samples/s"):
        assert heading in header
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert "summary" in proc.stdout and str(run_dir) in proc.stdout


def test_the_table_and_metrics_csv_have_a_column_for_each_epoch_record_value():
    from backprop_lab.report import COLUMN_KEYS
    from backprop_lab.train import EpochMetrics

    row = EpochMetrics(epoch=1, train_loss=0.5, train_acc=0.9, test_loss=0.4, test_acc=0.91, seconds=1.0,
                       samples_per_s=6e4, batch_seconds=0.9, layers=({"layer": 1.0},)).as_dict()
    assert list(row) == COLUMN_KEYS  # the run writer refuses a row with a key it has no column for


def test_quick_run_writes_a_self_describing_directory(quick_run):
    _, run_dir = quick_run
    rows = read_metrics(run_dir)
    assert len(rows) == 2
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "samples_per_s"]
    for row in rows:
        assert 0 <= float(row["train_acc"]) <= 1 and 0 <= float(row["test_acc"]) <= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 2 == summary["epochs_planned"]
    assert summary["final_test_acc"] == float(rows[-1]["test_acc"])
    assert summary["best_test_acc"] == max(float(r["test_acc"]) for r in rows)
    assert summary["seed"] == 0 and summary["device"] == "cpu"
    assert summary["versions"]["torch"] == torch.__version__
    # the instruction set of torch's kernels, by which the last digits of results can differ across CPUs
    assert f", {torch.backends.cpu.get_cpu_capability()}), torch threads " in summary["machine"]
    assert summary["data"]["md5"]["train-images-idx3-ubyte"] == "6bbc9ace898e44ae57da46a324031adb"
    assert summary["config"]["data"]["train_subset"] == 2000
    assert summary["train_seconds"] > 0
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / ".hydra" / "overrides.yaml").exists()
    log = (run_dir / "backprop-lab.log").read_text()
    assert "epoch" in log and "summary" in log


def test_saved_weights_reproduce_the_reported_test_accuracy(quick_run):
    from backprop_lab.data import load_mnist

    _, run_dir = quick_run
    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    assert set(weights) == {"W1", "b1", "W2", "b2"} and weights["W1"].shape == (784, 128)
    test = load_mnist(train_subset=1)
    # An independent forward pass, written here with torch's own functions.
    logits = torch.relu(test.X_test @ weights["W1"] + weights["b1"]) @ weights["W2"] + weights["b2"]
    acc = (logits.argmax(dim=1) == test.y_test).sum().item() / len(test.y_test)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(acc - summary["final_test_acc"]) < 1e-9


@pytest.mark.slow  # two more runs; `make test-slow` (and CI) run it
def test_same_seed_gives_identical_metrics(tmp_path, quick_run):
    _, first = quick_run
    proc = run_cli(*QUICK, f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]
    assert strip(read_metrics(tmp_path / "again")) == strip(read_metrics(first))
    other = run_cli(*QUICK, "train.epochs=1", "seed=1", f"hydra.run.dir={tmp_path / 'seed1'}", cwd=tmp_path)
    assert other.returncode == 0
    assert read_metrics(tmp_path / "seed1")[0]["train_loss"] != read_metrics(first)[0]["train_loss"]


def test_default_run_directory_is_timestamped_under_outputs(quick_run):
    proc, run_dir = quick_run
    assert proc.returncode == 0, proc.stderr
    assert isinstance(run_dir, Path), f"expected one run folder under outputs/*/*, found {run_dir}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run_dir.parent.name) and re.fullmatch(r"\d\d-\d\d-\d\d", run_dir.name)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow  # four concurrent runs; `make test-slow` (and CI) run it
def test_four_runs_started_together_get_four_directories(tmp_path):
    # Every run asks for the very same folder, as runs started in the same second do.
    same = f"hydra.run.dir=${{fresh_dir:{tmp_path}/same}}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "backprop_lab", "data.train_subset=200", "train.epochs=1",
                          f"seed={i}", same], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == ["same", "same_1", "same_2", "same_3"]
    seeds = sorted(json.loads((tmp_path / d / "summary.json").read_text())["seed"] for d in dirs)
    assert seeds == [0, 1, 2, 3]  # each directory holds exactly one run's record


def test_an_existing_run_directory_is_never_overwritten(quick_run, tmp_path):
    _, run_dir = quick_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    proc = run_cli(*QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name in before}
    assert after == before


BAD_INPUTS = [
    ("model.hidden_size=0", "model.hidden_size=0 is not valid"),
    ("model.hidden_size=abc", "model.hidden_size=abc is not valid"),  # as typed
    ("seed=1e3", "seed=1e3 (read as 1000.0) is not valid: expected an integer"),  # and as Hydra read it
    ("optim.lr=-1", "optim.lr=-1 is not valid"),
    ("optim.lr=nan", "optim.lr=nan is not valid"),
    ("train.epochs=0", "train.epochs=0 is not valid"),
    ("train.max_loss_ratio=1", "train.max_loss_ratio=1 is not valid: expected null (only a NaN or infinite loss"),
    ("train.max_loss_ratio=-5", "train.max_loss_ratio=-5 is not valid"),
    ("train.max_loss_ratio=inf", "train.max_loss_ratio=inf is not valid"),
    ("train.max_loss_ratio=big", "train.max_loss_ratio=big is not valid"),
    ("data.batch_size=0", "data.batch_size=0 is not valid"),
    ("data.train_subset=-5", "data.train_subset=-5 is not valid"),
    ("device=tpu", "device=tpu is not valid"),
    ("device=cuda:7" if torch.cuda.device_count() < 8 else "device=cuda:99", "is not available"),
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("experment=article", "unknown config key 'experment'; did you mean the config group 'experiment'?"),
    ("experiment=nope", "experiment=nope is not a known preset"),
    ("data.root=EMPTY", "MNIST files not found in"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(("device=cuda", "device=cuda is not available: this machine has no CUDA device"))


@pytest.mark.parametrize("override,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_no_traceback_no_result_directory(tmp_path, override, expected):
    if override == "data.root=EMPTY":
        (tmp_path / "empty").mkdir()
        override = f"data.root={tmp_path / 'empty'}"
    proc = run_cli(override, "data.download=false", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()  # no run directory, nor an empty day or outputs folder


def test_unwritable_outputs_folder_is_a_clear_error(tmp_path):
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
        # root ignores permissions; a file where the folder should be fails for everyone
        (tmp_path / "outputs").write_text("not a folder")
    else:
        (tmp_path / "outputs").mkdir(mode=0o500)
    proc = run_cli("train.epochs=1", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot create the run directory" in lines[0], proc.stderr


def test_a_dangling_outputs_link_is_a_clear_error(tmp_path):
    """A dangling symlink named outputs once made the run-folder loop spin forever."""
    (tmp_path / "outputs").symlink_to(tmp_path / "gone")
    proc = run_cli("train.epochs=1", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"outputs is a link to {tmp_path / 'gone'}, which does not exist" in lines[0], proc.stderr
    assert (tmp_path / "outputs").is_symlink() and not (tmp_path / "gone").exists()  # left as it was


def test_hydra_cli_features_still_work(tmp_path):
    help_ = run_cli("--help", cwd=tmp_path)
    assert help_.returncode == 0 and "experiment" in help_.stdout
    cfg = run_cli("--cfg", "job", "model.hidden_size=32", cwd=tmp_path)
    assert cfg.returncode == 0 and "hidden_size: 32" in cfg.stdout
    part = run_cli("--cfg", "job", "--package", "optim", cwd=tmp_path)
    assert part.returncode == 0 and part.stdout.startswith("# @package optim\nlr: 0.1\n"), part.stderr
    help_part = run_cli("--help", "--package", "optim", cwd=tmp_path)  # its value was taken for an override
    assert help_part.returncode == 0 and "experiment" in help_part.stdout, help_part.stderr
    assert not (tmp_path / "outputs").exists()  # neither made a run directory


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "backprop-lab"
    proc = subprocess.run([str(script), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "hidden_size: 128" in proc.stdout


def test_a_bad_job_in_a_sweep_is_refused_before_any_job_trains(tmp_path):
    """Every job's config is checked up front, as its run would check it: a bad value in the last
    job is refused now, in one line naming the job, not when its turn comes."""
    proc = run_cli("-m", "model.hidden_size=16,0", "data.train_subset=300", "train.epochs=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: job 1 (model.hidden_size=0 data.train_subset=300 train.epochs=1): "
                               "model.hidden_size=0 is not valid")
    assert lines[0].endswith("; no job was started")
    assert not (tmp_path / "sweep").exists()  # nothing trained, no folder left


@pytest.mark.parametrize("space, shown", [
    ("data.batch_size=choice(32,0)", "data.batch_size=0 (one of its choices): data.batch_size=0 is not valid"),
    ("model.init_scale=interval(-1,0.05)", "model.init_scale=-1.0 (the low end of its interval): model.init_scale=-1.0"),
    ("model.hidden_size=range(16,-16,-8)", "model.hidden_size=-8 (the end of its range)"),
])
def test_an_optuna_search_space_with_a_bad_bound_is_refused_before_any_trial(tmp_path, space, shown):
    """Trials are proposed as the search goes, so what is checked up front is what bounds them:
    each choice, each end of an interval or range (the preset's space, or the command line's)."""
    proc = run_cli("-m", "hparams_search=mlp", space, "data.train_subset=300", "train.epochs=1",
                   f"hydra.sweep.dir={tmp_path / 'search'}", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: the Optuna search can propose {shown}"), lines[0]
    assert lines[0].endswith("; no trial was started")
    assert not (tmp_path / "search").exists()


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_a_sweep_where_no_job_completes_exits_1(tmp_path):
    proc = run_cli("-m", "optim.lr=1e30,1e31", "data.train_subset=300", "train.epochs=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: no job of this sweep completed: each one failed, diverged or was refused (see above)")
    assert (tmp_path / "sweep" / "sweep_summary.csv").is_file()  # the table is still written


def test_divergence_is_recorded_and_reported(tmp_path):
    proc = run_cli("optim.lr=1e30", "data.train_subset=500", "train.epochs=2",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 3
    assert "diverged" in proc.stderr and "smaller optim.lr" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"


# --- command-line mistakes: one line, exit 2, nothing written ------------------------------


def refused_in_one_line(tmp_path: Path, *args: str) -> str:
    """Run `backprop-lab ARGS` in tmp_path, check it is refused as the rule says, return the line."""
    before = sorted(tmp_path.rglob("*"))
    proc = run_cli(*args, cwd=tmp_path, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no .hydra/, no summary.json
    return lines[0]


def test_a_run_dir_that_is_a_file_or_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("a file, not a run")
    for target in ("README.md", "README.md/run"):
        line = refused_in_one_line(tmp_path, f"hydra.run.dir={target}")
        assert "README.md is a file, not a folder" in line
    if Path("/proc/self").exists():  # Linux: nobody, root included, can make a folder in /proc
        line = refused_in_one_line(tmp_path, "hydra.run.dir=/proc/backprop-lab-run")
        assert "/proc/backprop-lab-run cannot be created" in line
    line = refused_in_one_line(tmp_path, "-m", "hydra.sweep.dir=README.md", "train.epochs=1")
    assert "README.md is a file, not a folder" in line


def test_an_empty_run_or_sweep_dir_is_refused(tmp_path):
    line = refused_in_one_line(tmp_path, "hydra.run.dir=", "train.epochs=1", "data.train_subset=200")
    assert "hydra.run.dir is empty" in line
    line = refused_in_one_line(tmp_path, "-m", "hydra.sweep.dir=''", "train.epochs=1", "data.train_subset=200")
    assert "hydra.sweep.dir is empty" in line


def test_cfg_and_multirun_together_are_refused(tmp_path):
    line = refused_in_one_line(tmp_path, "--cfg", "job", "optim.lr=0.2", "-m")
    assert "--cfg" in line and "-m" in line and "cannot be combined" in line


def test_several_values_without_multirun_say_what_to_do(tmp_path):
    line = refused_in_one_line(tmp_path, "model.hidden_sizes=256,128")
    assert "model.hidden_sizes=[256,128]" in line and "add -m" in line
    line = refused_in_one_line(tmp_path, "optim.lr=0.1,0.2")
    assert "add -m" in line and "backprop-lab -m optim.lr=0.1,0.2" in line


def test_an_unknown_launcher_lists_the_available_ones(tmp_path):
    line = refused_in_one_line(tmp_path, "-m", "hydra/launcher=nope", "train.epochs=1")
    assert "hydra/launcher=nope is not a known option" in line and "basic" in line and "joblib" in line


def test_a_bad_cfg_choice_names_the_valid_ones(tmp_path):
    line = refused_in_one_line(tmp_path, "--cfg", "jobb")
    assert "'jobb'" in line and "'job', 'hydra', 'all'" in line


def test_overrides_split_by_multirun_get_an_accurate_message(tmp_path):
    # Hydra itself refuses this command line (argparse takes the overrides as one group).
    line = refused_in_one_line(tmp_path, "optim.lr=0.1", "-m", "train.epochs=1")
    assert "option's value" not in line and "comes after -m" in line
    assert "backprop-lab -m optim.lr=0.1 train.epochs=1" in line


def test_a_misspelled_command_is_named_with_a_suggestion(tmp_path):
    line = refused_in_one_line(tmp_path, "comapre", "outputs")
    assert "unknown command 'comapre'; did you mean 'compare'?" in line and "show, compare" in line
    assert "did you mean 'show'?" in refused_in_one_line(tmp_path, "shwo", "x")
    line = refused_in_one_line(tmp_path, "frobnicate")
    assert "'frobnicate' is neither a command nor a KEY=VALUE override" in line and "gradcheck" in line


PLUGIN_MISTAKES = [  # each used to end in a traceback mid-sweep, or in Hydra's many lines
    (("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=0"), "hydra.sweeper.n_trials=0 is not valid: expected a whole number"),
    (("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=abc"), "hydra.sweeper.n_trials=abc is not valid"),
    (("-m", "hparams_search=mlp", "hydra.sweeper.direction=up"), "expected maximize or minimize"),
    (("-m", "hparams_search=mlp", "hydra.sweeper.sampler.seed=x"), "hydra.sweeper.sampler.seed=x is not valid"),
    (("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "optim.lr=0.1,0.2"), "hydra.launcher.n_jobs=0 is not valid"),
    (("-m", "hparams_search=mlp", "hydra.sweeper.params.optim.lr=tag(log, interval(0.01, 1))"),
     "give it on the key itself, which replaces the preset's: 'optim.lr=tag(log, interval(0.01, 1))'"),
    (("-m", "optim.lr=interval(0.01, 1)"), "an interval is a search space for the Optuna sweeper"),
    (("--shell-completion",), "shell completion (--shell-completion, -sc) is not available"),
    (("-sc", "install=bash"), "shell completion (--shell-completion, -sc) is not available"),
    (("--experimental-rerun", "x.pickle"), "to continue a run use backprop-lab resume RUN_DIR"),
    (("--config-name", "nope"), "--config-name nope: there is no nope.yaml in"),
    (("--config-dir", "/nonexistent-backprop-lab"), "--config-dir /nonexistent-backprop-lab: no such folder"),
    (("--cfg", "job", "optim.lr=abc"), "optim.lr=abc is not valid"),  # not printed as if a run would take it
    (("--cfg", "all", "model.hidden_size=-3"), "model.hidden_size=-3 is not valid"),
    (("--resolve",), "--resolve works only with --cfg"),  # was a ValueError's traceback
    (("--resolve", "--info", "config"), "--resolve works only with --cfg"),
    (("--package", "optim"), "--package optim works only with --cfg"),  # was a run of 20 epochs
    (("--cfg", "job", "--package", "nope"), "--package nope: the config that --cfg job prints has no such part; "
                                            "its parts: model, optim,"),  # was a line without error:, exit 1
    (("hydra.run.dirr=x",), "'hydra.run.dirr' is not one of Hydra's settings (Key 'dirr' not in 'RunDir'); "
                            "did you mean 'hydra.run.dir'?"),
    (("-m", "hydra.callbacks.sweep_report.fail_fst=true"), "did you mean 'hydra.callbacks.sweep_report.fail_fast'?"),
    (("-m", "hparams_search=mlp", "hydra.sweeper.n_trial=3"), "did you mean 'hydra.sweeper.n_trials'?"),
    (("hydra.launcher.n_jobs=2",), "'hydra.launcher.n_jobs' is not one of Hydra's settings (Key 'n_jobs' not in "
                                   "'BasicLauncherConf')"),  # joblib's, and joblib is not chosen
    (("hydra.job.chdir=abc",), "hydra.job.chdir=abc is not valid: Value 'abc' is not a valid bool"),
    (("hydra=x",), "hydra=x: 'hydra' is not a setting itself; set one of Hydra's settings as hydra.KEY=VALUE"),
    (("+hydra=1",), "+hydra=1: 'hydra' is not a setting itself"),  # was a traceback
    (("hydra.0=",), "'hydra.0' is not one of Hydra's settings"),
    (("-m", "hydra.sweeper.n_trials=3"), "'hydra.sweeper.n_trials' is not one of Hydra's settings (Key 'n_trials' not "
                                         "in 'BasicSweeperConf'); it is a setting of the Optuna sweeper: add "
                                         "hparams_search=mlp"),
    (("-m", "hydra.launcher.prefer=threads"), "it is a setting of another launcher: choose it too, e.g. "
                                              "hydra/launcher=joblib"),
    (("-m", "hparams_search=mlp", "optim.lrr=tag(log,interval(0.01,1))"), "unknown config key 'optim.lrr'; did you "
                                                                          "mean 'optim.lr'?"),
    (("-m", "hparams_search=mlp", "optim.lr=tag(log,interval(-1,1))"), "a log interval needs a low end above 0"),
    (("-m", "hparams_search=mlp", "optim.lr=interval(1,0.1)"), "the interval's low end must be below its high end"),
]


@pytest.mark.parametrize("args,expected", PLUGIN_MISTAKES, ids=[" ".join(a) for a, _ in PLUGIN_MISTAKES])
def test_plugin_settings_and_hydra_options_are_checked_up_front(tmp_path, monkeypatch, capsys, args, expected):
    """In-process, through the entry point itself (the subprocess tests above show the same path
    ends the process with exit 2)."""
    from backprop_lab import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["backprop-lab", *args, "train.epochs=1", "data.train_subset=100"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_error_line_on_a_closed_stderr_keeps_the_exit_status():
    """`backprop-lab ... 2>&1 | head`: the reader is gone when the last line is written; rich would
    exit 1 there, hiding the status the run chose (141 for a closed stdout)."""
    read, write = os.pipe()
    os.close(read)  # nobody reads: every write gets EPIPE
    try:
        proc = subprocess.run([sys.executable, "-c", "import sys; from backprop_lab.errors import error_line; "
                               "error_line('the run stopped'); sys.exit(141)"], stderr=write, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141


def test_a_run_dir_holding_other_runs_or_their_leftovers_is_refused(tmp_path):
    earlier = tmp_path / "outputs" / "2026-11-30" / "10-00-00"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("{}")
    line = refused_in_one_line(tmp_path, "hydra.run.dir=outputs", "train.epochs=1")
    assert "hydra.run.dir=outputs holds other runs (outputs/2026-11-30/10-00-00)" in line
    (tmp_path / "left").mkdir()
    (tmp_path / "left" / "grads.csv").write_text("epoch,layer\n")
    line = refused_in_one_line(tmp_path, "hydra.run.dir=left", "train.epochs=1")
    assert "holds what an earlier run left (grads.csv)" in line
    (tmp_path / "plots").mkdir()  # a completed run's reports, its summary gone: they would be overwritten
    (tmp_path / "plots" / "confusion.png").write_bytes(b"earlier")
    (tmp_path / "plots" / "curves.png").write_bytes(b"earlier")
    line = refused_in_one_line(tmp_path, "hydra.run.dir=plots", "train.epochs=1")
    assert "holds what an earlier run left (confusion.png, curves.png)" in line
    assert (tmp_path / "plots" / "curves.png").read_bytes() == b"earlier"


def test_an_error_line_prints_square_brackets_as_they_are(capsys):
    from backprop_lab.errors import error_line

    error_line("[enforce fail at alloc_cpu.cpp:127] out of memory; model.hidden_sizes=[256,128]")
    assert capsys.readouterr().err.strip() == (
        "error: [enforce fail at alloc_cpu.cpp:127] out of memory; model.hidden_sizes=[256,128]")


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_a_sweep_preset_without_multirun_says_it_trains_one_configuration(tmp_path):
    proc = run_cli("experiment=vanishing_gradients", "train.epochs=1", "data.train_subset=128",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("note: this config sweeps over model.activation, model.batch_norm with -m; "
            "without -m it trains one configuration") in proc.stderr
    plain = run_cli("train.epochs=1", "data.train_subset=128", f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    assert plain.returncode == 0 and "note:" not in plain.stderr


def test_version_names_backprop_lab(tmp_path):
    from backprop_lab import __version__

    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(f"backprop-lab {__version__} (Hydra ")


@pytest.mark.parametrize("args", [
    ("hydra.job.chdir=false", "hydra.verbose=true"),
    ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.1,0.2"),
    ("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=2", "optim.lr=tag(log, interval(0.01, 1))"),
])
def test_valid_hydra_settings_pass_the_up_front_checks(tmp_path, monkeypatch, args):
    from backprop_lab import overrides

    monkeypatch.chdir(tmp_path)
    overrides.check_overrides(list(args))  # raises ConfigError on a refusal
    assert list(tmp_path.iterdir()) == []  # checking made no folder


@pytest.mark.parametrize("key,inside", [("hydra.run.dir", "old/sub"), ("hydra.run.dir", "old/.hydra"),
                                        ("hydra.sweep.dir", "old/sub"), ("hydra.run.dir", "sweep/new"),
                                        ("hydra.sweep.dir", "sweep/0")])
def test_a_folder_inside_an_earlier_run_or_sweep_is_refused(tmp_path, key, inside):
    """A run made there would be hidden in the earlier one: compare does not look inside runs."""
    (tmp_path / "old" / ".hydra").mkdir(parents=True)
    (tmp_path / "old" / "summary.json").write_text("{}")
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "summary.json").write_text("{}")
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    mode = ["-m"] if key == "hydra.sweep.dir" else []
    line = refused_in_one_line(tmp_path, *mode, f"{key}={inside}", "train.epochs=1")
    holder = inside.split("/")[0]
    assert f"{key}={inside} is inside the {'run' if holder == 'old' else 'sweep'} {tmp_path / holder}" in line


def test_a_sweep_into_a_runs_own_folder_is_refused(tmp_path):
    """Its jobs would be hidden: `compare` and the sweep's own table list the run, not them."""
    (tmp_path / "old" / ".hydra").mkdir(parents=True)
    (tmp_path / "old" / "summary.json").write_text("{}")
    line = refused_in_one_line(tmp_path, "-m", "hydra.sweep.dir=old", "seed=1,2")
    assert line == "error: hydra.sweep.dir=old is the folder of a run, which holds that run only; choose a new folder for the sweep"


@pytest.mark.parametrize("args,expected", [
    (["+optim.lr=0.5"], "+optim.lr=0.5: optim.lr is already in the config, so '+' cannot add it; set it without"),
    (["-cp", "/nonexist"], "--config-path /nonexist: no such folder"),
    (["data.root=~/data"], "quote a value with spaces or characters such as ~ in single quotes"),
    (["hydra.run.dir=/dev/null"], "hydra.run.dir: /dev/null is a special file, not a folder"),
    (["optim.lr=0.1", "=3"], "'=3' has no key before its '=': overrides are KEY=VALUE"),
    (["-m", "optim.lr=0.1,"], "cannot parse the overrides 'optim.lr=0.1,': mismatched input '<EOF>'; a value is "
                              "missing at the end of one (after a ',' or '=')"),
    (["hydra/job_logging=disabled"], "hydra/job_logging=disabled: backprop-lab keeps each run's log in its folder"),
    (["-m", "hydra.sweep.subdir=../..", "seed=1,2"], "hydra.sweep.subdir=../.. would put the sweep's jobs outside"),
    (["-m", "hydra.sweep.subdir=/tmp/x", "seed=1,2"], "hydra.sweep.subdir=/tmp/x would put the sweep's jobs outside"),
    (["-m", "hydra.sweep.subdir=''", "seed=1,2"], "would put the sweep's jobs in the sweep's folder itself"),
    (["-m", "hydra.sweep.subdir=x", "seed=1,2"], "hydra.sweep.subdir=x names one folder for every job of the sweep"),
], ids=["no key", "a trailing comma", "+ on a key that exists", "-cp to nowhere", "unquoted ~", "a device as the run folder",
        "job logging off (the run's log is its record)", "sweep subdir climbing out", "absolute sweep subdir",
        "empty sweep subdir", "one sweep subdir for every job"])
def test_what_hydra_would_answer_in_many_lines_is_one(tmp_path, args, expected):
    assert expected in refused_in_one_line(tmp_path, *args)


def test_a_config_path_without_a_config_yaml_is_one_line(tmp_path):
    (tmp_path / "confs").mkdir()  # absolute: Hydra's 'Cannot find primary config' in many lines
    line = refused_in_one_line(tmp_path, "--config-path", str(tmp_path / "confs"))
    assert f"--config-path {tmp_path / 'confs'}: there is no config.yaml in it" in line
    assert f"use --config-dir {tmp_path / 'confs'}" in line


def test_cfg_job_checks_the_values_of_config_files_as_a_run_does(tmp_path):
    presets = tmp_path / "mine" / "experiment"
    presets.mkdir(parents=True)
    (presets / "neg.yaml").write_text("# @package _global_\ntrain:\n  epochs: -3\n")
    (presets / "typo.yaml").write_text("# @package _global_\noptim:\n  lrr: 0.1\n")
    for preset, expected in (("neg", "error: train.epochs=-3 is not valid"),
                             ("typo", "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?")):
        shown = refused_in_one_line(tmp_path, "--config-dir", str(tmp_path / "mine"), f"experiment={preset}", "--cfg", "job")
        ran = refused_in_one_line(tmp_path, "--config-dir", str(tmp_path / "mine"), f"experiment={preset}",
                                  "data.train_subset=500")  # train.epochs=1 here would win over the preset's
        assert shown.startswith(expected) and ran.startswith(expected)


def test_a_config_file_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "mine" / "experiment" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("# @package _global_\noptim:\n  lr: [\n")
    expected = f"error: {bad}, line 4: not valid YAML: expected the node content, but found '<stream end>'"
    mine = ("--config-dir", str(tmp_path / "mine"))
    assert refused_in_one_line(tmp_path, *mine, "experiment=bad", "--cfg", "job") == expected  # was ~100 lines
    assert refused_in_one_line(tmp_path, *mine, "experiment=bad", "data.train_subset=500", "train.epochs=1") == expected
    assert refused_in_one_line(tmp_path, *mine, "-m", "experiment=article,bad", "train.epochs=1") == expected
    (bad.parent / "nolist.yaml").write_text("defaults: 3\n")  # Hydra: a ValueError's traceback
    assert refused_in_one_line(tmp_path, *mine, "experiment=nolist", "--cfg", "job") == (
        "error: the config cannot be composed: Invalid defaults list in 'experiment/nolist', defaults must be a "
        "list (got int)")


def test_an_interpolation_in_the_run_folder_that_cannot_be_resolved_is_no_traceback(tmp_path):
    proc = run_cli("hydra.run.dir=${now:%Y}/${oops}", "train.epochs=1", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    # Hydra itself prints a line before it passes the error on (its formatting of it fails)
    assert proc.stderr.strip().splitlines()[-1] == "error: cannot resolve hydra.run.dir: Interpolation key 'oops' not found"


def test_a_named_run_folder_is_claimed_until_the_run_holds_it(tmp_path):
    """A claim held by a live process refuses a second run; one left by a dead process is taken over."""
    from backprop_lab import claim
    from backprop_lab.rundir import RunDirError

    from .test_compare import dead_pid

    folder = tmp_path / "named"
    folder.mkdir()
    (folder / claim.CLAIM).write_text(f"{os.getpid()}\n")  # a run starting there: this process stands in for it
    with pytest.raises(RunDirError, match=rf"another run is starting in it \(pid {os.getpid()}\)"):
        claim.claim_run_dir(folder)
    (folder / claim.CLAIM).write_text(f"{dead_pid()}\n")  # killed while starting
    claim.claim_run_dir(folder)
    assert (folder / claim.CLAIM).read_text() == f"{os.getpid()}\n"
    claim.release_claim()
    assert not (folder / claim.CLAIM).exists()


@pytest.mark.slow  # three runs at once, about 15 s
def test_runs_started_together_into_one_named_folder_leave_the_winners_record_whole(tmp_path):
    """Hydra writes .hydra/ before any code of ours runs: the refused runs must not get that far."""
    procs = [subprocess.Popen([sys.executable, "-m", "backprop_lab", "data.train_subset=2000", "train.epochs=1",
                               f"seed={i}", "hydra.run.dir=same"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert err.count("\n") == 1 and ("another run is starting in it" in err or "already holds a run" in err
                                              or "holds what an earlier run left" in err), err
    winner = json.loads((tmp_path / "same" / "summary.json").read_text())["seed"]
    assert f"seed: {winner}\n" in (tmp_path / "same" / ".hydra" / "config.yaml").read_text()
    assert f"seed={winner}" in (tmp_path / "same" / ".hydra" / "overrides.yaml").read_text()
    assert not (tmp_path / "same" / ".backprop-lab-claim").exists()


def test_the_source_tree_runs_from_pythonpath_without_being_installed(tmp_path):
    """tools/device_check.sh runs a clone on a GPU machine by PYTHONPATH alone: no editable
    install maps conf/ to backprop_lab.conf there, so config.CONF_DIR falls back to conf/."""
    import sysconfig

    from .conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    # -S: no site-packages' .pth files, so the editable install's finder is not loaded
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
    proc = subprocess.run([sys.executable, "-S", "-c", "import backprop_lab.config as c; print(c.CONF_DIR)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "conf"
    proc = subprocess.run([sys.executable, "-S", "-m", "backprop_lab", "--cfg", "job", "experiment=article",
                           "hydra/launcher=vectorized"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.1" in proc.stdout and "hidden_size: 128" in proc.stdout
