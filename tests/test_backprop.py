"""The hand-written gradients against torch.autograd (float64) and finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from backprop_lab import backprop as bp


def random_problem(m=32, hidden=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, 784, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (m,), generator=g)
    params = bp.Params(
        W1=torch.randn(784, hidden, generator=g, dtype=dtype) * 0.05,
        b1=torch.randn(hidden, generator=g, dtype=dtype) * 0.1,
        W2=torch.randn(hidden, 10, generator=g, dtype=dtype) * 0.3,
        b2=torch.randn(10, generator=g, dtype=dtype) * 0.1,
    )
    return X, y, bp.one_hot(y, dtype), params


def autograd_loss(params: bp.Params, X, y):
    """The same network written independently with torch's own layers, for autograd."""
    z2 = F.linear(F.relu(F.linear(X, params.W1.T, params.b1)), params.W2.T, params.b2)
    return F.cross_entropy(z2, y)


def autograd_grads(params: bp.Params, X, y) -> dict[str, torch.Tensor]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.as_dict().items()}
    loss = autograd_loss(bp.Params(**leaves), X, y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("seed,m,hidden", [(0, 32, 20), (1, 64, 128), (2, 1, 7), (3, 50, 1)])
def test_gradients_match_autograd_float64(seed, m, hidden):
    X, y, Y, params = random_problem(m, hidden, seed)
    grads = bp.backward(params, bp.forward(params, X), Y)
    ref = autograd_grads(params, X, y)
    for name in ("W1", "b1", "W2", "b2"):
        mine = getattr(grads, "d" + name)
        assert mine.shape == ref[name].shape
        assert rel_err(mine, ref[name]) < 1e-10, name


def test_gradients_match_central_finite_differences():
    X, y, Y, params = random_problem(m=16, hidden=12, seed=4)
    grads = bp.backward(params, bp.forward(params, X), Y)
    g = torch.Generator().manual_seed(5)
    eps = 1e-6
    for name in ("W1", "b1", "W2", "b2"):
        tensor = getattr(params, name)
        analytic = getattr(grads, "d" + name)
        flat = tensor.view(-1)
        for i in torch.randint(0, flat.numel(), (15,), generator=g).tolist():
            old = flat[i].item()
            flat[i] = old + eps
            up = bp.cross_entropy(bp.forward(params, X).z2, Y).item()
            flat[i] = old - eps
            down = bp.cross_entropy(bp.forward(params, X).z2, Y).item()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - analytic.view(-1)[i].item()) < 1e-7 + 1e-5 * abs(numeric), (name, i)


def test_loss_and_softmax_match_torch_and_stay_finite_for_huge_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 10, generator=g, dtype=torch.float64) * 5
    y = torch.randint(0, 10, (8,), generator=g)
    Y = bp.one_hot(y, torch.float64)
    assert torch.allclose(bp.softmax(z), torch.softmax(z, dim=1), rtol=0, atol=1e-15)
    assert abs(bp.cross_entropy(z, Y).item() - F.cross_entropy(z, y).item()) < 1e-12
    huge = torch.tensor([[1000.0, -1000.0] + [0.0] * 8, [-1000.0, 1000.0] + [0.0] * 8])
    Yh = bp.one_hot(torch.tensor([1, 1]))
    loss = bp.cross_entropy(huge, Yh)
    assert torch.isfinite(loss) and abs(loss.item() - 1000.0) < 1e-3  # log(0) would give inf
    assert torch.isfinite(bp.softmax(huge)).all()


def test_backward_is_pure_and_returns_fresh_tensors():
    X, y, Y, params = random_problem(seed=6)
    before = {k: v.clone() for k, v in params.as_dict().items()}
    cache = bp.forward(params, X)
    g1 = bp.backward(params, cache, Y)
    g2 = bp.backward(params, cache, Y)
    for name in ("dW1", "db1", "dW2", "db2"):
        assert torch.equal(getattr(g1, name), getattr(g2, name))  # nothing accumulates
        assert getattr(g1, name).data_ptr() != getattr(g2, name).data_ptr()
    for k, v in params.as_dict().items():
        assert torch.equal(v, before[k])


