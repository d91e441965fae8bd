"""The epoch loop: shuffle, slice minibatches, forward, backward, step, evaluate.

`train` is a generator of `EpochMetrics`, one per epoch; it prints nothing and writes
nothing (the reporter renders records, the run writer stores them). Train loss and
accuracy are over the epoch's minibatches as they were trained (each batch's logits before
its update), as the chapter's loop reports them, so they cost no second pass over the
data; test metrics come from a full pass over the test set after each epoch. The logits
stay on the device and are read in chunks (divergence checks, progress) and once per
epoch, so a GPU is not made to wait on the host at every batch.

It stops early for two reasons only, both as exceptions that name the epoch and batch:
`Diverged` (a logit became NaN or infinite) and `Stopped` (the caller asked, e.g. Ctrl-C);
in both cases the parameters are left as they were after the last full batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from .backprop import Params, backward, cross_entropy, evaluate, forward, fused_step, init_params, sgd_step
from .config import Config, ConfigError
from .data import MNIST

# Progress callback: (batches done, batches in the epoch, running mean train loss).
OnBatch = Callable[[int, int, float], None]


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float  # fraction in [0, 1]
    test_loss: float
    test_acc: float  # fraction in [0, 1]
    seconds: float  # wall time of the epoch, training and test evaluation
    samples_per_s: float  # training samples / seconds

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Diverged(ArithmeticError):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"training diverged at epoch {epoch}, batch {batch}: the loss is no longer finite")
        self.epoch, self.batch = epoch, batch


class Stopped(Exception):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"stopped at epoch {epoch}, batch {batch}")
        self.epoch, self.batch = epoch, batch


def divergence_check_every(device: torch.device) -> int:
    """Batches between NaN/inf checks: each check reads from the device, which costs a
    GPU far more than a CPU, and checking every batch would cost a CPU about 3%."""
    return 10 if device.type == "cpu" else 100


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(f"device={name} is not available: this machine has {have}; use device=cpu or device=auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps is not available on this machine; use device=cpu or device=auto")
    return torch.device(name)


def make_params(cfg: Config, generator: torch.Generator, device: torch.device) -> Params:
    return init_params(cfg.model.hidden_size, cfg.model.init_scale, generator, device=device)


def train(
    cfg: Config,
    data: MNIST,
    params: Params,
    generator: torch.Generator,
    on_batch: OnBatch | None = None,
    progress_every: int = 50,
    start_epoch: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[EpochMetrics]:
    """Train `params` in place for epochs start_epoch..cfg.train.epochs, yielding each epoch's metrics.

    `generator` (a CPU generator) draws each epoch's shuffle, so a seeded generator, or one
    restored from a checkpoint, makes the run reproducible. `on_batch` is called every
    `progress_every` batches and `should_stop` after every batch.
    """
    X_all, Y_all = data.X_train, data.Y_train
    n = X_all.shape[0]
    batch = cfg.data.batch_size
    n_batches = math.ceil(n / batch)
    lr = cfg.optim.lr
    fused = cfg.train.fused
    device = X_all.device
    check_every = divergence_check_every(device)
    # Each batch's logits, kept as trained, so the epoch's train loss and accuracy are
    # computed in one vectorised pass instead of a handful of tiny ops per batch.
    Z = torch.empty(n, Y_all.shape[1], dtype=X_all.dtype, device=device)  # (n,10)

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator).to(device)  # reshuffled every epoch
        checked = 0  # rows of Z already checked for NaN/inf
        reported, reported_loss = 0, 0.0  # rows already in the progress bar's running loss
        for i in range(n_batches):
            rows = slice(i * batch, (i + 1) * batch)
            idx = order[rows]
            X, Y = X_all.index_select(0, idx), Y_all.index_select(0, idx)  # (m,784), (m,10)
            if fused:
                fused_step(params, X, Y, lr, z2_out=Z[rows])
            else:
                cache = forward(params, X)
                sgd_step(params, backward(params, cache, Y), lr)
                Z[rows] = cache.z2
            seen = min(n, (i + 1) * batch)
            if (i + 1) % check_every == 0 or i + 1 == n_batches:
                finite = torch.isfinite(Z[checked:seen]).all(dim=1)  # (rows,)
                if not finite.all():
                    first_bad_row = checked + int(finite.logical_not().nonzero()[0])
                    raise Diverged(epoch, first_bad_row // batch + 1)
                checked = seen
            if on_batch is not None and ((i + 1) % progress_every == 0 or i + 1 == n_batches):
                new = slice(reported, seen)
                reported_loss += cross_entropy(Z[new], Y_all[order[new]]).item() * (seen - reported)
                reported = seen
                on_batch(i + 1, n_batches, reported_loss / seen)
            if should_stop is not None and should_stop():
                raise Stopped(epoch, i + 1)

        Y_epoch = Y_all.index_select(0, order)  # (n,10) targets in the order trained
        train_loss = cross_entropy(Z, Y_epoch).item()
        train_acc = (Z.argmax(dim=1) == Y_epoch.argmax(dim=1)).sum().item() / n
        test_loss_sum, test_correct = evaluate(params, data.X_test, data.Y_test)
        n_test = data.X_test.shape[0]
        test_loss = test_loss_sum.item() / n_test
        if not math.isfinite(test_loss):  # finite logits but weights gone to inf
            raise Diverged(epoch, n_batches)
        seconds = time.perf_counter() - start
        yield EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_correct.item() / n_test,
            seconds=seconds,
            samples_per_s=n / seconds,
        )
