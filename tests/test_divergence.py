"""Divergence that stays finite and networks that die: the loss_ratio rule, the dead-unit count in
grads.csv and its warning, through the trainer, a run, a sweep, resume and compare; and the runs
that must not be flagged."""

from __future__ import annotations

import json
import math

import pytest
import torch

from backprop_lab import network
from backprop_lab.config import from_dictconfig
from backprop_lab.train import Diverged, make_state, note_dead_layers, train

from .conftest import compose, run_cli


def config(*overrides: str):
    return from_dictconfig(compose(*overrides))


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_a_loss_that_explodes_and_comes_back_finite_is_divergence(small_mnist):
    """lr=10: the loss passes 900 in epoch 1, then sits at chance; NaN never appears."""
    cfg = config("optim.lr=10", "train.epochs=2")
    with pytest.raises(Diverged) as diverged:
        list(train(cfg, small_mnist, make_state(cfg, torch.device("cpu"))))
    e = diverged.value
    assert (e.rule, e.epoch) == ("loss_ratio", 1)
    start = math.log(10)  # 10 classes, weights near 0: the first batch's loss is about ln 10
    assert e.limit == pytest.approx(100 * start, rel=0.02) and e.loss > e.limit
    assert e.batch == math.ceil(2000 / 64)  # one check per epoch here: at its last batch

    unguarded = config("optim.lr=10", "train.epochs=2", "train.max_loss_ratio=null")
    records = list(train(unguarded, small_mnist, make_state(unguarded, torch.device("cpu"))))
    assert len(records) == 2 and records[0].train_loss > 100 * start  # what the rule is there for
    assert all(math.isfinite(r.train_loss) for r in records)


def test_the_ratio_is_taken_over_the_first_batchs_loss_and_kept_across_a_resume(small_mnist):
    cfg = config("train.epochs=2")
    state = make_state(cfg, torch.device("cpu"))
    fresh = make_state(cfg, torch.device("cpu"))  # the same start: its generator gives epoch 1's order
    order = torch.randperm(small_mnist.X_train.shape[0], generator=fresh.shuffle)[:64]
    arch = network.Arch(sizes=(784, 128, 10))
    first_batch = network.loss_of(arch, network.forward(arch, fresh.params, small_mnist.X_train[order]).z,
                                  small_mnist.Y_train[order])
    next(train(cfg, small_mnist, state))
    assert state.start_loss == pytest.approx(first_batch.item(), rel=1e-5)
    # a resumed run keeps the start's loss, so its limit is the unbroken run's
    resumed = make_state(cfg, torch.device("cpu"))
    resumed.load(state.state_dict())
    assert resumed.start_loss == state.start_loss
    # and a limit below the loss it resumes at fires in the resumed epoch
    strict = config("train.epochs=2", "train.max_loss_ratio=1.01")
    resumed.start_loss = 0.1
    with pytest.raises(Diverged) as diverged:
        list(train(strict, small_mnist, resumed, start_epoch=2))
    assert (diverged.value.rule, diverged.value.epoch) == ("loss_ratio", 2)
    assert diverged.value.limit == pytest.approx(0.101)


def test_dead_fraction_counts_units_inactive_on_every_row():
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                      [0.0, 0.0, 2.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]])  # units 0 and 3 never fire
    assert network.dead_fraction(a) == 0.5
    assert network.dead_fraction(torch.zeros(5, 8)) == 1.0


def test_dead_layers_are_noted_from_the_epoch_they_died_and_dropped_when_they_revive():
    layer = lambda fraction: [{"layer": 1, "dead_fraction": fraction}, {"layer": 2, "dead_fraction": math.nan}]  # noqa: E731
    s: dict = {}
    note_dead_layers(s, 1, layer(0.5))
    assert s["warnings"] == [] and s["dead_layers"] == {}
    note_dead_layers(s, 2, layer(1.0))
    note_dead_layers(s, 3, layer(0.99))
    assert s["dead_layers"] == {"1": 2} and s["warnings"] == ["layer 1: 99 % of units dead from epoch 2"]
    note_dead_layers(s, 4, layer(0.9))
    assert s["warnings"] == []


