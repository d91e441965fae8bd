"""Vectorised sweeps (issue 22): K same-shape runs trained as one model (members.Group) and the
hydra/launcher=vectorized launcher. Members are held to their single-run twins (train.train with
the same config and seed) at float64, one diverging member leaves the others untouched, and a
sweep's members get run directories that the rest of the tool reads as any run's."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from backprop_lab.config import from_dictconfig
from backprop_lab.members import Group, describe, group_key
from backprop_lab.train import Diverged, make_state, train

from .conftest import compose, run_cli


def config(*overrides: str):
    return from_dictconfig(compose(*overrides))


def float64(data, n: int = 700):
    """The first n training images (n is not a multiple of 64: the last batch is partial), in float64."""
    return replace(data, X_train=data.X_train[:n].double(), Y_train=data.Y_train[:n].double(),
                   y_train=data.y_train[:n], X_test=data.X_test[:2000].double(), Y_test=data.Y_test[:2000].double(),
                   y_test=data.y_test[:2000])


def double_state(cfg):
    state = make_state(cfg, torch.device("cpu"))
    state.params = {k: v.double() for k, v in state.params.items()}
    return state


def alone(cfg, data):
    """The member's twin: its config trained as a single run in float64; (its State, its records)."""
    twin = double_state(cfg)
    return twin, list(train(cfg, data, twin))


def assert_same_tensors(ours: dict, theirs: dict, k: int) -> None:
    assert set(ours) == set(theirs), k
    for name, value in theirs.items():
        assert torch.allclose(ours[name], value, rtol=0, atol=1e-10), (k, name)


GRID = [("optim.lr=0.05", "seed=0", "model.init_scale=0.01"), ("optim.lr=0.2", "seed=1", "model.init_scale=0.01"),
        ("optim.lr=0.1", "seed=0", "model.init_scale=0.05"), ("optim.lr=0.4", "seed=2", "model.init=he")]


@pytest.mark.parametrize("fused", ["true", "false"])
def test_members_are_their_single_run_twins_float64(small_mnist, fused):
    """Every epoch's metrics (train loss and accuracy, test loss and accuracy) and the final weights
    of each member equal those of its run trained alone, to 1e-10, with their own lr, seed (initial
    weights and batch order), init and init_scale; train.steps ends mid-epoch."""
    data = float64(small_mnist)
    cfgs = [config(*job, "train.steps=20", f"train.fused={fused}") for job in GRID]  # 11 batches an epoch
    assert len({group_key(c) for c in cfgs}) == 1
    states = [double_state(c) for c in cfgs]
    records = list(Group(cfgs, data, states).epochs())
    assert len(records) == 2 and all(set(r) == {0, 1, 2, 3} for r in records)
    for k, cfg in enumerate(cfgs):
        twin = double_state(cfg)
        twin_records = list(train(cfg, data, twin))
        for epoch, (ours, theirs) in enumerate(zip((r[k] for r in records), twin_records), start=1):
            assert ours.epoch == theirs.epoch == epoch
            for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert getattr(ours, name) == pytest.approx(getattr(theirs, name), rel=0, abs=1e-10), (k, name)
            for a, b in zip(ours.layers, theirs.layers):
                assert a == pytest.approx(b, rel=1e-9, nan_ok=True)
        assert_same_tensors(states[k].params, twin.params, k)
        assert states[k].start_loss == pytest.approx(twin.start_loss, abs=1e-12)
        # the member's checkpoint holds its own tensors, not the group's storage
        saved = states[k].state_dict()["params"]
        assert saved["W1"].shape == (784, 128) and saved["W1"].untyped_storage().nbytes() == 784 * 128 * 8


def test_members_with_momentum_nesterov_and_weight_decay_are_their_twins_float64(small_mnist):
    """Each member keeps its own momentum buffers, Nesterov flag and L2 coefficient, as
    network.sgd_update applies them to its single run; members without momentum keep none."""
    data = float64(small_mnist)
    jobs = [("optim.momentum=0.9",), ("optim.momentum=0.5", "optim.nesterov=true", "seed=1"),
            ("optim.weight_decay=0.01", "optim.lr=0.2"), ("optim.momentum=0.9", "optim.weight_decay=0.001", "seed=2"),
            ()]
    cfgs = [config(*job, "train.epochs=2") for job in jobs]
    assert len({group_key(c) for c in cfgs}) == 1
    states = [double_state(c) for c in cfgs]
    records = list(Group(cfgs, data, states).epochs())
    for k, cfg in enumerate(cfgs):
        twin, theirs = alone(cfg, data)
        assert [r[k].test_loss for r in records] == pytest.approx([t.test_loss for t in theirs], rel=0, abs=1e-10)
        assert [r[k].train_loss for r in records] == pytest.approx([t.train_loss for t in theirs], rel=0, abs=1e-10)
        assert_same_tensors(states[k].params, twin.params, k)
        for ours, their in zip(records[-1][k].layers, theirs[-1].layers):  # update_ratio reads the velocity
            assert ours == pytest.approx(their, rel=1e-9, nan_ok=True), k
        assert_same_tensors(states[k].velocity, twin.velocity, k)  # {} without momentum, as the single run's


