"""The chapter's equations for a network of any depth: the lab's model.

Layer l = 1..L maps the previous layer's output a[l-1] (a[0] = X) to a[l]; L is the output
layer. One example per row, m examples per batch, n[l] units in layer l:

    z[l] = a[l-1] W[l] + b[l]            (m, n[l])     W[l]: (n[l-1], n[l])
    hidden l < L, with batch_norm:       zhat = (z - mean_rows z) / sqrt(var_rows z + eps)
                                         y[l] = gamma[l] * zhat + beta[l]   (no b[l]: beta is the shift)
                  without:               y[l] = z[l]
    a[l] = f(y[l])                       f: relu | sigmoid | tanh | leaky_relu
    a[l] = a[l] * mask[l] / (1 - p)      inverted dropout, training only
    out  = softmax(z[L]) or sigmoid(z[L])

    dz[L] = out - Y                           softmax + cross-entropy
          = (out - Y) * out * (1 - out)       sigmoid + mean squared error (1/2m) sum ||out - Y||^2
    dW[l] = a[l-1]^T dz[l] / m,   db[l] = mean_rows(dz[l])
    da[l-1] = dz[l] W[l]^T (* mask[l-1] / (1 - p))
    dz[l-1] = da[l-1] * f'(y[l-1])            f' read off f(y[l-1]), the activation before dropout;
                                              through batch norm when it is on (see bn_backward)

With one ReLU hidden layer, softmax and cross-entropy this is exactly backprop.py; the tests
hold the two to each other and both to torch.autograd. As there, the deltas dz are m times
dL/dz, so every parameter gradient divides by m once.

Members: as in backprop.py, every equation also holds with a leading member dimension K (K
same-shape networks trained side by side, a vectorised sweep's group): X (K, m, n[0]), W[l]
(K, n[l-1], n[l]), each vector parameter a (K, 1, n[l]) row. Sums and means run over the rows
(dim -2, kept for members so they stay rows), transposes are `.mT`, and each member draws its own
dropout masks (`member_masks`); `stack` / `member` convert between the two forms.

`forward` and `backward` are pure: batch-norm's running statistics are updated by
`update_running_stats` and parameters only by `sgd_update`, which implements momentum,
Nesterov and L2 weight decay (on the weights W only) as torch.optim.SGD defines them.
Parameters live in one dict, named "W1", "b1", "gamma1", "beta1", "mean1", "var1", ...:
the same names in memory, in checkpoints and in weights.pt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .backprop import cross_entropy, cross_entropy_delta, relu, softmax

Params = dict[str, Tensor]
LEAK = 0.01  # leaky_relu's slope for z < 0
BN_EPS = 1e-5  # as torch.nn.BatchNorm1d
BN_MOMENTUM = 0.1  # running = (1 - 0.1) * running + 0.1 * batch, as torch.nn.BatchNorm1d


@dataclass(frozen=True)
class Arch:
    """The network's shape and the choices that change its equations."""

    sizes: tuple[int, ...]  # (n_inputs, hidden..., n_classes)
    activation: str = "relu"
    output: str = "softmax"
    loss: str = "cross_entropy"
    batch_norm: bool = False
    dropout: float = 0.0

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def describe(self) -> str:
        extras = [self.activation] + ["batch norm"] * self.batch_norm + [f"dropout {self.dropout:g}"] * (self.dropout > 0)
        return f"{'-'.join(map(str, self.sizes))} {', '.join(extras)}, {self.output} + {self.loss}"

    @property
    def is_chapter(self) -> bool:
        """One ReLU hidden layer into softmax + cross-entropy: backprop.fused_step can train it."""
        return (self.n_layers == 2 and self.activation == "relu" and self.output == "softmax"
                and self.loss == "cross_entropy" and not self.batch_norm and self.dropout == 0)


# --- activations: value and derivative, the derivative read off the value a = f(y) --------