def test_an_exploding_run_is_diverged_exit_3_keeps_its_checkpoint_and_is_not_resumed(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("optim.lr=1000", "data.train_subset=2000", "train.epochs=2", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: training diverged at epoch 1, batch 32: the training loss rose to ")
    assert "above train.max_loss_ratio's limit 230; try a smaller optim.lr" in proc.stderr
    s = summary(run_dir)
    assert s["status"] == "diverged" and s["epochs_completed"] == 0
    at = s["diverged_at"]
    assert (at["rule"], at["epoch"], at["batch"]) == ("loss_ratio", 1, 32) and at["loss"] > at["limit"] > 200
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["params"]["W1"].abs().max() < 0.1  # the untrained start, intact
    refused = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert refused.returncode == 2 and "diverged" in refused.stderr


def test_a_dead_network_completes_with_a_warning_in_its_summary_grads_and_compare(tmp_path):
    """lr=3: every hidden unit of the chapter's network is dead after epoch 1 and stays dead (at lr=2
    126 of 128 are, here: too close to the 98 % line to test on any CPU); the run completes."""
    run_dir = tmp_path / "run"
    proc = run_cli("optim.lr=3", "data.train_subset=2000", "train.epochs=2", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = summary(run_dir)
    assert s["status"] == "completed" and s["dead_layers"] == {"1": 1}
    assert s["warnings"] == ["layer 1: 100 % of units dead from epoch 1"]
    rows = [line.split(",") for line in (run_dir / "grads.csv").read_text().splitlines()]
    assert rows[0][-1] == "dead_fraction"
    layer1 = [float(r[-1]) for r in rows[1:] if r[1] == "1"]
    assert layer1 == [1.0, 1.0]
    assert all(r[-1] == "nan" for r in rows[1:] if r[1] == "2")  # the softmax layer has no ReLU units
    assert "warning           layer 1: " in proc.stdout  # the summary panel
    shown = run_cli("compare", str(run_dir), cwd=tmp_path)
    assert shown.returncode == 0 and "completed: layer 1: " in shown.stdout


def test_in_a_sweep_each_rule_is_reported_and_the_next_job_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=1000,3,0.1", "data.train_subset=2000", "train.epochs=2", "device=cpu",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("  ")[0]: line for line in proc.stdout.splitlines() if line.startswith("job ")}
    assert "diverged" in lines["job 0"] and "the training loss rose to" in lines["job 0"]
    assert "completed" in lines["job 1"] and "of units dead from epoch 1" in lines["job 1"]
    assert lines["job 2"].endswith(" s") and "completed" in lines["job 2"]  # no warning on the healthy one
    table = proc.stdout[proc.stdout.index("sweep "):]
    assert "0: diverged: training diverged at epoch 1" in table and "1: completed: layer 1:" in table
    statuses = [summary(sweep / str(n))["status"] for n in range(3)]
    assert statuses == ["diverged", "completed", "completed"]


def test_fail_fast_stops_on_an_exploding_loss(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=1000,0.1", "data.train_subset=500", "train.epochs=1", "device=cpu",
                   f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_report.fail_fast=true", cwd=tmp_path)
    assert proc.returncode == 1
    assert summary(sweep / "0")["diverged_at"]["rule"] == "loss_ratio"
    assert not (sweep / "1").exists() and "not run: fail-fast" in proc.stdout


HEALTHY = [("experiment=article",), ("experiment=book_ch10",), ("experiment=overfitting",),
           ("experiment=vanishing_gradients",), ("experiment=momentum", "optim.momentum=0.9"),
           ("optim.momentum=0.9",), ("optim.lr=0.5",)]


@pytest.mark.parametrize("overrides", HEALTHY, ids=[" ".join(h) for h in HEALTHY])
def test_healthy_runs_are_not_flagged(small_mnist, overrides):
    """Two epochs on 2,000 images (train.steps cleared for book_ch10): neither rule fires and no
    layer is reported dead."""
    cfg = config(*overrides, "train.epochs=2", "train.steps=null", "data.train_subset=2000")
    from backprop_lab.data import load_mnist

    data = small_mnist if cfg.data.image_size == 28 else load_mnist(train_subset=2000, image_size=cfg.data.image_size)
    s: dict = {}
    for m in train(cfg, data, make_state(cfg, torch.device("cpu"))):  # raises Diverged if a rule fires
        note_dead_layers(s, m.epoch, m.layers)
    assert m.epoch == 2 and s["warnings"] == []


@pytest.mark.slow  # `make test` stays near 5 minutes; `make test-slow` and CI run it
def test_a_sweep_over_lr_from_0_01_to_0_5_completes_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=0.01,0.05,0.1,0.2,0.5", "data.train_subset=2000", "train.epochs=2",
                   "device=cpu", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for n in range(5):
        s = summary(sweep / str(n))
        assert s["status"] == "completed" and s["warnings"] == [], (n, s.get("error"), s["warnings"])


def test_a_resumed_run_from_before_dead_fraction_keeps_its_grads_csv_columns(tmp_path):
    from backprop_lab.rundir import GRADS_COLUMNS_BEFORE_DEAD, RunWriter

    (tmp_path / "grads.csv").write_text(",".join(GRADS_COLUMNS_BEFORE_DEAD) + "\r\n1,1,0.5,10.0,0.002\r\n")
    (tmp_path / "metrics.csv").write_text("epoch\r\n")
    writer = RunWriter(tmp_path, ["epoch"], resume=True)
    writer.append_layers(2, [{"layer": 1, "grad_norm": 0.25, "weight_norm": 11.0, "update_ratio": 0.001,
                              "dead_fraction": 0.5}])
    assert (tmp_path / "grads.csv").read_text().splitlines() == [
        "epoch,layer,grad_norm,weight_norm,update_ratio", "1,1,0.5,10.0,0.002", "2,1,0.25,11.0,0.001"]
