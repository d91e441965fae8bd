"""The lab's network (any depth, activations, batch norm, dropout, MSE, momentum, L2) against
torch.autograd and torch's own layers in float64, and against central finite differences."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from backprop_lab import backprop as bp
from backprop_lab import network as nw

from .test_backprop import rel_err


def problem(arch: nw.Arch, m=24, seed=0, init="normal", scale=0.3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, arch.sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (m,), generator=g)
    params = nw.init_params(arch, init, scale, g, dtype=torch.float64)
    for name, p in params.items():  # move batch norm and biases off their trivial starts
        if name.startswith(("b", "gamma", "beta")):
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.2)
    return X, y, bp.one_hot(y, torch.float64), params


TORCH_ACT = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
             "leaky_relu": lambda z: F.leaky_relu(z, 0.01)}  # the slope network.py documents


def reference_loss(arch: nw.Arch, params, X, y, train=True, masks=None):
    """The same network written with torch's functional layers, for autograd to differentiate."""
    a = X
    L = arch.n_layers
    for l in range(1, L):
        if arch.batch_norm:
            z = F.linear(a, params[f"W{l}"].T)
            z = F.batch_norm(z, params[f"mean{l}"].clone(), params[f"var{l}"].clone(), params[f"gamma{l}"],
                             params[f"beta{l}"], training=train)  # torch's eps
        else:
            z = F.linear(a, params[f"W{l}"].T, params[f"b{l}"])
        a = TORCH_ACT[arch.activation](z)
        if masks is not None and masks[l - 1] is not None:
            a = a * masks[l - 1]
    z = F.linear(a, params[f"W{L}"].T, params[f"b{L}"])
    if arch.loss == "cross_entropy":
        return F.cross_entropy(z, y)
    return 0.5 * F.mse_loss(torch.sigmoid(z), F.one_hot(y, 10).double(), reduction="sum") / X.shape[0]


def reference_grads(arch, params, X, y, train=True, masks=None):
    leaves = {k: v.clone().requires_grad_(nw.is_trained(k)) for k, v in params.items()}
    loss = reference_loss(arch, leaves, X, y, train, masks)
    trained = [k for k in leaves if nw.is_trained(k)]
    return dict(zip(trained, torch.autograd.grad(loss, [leaves[k] for k in trained]))), loss


GRID = list(itertools.product(
    ["relu", "sigmoid", "tanh", "leaky_relu"],  # activation
    [False, True],  # batch norm
    [0.0, 0.4],  # dropout
    [("softmax", "cross_entropy"), ("sigmoid", "mse")],
))


@pytest.mark.parametrize("activation,batch_norm,dropout,head", GRID,
                         ids=[f"{a}-bn{int(b)}-drop{d}-{h[1]}" for a, b, d, h in GRID])
def test_gradients_match_autograd_float64(activation, batch_norm, dropout, head):
    arch = nw.Arch(sizes=(12, 9, 7, 10), activation=activation, output=head[0], loss=head[1],
                   batch_norm=batch_norm, dropout=dropout)
    X, y, Y, params = problem(arch)
    cache = nw.forward(arch, params, X, train=True, dropout=nw.dropout_masks(arch.dropout, torch.Generator().manual_seed(3)))
    grads = nw.backward(arch, params, cache, Y)
    # the masks are an input of the step (random numbers), so the reference reuses them
    ref, loss = reference_grads(arch, params, X, y, masks=cache.masks)
    assert set(grads) == set(ref)
    for name in ref:
        assert grads[name].shape == ref[name].shape, name
        assert rel_err(grads[name], ref[name]) < 1e-10, name
    assert nw.loss_of(arch, cache.z, Y).item() == pytest.approx(loss.item(), rel=1e-12)


def test_dropout_masks_drop_and_rescale():
    arch = nw.Arch(sizes=(50, 400, 10), dropout=0.25)
    X, _, _, params = problem(arch, m=200)
    mask = nw.forward(arch, params, X, dropout=nw.dropout_masks(arch.dropout, torch.Generator().manual_seed(0))).masks[0]
    assert set(mask.unique().tolist()) == {0.0, 1 / 0.75}
    assert (mask == 0).double().mean().item() == pytest.approx(0.25, abs=0.01)
    # without a generator (evaluation, diagnostics) nothing is dropped
    assert nw.forward(arch, params, X).masks == [None]


