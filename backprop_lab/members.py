"""K same-shape runs trained as one model: a group of a vectorised sweep (hydra/launcher=vectorized).

Each member is the twin of its single run: it keeps its own `train.State` (initial weights drawn
from its seed, its own shuffle and dropout generators, so the same batch order and masks; its
starting loss). The group's parameters are the members' stacked along a leading dimension (the
member form of network.py's equations), and each State's parameters are views of its member, so
a member's checkpoint is the one its single run would write and `resume MEMBER_DIR` goes on alone.

Any model joins a group: members of one group share everything but what `VARIED` lists
(`group_key` is the rest of the config). Every batch, each member gathers its own rows
(K, m, n[0]); the step is the one its single run takes, for all members at once: the chapter's
network with plain SGD through backprop.fused_step, every other case through network.forward /
backward / update_running_stats and member_sgd_update (each member's own lr, momentum, Nesterov,
weight decay; each its own dropout rate and masks). Divergence is train.find_divergence, per
member at the batches a single run checks; a member that diverges leaves the group, reported
once as its Diverged, and the others go on. A member's `seconds` is its share of the group's
epoch (wall time / members training), so a group's members add up to its wall time.
"""

from __future__ import annotations

import json
import math
import time
from typing import Callable, Iterator, Sequence

import torch

from . import backprop as bp
from . import network
from .config import Config, dotted
from .data import MNIST
from .train import (DIVERGENCE_CHECK_EVERY, PROBE, Diverged, EpochMetrics, OnBatch, State, Stopped, arch_of,
                    find_divergence, planned_epochs, sgd_of, uses_fused_step)

# What members of one group may differ in; the rest of the config must be equal.
VARIED = ("optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay", "model.init", "model.init_scale",
          "model.dropout", "seed")


def group_key(cfg: Config) -> str:
    """Equal for configs whose runs can train as one group: all of the config but VARIED."""
    rest = cfg.to_dict()  # fresh nested dicts
    for key in VARIED:
        section, _, name = key.rpartition(".")
        (dotted(rest, section) if section else rest).pop(name)
    return json.dumps(rest, sort_keys=True, default=str)


def member_bytes(cfg: Config, n_train: int) -> int:
    """Memory one member adds to a group, roughly: its parameters four times (its own, the
    stacked copy, a velocity, a checkpoint's), its epoch's logits, order and targets, and the
    activations (with their dropout masks) of a batch and of a test or probe chunk."""
    sizes = arch_of(cfg).sizes
    weights = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    rows = max(cfg.data.batch_size, PROBE)
    per_epoch = n_train * (2 * sizes[-1] + 2)  # logits, targets, order (int64)
    return 4 * (4 * weights + per_epoch + cfg.data.batch_size * sizes[0] + 5 * rows * sum(sizes[1:]))