def relu_grad(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


def sigmoid(y: Tensor) -> Tensor:
    return torch.sigmoid(y)


def sigmoid_grad(a: Tensor) -> Tensor:
    return a * (1 - a)


def tanh(y: Tensor) -> Tensor:
    return torch.tanh(y)


def tanh_grad(a: Tensor) -> Tensor:
    return 1 - a * a


def leaky_relu(y: Tensor) -> Tensor:
    return torch.where(y > 0, y, LEAK * y)


def leaky_relu_grad(a: Tensor) -> Tensor:
    return torch.where(a > 0, a.new_tensor(1.0), a.new_tensor(LEAK))  # a > 0 exactly where y > 0


ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "relu": (relu, relu_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
}


# --- output and loss: value and delta (m * dL/dz[L]) ----------------------------------------


def mse(z: Tensor, Y: Tensor) -> Tensor:
    """(1/2m) sum ||sigmoid(z) - Y||^2: the quadratic cost of a sigmoid output layer (with a
    leading member dimension, one per member, as backprop.cross_entropy)."""
    return ((torch.sigmoid(z) - Y) ** 2).sum(dim=(-2, -1)) / (2 * z.shape[-2])


def mse_delta(out: Tensor, Y: Tensor) -> Tensor:
    return (out - Y) * out * (1 - out)  # (m,10): dL/dout times sigmoid'(z)


# (output, loss) -> (output function, loss from logits z[L], delta from the output)
HEADS: dict[tuple[str, str], tuple[Callable, Callable, Callable]] = {
    ("softmax", "cross_entropy"): (softmax, cross_entropy, cross_entropy_delta),
    ("sigmoid", "mse"): (sigmoid, mse, mse_delta),
}


def loss_of(arch: Arch, z: Tensor, Y: Tensor) -> Tensor:
    """The mean loss of logits z (m, 10) against one-hot Y; (K,) for members' (K, m, 10)."""
    return HEADS[arch.output, arch.loss][1](z, Y)


# --- dropout -----------------------------------------------------------------------------------

Masks = Callable[[Tensor], "Tensor | None"]  # a hidden layer's activation a -> its scaled keep mask


def dropout_masks(p: float, generator: torch.Generator) -> Masks | None:
    """Inverted dropout for one run: each unit kept with probability 1 - p and a kept unit scaled
    by 1 / (1 - p), so a layer's expected output is unchanged; None (nothing drawn) when p = 0."""
    if p <= 0:
        return None
    keep = 1 - p

    def mask(a: Tensor) -> Tensor:
        return (torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device) < keep).to(a.dtype) / keep

    return mask


def member_masks(ps: Sequence[float], generators: Sequence[torch.Generator]) -> Masks | None:
    """Members' masks (K, m, n): member k's drawn as its single run draws them, from its own
    generator with its own rate; a member without dropout gets ones and draws nothing."""
    masks = [dropout_masks(p, g) for p, g in zip(ps, generators)]
    if all(m is None for m in masks):
        return None
    return lambda a: torch.stack([a.new_ones(a.shape[1:]) if m is None else m(a[k]) for k, m in enumerate(masks)])


# --- initialisation ----------------------------------------------------------------------------