@pytest.mark.parametrize("extra", [(), ("optim.momentum=0.9", "model.hidden_sizes=[32,16]")], ids=["fused", "network"])
def test_members_at_one_seed_share_their_batches_and_are_their_twins_float64(small_mnist, extra):
    """Members with one seed shuffle alike, so the group gathers each batch once for all of them
    (the fused step and network.py's path both take it); each is still its single run's twin."""
    data = float64(small_mnist, 300)
    cfgs = [config(f"optim.lr={lr}", *extra, "train.epochs=2") for lr in (0.05, 0.1, 0.2)]
    states = [double_state(c) for c in cfgs]
    records = list(Group(cfgs, data, states).epochs())
    for k, cfg in enumerate(cfgs):
        twin, theirs = alone(cfg, data)
        assert [r[k].train_loss for r in records] == pytest.approx([t.train_loss for t in theirs], rel=0, abs=1e-10)
        assert_same_tensors(states[k].params, twin.params, k)


def test_float32_members_agree_with_their_twins_to_rounding(small_mnist):
    cfgs = [config(*job, "train.epochs=1") for job in GRID]
    states = [make_state(c, torch.device("cpu")) for c in cfgs]
    (records,) = list(Group(cfgs, small_mnist, states).epochs())
    for k, cfg in enumerate(cfgs):
        (theirs,) = list(train(cfg, small_mnist, make_state(cfg, torch.device("cpu"))))
        assert records[k].test_acc == pytest.approx(theirs.test_acc, abs=2e-3)
        assert records[k].train_loss == pytest.approx(theirs.train_loss, rel=1e-4)


def test_a_diverging_member_leaves_the_group_and_the_others_go_on(small_mnist):
    """lr=10 passes the loss_ratio limit in epoch 1 (as its single run does, at the same batch),
    lr=1e4 goes to NaN; the other members train both epochs exactly as they would without them."""
    data = float64(small_mnist, 2000)
    jobs = ["optim.lr=0.1", "optim.lr=10", "optim.lr=0.2", "optim.lr=10000"]
    cfgs = [config(j, "train.epochs=2") for j in jobs]
    states = [double_state(c) for c in cfgs]
    records = list(Group(cfgs, data, states).epochs())
    assert [sorted(r) for r in records] == [[0, 1, 2, 3], [0, 2]]
    for k in (1, 3):
        e = records[0][k]
        assert isinstance(e, Diverged)
        with pytest.raises(Diverged) as alone:
            list(train(cfgs[k], data, double_state(cfgs[k])))
        assert (e.epoch, e.batch, e.rule) == (alone.value.epoch, alone.value.batch, alone.value.rule)
    assert records[0][1].rule == "loss_ratio"
    for k in (0, 2):
        twin = double_state(cfgs[k])
        theirs = list(train(cfgs[k], data, twin))
        assert [r[k].test_loss for r in records] == pytest.approx([t.test_loss for t in theirs], abs=1e-10)
        assert torch.allclose(states[k].params["W2"], twin.params["W2"], rtol=0, atol=1e-10)


def test_a_members_kept_test_predictions_are_those_of_its_final_weights(small_mnist):
    """The last test pass keeps each member's predicted classes (its confusion matrix then needs no
    forward pass of its own): they are the argmax of a forward pass with its final parameters, also
    for the members after one that left the group (lr=10000 diverges in epoch 1)."""
    from backprop_lab import network
    from backprop_lab.train import arch_of

    data = float64(small_mnist, 2000)
    cfgs = [config(j, "train.epochs=2") for j in ("optim.lr=0.1", "optim.lr=10000", "optim.lr=0.2", "seed=3")]
    states = [double_state(c) for c in cfgs]
    group = Group(cfgs, data, states)
    records = list(group.epochs())
    assert sorted(records[-1]) == [0, 2, 3] and group.test_predictions(1) is None
    for k in (0, 2, 3):
        z = network.forward(arch_of(cfgs[k]), states[k].params, data.X_test, train=False).z
        assert torch.equal(group.test_predictions(k), z.argmax(dim=-1)), k
        right = (group.test_predictions(k) == data.y_test).double().mean().item()
        assert right == pytest.approx(records[-1][k].test_acc, abs=1e-12)