class Group:
    """Members (their configs and States) trained as one model; `epochs` yields, per epoch, each
    member's EpochMetrics or Diverged, by its index in `cfgs`."""

    def __init__(self, cfgs: Sequence[Config], data: MNIST, states: Sequence[State]):
        self.cfgs, self.data, self.states = list(cfgs), data, list(states)
        self.arch = arch_of(self.cfgs[0])  # the group's shapes and code paths (dropout is per member)
        self.live = list(range(len(self.cfgs)))  # members still training, in the stacked order
        self.params = network.stack([s.params for s in self.states])  # W (K,n_in,n_out), vectors (K,1,n)
        self.opt = network.MemberSGD.of([sgd_of(c) for c in self.cfgs], like=self.params["W1"])
        self.fused = all(uses_fused_step(c) for c in self.cfgs)  # as each single run would step
        # the momentum buffers, from a resumed member's checkpoint or zero (v = 0 * mu + g = g, as
        # network.sgd_direction's first step); only members with momentum see theirs in their State
        self.velocity = None if not any(c.optim.momentum for c in self.cfgs) else network.stack(
            [{k: s.velocity.get(k, torch.zeros_like(v)) for k, v in s.params.items() if network.is_trained(k)}
             for s in self.states])
        self.order = self.Y_epoch = self.Z = None  # this epoch's, per member: (K,n), (K,n,10), (K,n,10)
        self.predicted = None  # (K,n_test) each member's predicted classes in its last test pass
        self._bind()

    def _bind(self) -> None:
        """Each live member's State holds views of its slice of the stacked parameters; the
        step's helpers follow the members still training."""
        for pos, k in enumerate(self.live):
            self.states[k].params.update(network.member(self.params, pos))
            if self.velocity is not None and self.cfgs[k].optim.momentum:
                self.states[k].velocity.update(network.member(self.velocity, pos))
        self.masks = network.member_masks([self.cfgs[k].model.dropout for k in self.live],
                                          [self.states[k].dropout for k in self.live])
        p = self.params
        self.chapter = bp.Params(p["W1"], p["b1"], p["W2"], p["b2"]) if self.fused else None  # views
        self.views = None  # fused_step's, for the full batches of these parameters

    def _remove(self, gone: set[int]) -> None:
        """Members leave the group (diverged): the others' parameters and epoch tensors are kept."""
        keep = [pos for pos, k in enumerate(self.live) if k not in gone]
        index = torch.tensor(keep, device=self.params["W1"].device)
        def keep_rows(p: network.Params) -> network.Params:
            return {name: t.index_select(0, index) for name, t in p.items()}

        self.params = keep_rows(self.params)
        self.velocity = None if self.velocity is None else keep_rows(self.velocity)
        self.opt = self.opt.select(index)
        self.order, self.Y_epoch, self.Z, self.predicted = (
            None if t is None else t.index_select(0, index) for t in (self.order, self.Y_epoch, self.Z, self.predicted))
        self.live = [self.live[pos] for pos in keep]
        self._bind()

    def test_predictions(self, k: int) -> torch.Tensor | None:
        """Member k's predicted class for each test image, from its last epoch's test pass (its
        final parameters once training is over); None if it has left the group."""
        return self.predicted[self.live.index(k)] if k in self.live and self.predicted is not None else None

    def drop(self, k: int) -> None:
        """Member k stops training (e.g. its folder cannot be written); the others go on."""
        if k in self.live:
            self._remove({k})

    def step(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """One SGD step of every member on its own batch X (K,m,n[0]), Y (K,m,10); the logits (K,m,10)."""
        if self.chapter is not None:
            if self.views is None:
                self.views = bp.fused_views(self.chapter, X.shape[-2])
            return bp.fused_step(self.chapter, X, Y, self.opt.lr, views=self.views)
        cache = network.forward(self.arch, self.params, X, train=True, dropout=self.masks)
        grads = network.backward(self.arch, self.params, cache, Y)
        network.update_running_stats(self.arch, self.params, cache)
        network.member_sgd_update(self.opt, self.params, grads, self.velocity)
        return cache.z

    def epochs(self, on_batch: OnBatch | None = None, progress_every: int = 50, start_epoch: int = 1,
               should_stop: Callable[[], bool] | None = None) -> Iterator[dict[int, EpochMetrics | Diverged]]:
        """Train every member from start_epoch to the planned end (as train.train trains one run);
        `should_stop` is asked after every batch and stops all members (Stopped)."""
        cfg, data = self.cfgs[0], self.data
        n, batch = data.X_train.shape[0], cfg.data.batch_size
        n_batches = math.ceil(n / batch)
        total_steps = cfg.train.steps or cfg.train.epochs * n_batches
        for epoch in range(start_epoch, planned_epochs(cfg, n) + 1):
            if not self.live:
                return
            start = time.perf_counter()
            self.order = torch.stack([torch.randperm(n, generator=self.states[k].shuffle)
                                      for k in self.live]).to(data.X_train.device)  # (K,n): each member's own shuffle
            self.Y_epoch = data.Y_train[self.order]  # (K,n,10)
            self.Z = torch.empty_like(self.Y_epoch)  # (K,n,10) each batch's logits as trained
            steps = min(n_batches, total_steps - (epoch - 1) * n_batches)
            found = self._train_batches(epoch, steps, on_batch, progress_every, should_stop)
            found.update(self._metrics(epoch, steps, start))
            yield found

    def _train_batches(self, epoch: int, steps: int, on_batch: OnBatch | None, progress_every: int,
                       should_stop: Callable[[], bool] | None) -> dict[int, Diverged]:
        cfg, X_all = self.cfgs[0], self.data.X_train
        n, batch = X_all.shape[0], cfg.data.batch_size
        arch = self.arch
        # members with one seed (and init) shuffle alike: a sweep over lr, momentum, ... at one seed.
        # Their batch gathered once saved 7-11 % of a 16-member step (2-core CPU, benchmarked)
        shared = bool((self.order == self.order[:1]).all())
        checked, reported, reported_loss, diverged = 0, 0, 0.0, {}
        for i in range(steps):
            rows = slice(i * batch, min(n, (i + 1) * batch))
            rows_of = self.order[:, rows]  # (K,m): each member's own batch
            if shared:  # one batch for all: gathered once, seen by each member without a copy
                X = X_all.index_select(0, rows_of[0]).expand(len(self.live), -1, -1)  # (K,m,784)
            else:  # one index_select of the K*m rows: about 3x faster than X_all[rows_of] (benchmarked)
                X = X_all.index_select(0, rows_of.reshape(-1)).view(*rows_of.shape, -1)  # (K,m,784)
            self.Z[:, rows] = self.step(X, self.Y_epoch[:, rows])
            seen = rows.stop
            if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 or i + 1 == steps:
                starts = [self.states[k].start_loss for k in self.live]
                found = find_divergence(arch, cfg.train.max_loss_ratio, starts, self.Z, self.Y_epoch, checked,
                                        seen, epoch, batch)
                for k, start, e in zip(self.live, starts, found):
                    self.states[k].start_loss = start
                    if e is not None:
                        diverged[k] = e
                if any(e is not None for e in found):
                    self._remove(set(diverged))
                checked = seen
                if not self.live:
                    return diverged
            if on_batch is not None and ((i + 1) % progress_every == 0 or i + 1 == steps):
                new = slice(reported, seen)  # the members' mean running loss
                reported_loss += network.loss_of(arch, self.Z[:, new], self.Y_epoch[:, new]).mean().item() * (seen - reported)
                reported = seen
                on_batch(i + 1, steps, reported_loss / seen)
            if should_stop is not None and should_stop():
                raise Stopped(epoch, i + 1)
        return diverged

    def _metrics(self, epoch: int, steps: int, start: float) -> dict[int, EpochMetrics | Diverged]:
        """Each live member's record of the epoch, as train.epoch_metrics makes a run's."""
        if not self.live:
            return {}
        cfg, data, arch = self.cfgs[0], self.data, self.arch
        trained = min(data.X_train.shape[0], steps * cfg.data.batch_size)
        batch_seconds = time.perf_counter() - start
        Z, Y = self.Z[:, :trained], self.Y_epoch[:, :trained]
        y = data.y_train[self.order[:, :trained]]  # (K,trained) labels
        train_loss = network.loss_of(arch, Z, Y)  # (K,)
        train_correct = (Z.argmax(dim=-1) == y).sum(dim=-1)  # (K,)
        self.predicted = torch.empty(len(self.live), data.X_test.shape[0], dtype=torch.int64, device=Z.device)
        test_loss_sum, test_correct = network.evaluate(arch, self.params, data.X_test, data.Y_test,
                                                       predicted=self.predicted)  # (K,) each
        n_test = data.X_test.shape[0]
        values = torch.stack([train_loss, train_correct.to(train_loss.dtype), test_loss_sum / n_test,
                              test_correct.to(train_loss.dtype)]).tolist()
        X_probe, Y_probe = data.X_train[:PROBE], data.Y_train[:PROBE]
        out: dict[int, EpochMetrics | Diverged] = {}
        layers = {k: tuple(network.layer_stats(arch, sgd_of(self.cfgs[k]), self.states[k].params,
                                               self.states[k].velocity, X_probe, Y_probe)) for k in self.live}
        share = (time.perf_counter() - start) / len(self.live)  # each member's part of the epoch's time
        for pos, k in enumerate(self.live):
            loss, correct, test_loss, test_right = (v[pos] for v in values)
            if not math.isfinite(test_loss):  # finite logits but weights gone to inf
                out[k] = Diverged(epoch, steps)
                continue
            out[k] = EpochMetrics(epoch=epoch, train_loss=loss, train_acc=correct / trained, test_loss=test_loss,
                                  test_acc=test_right / n_test, seconds=share, samples_per_s=trained / share,
                                  batch_seconds=batch_seconds / len(self.live), layers=layers[k])
        gone = {k for k, m in out.items() if isinstance(m, Diverged)}
        if gone:
            self._remove(gone)
        return out


def describe(cfgs: Sequence[Config]) -> str:
    """A group as its plan line names it, e.g. '3 x 784-128-10, varying optim.lr, seed' or
    '2 x 784-64-32-10 tanh batch norm, varying model.dropout'."""
    arch = arch_of(cfgs[0])
    traits = [arch.activation] * (arch.activation != "relu") + ["batch norm"] * arch.batch_norm
    traits += [arch.loss] * (arch.loss != "cross_entropy")
    configs = [c.to_dict() for c in cfgs]
    varying = [key for key in VARIED if len({str(dotted(c, key)) for c in configs}) > 1]
    if arch.dropout > 0 and "model.dropout" not in varying:
        traits.append(f"dropout {arch.dropout:g}")
    model = " ".join(["-".join(map(str, arch.sizes)), *traits])
    return f"{len(cfgs)} x {model}" + (f", varying {', '.join(varying)}" if varying else "")