def test_batch_norm_evaluation_mode_uses_running_statistics():
    arch = nw.Arch(sizes=(12, 9, 10), activation="tanh", batch_norm=True)
    X, y, Y, params = problem(arch)
    params["mean1"].copy_(torch.linspace(-1, 1, 9, dtype=torch.float64))
    params["var1"].copy_(torch.linspace(0.5, 2, 9, dtype=torch.float64))
    cache = nw.forward(arch, params, X, train=False)
    ref, loss = reference_grads(arch, params, X, y, train=False)
    assert nw.loss_of(arch, cache.z, Y).item() == pytest.approx(loss.item(), rel=1e-12)
    # each row is now independent of the others: one example gives the same logits alone
    alone = nw.forward(arch, params, X[:1], train=False).z
    assert torch.allclose(alone, cache.z[:1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", [nw.Arch(sizes=(12, 9, 10)),
                                  nw.Arch(sizes=(12, 9, 7, 10), activation="tanh", batch_norm=True, dropout=0.5),
                                  nw.Arch(sizes=(12, 9, 10), output="sigmoid", loss="mse")])
@pytest.mark.parametrize("chunk", [1, 7, 1_000])  # a last chunk shorter than the others; one chunk for all
def test_evaluate_sums_the_loss_and_counts_hits_over_every_row(arch, chunk):
    X, y, Y, params = problem(arch, m=45)
    if arch.batch_norm:
        params["mean1"].copy_(torch.linspace(-1, 1, 9, dtype=torch.float64))
        params["var1"].copy_(torch.linspace(0.5, 2, 9, dtype=torch.float64))
    loss_sum, correct = nw.evaluate(arch, params, X, Y, chunk=chunk)
    # torch's layers in evaluation mode: running statistics, no dropout
    assert loss_sum.item() == pytest.approx(reference_loss(arch, params, X, y, train=False).item() * 45, rel=1e-12)
    with torch.no_grad():
        a = X
        for l in range(1, arch.n_layers):
            z = F.linear(a, params[f"W{l}"].T, params.get(f"b{l}"))
            if arch.batch_norm:
                z = F.batch_norm(z, params[f"mean{l}"], params[f"var{l}"], params[f"gamma{l}"], params[f"beta{l}"],
                                 training=False)
            a = TORCH_ACT[arch.activation](z)
        logits = F.linear(a, params[f"W{arch.n_layers}"].T, params[f"b{arch.n_layers}"])
    assert correct.item() == (logits.argmax(dim=1) == y).sum().item()
    assert 0 < correct.item() < 45  # random weights: neither all right nor all wrong, so the count means something


def test_running_statistics_follow_torch_batchnorm1d():
    arch = nw.Arch(sizes=(12, 9, 10), batch_norm=True)
    X, _, _, params = problem(arch)
    bn = torch.nn.BatchNorm1d(9).double()  # its own eps and momentum, which network.py says it follows
    for step in range(3):
        Xs = X + step
        nw.update_running_stats(arch, params, nw.forward(arch, params, Xs))
        bn(Xs @ params["W1"])
    assert torch.allclose(params["mean1"], bn.running_mean, rtol=0, atol=1e-12)
    assert torch.allclose(params["var1"], bn.running_var, rtol=0, atol=1e-12)


def test_chapter_network_is_backprop_py():
    arch = nw.Arch(sizes=(784, 20, 10))
    X, y, Y, params = problem(arch, m=32)
    chapter = bp.Params(**params)
    cache = nw.forward(arch, params, X)
    grads = nw.backward(arch, params, cache, Y)
    mine = bp.backward(chapter, bp.forward(chapter, X), Y)
    for name in ("W1", "b1", "W2", "b2"):
        assert torch.allclose(grads[name], getattr(mine, "d" + name), rtol=0, atol=1e-14), name
    # and the same starting weights from the same seed
    a = nw.init_params(arch, "normal", 0.01, torch.Generator().manual_seed(5))
    b = bp.init_params(20, 0.01, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], getattr(b, k)) for k in ("W1", "b1", "W2", "b2"))