@pytest.mark.parametrize("model", [("model.hidden_sizes=[32,16]", "model.activation=tanh", "model.batch_norm=true"),
                                   ("model.activation=sigmoid", "model.output=sigmoid", "loss=mse"),
                                   ("model.hidden_sizes=[24,12]", "model.activation=leaky_relu")],
                         ids=["deep-tanh-batchnorm", "sigmoid-mse", "deep-leaky"])
def test_members_of_any_model_with_their_own_dropout_and_momentum_are_their_twins_float64(small_mnist, model):
    """Deeper networks, other activations, batch norm (its running statistics per member), the
    quadratic cost: members with their own dropout rate (and masks, from their own generator),
    momentum, Nesterov and weight decay equal their single runs, to 1e-10."""
    data = float64(small_mnist, 400)
    jobs = [("model.dropout=0.2", "optim.momentum=0.9"), ("optim.lr=0.2", "seed=1"),
            ("model.dropout=0.5", "optim.momentum=0.5", "optim.nesterov=true", "optim.weight_decay=0.01", "seed=2")]
    cfgs = [config(*model, *job, "train.steps=9") for job in jobs]  # 7 batches an epoch: ends mid-epoch
    assert len({group_key(c) for c in cfgs}) == 1
    states = [double_state(c) for c in cfgs]
    records = list(Group(cfgs, data, states).epochs())
    assert len(records) == 2
    for k, cfg in enumerate(cfgs):
        twin, theirs = alone(cfg, data)
        for ours, their in zip((r[k] for r in records), theirs, strict=True):
            for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert getattr(ours, name) == pytest.approx(getattr(their, name), rel=0, abs=1e-10), (k, name)
            for a, b in zip(ours.layers, their.layers, strict=True):
                assert a == pytest.approx(b, rel=1e-9, nan_ok=True), k
        assert_same_tensors(states[k].params, twin.params, k)  # batch norm's running mean and var too
        assert_same_tensors(states[k].velocity, twin.velocity, k)
        # the dropout generator has drawn what the single run's drew: a resumed member goes on alike
        assert torch.equal(states[k].dropout.get_state(), twin.dropout.get_state())


def test_what_joins_a_group_and_what_splits_one():
    base = group_key(config())
    assert group_key(config("optim.lr=0.3", "seed=4", "model.init_scale=0.05", "optim.momentum=0.9",
                            "optim.nesterov=true", "optim.weight_decay=0.01", "model.init=xavier",
                            "model.dropout=0.3")) == base
    for other in ("model.hidden_size=64", "model.hidden_sizes=[64,32]", "model.activation=tanh",
                  "model.batch_norm=true", "data.batch_size=32", "train.epochs=3", "data.train_subset=500",
                  "train.fused=false", "device=cpu"):
        assert group_key(config(other)) != base, other
    deep = [config("model.hidden_sizes=[64,32]", "model.activation=tanh", "model.batch_norm=true", f"model.dropout={p}")
            for p in (0.1, 0.2)]
    assert describe(deep) == "2 x 784-64-32-10 tanh batch norm, varying model.dropout"
    assert describe([config("model.dropout=0.2", f"seed={s}") for s in (0, 1)]) == "2 x 784-128-10 dropout 0.2, varying seed"


# --- the launcher, as a user runs it ---------------------------------------------------------------

