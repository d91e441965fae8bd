"""The timing primitives of `backprop-lab bench` and of its --sweep (bench_sweep): variants as
functions that run one epoch each, timed interleaved, one epoch of each per round; the matmul
limit of an epoch. Kept apart so the two benchmark modules share them without importing each other."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import torch

from .backprop import N_CLASSES, N_INPUTS
from .config import Config
from .data import MNIST
from .train import EpochMetrics, make_state, train

Epoch = Callable[[], object]  # runs one epoch of one variant


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously; a timer must wait for them
        torch.cuda.synchronize(device)


def trainer_epoch(cfg: Config, data: MNIST, device: torch.device, epochs: int, fused: bool = True) -> Epoch:
    """train.train() itself, advanced one epoch per call (a generator, so nothing is copied);
    each call returns the epoch's EpochMetrics, whose batch_seconds interleave records."""
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs, fused=fused))
    records = train(cfg, data, make_state(cfg, device))
    return lambda: next(records)


COUNTED = (
    "2 FLOPs per multiply-add of the five matrix products per example: forward X W1 (784xH) and "
    "a1 W2 (Hx10), backward dz2 W2^T (10xH), weight gradients a1^T dz2 (Hx10) and X^T dz1 (784xH); "
    "no bias add, softmax, ReLU, update or test pass"
)


def matmul_flops(n: int, hidden: int) -> int:
    """See COUNTED; 24.5 GFLOP for 60,000 images at H=128."""
    return 2 * n * (2 * N_INPUTS * hidden + 3 * hidden * N_CLASSES)


def matmul_epoch(n: int, batch: int, hidden: int, device: torch.device) -> Epoch:
    """Exactly ceil(n/batch) steps of the five products at full batch size, with the operand
    layouts of backprop.fused_step (transposes as views); values are random, which costs the same."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    X, W1, W2 = rand(batch, N_INPUTS), rand(N_INPUTS, hidden), rand(hidden, N_CLASSES)
    a1, dz1, dz2 = rand(batch, hidden), rand(batch, hidden), rand(batch, N_CLASSES)
    z1, z2, back, dW2, dW1 = (torch.empty_like(t) for t in (a1, dz2, dz1, W2, W1))

    def epoch() -> None:
        for _ in range(math.ceil(n / batch)):
            torch.mm(X, W1, out=z1)  # (m,784) @ (784,H) -> (m,H)
            torch.mm(a1, W2, out=z2)  # (m,H) @ (H,10) -> (m,10)
            torch.mm(dz2, W2.T, out=back)  # (m,10) @ (10,H) -> (m,H)
            torch.mm(a1.T, dz2, out=dW2)  # (H,m) @ (m,10) -> (H,10)
            torch.mm(X.T, dz1, out=dW1)  # (784,m) @ (m,H) -> (784,H)

    return epoch


def interleave(epochs: dict[str, Epoch], timed: int, device: torch.device, say: Callable) -> dict[str, list[float]]:
    """Round 0 warms every variant up and is dropped; each later round times one epoch of each.
    The order rotates per round, so no variant always runs right after the same neighbour."""
    names, times = list(epochs), {name: [] for name in epochs}
    for r in range(timed + 1):
        say(f"round {r}/{timed}" + (" (warm-up)" if r == 0 else ""))
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            record = epochs[name]()
            sync(device)
            if r:
                times[name].append(time.perf_counter() - start)
                if isinstance(record, EpochMetrics):  # the trainer: its batches alone too
                    times.setdefault(f"{name}_batches", []).append(record.batch_seconds)
    return times
