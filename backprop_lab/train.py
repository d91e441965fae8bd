"""The epoch loop: shuffle, slice minibatches, forward, backward, step, evaluate.

`train` is a generator of `EpochMetrics`, one per epoch; it prints nothing and writes
nothing (the reporter renders records, the run writer stores them). Train loss and
accuracy are over the epoch's minibatches as they were trained (each batch's logits before
its update), as the chapter's loop reports them, so they cost no second pass over the
data; test metrics come from a full pass over the test set after each epoch. The logits
stay on the device and are read in chunks (divergence checks, progress) and once per
epoch, so a GPU is not made to wait on the host at every batch.

The chapter's network with plain SGD trains through backprop.fused_step (unless
train.fused=false); every other model (network.py: any depth, activation, batch norm,
dropout, momentum, L2) through network.forward / backward / sgd_update. After each epoch,
`layer_stats` measures every layer's gradient norm, update-to-weight ratio and (ReLU) dead
units on a fixed probe batch (the first 1,000 training images), a few milliseconds.

It stops early for two reasons only, both as exceptions that name the epoch and batch:
`Diverged` and `Stopped` (the caller asked, e.g. Ctrl-C). A run diverges by one of two rules,
both checked every 100 batches and at the epoch's end, in the one read from the device that
the check makes anyway:
- `not_finite`: a logit became NaN or infinite (or the test loss did);
- `loss_ratio`: the mean training loss of the batches since the last check rose above
  train.max_loss_ratio times the run's starting loss (its first batch's, before any update).
  A loss that explodes can come back down to a finite value at chance (lr=10 on MNIST: 962,
  then 2.4), so "finite" alone would call such a run completed.
After `Stopped` the parameters are as the last full batch left them. `Diverged` is found at
the next check, so by then the parameters may hold NaN; the caller's checkpoint of the last
completed epoch is what remains good.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from . import config, network
from .backprop import Params as ChapterParams
from .backprop import fused_step, fused_views
from .config import Config, ConfigError
from .data import MNIST

# Progress callback: (batches done, batches in the epoch, running mean train loss).
OnBatch = Callable[[int, int, float], None]
PROBE = 1000  # training images in the fixed batch that layer_stats measures each epoch


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float  # fraction in [0, 1]
    test_loss: float
    test_acc: float  # fraction in [0, 1]
    seconds: float  # wall time of the epoch, training and test evaluation
    samples_per_s: float  # training samples / seconds
    # The part of `seconds` spent on the batches, before the metrics: what the benchmark times.
    batch_seconds: float = field(default=0.0, compare=False)
    layers: tuple[dict[str, float], ...] = field(default=(), compare=False)  # network.layer_stats, per layer

    def as_dict(self) -> dict[str, float]:
        """The metrics.csv row: everything but batch_seconds and the per-layer statistics."""
        row = asdict(self)
        del row["layers"], row["batch_seconds"]
        return row


class Diverged(ArithmeticError):
    """`rule` is "not_finite" or "loss_ratio"; for the latter, `loss` is the mean training loss
    that fired it and `limit` the threshold it passed (max_loss_ratio x the starting loss)."""

    def __init__(self, epoch: int, batch: int, rule: str = "not_finite",
                 loss: float | None = None, limit: float | None = None):
        if rule == "loss_ratio":
            why = f"the training loss rose to {loss:.3g}, above train.max_loss_ratio's limit {limit:.3g}"
        else:
            why = "the loss is no longer finite"
        super().__init__(f"training diverged at epoch {epoch}, batch {batch}: {why}")
        self.epoch, self.batch, self.rule, self.loss, self.limit = epoch, batch, rule, loss, limit

    def record(self) -> dict[str, Any]:
        """summary.json's `diverged_at`."""
        return {"epoch": self.epoch, "batch": self.batch, "rule": self.rule, "loss": self.loss, "limit": self.limit}


class Stopped(Exception):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"stopped at epoch {epoch}, batch {batch}")
        self.epoch, self.batch = epoch, batch


DIVERGENCE_CHECK_EVERY = 100  # batches; each check costs a few kernels and a read from the device
DEAD_ALERT = 0.98  # a relu layer with at least this fraction of dead units (126 of 128) gets a warning


def resolve_device(name: str, option: str = "device=", instead: str = "device=cpu or device=auto") -> torch.device:
    """The torch device `name` names, or ConfigError naming it as the user gave it (`option`,
    the config key or bench's --device) and what to give `instead`."""
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
            raise ConfigError(f"{option}{name} is not available: this machine has {have}; use {instead}")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{option}mps is not available on this machine; use {instead}")
    return torch.device(name)


