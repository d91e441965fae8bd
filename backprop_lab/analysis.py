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
# Fixed margins (fractions of the figure), not matplotlib's constrained layout, which took half of
# a figure's drawing time (0.30 -> 0.17 s for confusion.png, 2-core CPU) to find about the same ones.
CONFUSION_MARGINS = {"left": 0.09, "right": 0.98, "bottom": 0.1, "top": 0.93}
CURVES_MARGINS = {"left": 0.09, "right": 0.98, "bottom": 0.13, "top": 0.91, "wspace": 0.3}  # room for 0.00010


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


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg)

    return Figure(figsize=size, dpi=DPI)


def plot_confusion(path: Path, conf: Confusion) -> None:
    n = len(conf.counts)
    fig = _figure(CONFUSION_SIZE)
    ax = fig.subplots(gridspec_kw=CONFUSION_MARGINS)
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


def most_confident_mistakes(y_true: Tensor, probs: Tensor, n: int) -> tuple[list[int], int]:
    """The indices of the n misclassified images whose predicted class had the highest
    probability, most confident first; and how many images were misclassified."""
    confidence, y_pred = probs.max(dim=1)
    wrong = (y_pred != y_true).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:n].tolist(), len(wrong)


def tile(images: Any, columns: int, pad: int, band: int, rows: int = 1) -> tuple[Any, list[tuple[float, float]]]:
    """Images (k, side, side) side by side, row by row, `columns` to a row, in at least `rows` rows:
    one array with NaN (drawn as background) around each image and in a band above it; and the
    point at the middle of each image's top edge, where its title goes."""
    import numpy as np

    k, side = images.shape[0], images.shape[1]
    cell_w, cell_h = side + 2 * pad, band + side + pad
    rows = max(rows, -(-k // columns))
    grid = np.full((rows * cell_h, columns * cell_w), np.nan, dtype=np.float32)
    anchors = []
    for n in range(k):
        top, left = (n // columns) * cell_h + band, (n % columns) * cell_w + pad
        grid[top: top + side, left: left + side] = images[n]
        anchors.append((left + (side - 1) / 2, top - 1))
    return grid, anchors


def plot_errors(path: Path, X: Tensor, y_true: Tensor, probs: Tensor) -> None:
    """The most confident mistakes in a grid, each titled "true -> predicted (probability)". The
    grid is one image on one axes, the titles text on it: 24 axes of their own took four times as
    long to draw (0.55 s against 0.13 s, 2-core CPU)."""
    worst, n_wrong = most_confident_mistakes(y_true, probs, ERROR_GRID[0] * ERROR_GRID[1])
    side = int(X.shape[1] ** 0.5)  # 28, or 14 for a data.image_size=14 run
    digits = (X[worst] * 0.5 + 0.5).reshape(-1, side, side).numpy()  # undo Normalize(0.5, 0.5)
    # the grid's full size even for a few mistakes, so that digits keep their size and place
    grid, anchors = tile(digits, ERROR_GRID[1], pad=max(1, side // 7), band=side // 3, rows=ERROR_GRID[0])
    fig = _figure(ERRORS_SIZE)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.86))
    ax.set_axis_off()
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    confidence, y_pred = probs.max(dim=1)
    for i, (x, y) in zip(worst, anchors):
        ax.text(x, y, f"{y_true[i]} -> {y_pred[i]} ({confidence[i]:.2f})", ha="center", va="bottom", fontsize=9)
    fig.suptitle(f"most confident mistakes: {len(worst)} of {n_wrong} misclassified test images")
    fig.savefig(path, dpi=DPI)


LOSS_TITLES = {"cross_entropy": "cross-entropy loss", "mse": "mean squared error loss"}


def plot_curves(path: Path, rows: Sequence[dict[str, float]], loss: str = "cross_entropy") -> None:
    fig = _figure(CURVES_SIZE)
    loss_ax, acc_ax = fig.subplots(1, 2, gridspec_kw=CURVES_MARGINS)
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


