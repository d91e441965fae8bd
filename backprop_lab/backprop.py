"""The chapter's network as matrix equations: forward, backward and the SGD step.

One example per row, m examples per batch, H hidden units, 10 classes:

    z1 = X W1 + b1              (m, H)      X: (m, 784) inputs in [-1, 1]
    a1 = relu(z1)               (m, H)
    z2 = a1 W2 + b2             (m, 10)     logits
    p  = softmax(z2)            (m, 10)
    L  = -(1/m) sum(Y * log p)              Y: (m, 10) one-hot targets

    dz2 = p - Y                 (m, 10)     m * dL/dz2 (softmax and cross-entropy combined)
    dW2 = a1^T dz2 / m          (H, 10)
    db2 = mean_rows(dz2)        (10,)
    dz1 = dz2 W2^T * 1[a1 > 0]  (m, H)
    dW1 = X^T dz1 / m           (784, H)
    db1 = mean_rows(dz1)        (H,)

    W <- W - lr * dW            (for W1, b1, W2, b2)

Members: every equation also holds with a leading member dimension K, for K same-shape
networks trained side by side (a sweep's jobs as one batched model): X (K, m, 784), W1
(K, 784, H), b1 (K, 1, H), ... and `@` becomes a batched product. Sums and means run over the
rows (dim -2) and the classes (dim -1), transposes are `.mT`, so one set of equations serves a
single run (2-D, unchanged) and K members (3-D); `stack` / `member` convert between the two.

Code names follow the equations. `backward` is pure: it reads the forward cache and
returns fresh gradients; `sgd_step`, and `fused_step` (the same step with fewer kernels,
which training uses), are the only functions that change parameters.
Nothing here requires grad: autograd is the tests' oracle, never part of training.
This module knows nothing of configs, files or devices beyond the tensors it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

N_INPUTS = 28 * 28
N_CLASSES = 10


@dataclass
class Params:
    W1: Tensor  # (784, H)
    b1: Tensor  # (H,)
    W2: Tensor  # (H, 10)
    b2: Tensor  # (10,)

    def as_dict(self) -> dict[str, Tensor]:
        return {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}


@dataclass
class Cache:
    """What the backward pass needs from the forward pass."""

    X: Tensor  # (m, 784)
    z1: Tensor  # (m, H)
    a1: Tensor  # (m, H)
    z2: Tensor  # (m, 10) logits
    p: Tensor  # (m, 10) softmax(z2)


@dataclass
class Grads:
    dW1: Tensor  # (784, H)
    db1: Tensor  # (H,)
    dW2: Tensor  # (H, 10)
    db2: Tensor  # (10,)


def init_params(
    hidden_size: int,
    init_scale: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Params:
    """The chapter's initialisation: W = randn * init_scale, b = 0.

    Drawn on the CPU from `generator` and then moved, so one seed gives the same
    starting weights on every device.
    """
    W1 = torch.randn(N_INPUTS, hidden_size, generator=generator, dtype=dtype) * init_scale
    W2 = torch.randn(hidden_size, N_CLASSES, generator=generator, dtype=dtype) * init_scale
    return Params(
        W1=W1.to(device),
        b1=torch.zeros(hidden_size, dtype=dtype, device=device),
        W2=W2.to(device),
        b2=torch.zeros(N_CLASSES, dtype=dtype, device=device),
    )


# --- activation: value and derivative ---------------------------------------------------


def relu(z: Tensor) -> Tensor:
    return z.clamp_min(0)


def relu_grad(a: Tensor) -> Tensor:
    """d relu / dz, read off the activation: 1 where a > 0 (same as z > 0), else 0."""
    return a > 0


# --- output and loss: softmax + cross-entropy, value and delta --------------------------


def softmax(z: Tensor) -> Tensor:
    e = (z - z.amax(dim=-1, keepdim=True)).exp()  # (m,10); shifting by the row max keeps exp finite
    return e / e.sum(dim=-1, keepdim=True)  # (m,10)


def cross_entropy(z: Tensor, Y: Tensor) -> Tensor:
    """Mean cross-entropy -(1/m) sum(Y * log softmax(z)), through log-softmax so log(0) never occurs;
    with members, one per member: (K,)."""
    shifted = z - z.amax(dim=-1, keepdim=True)  # (m,10)
    log_p = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()  # (m,10)
    return -(Y * log_p).sum(dim=(-2, -1)) / z.shape[-2]


def cross_entropy_delta(p: Tensor, Y: Tensor) -> Tensor:
    """m * dL/dz for softmax followed by cross-entropy: the famous p - Y."""
    return p - Y


# --- the network -------------------------------------------------------------------------


def forward(params: Params, X: Tensor) -> Cache:
    z1 = X @ params.W1 + params.b1  # (m,784) @ (784,H) -> (m,H)
    a1 = relu(z1)  # (m,H)
    z2 = a1 @ params.W2 + params.b2  # (m,H) @ (H,10) -> (m,10)
    p = softmax(z2)  # (m,10)
    return Cache(X=X, z1=z1, a1=a1, z2=z2, p=p)


def backward(params: Params, cache: Cache, Y: Tensor) -> Grads:
    # Dividing the (m,k) deltas by m, rather than the larger (n,k) products, is the same
    # equation with less arithmetic: dW2 = a1^T dz2 / m = a1^T (dz2 / m).
    m = cache.X.shape[-2]
    rows = params.b1.dim() > 1  # members: each bias is a (K,1,n) row, and so is its gradient
    dz2 = cross_entropy_delta(cache.p, Y)  # (m,10)
    dW2 = cache.a1.mT @ (dz2 / m)  # (H,m) @ (m,10) -> (H,10)
    db2 = dz2.mean(dim=-2, keepdim=rows)  # (10,)
    dz1 = (dz2 @ params.W2.mT) * relu_grad(cache.a1)  # (m,10) @ (10,H) -> (m,H)
    dW1 = cache.X.mT @ (dz1 / m)  # (784,m) @ (m,H) -> (784,H)
    db1 = dz1.mean(dim=-2, keepdim=rows)  # (H,)
    return Grads(dW1=dW1, db1=db1, dW2=dW2, db2=db2)


def sgd_step(params: Params, grads: Grads, lr: float | Tensor) -> None:
    """W <- W - lr * dW, in place so the parameter tensors keep their storage. With members,
    `lr` may be a (K,1,1) tensor: each member's own rate."""
    for W, dW in ((params.W1, grads.dW1), (params.b1, grads.db1), (params.W2, grads.dW2), (params.b2, grads.db2)):
        if isinstance(lr, Tensor):
            W.sub_(lr * dW)  # (K,1,1) * (K,r,c)
        else:
            W.sub_(dW, alpha=lr)