def arch_of(cfg: Config) -> network.Arch:
    n_inputs = cfg.data.image_size ** 2
    return network.Arch(
        sizes=(n_inputs, *cfg.model.hidden, 10),
        activation=cfg.model.activation,
        output=cfg.model.output,
        loss=cfg.loss,
        batch_norm=cfg.model.batch_norm,
        dropout=cfg.model.dropout,
    )


def sgd_of(cfg: Config) -> network.SGD:
    o = cfg.optim
    return network.SGD(lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)


def n_parameters(cfg: Config) -> int:
    """Weights and biases of cfg's model (batch norm's few per-unit vectors are left out)."""
    sizes = arch_of(cfg).sizes
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))


def memory_parts(cfg: Config) -> tuple[int, int]:
    """Bytes training takes beyond the data, roughly, in two parts: the parameters with a gradient
    (and a momentum buffer) of each, and a few activations of every layer for the largest block
    of rows (the 1,000-image gradient probe and test chunks)."""
    sizes = arch_of(cfg).sizes
    weights = n_parameters(cfg)
    copies = 3 if cfg.optim.momentum else 2
    rows = max(cfg.data.batch_size, PROBE)
    return 4 * copies * weights, 4 * 4 * rows * sum(sizes[1:])  # float32


def memory_available() -> int | None:
    """What the kernel says can be allocated without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def check_fits(cfg: Config, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model that cannot train in this machine's memory:
    the kernel would kill the process part way, with no message and a run left `running`."""
    available = memory_available() if device.type == "cpu" else None  # a GPU says so itself, as an error
    weights, activations = memory_parts(cfg)
    need = weights + activations
    if available is not None and need > available:
        sizes = "-".join(str(n) for n in arch_of(cfg).sizes)
        # the activations grow with the batch only above the probe's rows
        by_batch = cfg.data.batch_size > PROBE and activations > weights
        smaller = "data.batch_size" if by_batch else "model.hidden_size/model.hidden_sizes"
        raise ConfigError(f"the {sizes} model does not fit in the memory of cpu (training it takes about "
                          f"{need / 1e9:,.1f} GB; {available / 1e9:,.1f} GB are available); choose smaller {smaller}")


def out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: a MemoryError, or torch's RuntimeError saying it could not allocate."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "alloc" in str(e).lower())


def does_not_fit(cfg: Config, where: str, why: str) -> str:
    """The one line for a model too large for `where` (a run's device, gradcheck's float64 copy)."""
    sizes = "-".join(str(n) for n in arch_of(cfg).sizes)
    return f"the {sizes} model does not fit in {where} ({why}); choose smaller model.hidden_size/model.hidden_sizes"


def planned_epochs(cfg: Config, n_train: int) -> int:
    """train.epochs, or with train.steps the epochs those minibatches span (the last may be partial)."""
    return config.planned_epochs(cfg.train.epochs, cfg.train.steps, n_train, cfg.data.batch_size)


@dataclass
class State:
    """Everything training changes: parameters (with batch norm's running statistics),
    momentum buffers, and the generators of the shuffle (CPU) and of dropout masks (the
    data's device). A checkpoint of it makes a resumed run identical to an unbroken one."""

    params: network.Params
    velocity: network.Params
    shuffle: torch.Generator
    dropout: torch.Generator
    start_loss: float | None = None  # the first batch's loss before any update: loss_ratio's base

    def state_dict(self) -> dict[str, Any]:
        # a copy, not a view: a member of a vectorised group holds views of the group's tensors
        cpu = lambda d: {k: v.detach().to("cpu", copy=True) for k, v in d.items()}  # noqa: E731
        return {"params": cpu(self.params), "velocity": cpu(self.velocity), "start_loss": self.start_loss,
                "generator": self.shuffle.get_state(), "dropout_generator": self.dropout.get_state()}

    def load(self, saved: dict[str, Any]) -> None:
        for name, value in saved["params"].items():
            self.params[name].copy_(value)
        device = next(iter(self.params.values())).device
        self.velocity.update({k: v.to(device) for k, v in saved.get("velocity", {}).items()})
        self.shuffle.set_state(saved["generator"])
        if "dropout_generator" in saved:  # absent in checkpoints of runs from before dropout existed
            self.dropout.set_state(saved["dropout_generator"])
        # absent before the loss_ratio rule: the resumed part's first batch becomes the base
        self.start_loss = saved.get("start_loss")