def test_init_matches_the_chapter():
    g = torch.Generator().manual_seed(0)
    p = bp.init_params(128, 0.01, g)
    assert p.W1.shape == (784, 128) and p.W2.shape == (128, 10)
    assert torch.count_nonzero(p.b1) == 0 and torch.count_nonzero(p.b2) == 0
    assert abs(p.W1.std().item() - 0.01) < 0.0005 and abs(p.W1.mean().item()) < 0.0005
    expected = torch.randn(784, 128, generator=torch.Generator().manual_seed(0)) * 0.01
    assert torch.equal(p.W1, expected)


class AutogradWatch(TorchFunctionMode):
    """Sees every torch call; records any result that is part of an autograd graph."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.offenders: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        results = out if isinstance(out, (tuple, list)) else [out]
        for t in results:
            if isinstance(t, torch.Tensor) and (t.requires_grad or t.grad_fn is not None):
                self.offenders.append(getattr(func, "__name__", str(func)))
        return out


def test_the_watch_catches_autograd_use():
    w = torch.ones(3, requires_grad=True)
    with AutogradWatch() as watch:
        (w * 2).sum()
    assert watch.offenders  # so the next test's silence means something


@pytest.mark.parametrize("fused", [True, False])
def test_training_uses_no_autograd(small_mnist, monkeypatch, fused):
    from dataclasses import replace

    from backprop_lab.config import Config
    from backprop_lab.train import make_state, train

    def forbidden(*a, **k):
        raise AssertionError("autograd called during training")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    cfg = Config()
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, fused=fused))
    state = make_state(cfg, torch.device("cpu"))
    assert torch.is_grad_enabled()  # training does not hide behind no_grad
    with AutogradWatch() as watch:
        metrics = list(train(cfg, small_mnist, state))
    assert len(metrics) == 1
    batches = small_mnist.X_train.shape[0] // cfg.data.batch_size
    assert watch.calls > 10 * batches  # every op of every batch went through the watch
    assert watch.offenders == []
    assert not any(t.requires_grad for t in state.params.values())


def test_one_sgd_step_of_the_trainer_equals_an_independent_step(small_mnist):
    """A one-batch epoch in float64 against W - lr * (autograd gradient), computed here."""
    from dataclasses import replace

    from backprop_lab.config import Config
    from backprop_lab.data import MNIST
    from backprop_lab.train import State, train

    m, lr = 64, 0.1
    X = small_mnist.X_train[:m].double()
    y = small_mnist.y_train[:m]
    data = MNIST(
        X_train=X, Y_train=bp.one_hot(y, torch.float64), y_train=y,
        X_test=small_mnist.X_test[:100].double(), Y_test=small_mnist.Y_test[:100].double(),
        y_test=small_mnist.y_test[:100], source=small_mnist.source, md5={},
    )
    _, _, _, params = random_problem(hidden=16, seed=7)
    ref = {k: v.clone() for k, v in params.as_dict().items()}
    expected = {k: ref[k] - lr * g for k, g in autograd_grads(bp.Params(**ref), X, y).items()}

    cfg = Config()
    cfg = replace(cfg, train=replace(cfg.train, epochs=1), data=replace(cfg.data, batch_size=m),
                  optim=replace(cfg.optim, lr=lr), model=replace(cfg.model, hidden_size=16))
    state = State(params=params.as_dict(), velocity={}, shuffle=torch.Generator(), dropout=torch.Generator())
    list(train(cfg, data, state))  # trains the tensors of `params` in place
    for name, value in params.as_dict().items():
        assert not torch.equal(value, ref[name])
        assert torch.allclose(value, expected[name], rtol=0, atol=1e-13), name


def test_fused_step_equals_forward_backward_step_float64():
    X, y, Y, params = random_problem(m=48, hidden=24, seed=8)
    plain = bp.Params(**{k: v.clone() for k, v in params.as_dict().items()})
    fused = bp.Params(**{k: v.clone() for k, v in params.as_dict().items()})
    for _ in range(5):
        cache = bp.forward(plain, X)
        bp.sgd_step(plain, bp.backward(plain, cache, Y), 0.3)
        z2 = bp.fused_step(fused, X, Y, 0.3)
        assert torch.allclose(z2, cache.z2, rtol=0, atol=1e-12)
    for name in ("W1", "b1", "W2", "b2"):
        assert rel_err(getattr(fused, name), getattr(plain, name)) < 1e-13, name


@pytest.mark.parametrize("n", [2000, 10], ids=["last batch of 16", "one batch of 10"])
def test_fused_and_plain_training_agree_float32(small_mnist, n):
    """Batches of 64, the last one partial; or a training set smaller than one batch."""
    from dataclasses import replace

    from backprop_lab.config import Config
    from backprop_lab.train import make_state, train

    data = replace(small_mnist, X_train=small_mnist.X_train[:n], Y_train=small_mnist.Y_train[:n],
                   y_train=small_mnist.y_train[:n])
    results = {}
    for fused in (True, False):
        cfg = Config()
        cfg = replace(cfg, train=replace(cfg.train, epochs=2, fused=fused))
        state = make_state(cfg, torch.device("cpu"))
        results[fused] = (list(train(cfg, data, state))[-1], state.params)
    (m1, p1), (m2, p2) = results[True], results[False]
    assert abs(m1.train_loss - m2.train_loss) < 1e-4 and abs(m1.test_acc - m2.test_acc) < 0.005
    assert rel_err(p1["W1"], p2["W1"]) < 1e-4 and rel_err(p1["b2"], p2["b2"]) < 1e-4
    assert (m1.train_acc * n) == pytest.approx(round(m1.train_acc * n))  # over the n images trained, each once


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_training_gives_the_same_weights_with_any_thread_count(small_mnist, fused):
    # Sweeps run jobs with fewer threads than a single run; a config must train the same either way.
    # Bit for bit on the AMD EPYC CPUs of earlier sessions; on an Intel Xeon (AVX-512) MKL splits a
    # GEMM's sums by thread count, so the weights agree to float32 rounding (1e-8 after this epoch).
    from dataclasses import replace

    from backprop_lab.config import Config
    from backprop_lab.train import make_state, train

    cfg = Config()
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, fused=fused))
    weights, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state = make_state(cfg, torch.device("cpu"))
            list(train(cfg, small_mnist, state))
            weights[threads] = state.params
    finally:
        torch.set_num_threads(before)
    for name in weights[1]:
        assert (weights[1][name] - weights[2][name]).abs().max() <= 1e-6, name


# --- members: K networks as one, the first step towards vectorised sweeps (issue 22) ------------


def test_k_members_train_as_their_single_run_twins_float64(small_mnist):
    """Three members with their own seeds (initial weights and batch order) and learning rates,
    trained as one stacked model through the same forward / backward / sgd_step, end where each
    trained alone ends, to 1e-12; and their losses are the twins' losses."""
    X_all, Y_all = small_mnist.X_train.double(), small_mnist.Y_train.double()
    seeds, lrs, m, steps = (0, 1, 2), (0.05, 0.1, 0.3), 64, 20

    def start(seed: int) -> tuple[bp.Params, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        params = bp.init_params(32, 0.01, g, dtype=torch.float64)
        return params, torch.randperm(X_all.shape[0], generator=g)[: m * steps]

    twins, orders = zip(*(start(s) for s in seeds))
    twin_losses = []
    for params, order, lr in zip(twins, orders, lrs):
        for i in range(steps):
            rows = order[i * m:(i + 1) * m]
            cache = bp.forward(params, X_all[rows])
            twin_losses.append(bp.cross_entropy(cache.z2, Y_all[rows]).item())
            bp.sgd_step(params, bp.backward(params, cache, Y_all[rows]), lr)

    stacked = bp.stack([start(s)[0] for s in seeds])
    lr = torch.tensor(lrs, dtype=torch.float64).reshape(-1, 1, 1)  # (K,1,1)
    losses = []
    for i in range(steps):
        rows = torch.stack([order[i * m:(i + 1) * m] for order in orders])  # (K,m): each member its own batch
        X, Y = X_all[rows], Y_all[rows]  # (K,m,784), (K,m,10)
        cache = bp.forward(stacked, X)
        losses.append(bp.cross_entropy(cache.z2, Y))  # (K,)
        bp.sgd_step(stacked, bp.backward(stacked, cache, Y), lr)

    for k, twin in enumerate(twins):
        for name, value in bp.member(stacked, k).as_dict().items():
            assert torch.allclose(value, twin.as_dict()[name], rtol=0, atol=1e-12), (k, name)
        assert [loss[k].item() for loss in losses] == pytest.approx(twin_losses[k * steps:(k + 1) * steps], abs=1e-12)


def test_k_member_gradients_match_autograd_float64():
    g = torch.Generator().manual_seed(7)
    K, m, H = 3, 16, 8
    params = bp.stack([bp.init_params(H, 0.5, g, dtype=torch.float64) for _ in range(K)])
    params.b1.normal_(generator=g)
    params.b2.normal_(generator=g)
    X = torch.randn(K, m, bp.N_INPUTS, generator=g, dtype=torch.float64)
    Y = bp.one_hot(torch.randint(0, 10, (K * m,), generator=g), dtype=torch.float64).reshape(K, m, 10)
    grads = bp.backward(params, bp.forward(params, X), Y)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.as_dict().items()}
    z2 = torch.relu(X @ leaves["W1"] + leaves["b1"]) @ leaves["W2"] + leaves["b2"]
    F.cross_entropy(z2.reshape(K * m, 10), Y.reshape(K * m, 10).argmax(dim=1), reduction="sum").div(m).backward()
    for name, ours in (("W1", grads.dW1), ("b1", grads.db1), ("W2", grads.dW2), ("b2", grads.db2)):
        assert ours.shape == leaves[name].shape
        assert torch.allclose(ours, leaves[name].grad, rtol=1e-10, atol=1e-13), name


