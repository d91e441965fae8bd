"""The user's terminal and habits (issue 23): tables fit 80 columns, sweeps are quiet unless asked,
compare --top keeps the best, `latest`, `resume SWEEP_DIR`, Hydra's delete syntax refused rather
than half-applied, --config-dir presets, and a --hydra-help that offers only what works."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli
from .test_compare import make_run


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("quiet")
    proc = run_cli("-m", "optim.lr=0.05,0.1", "model.hidden_size=16,32", "data.train_subset=300", "train.epochs=1",
                   f"hydra.sweep.dir={where / 'sweep'}", cwd=where, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    sweep = where / "sweep"
    (sweep / "stdout.txt").write_text(proc.stdout)
    return sweep


def test_a_sweep_prints_one_line_per_job_then_the_table_within_80_columns(sweep):
    out = (sweep / "stdout.txt").read_text()
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("job ")] == \
        ["job 0", "job 1", "job 2", "job 3"]
    assert "confusion matrix" not in out and "epoch  train loss" not in out and "╭" not in out  # in each job's folder
    assert widest(out) <= 80, out
    shown = run_cli("show", str(sweep / "0"), cwd=sweep.parent)
    assert shown.returncode == 0 and "confusion matrix" in shown.stdout  # still there for `show`


@pytest.mark.slow  # a 2-job verbose sweep through the CLI: about 6 s
def test_verbose_sweeps_print_each_jobs_tables(tmp_path):
    proc = run_cli("-m", "optim.lr=0.05,0.1", "data.train_subset=200", "train.epochs=1",
                   "hydra.callbacks.sweep_report.verbose=true", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("confusion matrix (test set)") == 2


@pytest.fixture
def outputs(tmp_path) -> Path:
    root = tmp_path / "outputs"
    for n, acc in enumerate([0.91, 0.97, 0.93, 0.95, 0.90]):
        run_dir = make_run(root / "2026-11-30" / f"0{n}-00-00", accs=[acc - 0.05, acc], hidden=16 * (n + 1),
                           lr=0.1 * (n + 1))
        summary = json.loads((run_dir / "summary.json").read_text())
        config = summary["config"]  # six more keys that differ between the runs: too many for 80 columns
        config["optim"].update(momentum=0.1 * n, weight_decay=0.001 * n)
        config["model"].update(dropout=0.1 * n, init_scale=0.01 * (n + 1))
        config["data"]["batch_size"] = 32 * (n + 1)
        config["seed"] = n
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return root


def test_compare_top_keeps_the_best_and_says_of_how_many(outputs):
    proc = run_cli("compare", str(outputs), "--top", "2", cwd=outputs.parent)
    assert proc.returncode == 0, proc.stderr
    assert f"2 of 5 runs under {outputs}, sorted by test_acc" in proc.stdout
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.strip().startswith("2026-")]
    assert rows == ["2026-11-30/01-00-00", "2026-11-30/03-00-00"]  # 97 % and 95 %


def test_a_table_too_wide_for_80_columns_leaves_out_keys_and_says_which(outputs):
    proc = run_cli("compare", str(outputs), cwd=outputs.parent, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert widest(proc.stdout) <= 80, proc.stdout
    note = " ".join(proc.stdout.split())  # the note is wrapped to the width too
    assert "7 differing keys left out to fit 80 columns: model.init_scale, model.dropout, optim.lr," in note
    assert note.endswith("data.batch_size, seed; choose columns with --keys KEY,KEY")
    chosen = run_cli("compare", str(outputs), "--keys", "optim.lr,seed", cwd=outputs.parent, env={"COLUMNS": "80"})
    assert chosen.returncode == 0 and "optim.lr" in chosen.stdout and "model.dropout" not in chosen.stdout
    assert "left out" not in chosen.stdout
    bad = run_cli("compare", str(outputs), "--keys", "optim.lrr", cwd=outputs.parent)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --keys 'optim.lrr': optim.lrr is not a config key")


def test_latest_is_the_newest_run_for_show_and_compare(outputs):
    shutil.copytree(outputs / "2026-11-30" / "00-00-00", outputs / "2026-12-01" / "09-00-00")
    newest = outputs / "2026-12-01" / "09-00-00"
    s = json.loads((newest / "summary.json").read_text())
    (newest / "summary.json").write_text(json.dumps({**s, "started_at": "2026-12-01T09:00:00+00:00",
                                                     "run_dir": str(newest)}))
    shown = run_cli("show", "latest", cwd=outputs.parent)
    assert shown.returncode == 0 and str(newest) in shown.stdout
    compared = run_cli("compare", "latest", cwd=outputs.parent)
    assert compared.returncode == 0 and "1 run under" in compared.stdout
    nowhere = run_cli("show", "latest", cwd=outputs.parent / "outputs" / "2026-12-01")
    assert nowhere.returncode == 2 and "latest: there is no outputs folder here" in nowhere.stderr


@pytest.mark.slow  # `make test` stays near 5 minutes; `make test-slow` and CI run it
def test_resume_of_a_sweep_folder_continues_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "optim.lr=0.05,0.1", "data.train_subset=200", "train.epochs=1", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(sweep / "1")  # as if the sweep had stopped before its second job
    proc = run_cli("resume", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"continuing the sweep {sweep}: backprop-lab -m" in proc.stdout
    assert "job 0" in proc.stdout and "already completed" in proc.stdout
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    extra = run_cli("resume", str(sweep), "optim.lr=1", cwd=tmp_path)
    assert extra.returncode == 2 and "takes no KEY=VALUE" in extra.stderr


@pytest.mark.parametrize("override,expected", [
    ("~optim.lr", "~optim.lr: every run needs optim.lr, so it cannot be deleted; set it to another value instead, "
                  "e.g. optim.lr=0.1"),
    ("~model", "~model: every run needs a model config, so it cannot be deleted"),
])
def test_deleting_a_key_the_run_needs_is_refused_in_one_line(tmp_path, override, expected):
    proc = run_cli(override, "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {expected}" or expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_adding_an_unknown_key_with_plus_is_refused_and_a_forced_known_key_is_set(tmp_path):
    added = run_cli("+optim.lrr=0.1", "--cfg", "job", cwd=tmp_path)
    assert added.returncode == 2 and "unknown config key 'optim.lrr'" in added.stderr
    forced = run_cli("++optim.lr=0.3", "--cfg", "job", cwd=tmp_path)
    assert forced.returncode == 0 and "lr: 0.3" in forced.stdout


def test_config_dir_adds_the_users_own_presets(tmp_path):
    mine = tmp_path / "mine" / "experiment"
    mine.mkdir(parents=True)
    (mine / "wide.yaml").write_text("# @package _global_\nmodel:\n  hidden_size: 512\noptim:\n  lr: 0.05\n")
    proc = run_cli("--config-dir", str(tmp_path / "mine"), "experiment=wide", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hidden_size: 512" in proc.stdout and "lr: 0.05" in proc.stdout
    missing = run_cli("--config-dir", str(tmp_path / "mine"), "experiment=narrow", "--cfg", "job", cwd=tmp_path)
    assert missing.returncode == 2 and "experiment=narrow is not a known preset" in missing.stderr
    assert "wide" in missing.stderr  # the user's own preset is listed among those available


def test_hydra_help_offers_only_what_works(tmp_path):
    proc = run_cli("--hydra-help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    offered, refused = proc.stdout.split("Not available here:")
    assert "--config-dir" in offered and "hydra/launcher: basic, joblib" in offered
    for flag in ("install=bash", "--experimental-rerun", "hydra/job_logging", "-sc", "--shell-completion"):
        assert flag not in offered
    assert "shell completion (-sc), --experimental-rerun" in refused  # said once, as not available


def test_an_interrupted_sweeps_table_lists_the_jobs_that_never_started(tmp_path):
    """fail-fast stops the sweep after job 0 diverges: jobs 1 and 2 never start, and the table
    lists all three planned jobs."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=1e30,0.1,0.2", "data.train_subset=200", "train.epochs=1",
                   "hydra.callbacks.sweep_report.fail_fast=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1
    table = proc.stdout[proc.stdout.index(f"sweep {sweep}"):]
    assert "3 jobs, best test acc first" in " ".join(table.split()[:12])  # the title may wrap
    rows = {line.split()[0]: line for line in table.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])}
    assert sorted(rows) == ["0", "1", "2"]
    assert rows["1"].rstrip().endswith("not started") and rows["2"].rstrip().endswith("not started")
    assert "0.1" in rows["1"] and "0.2" in rows["2"]  # each with its planned value
    saved = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in sorted(saved["runs"], key=lambda r: r["run"])] == ["diverged", "not started", "not started"]