def make_state(cfg: Config, device: torch.device) -> State:
    """A fresh, seeded start: the seed draws the initial weights, then each epoch's shuffle."""
    shuffle = torch.Generator().manual_seed(cfg.seed)
    params = network.init_params(arch_of(cfg), cfg.model.init, cfg.model.init_scale, shuffle, device=device)
    dropout = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return State(params=params, velocity={}, shuffle=shuffle, dropout=dropout)


def uses_fused_step(cfg: Config) -> bool:
    o = cfg.optim
    return cfg.train.fused and arch_of(cfg).is_chapter and o.momentum == 0 and o.weight_decay == 0


def find_divergence(arch: network.Arch, ratio: float | None, starts: list[float | None], Z: torch.Tensor,
                    Y: torch.Tensor, checked: int, seen: int, epoch: int, batch: int) -> list[Diverged | None]:
    """The divergence rules for K members at once: rows [checked, seen) of each member's logits
    Z (K, n, 10), targets Y (K, n, 10). Per member, Diverged if a row holds a NaN or inf or if
    their mean loss passes `ratio` (train.max_loss_ratio) x its starting loss, else None. A
    member's first check sets its entry of `starts` from its first batch. One read from the device."""
    rows = slice(checked, seen)
    finite = torch.isfinite(Z[:, rows]).all(dim=-1)  # (K,rows)
    measures = [finite.all(dim=-1).to(Z.dtype), network.loss_of(arch, Z[:, rows], Y[:, rows])]  # (K,) each
    first = slice(0, min(batch, seen))  # a run's first batch, trained from the initial weights
    if None in starts:
        measures.append(network.loss_of(arch, Z[:, first], Y[:, first]))
    all_finite, loss, *start = torch.stack(measures).tolist()
    found: list[Diverged | None] = []
    for k, ok in enumerate(all_finite):
        if not ok:
            first_bad_row = checked + int(finite[k].logical_not().nonzero()[0])
            found.append(Diverged(epoch, first_bad_row // batch + 1))
            continue
        if starts[k] is None:
            starts[k] = start[0][k]
        limit = None if ratio is None else ratio * starts[k]
        fired = limit is not None and loss[k] > limit
        found.append(Diverged(epoch, math.ceil(seen / batch), "loss_ratio", loss[k], limit) if fired else None)
    return found


def check_divergence(arch: network.Arch, ratio: float | None, state: State, Z: torch.Tensor, Y: torch.Tensor,
                     checked: int, seen: int, epoch: int, batch: int) -> None:
    """find_divergence for one run (Z: its (n, 10) logits): raise its Diverged."""
    starts = [state.start_loss]
    found = find_divergence(arch, ratio, starts, Z.unsqueeze(0), Y.unsqueeze(0), checked, seen, epoch, batch)[0]
    state.start_loss = starts[0]
    if found is not None:
        raise found


def note_dead_layers(summary: dict[str, Any], epoch: int, layers: Sequence[dict[str, float]]) -> None:
    """Keep summary's `dead_layers` ({layer: the epoch since which it has been dead, i.e. at least
    DEAD_ALERT of its units}; a layer that revives leaves it) and `warnings` (e.g. 'layer 1: 100 %
    of units dead from epoch 1') up to date with this epoch's grads rows. A dead network still
    trains its last layer, so the run completes: it is flagged, not stopped."""
    since = summary.get("dead_layers") or {}
    dead = {str(s["layer"]): s["dead_fraction"] for s in layers if s.get("dead_fraction", math.nan) >= DEAD_ALERT}
    since = {layer: since.get(layer, epoch) for layer in dead}
    summary["dead_layers"] = since
    summary["warnings"] = [f"layer {layer}: {round(100 * dead[layer])} % of units dead from epoch {first}"
                           for layer, first in since.items()]


def train(
    cfg: Config,
    data: MNIST,
    state: State,
    on_batch: OnBatch | None = None,
    progress_every: int = 50,
    start_epoch: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[EpochMetrics]:
    """Train `state` in place from epoch start_epoch to the planned end, yielding each epoch's metrics.

    `on_batch` is called every `progress_every` batches and `should_stop` after every batch.
    """
    X_all, Y_all = data.X_train, data.Y_train
    n = X_all.shape[0]
    batch = cfg.data.batch_size
    n_batches = math.ceil(n / batch)
    total_steps = cfg.train.steps or cfg.train.epochs * n_batches
    arch, opt, params = arch_of(cfg), sgd_of(cfg), state.params
    chapter = ChapterParams(params["W1"], params["b1"], params["W2"], params["b2"]) if uses_fused_step(cfg) else None
    device = X_all.device
    # Each batch's logits, kept as trained, so the epoch's train loss and accuracy are
    # computed in one vectorised pass instead of a handful of tiny ops per batch.
    Z = torch.empty(n, Y_all.shape[1], dtype=X_all.dtype, device=device)  # (n,10)
    # The training set in each epoch's order, gathered in one pass per epoch into this buffer:
    # cheaper than a gather per batch (benchmarked), for one more copy of the set in memory.
    X_epoch = torch.empty_like(X_all)  # (n,784)
    views = fused_views(chapter, batch) if chapter is not None else None  # made once, for every full batch
    masks = network.dropout_masks(arch.dropout, state.dropout)

    for epoch in range(start_epoch, planned_epochs(cfg, n) + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=state.shuffle).to(device)  # reshuffled every epoch
        torch.index_select(X_all, 0, order, out=X_epoch)  # (n,784)
        Y_epoch = Y_all.index_select(0, order)  # (n,10)
        steps = min(n_batches, total_steps - (epoch - 1) * n_batches)  # fewer in a train.steps run's last epoch
        trained = min(n, steps * batch)  # rows of this epoch's order that are trained
        checked = 0  # rows of Z already checked for NaN/inf
        reported, reported_loss = 0, 0.0  # rows already in the progress bar's running loss
        # Each batch's inputs, targets and logit rows as views made in one call each: cheaper
        # than slicing three tensors per batch.
        batches = zip(X_epoch.split(batch), Y_epoch.split(batch), Z.split(batch))
        for i, (X, Y, Z_rows) in enumerate(itertools.islice(batches, steps)):  # (m,784), (m,10), (m,10)
            if chapter is not None:
                fused_step(chapter, X, Y, opt.lr, z2_out=Z_rows, views=views)
            else:
                cache = network.forward(arch, params, X, train=True, dropout=masks)
                grads = network.backward(arch, params, cache, Y)
                network.update_running_stats(arch, params, cache)
                network.sgd_update(opt, params, grads, state.velocity)
                Z_rows.copy_(cache.z)
            seen = min(n, (i + 1) * batch)
            if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 or i + 1 == steps:  # finds the first bad row all the same
                check_divergence(arch, cfg.train.max_loss_ratio, state, Z, Y_epoch, checked, seen, epoch, batch)
                checked = seen
            if on_batch is not None and ((i + 1) % progress_every == 0 or i + 1 == steps):
                new = slice(reported, seen)
                reported_loss += network.loss_of(arch, Z[new], Y_epoch[new]).item() * (seen - reported)
                reported = seen
                on_batch(i + 1, steps, reported_loss / seen)
            if should_stop is not None and should_stop():
                raise Stopped(epoch, i + 1)

        batch_seconds = time.perf_counter() - start  # accurate on a GPU too: the last check read from it
        y_trained = data.y_train.index_select(0, order[:trained])  # (trained,) labels: cheaper than Y's argmax
        yield epoch_metrics(cfg, data, state, epoch, steps, Z[:trained], Y_epoch[:trained], y_trained,
                            start, batch_seconds)


def epoch_metrics(cfg: Config, data: MNIST, state: State, epoch: int, steps: int, Z: torch.Tensor,
                  Y: torch.Tensor, y: torch.Tensor, start: float, batch_seconds: float) -> EpochMetrics:
    """The epoch's record: train loss and accuracy from the logits Z (trained, 10) of its batches
    as they were trained (targets Y, labels y), a test pass, and the probe's layer statistics."""
    arch, params = arch_of(cfg), state.params
    trained = Z.shape[0]
    train_loss = network.loss_of(arch, Z, Y).item()
    train_acc = (Z.argmax(dim=1) == y).sum().item() / trained
    test_loss_sum, test_correct = network.evaluate(arch, params, data.X_test, data.Y_test)
    n_test = data.X_test.shape[0]
    test_loss = test_loss_sum.item() / n_test
    if not math.isfinite(test_loss):  # finite logits but weights gone to inf
        raise Diverged(epoch, steps)
    X_probe, Y_probe = data.X_train[:PROBE], data.Y_train[:PROBE]
    layers = tuple(network.layer_stats(arch, sgd_of(cfg), params, state.velocity, X_probe, Y_probe))
    seconds = time.perf_counter() - start
    return EpochMetrics(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                        test_acc=test_correct.item() / n_test, seconds=seconds, samples_per_s=trained / seconds,
                        batch_seconds=batch_seconds, layers=layers)
