"""Seeing a run's results: the confusion matrix, the worst mistakes, the learning curves, and
`backprop-lab predict` on a user's own digit images.

    confusion.csv   counts, rows = true digit, columns = predicted digit, then per-class
                    precision, recall and accuracy (one-vs-rest: (TP + TN) / all test images)
    confusion.png   the same counts as a heatmap
    errors.png      the test digits misclassified with the highest probability, each titled
                    "true -> predicted (probability)"
    curves.png      train and test loss and accuracy per epoch, from metrics.csv

`write_reports` writes all four when a run completes (one forward pass over the test set plus
three small figures); `show --plot` redraws curves.png alone. Predictions go through
network.forward, so this module holds no network math of its own. torch is imported inside the
functions that need it, so `show --plot` stays as quick as the rest of `show`.

The terminal renderings (the rich confusion table, a test digit as text art) are in views.py.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .rundir import CONFUSION_CSV, CONFUSION_PNG, CURVES_PNG, ERRORS_PNG

if TYPE_CHECKING:
    from torch import Tensor

    from .data import MNIST
    from .network import Arch, Params

N_CLASSES = 10
DPI = 100
# inches; at DPI the PNGs are 600 x 500, 900 x 640 and 1000 x 400 pixels (the tests check these)
CONFUSION_SIZE, ERRORS_SIZE, CURVES_SIZE = (6.0, 5.0), (9.0, 6.4), (10.0, 4.0)
ERROR_GRID = (4, 6)  # rows, columns of errors.png: the 24 most confident mistakes


# --- the numbers -----------------------------------------------------------------------------


@dataclass
class Confusion:
    counts: list[list[int]]  # [true][predicted]
    precision: list[float]  # per class: correct / predicted as that class (nan if never predicted)
    recall: list[float]  # per class: correct / images of that class
    accuracy: list[float]  # per class, one-vs-rest: (TP + TN) / all images
    most_confused: list[tuple[int, int, int]]  # (true, predicted, count), largest off-diagonal cells first

    @property
    def total(self) -> int:
        return sum(map(sum, self.counts))

    @property
    def overall_accuracy(self) -> float:
        return sum(self.counts[i][i] for i in range(len(self.counts))) / self.total


def confusion(y_true: Tensor, y_pred: Tensor, n: int = N_CLASSES, top: int = 3) -> Confusion:
    """The confusion matrix of two label vectors and the statistics read from it."""
    import torch

    counts = torch.bincount(y_true.long().cpu() * n + y_pred.long().cpu(), minlength=n * n).reshape(n, n)
    return from_counts(counts.tolist(), top)


def from_counts(counts: list[list[int]], top: int = 3) -> Confusion:
    n = len(counts)
    total = sum(map(sum, counts))
    tp = [counts[i][i] for i in range(n)]
    predicted = [sum(counts[t][i] for t in range(n)) for i in range(n)]  # column sums
    actual = [sum(counts[i]) for i in range(n)]  # row sums
    nan = float("nan")
    off = sorted(((counts[t][p], t, p) for t in range(n) for p in range(n) if t != p), key=lambda c: -c[0])
    return Confusion(
        counts=counts,
        precision=[tp[i] / predicted[i] if predicted[i] else nan for i in range(n)],
        recall=[tp[i] / actual[i] if actual[i] else nan for i in range(n)],
        # TN = total - (row i) - (column i) + TP, so (TP + TN) / total:
        accuracy=[(total - actual[i] - predicted[i] + 2 * tp[i]) / total for i in range(n)],
        most_confused=[(t, p, c) for c, t, p in off[:top] if c > 0],
    )


def predict_probs(arch: Arch, params: Params, X: Tensor) -> Tensor:
    """Class probabilities (m, 10) for images X (m, n_inputs), as float CPU tensors: the softmax
    output, or for a sigmoid output layer its ten outputs scaled to sum to 1."""
    import torch

    from .network import forward

    W1 = params["W1"]
    with torch.no_grad():
        out = forward(arch, params, X.to(W1.device, W1.dtype), train=False).out.float().cpu()
    return out if arch.output == "softmax" else out / out.sum(dim=1, keepdim=True)


# --- the files -------------------------------------------------------------------------------


def write_reports(run_dir: Path, arch: Arch, params: Params, data: MNIST,
                  rows: Sequence[dict[str, float]], pngs: bool = True, predicted: Tensor | None = None) -> Confusion:
    """All four files of a completed run (`rows`: its metrics.csv, for the curves), or with
    pngs=False confusion.csv alone (a vectorised sweep's member: `show --plot` draws two of the
    PNGs from the files later); returns the confusion for the caller to report. `predicted`: the
    test set's predicted classes if the last test pass kept them (a member's), so that
    confusion.csv alone costs no forward pass."""
    probs = predict_probs(arch, params, data.X_test) if pngs or predicted is None else None  # (10000, 10)
    y_true = data.y_test.cpu()
    conf = confusion(y_true, predicted.cpu() if predicted is not None else probs.argmax(dim=1))
    write_confusion_csv(run_dir / CONFUSION_CSV, conf)
    if not pngs:
        return conf
    plot_confusion(run_dir / CONFUSION_PNG, conf)
    plot_errors(run_dir / ERRORS_PNG, data.X_test.cpu(), y_true, probs)
    plot_curves(run_dir / CURVES_PNG, rows, arch.loss)
    return conf


def write_confusion_csv(path: Path, conf: Confusion) -> None:
    n = len(conf.counts)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["true", *[f"pred_{p}" for p in range(n)], "precision", "recall", "accuracy"])
        for t in range(n):
            out.writerow([t, *conf.counts[t], *(f"{v:.6f}" for v in (conf.precision[t], conf.recall[t], conf.accuracy[t]))])


def _figure(size: tuple[float, float], layout: str | None = "constrained") -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg)

    return Figure(figsize=size, dpi=DPI, layout=layout)


def plot_confusion(path: Path, conf: Confusion) -> None:
    n = len(conf.counts)
    fig = _figure(CONFUSION_SIZE)
    ax = fig.subplots()
    # The diagonal dwarfs every mistake, so colour by log(1 + count) to make the mistakes visible.
    import math

    shade = [[math.log1p(c) for c in row] for row in conf.counts]
    image = ax.imshow(shade, cmap="Blues")
    peak = max(map(max, shade)) or 1.0
    for t in range(n):
        for p in range(n):
            ax.text(p, t, str(conf.counts[t][p]), ha="center", va="center", fontsize=7,
                    color="white" if shade[t][p] > 0.6 * peak else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title=f"confusion matrix, test accuracy {conf.overall_accuracy:.2%}")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.savefig(path, dpi=DPI)


def plot_errors(path: Path, X: Tensor, y_true: Tensor, probs: Tensor) -> None:
    """The misclassified images whose predicted class had the highest probability."""
    confidence, y_pred = probs.max(dim=1)
    wrong = (y_pred != y_true).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][: ERROR_GRID[0] * ERROR_GRID[1]]
    fig = _figure(ERRORS_SIZE, layout=None)  # a fixed grid: constrained layout of 24 axes costs a second
    axes = fig.subplots(*ERROR_GRID, gridspec_kw={"left": 0.02, "right": 0.98, "bottom": 0.02, "top": 0.88,
                                                  "hspace": 0.35, "wspace": 0.1}).flatten()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, worst.tolist()):
        side = int(X.shape[1] ** 0.5)  # 28, or 14 for a data.image_size=14 run
        ax.imshow((X[i] * 0.5 + 0.5).reshape(side, side).numpy(), cmap="gray_r", vmin=0, vmax=1)  # undo Normalize(0.5, 0.5)
        ax.set_title(f"{y_true[i]} -> {y_pred[i]} ({confidence[i]:.2f})", fontsize=9)
    fig.suptitle(f"most confident mistakes: {len(worst)} of {len(wrong)} misclassified test images")
    fig.savefig(path, dpi=DPI)


LOSS_TITLES = {"cross_entropy": "cross-entropy loss", "mse": "mean squared error loss"}


def plot_curves(path: Path, rows: Sequence[dict[str, float]], loss: str = "cross_entropy") -> None:
    fig = _figure(CURVES_SIZE)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    for split, style in (("train", "--"), ("test", "-")):
        loss_ax.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker=".", label=split)
        acc_ax.plot(epochs, [100 * r[f"{split}_acc"] for r in rows], style, marker=".", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title=LOSS_TITLES.get(loss, f"{loss} loss"))
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=DPI)


# --- predict: a user's image in MNIST form ---------------------------------------------------


