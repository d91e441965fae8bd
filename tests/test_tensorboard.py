"""TensorBoard events, read back with TensorBoard's own reader and held to the run's files:
written live (log.tensorboard=true) and exported (compare --tensorboard), replaced on re-export,
damaged runs exported as far as they go or skipped, and one line without the package."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli

# the dev extra installs tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

EPOCH_TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
              "test_acc": "accuracy/test", "seconds": "time/epoch_seconds", "samples_per_s": "time/samples_per_s"}


def events(log_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return ea


def rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def hparams(ea: EventAccumulator) -> dict:
    data = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def assert_events_match_files(log_dir: Path, run_dir: Path) -> EventAccumulator:
    ea = events(log_dir)
    metrics = rows(run_dir / "metrics.csv")
    for column, tag in EPOCH_TAGS.items():
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == [int(r["epoch"]) for r in metrics], tag  # each epoch once
        assert [v for _, v in got] == pytest.approx([r[column] for r in metrics], rel=1e-6), tag
    for row in rows(run_dir / "grads.csv"):
        layer, epoch = int(row["layer"]), int(row["epoch"])
        for stat in ("grad_norm", "update_ratio", "weight_norm"):
            value = {e.step: e.value for e in ea.Scalars(f"{stat}/layer{layer}")}[epoch]
            assert value == pytest.approx(row[stat], rel=1e-6)
    assert "dead_fraction/layer1" in ea.Tags()["scalars"] and "dead_fraction/layer2" not in ea.Tags()["scalars"]
    return ea


def test_a_run_with_log_tensorboard_writes_its_events_as_it_trains(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("log.tensorboard=true", "data.train_subset=500", "train.epochs=2", "optim.lr=0.2",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    ea = assert_events_match_files(run_dir, run_dir)
    h = hparams(ea)
    assert h["optim.lr"] == 0.2 and h["model.hidden_size"] == 128 and h["model.hidden_sizes"] == "null"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("tb")
    proc = run_cli("-m", "optim.lr=0.05,0.2", "data.train_subset=500", "train.epochs=2",
                   f"hydra.sweep.dir={where / 'sweep'}", cwd=where)
    assert proc.returncode == 0, proc.stderr
    return where / "sweep"


def test_compare_exports_one_folder_per_run_and_re_exporting_replaces_them(sweep, tmp_path):
    dest = tmp_path / "tb"
    for _ in range(2):
        proc = run_cli("compare", str(sweep), "--tensorboard", str(dest), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"TensorBoard: 2 runs in {dest}; view them with: tensorboard --logdir {dest}" in proc.stdout
    for job in ("0", "1"):
        assert len(list((dest / job).glob("events.out.tfevents.*"))) == 1  # replaced, not doubled
        ea = assert_events_match_files(dest / job, sweep / job)
        h = hparams(ea)
        assert h["optim.lr"] == (0.05 if job == "0" else 0.2) and h["status"] == "completed"
        experiment = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/experiment"])
        assert {m.name.tag for m in experiment.experiment.metric_infos} >= {"accuracy/test", "loss/test"}


def test_damaged_runs_are_exported_as_far_as_they_go_or_skipped_with_a_line(sweep, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(sweep / "0", runs / "cut")
    metrics = runs / "cut" / "metrics.csv"
    metrics.write_text(metrics.read_text()[:-10])  # the second epoch's row cut mid-line
    (runs / "refused" / ".hydra").mkdir(parents=True)  # Hydra's folder of a run refused before it trained
    (runs / "refused" / "backprop-lab.log").write_text("[2026-11-30 01:00:00,000][backprop_lab.cli][ERROR] - bad\n")
    proc = run_cli("compare", str(runs), "--tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{runs / 'refused'}: not exported to TensorBoard: bad" in proc.stderr
    ea = events(tmp_path / "tb" / "cut")
    assert [e.step for e in ea.Scalars("accuracy/test")] == [1]
    assert "TensorBoard: 1 run in" in proc.stdout


def test_without_tensorboard_each_option_is_one_line_naming_what_to_install(sweep, tmp_path):
    blocker = tmp_path / "blocker" / "tensorboard"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no tensorboard here')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    for args in (["compare", str(sweep), "--tensorboard", str(tmp_path / "tb")],
                 ["log.tensorboard=true", "train.epochs=1", "data.train_subset=100", f"hydra.run.dir={tmp_path / 'r'}"],
                 ["-m", "seed=1,2", "log.tensorboard=true", "train.epochs=1", "data.train_subset=100",
                  f"hydra.sweep.dir={tmp_path / 's'}"]):  # the grid refused whole, before its first job
        proc = run_cli(*args, cwd=tmp_path, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "TensorBoard is not installed; install it with: pip install 'backprop-lab[tensorboard]'" in lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "tb").exists() and not (tmp_path / "s").exists()


def test_an_unwritable_destination_is_one_line(sweep, tmp_path):
    (tmp_path / "file").write_text("")
    proc = run_cli("compare", str(sweep), "--tensorboard", str(tmp_path / "file"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""  # refused before the table, not after it
    assert proc.stderr == f"error: --tensorboard {tmp_path / 'file'} is a file; give a folder, e.g. --tensorboard tb\n"