def stack(members: list[Params]) -> Params:
    """K single runs' parameters as one set with a leading member dimension (copies)."""
    return Params(W1=torch.stack([p.W1 for p in members]),  # (K,784,H)
                  b1=torch.stack([p.b1 for p in members]).unsqueeze(-2),  # (K,1,H)
                  W2=torch.stack([p.W2 for p in members]),  # (K,H,10)
                  b2=torch.stack([p.b2 for p in members]).unsqueeze(-2))  # (K,1,10)


def member(params: Params, k: int) -> Params:
    """Member k of stacked parameters, as a single run holds them (views)."""
    return Params(W1=params.W1[k], b1=params.b1[k, 0], W2=params.W2[k], b2=params.b2[k, 0])


# --- the same step, fused, for training speed ------------------------------------------


@dataclass
class FusedViews:
    """What fused_step reuses from batch to batch, made once by `fused_views`. The views
    share storage with the parameters, so they follow the in-place updates."""

    W2T: Tensor  # (10,H) W2^T
    b1: Tensor  # (1,H) b1 as a row
    b2: Tensor  # (1,10) b2 as a row
    ones: Tensor  # (1,m) a row of ones: 1^T dz sums dz over the batch


def fused_views(params: Params, m: int) -> FusedViews:
    if params.W1.dim() == 3:  # members: the biases are rows already, one row of ones per member
        return FusedViews(W2T=params.W2.mT, b1=params.b1, b2=params.b2,
                          ones=params.W1.new_ones(1, 1, m).expand(params.W1.shape[0], 1, m))
    return FusedViews(W2T=params.W2.T, b1=params.b1.unsqueeze(0), b2=params.b2.unsqueeze(0),
                      ones=params.W1.new_ones(1, m))