def test_a_single_runs_output_fits_80_columns(tmp_path):
    """The header, the epoch table, the confusion matrix (compact at this width) and the summary."""
    proc = run_cli("data.train_subset=300", "train.epochs=2", "hydra.run.dir=r", cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert "confusion matrix (test set)" in proc.stdout and "recall" in proc.stdout
    assert widest(proc.stdout) <= 80, proc.stdout


def test_help_and_hydra_help_fit_80_columns(tmp_path):
    for flag in ("--help", "--hydra-help"):
        proc = run_cli(flag, cwd=tmp_path, env={"COLUMNS": "80"})
        assert proc.returncode == 0 and widest(proc.stdout) <= 80, (flag, proc.stdout)


@pytest.mark.slow  # a joblib sweep of parallel jobs: about 8 s
def test_parallel_jobs_print_whole_result_lines_only(tmp_path):
    """joblib runs two jobs at once, each in a process of its own: no progress bars, no tables
    from the jobs, only whole result lines, then the table (all within 80 columns)."""
    import re

    proc = run_cli("-m", "optim.lr=0.05,0.1,0.2,0.4", "data.train_subset=300", "train.epochs=1",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 's'}",
                   cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout[: proc.stdout.index("sweep ")]
    lines = [line for line in head.splitlines() if line.strip()]
    assert len(lines) == 4 and all(re.fullmatch(r"job \d  optim\.lr=[\d.]+  ->  test acc [\d.]+%, completed, [\d.]+ s",
                                                line) for line in lines), head
    assert sorted(line.split()[1] for line in lines) == ["0", "1", "2", "3"]
    assert widest(proc.stdout) <= 80


@pytest.mark.slow  # `make test` stays near 5 minutes; `make test-slow` and CI run it
def test_a_stopped_optuna_search_says_how_many_trials_never_started(tmp_path):
    """fail_fast stops the search after its first trial diverges: the two trials Optuna never
    proposed cannot be rows (they have no values yet), so a line under the table counts them."""
    proc = run_cli("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=3", "optim.lr=choice(10000)",
                   "hydra.callbacks.sweep_report.fail_fast=true", "data.train_subset=300", "train.epochs=1",
                   f"hydra.sweep.dir={tmp_path / 'search'}", cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 1, proc.stderr
    assert "2 of 3 trials never started (an Optuna search proposes each trial's values only as it runs it)" \
        in proc.stdout.replace("\n", " ")
    assert "fail-fast" in proc.stderr and widest("\n".join(line for line in proc.stdout.splitlines() if "->" not in line)) <= 80
    # a trial's line names what it varies, Optuna's long floats in 4 digits
    assert re.search(r"^job 0  optim\.lr=10000 model\.hidden_size=\d+ model\.init_scale=0\.\d{1,6} "
                     r"data\.batch_size=\d+  ->  diverged", proc.stdout, re.M), proc.stdout