def init_params(arch: Arch, init: str, init_scale: float, generator: torch.Generator,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Params:
    """normal: W = randn * init_scale, b = 0 (the chapter's); uniform: W and b drawn from
    [-init_scale, init_scale) (the book's chapter-10 network); xavier: W = randn * sqrt(2 / (n_in + n_out));
    he: W = randn * sqrt(2 / n_in); b = 0 for all but uniform. Batch norm starts at gamma = 1,
    beta = 0, running mean 0 and variance 1. Drawn on the CPU from `generator`, then moved,
    so a seed gives the same start on every device (and W1, W2 the same values as backprop.init_params).
    """
    params: Params = {}
    L = arch.n_layers
    for l in range(1, L + 1):
        n_in, n_out = arch.sizes[l - 1], arch.sizes[l]
        bn = arch.batch_norm and l < L
        if init == "uniform":
            W = (torch.rand(n_in, n_out, generator=generator, dtype=dtype) * 2 - 1) * init_scale
            b = (torch.rand(n_out, generator=generator, dtype=dtype) * 2 - 1) * init_scale
        else:
            std = {"normal": init_scale, "xavier": math.sqrt(2 / (n_in + n_out)), "he": math.sqrt(2 / n_in)}[init]
            W = torch.randn(n_in, n_out, generator=generator, dtype=dtype) * std
            b = torch.zeros(n_out, dtype=dtype)
        params[f"W{l}"] = W
        if bn:
            params[f"gamma{l}"] = torch.ones(n_out, dtype=dtype)
            params[f"beta{l}"] = torch.zeros(n_out, dtype=dtype)
            params[f"mean{l}"] = torch.zeros(n_out, dtype=dtype)
            params[f"var{l}"] = torch.ones(n_out, dtype=dtype)
        else:
            params[f"b{l}"] = b
    return {k: v.to(device) for k, v in params.items()}


def is_trained(name: str) -> bool:
    """Parameters SGD updates; mean/var are batch norm's running statistics."""
    return not name.startswith(("mean", "var"))


def stack(members: Sequence[Params]) -> Params:
    """K runs' parameters with a leading member dimension (copies): each W (K, n_in, n_out), each
    vector a (K, 1, n) row, so that it broadcasts over a member's batch rows."""
    return {name: torch.stack([p[name] for p in members]) if name.startswith("W")
            else torch.stack([p[name] for p in members]).unsqueeze(-2) for name in members[0]}


def member(params: Params, k: int) -> Params:
    """Member k of stacked parameters, as its single run holds them (views)."""
    return {name: t[k] if name.startswith("W") else t[k, 0] for name, t in params.items()}


# --- the network -------------------------------------------------------------------------------


@dataclass
class Cache:
    """What backward needs: each layer's input, activation, dropout mask and batch-norm terms."""

    inputs: list[Tensor] = field(default_factory=list)  # inputs[l-1] = a[l-1] after dropout: (m, n[l-1])
    acts: list[Tensor] = field(default_factory=list)  # acts[l-1] = a[l] before dropout, hidden layers: (m, n[l])
    masks: list[Tensor | None] = field(default_factory=list)  # scaled dropout masks, hidden layers
    zhats: list[Tensor | None] = field(default_factory=list)  # batch norm: normalised z, hidden layers
    stds: list[Tensor | None] = field(default_factory=list)  # batch norm: sqrt(var + eps), (n[l],)
    batch_stats: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)  # batch mean, var (unbiased)
    z: Tensor | None = None  # z[L]: (m, 10) logits
    out: Tensor | None = None  # softmax or sigmoid of z[L]


def forward(arch: Arch, params: Params, X: Tensor, train: bool = True, dropout: Masks | None = None) -> Cache:
    """train: batch norm uses the batch's statistics (else the running ones). Dropout applies
    only when `dropout` (what draws the masks: dropout_masks or member_masks) is given."""
    f = ACTIVATIONS[arch.activation][0]
    L = arch.n_layers
    cache = Cache()
    a = X  # (m, n[0])
    for l in range(1, L):
        cache.inputs.append(a)
        W = params[f"W{l}"]
        if arch.batch_norm:
            z = a @ W  # (m,n[l-1]) @ (n[l-1],n[l]) -> (m,n[l])
            if train:
                rows = W.dim() > 2  # members: the statistics stay (K,1,n[l]) rows
                mean, var = z.mean(dim=-2, keepdim=rows), z.var(dim=-2, unbiased=False, keepdim=rows)  # (n[l],)
                unbiased = z.var(dim=-2, unbiased=True, keepdim=rows) if z.shape[-2] > 1 else var
                cache.batch_stats.append((mean, unbiased))
            else:
                mean, var = params[f"mean{l}"], params[f"var{l}"]
                cache.batch_stats.append(None)
            std = (var + BN_EPS).sqrt()  # (n[l],)
            zhat = (z - mean) / std  # (m,n[l])
            y = params[f"gamma{l}"] * zhat + params[f"beta{l}"]  # (m,n[l])
            cache.zhats.append(zhat)
            cache.stds.append(std)
        else:
            y = a @ W + params[f"b{l}"]  # (m,n[l-1]) @ (n[l-1],n[l]) -> (m,n[l])
            cache.zhats.append(None)
            cache.stds.append(None)
            cache.batch_stats.append(None)
        a = f(y)  # (m,n[l])
        cache.acts.append(a)
        mask = dropout(a) if dropout is not None else None  # (m,n[l])
        if mask is not None:
            a = a * mask
        cache.masks.append(mask)
    cache.inputs.append(a)
    cache.z = a @ params[f"W{L}"] + params[f"b{L}"]  # (m,n[L-1]) @ (n[L-1],10) -> (m,10)
    cache.out = HEADS[arch.output, arch.loss][0](cache.z)  # (m,10)
    return cache