def fused_step(params: Params, X: Tensor, Y: Tensor, lr: float | Tensor, z2_out: Tensor | None = None,
               views: FusedViews | None = None) -> Tensor:
    """forward + backward + sgd_step as one sequence of fewer kernels; returns z2.

    The equations are those above; only the bookkeeping differs: 1/m and lr become one
    scalar, each gradient is accumulated straight into its parameter (W -= lr/m * A^T dz)
    instead of being stored first, a bias gradient is the product 1^T dz, the softmax is
    torch's single kernel, and the ReLU mask is sign(a1) (1 where a1 > 0, else 0: a1 is
    never negative), a float that multiplies without a conversion. The bias adds are a
    product then an add, not one addmm: with MKL at these shapes addmm's bias is the slower
    of the two (benchmarked). `views` (from fused_views, made here if not given for this m)
    saves making the same transposes every batch. The tests hold this function to
    forward/backward/sgd_step at float tolerance.

    With members (3-D tensors, see the module's docstring) the products are batched (bmm) and
    `lr` is a (K,1,1) tensor: each member's lr/m scales its deltas before the accumulation,
    since a product's alpha can only be one number.
    """
    m = X.shape[-2]
    members = X.dim() == 3
    mm, addmm_ = (torch.bmm, Tensor.baddbmm_) if members else (torch.mm, Tensor.addmm_)
    v = views if views is not None and views.ones.shape[-1] == m else fused_views(params, m)
    z1 = mm(X, params.W1).add_(v.b1)  # X W1 + b1: (m,784) @ (784,H) -> (m,H)
    a1 = z1.clamp_min_(0)  # relu(z1), in place: z1 itself is not needed again
    z2 = mm(a1, params.W2, out=z2_out).add_(v.b2)  # a1 W2 + b2: (m,H) @ (H,10) -> (m,10)
    if members and z2.is_cpu:  # on a CPU torch's softmax along a last dim of 10 is 3x slower than along
        # the rows (2-core, K=16); a GPU's step is bound by kernel launches, so it takes no extra copy
        dz2 = torch.softmax(z2.mT.contiguous(), dim=-2).mT.sub_(Y)  # p - Y: (K,m,10), a transposed view
    else:
        dz2 = torch.softmax(z2, dim=-1).sub_(Y)  # p - Y: (m,10)
    dz1 = mm(dz2, v.W2T).mul_(a1.sign())  # (m,10) @ (10,H) -> (m,H), * 1[a1 > 0], before W2 moves
    if members:
        step = lr / m  # (K,1,1)
        dz2.mul_(step), dz1.mul_(step)
        alpha = -1.0
    else:
        alpha = -lr / m
    addmm_(params.W2, a1.mT, dz2, alpha=alpha)  # W2 -= lr * a1^T dz2 / m: (H,m) @ (m,10)
    addmm_(v.b2, v.ones, dz2, alpha=alpha)  # b2 -= lr * mean(dz2): (1,m) @ (m,10)
    addmm_(params.W1, X.mT, dz1, alpha=alpha)  # W1 -= lr * X^T dz1 / m: (784,m) @ (m,H)
    addmm_(v.b1, v.ones, dz1, alpha=alpha)  # b1 -= lr * mean(dz1): (1,m) @ (m,H)
    return z2


def one_hot(y: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(m,) integer labels -> (m, 10) rows with a single 1."""
    Y = torch.zeros(y.shape[0], N_CLASSES, dtype=dtype, device=y.device)
    return Y.scatter_(1, y.long().unsqueeze(1), 1.0)


def evaluate(params: Params, X: Tensor, Y: Tensor, chunk: int = 1_000) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and number of correct predictions over a whole set; with members,
    one of each per member, (K,), from the same X and Y.

    Returned as tensors on the data's device, so a caller on a GPU reads them once.
    """
    lead = params.W1.shape[:-2]  # () for a single run, (K,) for members
    loss_sum = torch.zeros(lead, dtype=X.dtype, device=X.device)
    correct = torch.zeros(lead, dtype=torch.int64, device=X.device)
    for start in range(0, X.shape[0], chunk):
        Xc, Yc = X[start : start + chunk], Y[start : start + chunk]
        z2 = relu(Xc @ params.W1 + params.b1) @ params.W2 + params.b2  # (c,10)
        loss_sum += cross_entropy(z2, Yc) * Xc.shape[0]
        correct += (z2.argmax(dim=-1) == Yc.argmax(dim=-1)).sum(dim=-1)
    return loss_sum, correct