@pytest.mark.parametrize("arch", [
    nw.Arch(sizes=(8, 6, 5, 10), activation="tanh", batch_norm=True),
    nw.Arch(sizes=(8, 6, 5, 10), activation="sigmoid", output="sigmoid", loss="mse"),
], ids=["tanh-bn-ce", "sigmoid-mse"])
def test_gradients_match_central_finite_differences(arch):
    X, y, Y, params = problem(arch, m=10, seed=2)
    grads = nw.backward(arch, params, nw.forward(arch, params, X), Y)
    eps = 1e-6
    g = torch.Generator().manual_seed(1)
    for name, grad in grads.items():
        for _ in range(3):
            i = int(torch.randint(0, params[name].numel(), (1,), generator=g))
            flat = params[name].view(-1)
            old = flat[i].item()
            flat[i] = old + eps
            up = nw.loss_of(arch, nw.forward(arch, params, X).z, Y).item()
            flat[i] = old - eps
            down = nw.loss_of(arch, nw.forward(arch, params, X).z, Y).item()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert grad.view(-1)[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), (name, i)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0),
                                                             (0.9, True, 0.0), (0.5, True, 0.05)])
def test_sgd_update_follows_torch_optim_sgd(momentum, nesterov, weight_decay):
    arch = nw.Arch(sizes=(6, 5, 10), batch_norm=True)
    X, y, Y, params = problem(arch, seed=4)
    mine = {k: v.clone() for k, v in params.items()}
    theirs = {k: v.clone().requires_grad_(nw.is_trained(k)) for k, v in params.items()}
    opt = nw.SGD(lr=0.2, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    groups = [{"params": [v for k, v in theirs.items() if k.startswith("W")], "weight_decay": weight_decay},
              {"params": [v for k, v in theirs.items() if k.startswith(("b", "gamma", "beta"))], "weight_decay": 0.0}]
    torch_opt = torch.optim.SGD(groups, lr=0.2, momentum=momentum, nesterov=nesterov)
    velocity: nw.Params = {}
    for step in range(4):
        Xs = X * (1 + step / 4)  # a different batch each step
        nw.sgd_update(opt, mine, nw.backward(arch, mine, nw.forward(arch, mine, Xs), Y), velocity)
        torch_opt.zero_grad()
        reference_loss(arch, theirs, Xs, y).backward()
        torch_opt.step()
    for k in mine:
        if nw.is_trained(k):
            assert rel_err(mine[k], theirs[k].detach()) < 1e-12, k
    assert bool(velocity) == (momentum > 0)


def test_weight_decay_is_the_gradient_of_an_l2_penalty():
    arch = nw.Arch(sizes=(6, 5, 10))
    X, y, Y, params = problem(arch, seed=5)
    wd = 0.03
    grads = nw.backward(arch, params, nw.forward(arch, params, X), Y)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    penalty = sum((v ** 2).sum() for k, v in leaves.items() if k.startswith("W")) * wd / 2
    ref = dict(zip(leaves, torch.autograd.grad(reference_loss(arch, leaves, X, y) + penalty, list(leaves.values()))))
    for name in params:
        d, _ = nw.sgd_direction(nw.SGD(weight_decay=wd), name, params[name], grads[name], None)
        assert rel_err(d, ref[name]) < 1e-10, name


def test_initialisations():
    arch = nw.Arch(sizes=(400, 300, 10))
    g = torch.Generator().manual_seed(0)
    uni = nw.init_params(arch, "uniform", 0.5, g)
    assert all(-0.5 <= v.min() and v.max() < 0.5 and v.std() > 0.25 for v in uni.values())
    assert uni["b1"].abs().sum() > 0  # the book draws biases too
    xavier = nw.init_params(arch, "xavier", 123.0, g)  # the scale is not used
    assert xavier["W1"].std().item() == pytest.approx(math.sqrt(2 / 700), rel=0.02)
    he = nw.init_params(arch, "he", 0.01, g)
    assert he["W1"].std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert he["b1"].abs().sum() == 0
    bn = nw.init_params(nw.Arch(sizes=(4, 3, 10), batch_norm=True), "he", 0.01, g)
    assert sorted(bn) == ["W1", "W2", "b2", "beta1", "gamma1", "mean1", "var1"]
    assert torch.equal(bn["gamma1"], torch.ones(3)) and torch.equal(bn["var1"], torch.ones(3))


def test_layer_stats_are_the_autograd_gradient_norms():
    arch = nw.Arch(sizes=(12, 9, 7, 10), activation="sigmoid")
    X, y, Y, params = problem(arch)
    ref, _ = reference_grads(arch, params, X, y)
    rows = nw.layer_stats(arch, nw.SGD(lr=0.3), params, {}, X, Y)
    assert [r["layer"] for r in rows] == [1, 2, 3]
    for r in rows:
        W = params[f"W{r['layer']}"]
        assert r["grad_norm"] == pytest.approx(ref[f"W{r['layer']}"].norm().item(), rel=1e-10)
        assert r["weight_norm"] == pytest.approx(W.norm().item())
        assert r["update_ratio"] == pytest.approx(0.3 * r["grad_norm"] / r["weight_norm"], rel=1e-10)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.9, False, 0.01), (0.9, True, 0.0)])