def bn_backward(dy: Tensor, zhat: Tensor, gamma: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Through y = gamma * zhat + beta with zhat = (z - mean z) / std over the batch's rows.

    Returns dz (m, n), and m * dL/dgamma, m * dL/dbeta as sums over rows. Because the mean
    and variance depend on every row, dz is dzhat minus its row mean and minus its
    projection on zhat, scaled by 1/std.
    """
    rows = gamma.dim() > 1  # members: sums over each member's rows, kept as (K,1,n) rows
    dgamma = (dy * zhat).sum(dim=-2, keepdim=rows)  # (n,)
    dbeta = dy.sum(dim=-2, keepdim=rows)  # (n,)
    dzhat = dy * gamma  # (m,n)
    dz = (dzhat - dzhat.mean(dim=-2, keepdim=True) - zhat * (dzhat * zhat).mean(dim=-2, keepdim=True)) / std  # (m,n)
    return dz, dgamma, dbeta


def backward(arch: Arch, params: Params, cache: Cache, Y: Tensor) -> Params:
    """Gradients of the mean loss: {"W1": dW1, "b1": db1, ...} for every trained parameter."""
    f_grad = ACTIVATIONS[arch.activation][1]
    L = arch.n_layers
    m = Y.shape[-2]
    rows = params[f"W{L}"].dim() > 2  # members: each bias gradient a (K,1,n) row, as its bias
    grads: Params = {}
    dz = HEADS[arch.output, arch.loss][2](cache.out, Y)  # dz[L]: (m,10)
    grads[f"W{L}"] = cache.inputs[L - 1].mT @ (dz / m)  # (n[L-1],m) @ (m,10) -> (n[L-1],10)
    grads[f"b{L}"] = dz.mean(dim=-2, keepdim=rows)  # (10,)
    for l in range(L - 1, 0, -1):
        da = dz @ params[f"W{l + 1}"].mT  # (m,n[l+1]) @ (n[l+1],n[l]) -> (m,n[l])
        if cache.masks[l - 1] is not None:
            da = da * cache.masks[l - 1]  # (m,n[l]): dropped units pass no gradient
        dy = da * f_grad(cache.acts[l - 1])  # (m,n[l])
        if arch.batch_norm:
            dz, dgamma, dbeta = bn_backward(dy, cache.zhats[l - 1], params[f"gamma{l}"], cache.stds[l - 1])
            grads[f"gamma{l}"], grads[f"beta{l}"] = dgamma / m, dbeta / m  # (n[l],)
        else:
            dz = dy
            grads[f"b{l}"] = dz.mean(dim=-2, keepdim=rows)  # (n[l],)
        grads[f"W{l}"] = cache.inputs[l - 1].mT @ (dz / m)  # (n[l-1],m) @ (m,n[l]) -> (n[l-1],n[l])
    return grads


def update_running_stats(arch: Arch, params: Params, cache: Cache) -> None:
    """Batch norm's running mean and (unbiased) variance, blended as torch.nn.BatchNorm1d does."""
    if not arch.batch_norm:
        return
    for l, stats in enumerate(cache.batch_stats, start=1):
        if stats is not None:
            params[f"mean{l}"].lerp_(stats[0], BN_MOMENTUM)
            params[f"var{l}"].lerp_(stats[1], BN_MOMENTUM)


# --- the optimiser -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SGD:
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0  # L2: adds weight_decay * W to dW, for the weights W only


def sgd_direction(opt: SGD, name: str, p: Tensor, g: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The step d (p <- p - lr * d) and the new velocity, without changing anything:

        g = dp + weight_decay * p         (weights only)
        v = momentum * v + g              (v = g on the first step)
        d = g + momentum * v  (Nesterov)  or  d = v
    """
    if opt.weight_decay and name.startswith("W"):
        g = g + opt.weight_decay * p
    if not opt.momentum:
        return g, None
    v = g.clone() if v is None else opt.momentum * v + g
    return (g + opt.momentum * v if opt.nesterov else v), v


def sgd_update(opt: SGD, params: Params, grads: Params, velocity: Params) -> None:
    """One SGD step in place; `velocity` (the momentum buffers) is updated in place too."""
    for name, g in grads.items():
        d, v = sgd_direction(opt, name, params[name], g, velocity.get(name))
        if v is not None:
            velocity[name] = v
        params[name].sub_(d, alpha=opt.lr)


@dataclass(frozen=True)
class MemberSGD:
    """SGD's coefficients for members, one per member as (K, 1, 1) tensors (nesterov: bool)."""

    lr: Tensor
    momentum: Tensor
    nesterov: Tensor
    weight_decay: Tensor

    @classmethod
    def of(cls, opts: Sequence[SGD], like: Tensor) -> MemberSGD:
        def column(values: list, dtype: torch.dtype = like.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=like.device).reshape(-1, 1, 1)  # (K,1,1)

        return cls(lr=column([o.lr for o in opts]), momentum=column([o.momentum for o in opts]),
                   nesterov=column([o.nesterov for o in opts], torch.bool),
                   weight_decay=column([o.weight_decay for o in opts]))

    def select(self, index: Tensor) -> MemberSGD:
        """The coefficients of the members at `index` (those still training)."""
        return MemberSGD(*(t.index_select(0, index) for t in (self.lr, self.momentum, self.nesterov, self.weight_decay)))


def member_sgd_update(opt: MemberSGD, params: Params, grads: Params, velocity: Params | None) -> None:
    """sgd_update for members, each with its own coefficients: sgd_direction's equations with
    the velocity always kept (`velocity`: zeros at the start, or None when no member has
    momentum). A member with momentum 0 gets v = g and d = g: plain SGD, as its single run."""
    for name, dp in grads.items():
        p = params[name]
        g = dp + opt.weight_decay * p if name.startswith("W") else dp
        d = g
        if velocity is not None:
            v = velocity[name].mul_(opt.momentum).add_(g)  # on the first step v = 0 * mu + g = g
            d = torch.where(opt.nesterov, g + opt.momentum * v, v)
        p.sub_(opt.lr * d)


# --- evaluation and diagnostics ----------------------------------------------------------------


def evaluate(arch: Arch, params: Params, X: Tensor, Y: Tensor, chunk: int = 1_000,
             predicted: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Summed loss and number of correct predictions over a set, in evaluation mode
    (running batch-norm statistics, no dropout); 0-d tensors on the data's device. `predicted`,
    if given ((n,) or members' (K,n) integers), receives each row's predicted class.

    In chunks of 1,000 rows because a chunk's inputs and hidden activations then stay in the
    CPU's cache from one layer to the next: the test pass took ~15 % less time than in one
    10,000-row piece on the 2-core benchmark machine, with the same results."""
    lead = params["W1"].shape[:-2]  # () for a run, (K,) for members: one sum and count each
    loss_sum = torch.zeros(lead, dtype=X.dtype, device=X.device)
    correct = torch.zeros(lead, dtype=torch.int64, device=X.device)
    for start in range(0, X.shape[0], chunk):
        Xc, Yc = X[start: start + chunk], Y[start: start + chunk]
        z = forward(arch, params, Xc, train=False).z  # (c,10); members (K,c,10) from the same rows
        loss_sum += loss_of(arch, z, Yc) * Xc.shape[0]
        labels = z.argmax(dim=-1)  # (c,); members (K,c)
        correct += (labels == Yc.argmax(dim=-1)).sum(dim=-1)
        if predicted is not None:
            predicted[..., start: start + chunk] = labels
    return loss_sum, correct


def layer_stats(arch: Arch, opt: SGD, params: Params, velocity: Params, X: Tensor, Y: Tensor) -> list[dict[str, float]]:
    """Per layer: |dW| on the batch (X, Y) in training mode without dropout, |W|, the
    update-to-weight ratio lr * |d| / |W| of the step SGD would take from that gradient, and
    for a relu hidden layer the fraction of its units dead on the batch (NaN otherwise)."""
    cache = forward(arch, params, X, train=True)
    grads = backward(arch, params, cache, Y)
    rows = []
    for l in range(1, arch.n_layers + 1):
        name = f"W{l}"
        W, dW = params[name], grads[name]
        d, _ = sgd_direction(opt, name, W, dW, velocity.get(name))
        w_norm = W.norm().item()
        hidden = l < arch.n_layers and arch.activation == "relu"
        rows.append({"layer": l, "grad_norm": dW.norm().item(), "weight_norm": w_norm,
                     "update_ratio": opt.lr * d.norm().item() / w_norm if w_norm else float("nan"),
                     "dead_fraction": dead_fraction(cache.acts[l - 1]) if hidden else float("nan")})
    return rows


def dead_fraction(a: Tensor) -> float:
    """The fraction of a ReLU layer's units that output 0 for every row of a (m, n[l]): they pass
    no gradient back (relu' = 0), so no step can bring them back. leaky_relu, sigmoid and tanh
    units always pass some gradient, so only relu layers are measured."""
    return (a <= 0).all(dim=0).to(a.dtype).mean().item()  # (m,n[l]) -> (n[l],) -> fraction
