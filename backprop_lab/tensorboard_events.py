"""TensorBoard as a view of a run's own files: per-epoch scalars and the run's hyperparameters.

backprop-lab's files (metrics.csv, grads.csv, summary.json) stay the source of truth; the
events written here are a copy of them that TensorBoard reads, in two ways:
- live, with `log.tensorboard=true`: the runner hands each epoch to an `EventWriter` in the run
  directory, so `tensorboard --logdir outputs` follows running runs and sweeps;
- afterwards, `backprop-lab compare PATH ... --tensorboard DIR` writes one subfolder per run.

Tags (step = epoch): loss/train, loss/test, accuracy/train, accuracy/test (fractions),
time/epoch_seconds, time/samples_per_s; per layer N: grad_norm/layerN, update_ratio/layerN,
weight_norm/layerN and dead_fraction/layerN (ReLU layers only). The HParams tab gets every config
key with the run's status, and takes its metrics from the accuracy and loss scalars.

TensorBoard (the `tensorboard` package, which torch.utils.tensorboard needs) is an optional extra:
without it, `require` says in one line what to install.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError

INSTALL = "pip install 'backprop-lab[tensorboard]' (or pip install tensorboard)"
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's file names: the only files an export replaces

# metrics.csv column -> TensorBoard tag
EPOCH_TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "seconds": "time/epoch_seconds",
    "samples_per_s": "time/samples_per_s",
}
LAYER_STATS = ("grad_norm", "update_ratio", "weight_norm", "dead_fraction")  # grads.csv columns
HPARAM_METRICS = ("accuracy/test", "loss/test", "accuracy/train", "loss/train")


class TensorBoardMissing(ConfigError):
    """The tensorboard package is not installed; the message is one line for the user."""


def require() -> Any:
    """torch's SummaryWriter class, or TensorBoardMissing naming what to install."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it, and says so less clearly
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(f"TensorBoard is not installed; install it with: {INSTALL}") from None
    return SummaryWriter


def hparam_value(v: Any) -> Any:
    """TensorBoard's hparams take numbers, strings and booleans: null and lists become text."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return "null" if v is None else str(list(v) if isinstance(v, tuple) else v)


class EventWriter:
    """The events of one run, in `log_dir`."""

    def __init__(self, log_dir: Path):
        self.writer = require()(log_dir=str(log_dir))

    def epoch(self, row: dict[str, float], layers: Sequence[dict[str, float]] = ()) -> None:
        step = int(row["epoch"])
        for column, tag in EPOCH_TAGS.items():
            if column in row and math.isfinite(row[column]):
                self.writer.add_scalar(tag, row[column], step)
        for stats in layers:
            for name in LAYER_STATS:
                value = stats.get(name, math.nan)
                if math.isfinite(value):
                    self.writer.add_scalar(f"{name}/layer{int(stats['layer'])}", value, step)
        self.writer.flush()  # a live view: each epoch is on disk as it ends

    def hparams(self, config: dict[str, Any], status: str | None = None) -> None:
        """The run's hyperparameters (flat config keys) and, for a saved run, its status for the
        HParams tab; its metrics are the last values of the HPARAM_METRICS scalars."""
        from torch.utils.tensorboard.summary import hparams

        values = {key: hparam_value(v) for key, v in config.items()}
        if status is not None:  # a live run's would stay "running" in its events
            values["status"] = status
        for summary in hparams(values, {tag: math.nan for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def replace_events(log_dir: Path) -> None:
    """Remove the TensorBoard event files (only those) of an earlier export into `log_dir`, so
    that exporting the same run again replaces its events instead of doubling them."""
    for old in log_dir.glob(EVENTS_GLOB):
        old.unlink()


def export_run(log_dir: Path, config: dict[str, Any], status: str,
               metrics: Sequence[dict[str, float]], layers: Sequence[dict[str, float]]) -> None:
    """Write one saved run's events into `log_dir` (made if needed), replacing an earlier export."""
    log_dir.mkdir(parents=True, exist_ok=True)
    replace_events(log_dir)
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for stats in layers:
        by_epoch.setdefault(int(stats["epoch"]), []).append(stats)
    writer = EventWriter(log_dir)
    try:
        writer.hparams(config, status)
        for row in metrics:
            writer.epoch(row, by_epoch.get(int(row["epoch"]), []))
    finally:
        writer.close()
