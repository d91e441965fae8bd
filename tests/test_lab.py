"""The lab's options through the real trainer, the CLI and gradcheck: deeper nets train without
autograd, resume exactly, run for a number of steps, and every preset runs."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from backprop_lab import gradcheck, network
from backprop_lab.config import Config, from_container, from_dictconfig
from backprop_lab.data import load_mnist, pool2x2
from backprop_lab.train import make_state, planned_epochs, train

from .conftest import compose, run_cli
from .test_backprop import AutogradWatch


def lab_config(*overrides: str) -> Config:
    return from_dictconfig(compose(*overrides))


LAB = ("model.hidden_sizes=[32,16]", "model.activation=tanh", "model.batch_norm=true", "model.dropout=0.2",
       "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.001", "model.init=he",
       "optim.lr=0.05", "train.epochs=2")


def test_a_deep_lab_network_learns_without_autograd(small_mnist):
    cfg = lab_config(*LAB)
    state = make_state(cfg, torch.device("cpu"))
    with AutogradWatch() as watch:
        records = list(train(cfg, small_mnist, state))
    assert watch.offenders == [] and watch.calls > 1000
    assert not any(t.requires_grad for t in state.params.values())
    assert records[-1].test_acc > 0.75  # 2,000 images, two epochs: far above chance (0.1)
    assert records[1].train_loss < records[0].train_loss
    assert set(state.velocity) == {k for k in state.params if network.is_trained(k)}
    assert not torch.equal(state.params["mean1"], torch.zeros(32))  # running statistics moved
    # per-layer statistics come with each epoch, one row per weight matrix
    assert [s["layer"] for s in records[0].layers] == [1, 2, 3]
    assert all(s["grad_norm"] > 0 and s["update_ratio"] > 0 for s in records[0].layers)


def test_resuming_from_a_checkpoint_is_identical_with_momentum_dropout_and_batch_norm(small_mnist):
    cfg = lab_config(*LAB)  # two epochs: the second is resumed
    straight = make_state(cfg, torch.device("cpu"))
    expected = [m.as_dict() for m in train(cfg, small_mnist, straight)]

    first = make_state(cfg, torch.device("cpu"))
    head = train(cfg, small_mnist, first)
    next(head)
    saved = first.state_dict()
    del first, head
    resumed = make_state(cfg, torch.device("cpu"))
    resumed.load(saved)
    rest = [m.as_dict() for m in train(cfg, small_mnist, resumed, start_epoch=2)]
    drop_time = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]  # noqa: E731
    assert drop_time(rest) == drop_time(expected[1:])
    for k, v in straight.params.items():
        assert torch.equal(v, resumed.params[k]), k


@pytest.mark.parametrize("fused", [True, False])
def test_train_metrics_are_those_of_each_batch_as_it_was_trained(small_mnist, fused):
    """Each epoch's train loss and accuracy, and its test loss and accuracy, recomputed here
    from a plain loop over the same shuffled batches (backprop.py's forward, backward and
    step; torch's randperm for each epoch's order) with torch's cross-entropy. train.steps
    cuts the second epoch short, so its metrics must cover only the rows it trained. The
    progress bar's running loss, every 4 batches and at the epoch's end, is the mean over the
    epoch's rows trained so far."""
    from torch.nn.functional import cross_entropy

    from backprop_lab import backprop as bp

    # 2000 = 20 * 96 + 80: 21 steps per epoch; 26 steps = one epoch and 5 steps (480 images)
    cfg = lab_config("train.steps=26", "data.batch_size=96", f"train.fused={str(fused).lower()}")
    state = make_state(cfg, torch.device("cpu"))
    shuffle = torch.Generator()
    shuffle.set_state(state.shuffle.get_state())
    params = bp.Params(*(state.params[k].clone() for k in ("W1", "b1", "W2", "b2")))
    progress = []  # (batches done, batches in the epoch, running loss) as the progress bar gets them
    records = train(cfg, small_mnist, state, on_batch=lambda *call: progress.append(call), progress_every=4)

    data = small_mnist
    for epoch, steps in ((1, 21), (2, 5)):
        order = torch.randperm(2000, generator=shuffle)  # a new order every epoch
        logits, labels = [], []
        for rows in itertools.islice(order.split(96), steps):
            cache = bp.forward(params, data.X_train[rows])
            logits.append(cache.z2)
            labels.append(data.y_train[rows])
            bp.sgd_step(params, bp.backward(params, cache, data.Y_train[rows]), cfg.optim.lr)
        z, y = torch.cat(logits), torch.cat(labels)
        record = next(records)
        assert record.epoch == epoch and len(y) == min(2000, steps * 96)
        shown = sorted({*range(4, steps + 1, 4), steps})
        assert [(done, total) for done, total, _ in progress] == [(j, steps) for j in shown]
        for (done, _, loss), j in zip(progress, shown):
            seen = min(2000, j * 96)
            assert loss == pytest.approx(cross_entropy(z[:seen], y[:seen]).item(), rel=1e-4), (epoch, j)
        progress.clear()
        assert record.train_loss == pytest.approx(cross_entropy(z, y).item(), rel=1e-4)
        assert abs(record.train_acc - (z.argmax(dim=1) == y).float().mean().item()) <= 2 / len(y)  # a borderline digit may flip
        z_test = bp.forward(params, data.X_test).z2
        assert record.test_loss == pytest.approx(cross_entropy(z_test, data.y_test).item(), rel=1e-4)
        assert abs(record.test_acc - (z_test.argmax(dim=1) == data.y_test).float().mean().item()) <= 2 / 10_000
    assert 0.2 < record.train_acc < 0.95  # learning during the epoch, so a real mix of hits and misses
    assert next(records, None) is None


