"""Vectorised sweeps (issue 22): K same-shape runs trained as one model (members.Group) and the
hydra/launcher=vectorized launcher. Members are held to their single-run twins (train.train with
the same config and seed) at float64, one diverging member leaves the others untouched, and a
sweep's members get run directories that the rest of the tool reads as any run's."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from backprop_lab.config import from_dictconfig
from backprop_lab.members import Group, can_join, group_key
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


GRID = [("optim.lr=0.05", "seed=0", "model.init_scale=0.01"), ("optim.lr=0.2", "seed=1", "model.init_scale=0.01"),
        ("optim.lr=0.1", "seed=0", "model.init_scale=0.05"), ("optim.lr=0.4", "seed=2", "model.init=he")]


@pytest.mark.parametrize("fused", ["true", "false"])
def test_members_are_their_single_run_twins_float64(small_mnist, fused):
    """Every epoch's metrics (train loss and accuracy, test loss and accuracy) and the final weights
    of each member equal those of its run trained alone, to 1e-10, with their own lr, seed (initial
    weights and batch order), init and init_scale; train.steps ends mid-epoch."""
    data = float64(small_mnist)
    cfgs = [config(*job, "train.steps=20", f"train.fused={fused}") for job in GRID]  # 11 batches an epoch
    assert len({group_key(c) for c in cfgs}) == 1 and all(can_join(c) is None for c in cfgs)
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
        for name, value in twin.params.items():
            assert torch.allclose(states[k].params[name], value, rtol=0, atol=1e-10), (k, name)
        assert states[k].start_loss == pytest.approx(twin.start_loss, abs=1e-12)
        # the member's checkpoint holds its own tensors, not the group's storage
        saved = states[k].state_dict()["params"]
        assert saved["W1"].shape == (784, 128) and saved["W1"].untyped_storage().nbytes() == 784 * 128 * 8


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


def test_what_joins_a_group_and_what_splits_one():
    chapter = config("optim.lr=0.3", "seed=4", "model.init=xavier")
    assert can_join(chapter) is None
    assert "not the chapter's network" in can_join(config("model.hidden_sizes=[64,32]"))
    assert "not the chapter's network" in can_join(config("model.activation=tanh"))
    assert "momentum" in can_join(config("optim.momentum=0.9"))
    base = group_key(config())
    assert group_key(config("optim.lr=0.3", "seed=4", "model.init_scale=0.05")) == base
    for other in ("model.hidden_size=64", "data.batch_size=32", "train.epochs=3", "data.train_subset=500",
                  "train.fused=false", "device=cpu"):
        assert group_key(config(other)) != base, other