TINY = ("data.train_subset=300", "train.epochs=2", "device=cpu")
VEC = "hydra/launcher=vectorized"


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def metrics(job_dir: Path) -> list[dict[str, float]]:
    with open(job_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def clean(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "Callback" not in proc.stderr, proc.stderr


def hydra_record(job: Path, sweep: Path) -> dict:
    """A job's .hydra/hydra.yaml less what differs with the launcher (its settings and override) and
    with the sweep folder's name."""
    hydra = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["output_dir"] == str(job) and os.path.abspath(hydra["sweep"]["dir"]) == str(sweep)
    del hydra["launcher"], hydra["overrides"]["hydra"], hydra["runtime"]["choices"]["hydra/launcher"]
    del hydra["runtime"]["output_dir"], hydra["sweep"]["dir"]
    return hydra


def test_a_vectorized_sweep_gives_each_member_the_run_of_its_basic_twin(tmp_path):
    grid = ("optim.lr=0.05,0.2", "seed=0,1")
    basic = run_cli("-m", *grid, *TINY, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    clean(basic)
    vec = run_cli("-m", *grid, *TINY, VEC, f"hydra.sweep.dir={tmp_path / 'x' / '..' / 'vec'}", cwd=tmp_path)
    clean(vec)
    assert vec.stdout.startswith("vectorized: 4 jobs -> 1 group\n  4 x 784-128-10, varying optim.lr, seed\n")
    assert "job 3  optim.lr=0.2 seed=1  ->  test acc" in vec.stdout
    assert "best test acc first" in " ".join(vec.stdout.split())  # the title may wrap: the sweep's path is long
    pngs = {"confusion.png", "errors.png", "curves.png"}
    for job in ("0", "1", "2", "3"):
        ours, theirs = tmp_path / "vec" / job, tmp_path / "basic" / job
        assert {p.name for p in ours.iterdir()} == {p.name for p in theirs.iterdir()} - pngs
        for name in ("overrides.yaml", "config.yaml"):
            assert (ours / ".hydra" / name).read_text() == (theirs / ".hydra" / name).read_text()
        assert hydra_record(ours, tmp_path / "vec") == hydra_record(theirs, tmp_path / "basic")
        s, t = summary(ours), summary(theirs)
        assert s["status"] == "completed" and s["config"] == t["config"] and s["vectorized"] == {"members": 4}
        assert s["config_hash"] == t["config_hash"] and s["weights"] == "weights.pt"
        for a, b in zip(metrics(ours), metrics(theirs), strict=True):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (job, key)
        assert (ours / "grads.csv").read_text().splitlines()[0] == (theirs / "grads.csv").read_text().splitlines()[0]
        assert "epoch {'epoch': 2" in (ours / "backprop-lab.log").read_text()  # its own log, not a neighbour's

    shown = run_cli("show", str(tmp_path / "vec" / "1"), "--plot", cwd=tmp_path)
    clean(shown)
    assert (tmp_path / "vec" / "1" / "curves.png").exists() and (tmp_path / "vec" / "1" / "confusion.png").exists()
    compared = run_cli("compare", str(tmp_path / "vec"), str(tmp_path / "basic"), cwd=tmp_path)
    clean(compared)
    assert "8 runs" in compared.stdout


@pytest.mark.slow  # 8 jobs in four groups, then 2 jobs alone: about 20 s
def test_mixed_shapes_are_grouped_and_a_job_without_a_group_runs_alone(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model.hidden_size=16,32", "model.dropout=0,0.2", "model.activation=relu,tanh", *TINY, VEC,
                   "hydra.sweep.dir=" + str(sweep), cwd=tmp_path)
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "vectorized: 8 jobs -> 4 groups"
    assert sorted(lines[1:5]) == sorted(f"  2 x 784-{h}-10{a}, varying model.dropout" for h in (16, 32)
                                        for a in ("", " tanh"))
    for job in sweep.iterdir():
        if job.is_dir():
            s = summary(job)
            assert s["status"] == "completed" and s["vectorized"] == {"members": 2}
            assert not (job / "curves.png").exists()  # the members leave their PNGs to show --plot
    assert len([line for line in lines if line.startswith("job ")]) == 8
    alone = run_cli("-m", "model.hidden_size=16,32", *TINY, VEC, f"hydra.sweep.dir={tmp_path / 'alone'}", cwd=tmp_path)
    clean(alone)
    assert alone.stdout.splitlines()[:2] == ["vectorized: 2 jobs -> no group", "  2 jobs one by one"]
    assert (tmp_path / "alone" / "1" / "curves.png").exists()  # a job alone is a basic job


@pytest.mark.slow  # `make test` stays near 5 minutes; `make test-slow` and CI run it
def test_a_group_over_the_memory_budget_trains_in_parts(tmp_path):
    sweep = tmp_path / "sweep"
    # one member of this model on 300 images takes about 4.6 MB: a budget of 10 MB fits two
    proc = run_cli("-m", "optim.lr=0.05,0.1,0.2", *TINY, VEC, "hydra.launcher.memory_gb=0.01",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    clean(proc)
    assert "  the group of 3 trains in 2 parts of up to 2: memory budget" in proc.stdout
    assert [summary(sweep / j)["vectorized"]["members"] for j in "012"] == [2, 2, 1]
    assert all(summary(sweep / j)["status"] == "completed" for j in "012")
    # a budget below one member's need: each trains alone, and the plan says why
    tiny = run_cli("-m", "optim.lr=0.05,0.1", *TINY, VEC, "hydra.launcher.memory_gb=0.001",
                   f"hydra.sweep.dir={tmp_path / 'tiny'}", cwd=tmp_path)
    clean(tiny)
    assert re.search(r"  the group of 2 trains in 2 parts of up to 1: memory budget \(one member needs ~0\.00\d+ GB, "
                     r"more than all of it\)", tiny.stdout), tiny.stdout


def test_a_diverging_member_is_recorded_and_the_others_complete(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optim.lr=0.1,10,1e4", "data.train_subset=2000", "train.epochs=2", "device=cpu", VEC,
                   "hydra.callbacks.sweep_report.verbose=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                   env={"COLUMNS": "80"})
    clean(proc)
    # verbose: one table of the group's members per epoch, not one table per member
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    assert lines.count("epoch 1/2: 3 members") == 1 and lines.count("epoch 2/2: 1 member") == 1
    # a column for the varied key, the values under it; a diverged member says so and by which rule
    assert lines[lines.index("epoch 1/2: 3 members") + 1].split() == ["job", "optim.lr", "train", "loss", "train", "acc",
                                                                      "test", "loss", "test", "acc"]
    assert any(line.split()[:4] == ["1", "10", "diverged", "loss_ratio"] for line in lines)
    assert "confusion matrix" not in proc.stdout
    assert all(len(line) <= 80 for line in lines if not line.startswith("job "))  # a job's result line is one line
    assert summary(sweep / "0")["status"] == "completed" and summary(sweep / "0")["epochs_completed"] == 2
    for job in ("1", "2"):
        s = summary(sweep / job)
        assert s["status"] == "diverged" and s["diverged_at"]["rule"] == "loss_ratio" and s["diverged_at"]["epoch"] == 1
        assert (sweep / job / "checkpoint.pt").exists() and not (sweep / job / "weights.pt").exists()
    assert "job 1  optim.lr=10  ->  " in proc.stdout and "diverged" in proc.stdout
    # the members' error lines all come before the result lines: each names its job
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert [line.split(":")[1] for line in errors] == [
        " job 1 (optim.lr=10 data.train_subset=2000 train.epochs=2 device=cpu)",
        " job 2 (optim.lr=10000.0 data.train_subset=2000 train.epochs=2 device=cpu)"], proc.stderr


@pytest.mark.parametrize("setting, shown", [("hydra.launcher.memory_gb=-1", "a number of gigabytes > 0"),
                                            ("hydra.launcher.memory_gb=inf", "a number of gigabytes > 0"),
                                            ("hydra.launcher.plots=maybe", "true or false")])
def test_a_bad_launcher_setting_is_one_line_and_no_folder(tmp_path, setting, shown):
    proc = run_cli("-m", "optim.lr=0.1,0.2", *TINY, VEC, setting, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and setting.split("=")[0] in lines[0] and shown in lines[0], proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # about 7 s
def test_plots_true_draws_each_members_pngs(tmp_path):
    sweep = tmp_path / "sweep"
    clean(run_cli("-m", "optim.lr=0.1,0.2", *TINY, VEC, "hydra.launcher.plots=true", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path))
    for job in "01":
        assert {"confusion.png", "errors.png", "curves.png"} <= {p.name for p in (sweep / job).iterdir()}


@pytest.mark.slow  # an Optuna search in two batches, about 15 s
def test_optuna_trials_train_together_a_batch_at_a_time(tmp_path):
    sweep = tmp_path / "search"
    proc = run_cli("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                   "model.hidden_size=64", "data.batch_size=64", *TINY, VEC, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    clean(proc)
    lines = proc.stdout.splitlines()
    plans = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("vectorized:")]
    assert plans == ["  2 x 784-64-10, varying optim.lr, model.init_scale"] * 2
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accs = {job: summary(sweep / job)["final_test_acc"] for job in "0123"}
    assert all(summary(sweep / job)["vectorized"] == {"members": 2} for job in accs)
    assert result["best_value"] == pytest.approx(max(accs.values()))  # each trial's result went back to Optuna


@pytest.mark.slow  # a group stopped by Ctrl-C, one member resumed alone, the sweep resumed: about 40 s
def test_ctrl_c_stops_every_member_and_the_sweep_resumes_them_as_one_group(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    command = ["-m", "optim.lr=0.05,0.1,0.2", "data.train_subset=10000", "train.epochs=6", "device=cpu", VEC,
               f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "backprop_lab", *command], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (sweep / "2" / "metrics.csv").exists() and len((sweep / "2" / "metrics.csv").read_text().splitlines()) > 1):
        time.sleep(0.05)  # every member has finished epoch 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for job in "012":
        s = summary(sweep / job)
        assert s["status"] == "interrupted" and 1 <= s["epochs_completed"] < 6, s
        assert (sweep / job / "checkpoint.pt").exists()
    assert "hydra.callbacks.sweep_report.resume=true" in err and "Traceback" not in err

    alone = run_cli("resume", str(sweep / "2"), cwd=tmp_path)  # one member, as any run
    assert alone.returncode == 0, alone.stderr
    assert summary(sweep / "2")["status"] == "completed" and summary(sweep / "2")["epochs_completed"] == 6

    resumed = run_cli(*command, "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    clean(resumed)
    assert re.search(r"job 2 \(optim.lr=0.2 [^)]*\): already completed", resumed.stdout)
    for job in "01":
        s = summary(sweep / job)
        assert s["status"] == "completed" and s["epochs_completed"] == 6 and len(s["resumed_at"]) == 1
        assert s["vectorized"] == {"members": 2}  # the two resumed together
        assert [r["epoch"] for r in metrics(sweep / job)] == [1, 2, 3, 4, 5, 6]
    # resuming changed nothing: job 0 ends where an unbroken run of its config ends
    twin = run_cli("optim.lr=0.05", "data.train_subset=10000", "train.epochs=6", "device=cpu",
                   f"hydra.run.dir={tmp_path / 'twin'}", cwd=tmp_path)
    assert twin.returncode == 0, twin.stderr
    assert metrics(sweep / "0")[-1]["test_acc"] == pytest.approx(metrics(tmp_path / "twin")[-1]["test_acc"], abs=2e-4)


def test_bench_sweep_times_k_jobs_one_by_one_and_vectorised(tmp_path):
    from backprop_lab.bench import main

    out, plot = tmp_path / "b.json", tmp_path / "k.png"
    assert main(["--quick", "--sweep", "1,3", "--json", str(out), "--plot", str(plot)]) == 0
    rows = json.loads(out.read_text())["sweep"]
    assert [r["K"] for r in rows] == [1, 3]
    for r in rows:
        assert r["one_by_one_s"] > 0 and r["vectorized_s"] > 0 and r["limit_s"] > 0
        assert r["speedup"] == pytest.approx(r["one_by_one_s"] / r["vectorized_s"])
    assert plot.stat().st_size > 0


@pytest.mark.slow  # two small sweeps through the CLI, about 20 s
def test_bench_grid_times_both_launchers_through_the_cli(tmp_path):
    from backprop_lab.bench import cli_command
    from backprop_lab.bench_sweep import measure_grid

    grid = ("optim.lr=0.05,0.1", "data.train_subset=300", "train.epochs=1", "device=cpu")
    result = measure_grid(cli_command(), 1, str(tmp_path), lambda text: None, grid=grid)
    assert result["jobs"] == 2 and result["basic_wall_s"] > result["basic_train_seconds_sum"] > 0
    assert result["vectorized_wall_s"] > result["vectorized_train_seconds_sum"] > 0
    assert result["target_met"] is (result["vectorized_wall_s"] <= result["basic_train_seconds_sum"])
    assert result["speedup"] == pytest.approx(result["basic_wall_s"] / result["vectorized_wall_s"])


def test_a_member_whose_folder_cannot_be_written_fails_alone(tmp_path, small_mnist, monkeypatch):
    """A full disk in one member's folder (its epoch-1 record fails) fails that member, in one
    line in its summary; the others train on and complete. In-process, through group_runner."""
    import time

    from backprop_lab import group_runner
    from backprop_lab.errors import EXIT_FAILED
    from backprop_lab.report import Reporter
    from backprop_lab.runner import StopRequest, start

    cfgs = [config(f"optim.lr={lr}", "train.epochs=2", "device=cpu") for lr in (0.1, 0.2, 0.3)]
    actives = {}
    for i, cfg in enumerate(cfgs):
        (tmp_path / str(i)).mkdir()
        actives[i] = start(cfg, tmp_path / str(i), [], True, False, time.perf_counter(), data=small_mnist)
        actives[i].reporter = Reporter(quiet=True, progress=False)
    real = group_runner.record_epoch

    def record(active, m):
        if active.run_dir.name == "1":
            raise OSError(28, "No space left on device")
        real(active, m)

    monkeypatch.setattr(group_runner, "record_epoch", record)
    logs = group_runner.MemberLogs()
    codes = group_runner.train_members(actives, StopRequest(), logs, progress=False)
    logs.close()
    assert codes == {0: 0, 1: EXIT_FAILED, 2: 0}
    error = actives[1].summary["error"]
    assert actives[1].summary["status"] == "failed" and "no space left on device" in error
    assert f"backprop-lab resume {tmp_path / '1'}" in error  # what to do next, as a run's write failure says
    for i in (0, 2):
        assert actives[i].summary["status"] == "completed" and actives[i].summary["epochs_completed"] == 2
        assert len(metrics(tmp_path / str(i))) == 2


def test_a_groups_table_and_plan_line_name_what_sets_members_and_groups_apart():
    from backprop_lab.group_runner import telling_keys
    from backprop_lab.members import group_key
    from backprop_lab.vectorized import told_apart

    rows = [{"optim.lr": lr, "model.hidden_size": "32", "seed": seed} for lr in ("0.05", "0.1") for seed in "012"]
    assert telling_keys(rows) == ["optim.lr", "seed"]  # hidden_size is one value in this group
    assert telling_keys([{"seed": "1"}]) == ["seed"]
    keys = [group_key(config(f"data.batch_size={b}", "device=cpu")) for b in (32, 64)]
    wide = group_key(config("model.hidden_size=64", "device=cpu"))
    lines = [("2 x 784-128-10, varying optim.lr", keys[0]), ("2 x 784-128-10, varying optim.lr", keys[1]),
             ("2 x 784-64-10, varying optim.lr", wide)]
    assert told_apart(lines) == ["2 x 784-128-10, varying optim.lr (data.batch_size=32)",
                                 "2 x 784-128-10, varying optim.lr (data.batch_size=64)",
                                 "2 x 784-64-10, varying optim.lr"]


def test_a_member_whose_last_writes_fail_is_reported_failed_not_running(tmp_path, small_mnist, monkeypatch):
    """The disk fills while a trained member's weights and last summary are written: its
    summary.json still says `running`; the sweep's line and table say `failed`, with the error."""
    import time

    from backprop_lab import rundir, runs, sweep
    from backprop_lab.report import Reporter
    from backprop_lab.runner import StopRequest, finish, start

    (tmp_path / "0").mkdir()
    active = start(config("train.epochs=1", "device=cpu"), tmp_path / "0", [], True, False, time.perf_counter(),
                   data=small_mnist)
    active.reporter = Reporter(quiet=True, progress=False)
    active.summary["status"] = "completed"  # as train_members leaves a member that trained to the end

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.RunWriter, "save_weights", no_space)
    monkeypatch.setattr(rundir.RunWriter, "write_summary", no_space)
    assert finish(active, StopRequest(), 0, {}) == 1
    on_disk = runs.load_run(tmp_path / "0", label="0")
    assert on_disk.status in ("running", "incomplete")
    shown = sweep.unsaved_end(on_disk)
    assert shown.status == "failed" and "no space left on device" in shown.note
    assert f"backprop-lab resume {tmp_path / '0'}" in shown.note


def test_members_resumed_from_different_epochs_train_in_turn_and_end_as_unbroken_runs(tmp_path, small_mnist,
                                                                                      monkeypatch):
    """A first pass leaves member 1 at epoch 1 (its epoch-2 record failed) and members 0 and 2 at
    epoch 2 (a stop after their epoch 2). Resumed together, member 1 trains from epoch 2 as one
    group, then members 0 and 2 from epoch 3 as another; each ends with the metrics of its unbroken
    single run. In-process, through group_runner, as a resumed sweep runs its members."""
    import time

    from backprop_lab import group_runner
    from backprop_lab.report import Reporter
    from backprop_lab.runner import StopRequest, finish, start

    # small rates: on 2,000 images lr=0.2 is unstable enough that float32 rounding (bmm against
    # mm) alone grows to 0.3 % of the test loss by epoch 3, resumed or not
    cfgs = [config(f"optim.lr={lr}", "train.epochs=4", "device=cpu") for lr in (0.03, 0.05, 0.1)]
    stop = StopRequest()
    real = group_runner.record_epoch

    def record(active, m):
        if active.run_dir.name == "1" and m.epoch == 2:
            raise OSError(28, "No space left on device")
        real(active, m)
        if active.run_dir.name == "2" and m.epoch == 2:
            stop.signum = 2  # as a Ctrl-C here would: the group stops after the next batch

    def run(resume: bool, stop: StopRequest):
        actives = {}
        for i, cfg in enumerate(cfgs):
            (tmp_path / str(i)).mkdir(exist_ok=True)
            actives[i] = start(cfg, tmp_path / str(i), [], True, resume, time.perf_counter(), data=small_mnist)
            actives[i].reporter = Reporter(quiet=True, progress=False)
        logs = group_runner.MemberLogs()
        codes = group_runner.train_by_start(actives, stop, logs, progress=False)
        for i, active in actives.items():
            finish(active, stop, codes[i], {})
        logs.close()
        return actives, codes

    monkeypatch.setattr(group_runner, "record_epoch", record)
    actives, codes = run(False, stop)
    assert [summary(tmp_path / str(i))["epochs_completed"] for i in range(3)] == [2, 1, 2]
    assert [summary(tmp_path / str(i))["status"] for i in range(3)] == ["interrupted", "failed", "interrupted"]
    monkeypatch.setattr(group_runner, "record_epoch", real)
    actives, codes = run(True, StopRequest())
    assert [actives[i].start_epoch for i in range(3)] == [3, 2, 3]
    assert codes == {0: 0, 1: 0, 2: 0}
    for i, cfg in enumerate(cfgs):
        s = summary(tmp_path / str(i))
        assert s["status"] == "completed" and s["epochs_completed"] == 4
        assert [r["epoch"] for r in metrics(tmp_path / str(i))] == [1, 2, 3, 4]
        twin = list(train(cfg, small_mnist, make_state(cfg, torch.device("cpu"))))
        ours = metrics(tmp_path / str(i))
        for a, b in zip(ours, twin, strict=True):
            assert a["test_loss"] == pytest.approx(b.test_loss, rel=1e-4), (i, a["epoch"])
            assert a["train_loss"] == pytest.approx(b.train_loss, rel=1e-4), (i, a["epoch"])


def test_members_left_for_a_later_part_keep_their_checkpoints_when_a_stop_came_first(tmp_path, small_mnist):
    import time

    from backprop_lab import group_runner
    from backprop_lab.runner import StopRequest, start

    cfg = config("optim.lr=0.1", "train.epochs=2", "device=cpu")
    (tmp_path / "0").mkdir()
    active = start(cfg, tmp_path / "0", [], True, False, time.perf_counter(), data=small_mnist)
    active.start_epoch = 2  # as a member resumed later than the part before it
    stop = StopRequest(signum=2)
    codes = group_runner.train_by_start({0: active}, stop, group_runner.MemberLogs(), progress=False)
    assert codes == {0: 130} and active.summary["status"] == "interrupted"
    assert "continue with: backprop-lab resume" in active.summary["error"]
    assert not (tmp_path / "0" / "metrics.csv").exists() or len(metrics(tmp_path / "0")) == 0


@pytest.mark.slow  # a sweep, then its refused resume: about 7 s
def test_a_refused_member_is_one_error_line_and_a_line_in_its_log_not_a_log_line_on_stdout(tmp_path):
    """A resumed sweep whose job 1 now has another learning rate: its folder's run is not its own."""
    sweep = tmp_path / "sweep"
    clean(run_cli("-m", "optim.lr=0.05,0.1", *TINY, VEC, f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    proc = run_cli("-m", "optim.lr=0.05,0.3", *TINY, VEC, f"hydra.sweep.dir={sweep}",
                   "hydra.callbacks.sweep_report.resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # job 0 is completed
    assert "cannot resume" not in proc.stdout and "[HYDRA]" not in proc.stdout, proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: cannot resume {sweep / '1'}: it holds a run of another config: optim.lr (0.1 -> 0.3); the sweep "
        f"command must be the one that made this sweep"]
    assert "job 1  optim.lr=0.3  ->  refused: its folder holds a run of another config" in proc.stdout
    assert "[ERROR] - cannot resume" in (sweep / "1" / "backprop-lab.log").read_text()


def test_the_plan_wraps_to_a_terminal_and_stays_whole_on_a_pipe():
    import io

    from rich.console import Console

    from backprop_lab.vectorized import show_plan

    lines = ["vectorized: 16 jobs -> 1 group",
             "  16 x 784-32-16-10 tanh batch norm, varying optim.lr, optim.momentum, optim.weight_decay, model.dropout"]
    for terminal, shown in ((True, [lines[0], "  16 x 784-32-16-10 tanh batch norm, varying optim.lr, optim.momentum,",
                                    "    optim.weight_decay, model.dropout"]), (False, lines)):
        out = io.StringIO()
        show_plan(Console(file=out, width=80, force_terminal=terminal, color_system=None, soft_wrap=True), lines)
        assert out.getvalue().splitlines() == shown


def test_the_members_table_gives_each_varied_key_a_column_and_fits_the_width():
    from rich.console import Console

    from backprop_lab.report import fitting_members_table

    metrics = {"train_loss": 0.5, "train_acc": 0.9, "test_loss": 0.4, "test_acc": 0.91}
    keys = ["optim.lr", "model.init_scale", "seed"]
    rows = [(str(j), {"optim.lr": lr, "model.init_scale": "0.01", "seed": str(j % 2)}, metrics if j < 3 else "not_finite")
            for j, lr in enumerate(["0.05", "0.1", "0.2", "1e4"])]

    def shown(width):
        console = Console(width=width, record=True, file=open(os.devnull, "w"))
        table, left_out = fitting_members_table(console, keys, rows)
        console.print(table)
        lines = console.export_text().splitlines()
        assert all(len(line.rstrip()) <= width for line in lines)
        return [line.split() for line in lines], left_out

    lines, left_out = shown(100)  # room for every key in full
    assert left_out == [] and lines[0][:4] == ["job", "optim.lr", "model.init_scale", "seed"]
    assert lines[2][:4] == ["1", "0.1", "0.01", "1"] and lines[4][:6] == ["3", "1e4", "0.01", "1", "diverged", "not_finite"]
    lines, left_out = shown(76)  # the keys by their last parts
    assert left_out == [] and lines[0][:4] == ["job", "lr", "init_scale", "seed"]
    lines, left_out = shown(60)  # the last keys left out, and named
    assert left_out == ["model.init_scale", "seed"] and lines[0][:3] == ["job", "lr", "train"]
    assert lines[1][:2] == ["0", "0.05"]