@pytest.mark.parametrize("fused", [True, False])
def test_divergence_names_the_batch_where_a_logit_first_stops_being_finite(small_mnist, fused):
    """An infinite pixel in one training image: the batch that holds it (found here from
    torch's randperm) is where training diverged, not the next check after it."""
    import dataclasses

    from backprop_lab.train import Diverged

    bad = 1234
    X = small_mnist.X_train.clone()
    X[bad, 300] = math.inf
    data = dataclasses.replace(small_mnist, X_train=X)
    cfg = lab_config("train.epochs=1", f"train.fused={str(fused).lower()}")
    state = make_state(cfg, torch.device("cpu"))
    shuffle = torch.Generator()
    shuffle.set_state(state.shuffle.get_state())
    position = int((torch.randperm(2000, generator=shuffle) == bad).nonzero())
    with pytest.raises(Diverged) as diverged:
        next(train(cfg, data, state))
    assert (diverged.value.epoch, diverged.value.batch) == (1, position // 64 + 1)


def test_weights_gone_infinite_behind_finite_logits_are_divergence_too(small_mnist):
    """One step whose logits are finite (they come before the update) but whose update is not:
    only the test pass after the epoch can see it."""
    import dataclasses

    from backprop_lab.train import Diverged

    cfg = lab_config("train.steps=1", "optim.lr=1e10")
    state = make_state(cfg, torch.device("cpu"))
    shuffle = torch.Generator()
    shuffle.set_state(state.shuffle.get_state())
    first = int(torch.randperm(2000, generator=shuffle)[0])
    X = small_mnist.X_train.clone()
    X[first, 300] = 3e38  # finite in float32, as are the logits; lr * dW1 is not
    with pytest.raises(Diverged) as diverged:
        next(train(cfg, dataclasses.replace(small_mnist, X_train=X), state))
    assert (diverged.value.epoch, diverged.value.batch) == (1, 1)
    assert not torch.isfinite(state.params["W1"]).all()


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.9, False, 0.0), (0.9, True, 0.0), (0.0, False, 0.01)])
def test_the_chapters_network_with_momentum_or_weight_decay_steps_as_torch_optim_sgd(small_mnist, momentum,
                                                                                   nesterov, weight_decay):
    """train() on the chapter's network with an optimiser setting the fused step does not take,
    against backprop.py's gradients stepped by torch.optim.SGD over the same batches."""
    from backprop_lab import backprop as bp

    cfg = lab_config("train.steps=3", f"optim.momentum={momentum}", f"optim.nesterov={str(nesterov).lower()}",
                     f"optim.weight_decay={weight_decay}")
    state = make_state(cfg, torch.device("cpu"))
    shuffle = torch.Generator()
    shuffle.set_state(state.shuffle.get_state())
    params = bp.Params(*(state.params[k].clone() for k in ("W1", "b1", "W2", "b2")))
    groups = [{"params": [params.W1, params.W2], "weight_decay": weight_decay}, {"params": [params.b1, params.b2]}]
    sgd = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=momentum, nesterov=nesterov)
    list(train(cfg, small_mnist, state))

    for rows in itertools.islice(torch.randperm(2000, generator=shuffle).split(64), 3):
        cache = bp.forward(params, small_mnist.X_train[rows])
        grads = bp.backward(params, cache, small_mnist.Y_train[rows])
        for p, g in zip((params.W1, params.b1, params.W2, params.b2), (grads.dW1, grads.db1, grads.dW2, grads.db2)):
            p.grad = g
        sgd.step()
    for name, expected in params.as_dict().items():
        torch.testing.assert_close(state.params[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_train_steps_sets_the_run_length(small_mnist):
    # 2,000 images in batches of 64: 32 steps per epoch; 70 steps = 2 full epochs and 6 steps
    cfg = lab_config("train.steps=70", "train.epochs=99")
    assert planned_epochs(cfg, 2000) == 3
    records = list(train(cfg, small_mnist, make_state(cfg, torch.device("cpu"))))
    assert [r.epoch for r in records] == [1, 2, 3]
    assert records[2].samples_per_s * records[2].seconds == pytest.approx(6 * 64)


def test_pool2x2_is_the_mean_of_each_block():
    image = torch.arange(784, dtype=torch.float32).reshape(1, 784)
    pooled = pool2x2(image).reshape(14, 14)
    square = image.reshape(28, 28)
    for r, c in [(0, 0), (3, 11), (13, 13)]:
        block = square[2 * r: 2 * r + 2, 2 * c: 2 * c + 2]
        assert pooled[r, c] == block.mean()
    assert pooled[0, 0] == (0 + 1 + 28 + 29) / 4


def test_the_14x14_data_path():
    data = load_mnist(train_subset=100, image_size=14)
    full = load_mnist(train_subset=100)
    assert data.X_train.shape == (100, 196) and data.X_test.shape == (10_000, 196)
    assert torch.allclose(data.X_train, pool2x2(full.X_train))
    assert data.X_train.min() >= -1 and data.X_train.max() <= 1


PRESETS = ["vanishing_gradients", "overfitting", "momentum", "book_ch10"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_runs_one_short_epoch(preset):
    cfg = lab_config(f"experiment={preset}", "data.train_subset=500", "train.epochs=1", "train.steps=null")
    data = load_mnist(train_subset=500, image_size=cfg.data.image_size)
    state = make_state(cfg, torch.device("cpu"))
    before = {name: p.clone() for name, p in state.params.items()}
    (record,) = train(cfg, data, state)
    assert all(math.isfinite(v) for v in (record.train_loss, record.test_loss, record.test_acc))
    # every layer was trained (some presets learn slowly by design: their accuracy after 8 batches is no test)
    assert all(not torch.equal(state.params[name], before[name]) for name in before if name.startswith("W"))


def test_presets_sweep_what_their_paragraphs_say():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from backprop_lab.train import arch_of

    from .conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        params = {p: OmegaConf.to_container(hydra_compose("config", [f"experiment={p}"], return_hydra_config=True)
                                            .hydra.sweeper.params) for p in PRESETS[:3]}
    assert params["vanishing_gradients"] == {"model.activation": "sigmoid,relu", "model.batch_norm": "false,true"}
    assert params["overfitting"] == {"optim.weight_decay": "0.0,0.005", "model.dropout": "0.0,0.5"}
    assert params["momentum"] == {"optim.momentum": "0.0,0.5,0.9"}
    book = lab_config("experiment=book_ch10")
    assert arch_of(book) == network.Arch((196, 100, 50, 10), "sigmoid", "sigmoid", "mse")
    assert (book.model.init, book.model.init_scale, book.optim.lr, book.data.batch_size, book.train.steps) == \
        ("uniform", 0.5, 1.0, 64, 40_000)
    assert planned_epochs(book, 60_000) == 43


# --- gradcheck ----------------------------------------------------------------------------------

GRID = [dict(zip(("activation", "batch_norm", "dropout", "head", "wd"), combo)) for combo in itertools.product(
    ["relu", "sigmoid", "tanh", "leaky_relu"], [False, True], [0.0, 0.3],
    [("softmax", "cross_entropy"), ("sigmoid", "mse")], [0.0, 0.01])]


def grid_config(c: dict) -> Config:
    """Built directly, not composed: composing 64 configs with Hydra would take most of a minute."""
    return from_container({
        "model": {"hidden_sizes": [7, 5], "activation": c["activation"], "batch_norm": c["batch_norm"],
                  "dropout": c["dropout"], "output": c["head"][0], "init": "xavier"},
        "loss": c["head"][1], "optim": {"weight_decay": c["wd"]}, "data": {"image_size": 14},
    })


def test_gradcheck_passes_on_every_combination_the_config_allows():
    assert len(GRID) == 64  # 4 activations x batch norm x dropout x 2 heads x L2
    for c in GRID:
        checks = gradcheck.check(grid_config(c), batch=6, entries=2)
        assert all(ch.ok for ch in checks), (c, [ch for ch in checks if not ch.ok])
        expected = {"W1", "W2", "W3", "b3"} | ({"gamma1", "beta1", "gamma2", "beta2"} if c["batch_norm"] else {"b1", "b2"})
        assert {ch.name for ch in checks} == expected


def test_gradcheck_fails_on_a_broken_gradient(monkeypatch, capsys):
    f, f_grad = network.ACTIVATIONS["tanh"]
    monkeypatch.setitem(network.ACTIVATIONS, "tanh", (f, lambda a: f_grad(a) * 1.01))  # 1 % off
    code = gradcheck.main(["model.hidden_sizes=[12,8]", "model.activation=tanh"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "W1" in out.split("FAIL:")[-1] and "W3" not in out.split("FAIL:")[-1]


def test_gradcheck_finds_a_broken_batch_norm_backward(monkeypatch):
    real = network.bn_backward
    monkeypatch.setattr(network, "bn_backward", lambda dy, zhat, gamma, std: (
        lambda dz, dg, db: (dz, dg * 0.99, db))(*real(dy, zhat, gamma, std)))
    cfg = lab_config("model.hidden_sizes=[12,8]", "model.batch_norm=true")
    failed = {c.name for c in gradcheck.check(cfg, batch=8, entries=3) if not c.ok}
    assert failed == {"gamma1", "gamma2"}


DEEP_SIGMOID = ("model.hidden_sizes=[128,128,128,128,128,128]", "model.activation=sigmoid", "model.init=xavier")
SMALL_MSE = ("model.hidden_sizes=[4,3]", "model.activation=sigmoid", "model.output=sigmoid", "loss=mse")


@pytest.mark.parametrize("overrides", [DEEP_SIGMOID, SMALL_MSE], ids=["vanishing_gradients model", "sigmoid + mse"])
def test_gradcheck_passes_correct_gradients_too_small_for_a_relative_tolerance(overrides, capsys):
    # b1's gradients are ~1e-5 (and less): 1e-5 of them is below the finite differences' round-off
    assert gradcheck.main(list(overrides)) == 0
    assert "parameters pass" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, factor", [(DEEP_SIGMOID, 1.01), (DEEP_SIGMOID, 2.0), (SMALL_MSE, 1.01),
                                               (DEEP_SIGMOID, 1.001)],
                         ids=["deep sigmoid, 1 % off", "deep sigmoid, 2x", "sigmoid + mse, 1 % off",
                              "deep sigmoid, 0.1 % off: the tolerances are as tight as documented"])
def test_gradcheck_still_catches_a_tiny_gradient_that_is_wrong(overrides, factor, monkeypatch):
    real = network.backward
    monkeypatch.setattr(network, "backward", lambda *a, **k: (
        lambda grads: {**grads, "b1": grads["b1"] * factor})(real(*a, **k)))
    checks = {c.name: c for c in gradcheck.check(lab_config(*overrides))}
    assert checks["b1"].grad_norm < 1e-4  # tiny, yet
    assert not checks["b1"].fd_ok and not checks["b1"].autograd_ok  # both oracles see it
    assert [name for name, c in checks.items() if not c.ok] == ["b1"]


def test_gradcheck_finite_differences_check_the_largest_gradient_entry(monkeypatch):
    """One entry of ~100,000 in dW1 is wrong, the largest: random picks would all but never
    reach it, so the finite differences must check the largest entries on purpose."""
    real = network.backward

    def one_entry_off(*a, **k):
        grads = real(*a, **k)
        dW1 = grads["W1"].clone()
        top = dW1.abs().argmax()
        dW1.view(-1)[top] *= 1.01
        return {**grads, "W1": dW1}

    monkeypatch.setattr(network, "backward", one_entry_off)
    checks = {c.name: c for c in gradcheck.check(lab_config(), entries=6)}
    assert checks["W1"].shape == (784, 128)
    assert not checks["W1"].fd_ok and not checks["W1"].autograd_ok
    assert [name for name, c in checks.items() if not c.ok] == ["W1"]


def test_gradcheck_checks_the_weight_decay_term(monkeypatch):
    """With optim.weight_decay set, the checked gradient is that of the loss plus the L2 term:
    a hand-written step that doubles the term fails, for the weights and only for them."""
    import dataclasses

    real = network.sgd_direction
    monkeypatch.setattr(network, "sgd_direction", lambda opt, *a: real(
        dataclasses.replace(opt, weight_decay=2 * opt.weight_decay), *a))
    checks = {c.name: c for c in gradcheck.check(lab_config("optim.weight_decay=0.01"))}
    assert [name for name, c in checks.items() if not c.ok] == ["W1", "W2"]


def test_gradcheck_refuses_a_model_the_kernel_would_kill_before_it_starts(monkeypatch, capsys):
    from backprop_lab import train as train_module

    monkeypatch.setattr(train_module, "memory_available", lambda: 24 * 10**9)  # this project's CI machine
    # 784-3,000,000-10: 2.4e9 parameters, 8 float64 copies at the check's peak
    assert gradcheck.main(["model.hidden_size=3000000"]) == 2
    assert capsys.readouterr().err == ("error: the 784-3000000-10 model does not fit in memory in float64 (checking it "
                                       "takes about 152.6 GB; 24.0 GB are available); choose smaller "
                                       "model.hidden_size/model.hidden_sizes\n")
    assert gradcheck.main(["model.hidden_size=64"]) == 0


def test_gradcheck_of_a_model_the_allocator_refuses_is_one_line(monkeypatch, capsys):
    from backprop_lab import train as train_module

    monkeypatch.setattr(train_module, "memory_available", lambda: None)  # not Linux: left to the allocator
    # 784 x 1e11 float64 weights: 627 TB, more than any machine's (virtual) memory
    assert gradcheck.main(["model.hidden_size=100000000000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: the 784-100000000000-10 model does not fit in memory")
    assert "can't allocate memory" in err and err.rstrip().endswith("choose smaller model.hidden_size/model.hidden_sizes")


@pytest.mark.parametrize("setting", ["hydra.run.dir=x", "hydra/launcher=joblib", "+hydra.job.env_set.A=1"])
def test_gradcheck_refuses_hydra_settings_it_would_ignore(setting, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gradcheck.main([setting]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {setting}: gradcheck writes no run folder and runs no sweep, "
                                              f"so Hydra's settings do not apply; leave it out")
    assert list(tmp_path.iterdir()) == []


def test_gradcheck_command(tmp_path):
    proc = run_cli("gradcheck", "experiment=book_ch10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "196-100-50-10 sigmoid" in proc.stdout and "all 6 parameters pass" in proc.stdout
    bad = run_cli("gradcheck", "model.dropout=1.5", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: model.dropout=1.5 is not valid")
    assert "Traceback" not in bad.stderr


# --- the CLI and the run directory --------------------------------------------------------------


def test_a_lab_run_writes_grads_csv_and_describes_itself(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*LAB, "data.train_subset=500", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "784-32-16-10 tanh, batch norm, dropout 0.2, lr 0.05, momentum 0.9 (Nesterov)" in proc.stdout
    rows = (run_dir / "grads.csv").read_text().splitlines()
    assert rows[0] == "epoch,layer,grad_norm,weight_norm,update_ratio,dead_fraction" and len(rows) == 1 + 2 * 3
    assert all(row.endswith(",nan") for row in rows[1:])  # tanh units are never dead: only relu layers are counted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["model"]["hidden_sizes"] == [32, 16]
    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    assert {"W1", "gamma1", "beta1", "mean1", "var1", "W3", "b3"} <= set(weights)
    assert "confusion matrix (test set)" in proc.stdout


def test_a_model_the_kernel_would_kill_mid_run_is_refused_before_it_starts(monkeypatch):
    from backprop_lab import train as train_module
    from backprop_lab.config import ConfigError

    monkeypatch.setattr(train_module, "memory_available", lambda: 24 * 10**9)  # this project's CI machine
    cpu = torch.device("cpu")
    # 784-3,000,000-10: 19 GB of weights and gradients, 48 GB of activations on the 1,000-row probe
    with pytest.raises(ConfigError, match=r"^the 784-3000000-10 model does not fit in the memory of cpu "
                                          r"\(training it takes about 67\.1 GB; 24\.0 GB are available\)"):
        train_module.check_fits(lab_config("model.hidden_size=3000000"), cpu)
    with pytest.raises(ConfigError, match=r"GB are available\); choose smaller data.batch_size$"):
        train_module.check_fits(lab_config("data.batch_size=100000000000000"), cpu)
    for fits in ("experiment=article", "model.hidden_size=2048", "model.hidden_sizes=[1024,1024,1024]"):
        train_module.check_fits(lab_config(fits), cpu)
    with_momentum, plain = (train_module.memory_parts(lab_config(*o)) for o in (["optim.momentum=0.9"], []))
    assert with_momentum[0] > plain[0] and with_momentum[1] == plain[1]  # a buffer per parameter, same activations
    monkeypatch.setattr(train_module, "memory_available", lambda: None)  # not Linux: left to the allocator
    train_module.check_fits(lab_config("model.hidden_size=3000000"), cpu)