def test_fused_step_with_members_equals_each_member_alone_float64():
    """The fused step with a leading member dimension (batched products, a per-member lr) moves
    each member as the 2-D fused step moves it alone, and that is the plain equations' step."""
    g = torch.Generator().manual_seed(11)
    K, m, H, lrs = 3, 32, 16, (0.05, 0.3, 1.0)
    singles = [bp.init_params(H, 0.3, g, dtype=torch.float64) for _ in range(K)]
    for p in singles:
        p.b1.normal_(generator=g), p.b2.normal_(generator=g)
    stacked = bp.stack(singles)
    plain = [bp.Params(**{k: v.clone() for k, v in p.as_dict().items()}) for p in singles]
    lr = torch.tensor(lrs, dtype=torch.float64).reshape(K, 1, 1)
    for _ in range(4):
        X = torch.randn(K, m, bp.N_INPUTS, generator=g, dtype=torch.float64)
        Y = bp.one_hot(torch.randint(0, 10, (K * m,), generator=g), dtype=torch.float64).reshape(K, m, 10)
        z2 = bp.fused_step(stacked, X, Y, lr)
        for k in range(K):
            alone = bp.fused_step(singles[k], X[k], Y[k], lrs[k])
            cache = bp.forward(plain[k], X[k])
            bp.sgd_step(plain[k], bp.backward(plain[k], cache, Y[k]), lrs[k])
            assert torch.allclose(z2[k], alone, rtol=0, atol=1e-12)
            assert torch.allclose(z2[k], cache.z2, rtol=0, atol=1e-12)
    for k in range(K):
        for name, value in bp.member(stacked, k).as_dict().items():
            assert torch.allclose(value, singles[k].as_dict()[name], rtol=0, atol=1e-12), (k, name)
            assert torch.allclose(value, plain[k].as_dict()[name], rtol=0, atol=1e-12), (k, name)


def test_evaluate_with_members_gives_each_members_own_scores():
    g = torch.Generator().manual_seed(3)
    singles = [bp.init_params(8, 0.5, g, dtype=torch.float64) for _ in range(3)]
    X = torch.randn(50, bp.N_INPUTS, generator=g, dtype=torch.float64)
    Y = bp.one_hot(torch.randint(0, 10, (50,), generator=g), dtype=torch.float64)
    loss, correct = bp.evaluate(bp.stack(singles), X, Y, chunk=20)
    assert loss.shape == correct.shape == (3,)
    for k, p in enumerate(singles):
        z2 = torch.relu(X @ p.W1 + p.b1) @ p.W2 + p.b2
        assert loss[k].item() == pytest.approx(F.cross_entropy(z2, Y.argmax(dim=1), reduction="sum").item(), abs=1e-9)
        assert correct[k].item() == (z2.argmax(dim=1) == Y.argmax(dim=1)).sum().item()