def test_layer_stats_are_the_gradient_and_the_step_torch_optim_sgd_would_take(momentum, nesterov, weight_decay):
    """grad_norm: |dL/dW| by autograd (weight decay not included); update_ratio: |W - W'| / |W|
    where W' is torch.optim.SGD's step from that gradient and the momentum buffer there."""
    g = torch.Generator().manual_seed(3)
    arch = nw.Arch(sizes=(784, 32, 10), activation="relu", output="softmax", loss="cross_entropy")
    params = nw.init_params(arch, "normal", 0.05, g, dtype=torch.float64)
    velocity = {"W1": torch.randn(784, 32, generator=g, dtype=torch.float64) * 1e-3,
                "W2": torch.randn(32, 10, generator=g, dtype=torch.float64) * 1e-3} if momentum else {}
    X = torch.rand(50, 784, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 10, (50,), generator=g)
    opt = nw.SGD(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    rows = nw.layer_stats(arch, opt, params, velocity, X, F.one_hot(y, 10).to(torch.float64))

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    z = torch.relu(X @ leaves["W1"] + leaves["b1"]) @ leaves["W2"] + leaves["b2"]
    F.cross_entropy(z, y).backward()
    for row, name in zip(rows, ("W1", "W2")):
        W = leaves[name].detach().clone().requires_grad_()
        W.grad = leaves[name].grad.clone()
        sgd = torch.optim.SGD([W], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        if momentum:
            sgd.state[W]["momentum_buffer"] = velocity[name].clone()
        sgd.step()
        before = params[name]
        assert row["grad_norm"] == pytest.approx(leaves[name].grad.norm().item(), rel=1e-9)
        assert row["weight_norm"] == pytest.approx(before.norm().item(), rel=1e-12)
        assert row["update_ratio"] == pytest.approx((W.detach() - before).norm().item() / before.norm().item(), rel=1e-7)


# --- members: K networks side by side (a vectorised sweep's group) -----------------------------


@pytest.mark.parametrize("activation,batch_norm,dropout,head", GRID,
                         ids=[f"{a}-bn{int(b)}-drop{d}-{h[1]}" for a, b, d, h in GRID])
def test_the_member_form_is_each_member_alone_float64(activation, batch_norm, dropout, head):
    """Three members (own weights, own batch, own dropout rate and generator, one without
    dropout) through forward, backward, the running statistics and evaluate in the member form
    give what each member gives alone, to 1e-12."""
    arch = nw.Arch(sizes=(12, 9, 7, 10), activation=activation, output=head[0], loss=head[1],
                   batch_norm=batch_norm, dropout=dropout)
    runs = [problem(arch, seed=k) for k in range(3)]
    rates = [dropout, 0.0, dropout / 2]
    alone = []
    for (X, _, Y, params), p, k in zip(runs, rates, range(3)):
        params = {n: t.clone() for n, t in params.items()}
        cache = nw.forward(arch, params, X, dropout=nw.dropout_masks(p, torch.Generator().manual_seed(k)))
        nw.update_running_stats(arch, params, cache)
        alone.append((cache, nw.backward(arch, params, cache, Y), params))
    stacked = nw.stack([params for *_, params in runs])
    X, Y = torch.stack([r[0] for r in runs]), torch.stack([r[2] for r in runs])  # (3,m,12), (3,m,10)
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    cache = nw.forward(arch, stacked, X, dropout=nw.member_masks(rates, gens))
    grads = nw.backward(arch, stacked, cache, Y)
    nw.update_running_stats(arch, stacked, cache)
    assert nw.loss_of(arch, cache.z, Y).shape == (3,)
    for k, (their_cache, their_grads, their_params) in enumerate(alone):
        assert torch.allclose(cache.z[k], their_cache.z, rtol=0, atol=1e-12)
        assert set(grads) == set(their_grads)
        for name, g in grads.items():
            ours = nw.member(grads, k)[name]
            assert ours.shape == g.shape[1:] if name.startswith("W") else ours.shape == g.shape[2:]
            assert torch.allclose(ours, their_grads[name], rtol=0, atol=1e-12), (k, name)
        for name, t in nw.member(stacked, k).items():  # batch norm's running statistics
            assert torch.allclose(t, their_params[name], rtol=0, atol=1e-12), (k, name)
    X_eval, Y_eval = runs[0][0], runs[0][2]
    loss_sum, correct = nw.evaluate(arch, stacked, X_eval, Y_eval, chunk=10)
    assert loss_sum.shape == correct.shape == (3,)
    for k, (*_, their_params) in enumerate(alone):
        their_loss, their_correct = nw.evaluate(arch, their_params, X_eval, Y_eval, chunk=10)
        assert loss_sum[k].item() == pytest.approx(their_loss.item(), rel=1e-12)
        assert correct[k].item() == their_correct.item()


def test_member_masks_are_each_members_own_draws():
    a = torch.ones(3, 40, 30, dtype=torch.float64)
    masks = nw.member_masks([0.5, 0.0, 0.2], [torch.Generator().manual_seed(k) for k in range(3)])(a)
    assert torch.equal(masks[0], nw.dropout_masks(0.5, torch.Generator().manual_seed(0))(a[0]))
    assert torch.equal(masks[1], torch.ones(40, 30, dtype=torch.float64))
    assert torch.equal(masks[2], nw.dropout_masks(0.2, torch.Generator().manual_seed(2))(a[2]))
    assert nw.member_masks([0.0, 0.0], [torch.Generator()] * 2) is None


def test_member_sgd_update_is_each_members_sgd_update():
    """Three steps of members with their own lr, momentum, Nesterov and weight decay (one plain)
    equal each member's own network.sgd_update, velocity included."""
    arch = nw.Arch(sizes=(12, 9, 10), batch_norm=True)
    opts = [nw.SGD(lr=0.1, momentum=0.9), nw.SGD(lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.01),
            nw.SGD(lr=0.2), nw.SGD(lr=0.3, weight_decay=0.1)]
    runs = [problem(arch, seed=k) for k in range(len(opts))]
    singles = [{n: t.clone() for n, t in r[3].items()} for r in runs]
    stacked = nw.stack(singles)
    velocity = {n: torch.zeros_like(t) for n, t in stacked.items() if nw.is_trained(n)}
    member_opt = nw.MemberSGD.of(opts, like=stacked["W1"])
    single_velocity = [{} for _ in opts]
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        grads = [{n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in s.items() if nw.is_trained(n)}
                 for s in singles]
        nw.member_sgd_update(member_opt, stacked, nw.stack(grads), velocity)
        for opt, params, gr, v in zip(opts, singles, grads, single_velocity):
            nw.sgd_update(opt, params, gr, v)
    for k, params in enumerate(singles):
        for name, t in nw.member(stacked, k).items():
            assert torch.allclose(t, params[name], rtol=0, atol=1e-12), (k, name)
        for name, v in single_velocity[k].items():
            assert torch.allclose(nw.member(velocity, k)[name], v, rtol=0, atol=1e-12), (k, name)
