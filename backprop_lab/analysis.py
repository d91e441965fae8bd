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
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from .config import Config
    from .data import MNIST
    from .network import Arch, Params

N_CLASSES = 10
CONFUSION_CSV, CONFUSION_PNG, ERRORS_PNG, CURVES_PNG = "confusion.csv", "confusion.png", "errors.png", "curves.png"
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


def write_reports(run_dir: Path, arch: Arch, params: Params, data: MNIST) -> Confusion:
    """All four files of a completed run; returns the confusion for the caller to report."""
    probs = predict_probs(arch, params, data.X_test)  # (10000, 10): one forward pass
    y_true = data.y_test.cpu()
    conf = confusion(y_true, probs.argmax(dim=1))
    write_confusion_csv(run_dir / CONFUSION_CSV, conf)
    plot_confusion(run_dir / CONFUSION_PNG, conf)
    plot_errors(run_dir / ERRORS_PNG, data.X_test.cpu(), y_true, probs)
    from .rundir import read_metrics

    plot_curves(run_dir / CURVES_PNG, read_metrics(run_dir), arch.loss)
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


class PredictError(ValueError):
    """An image, run directory or option that cannot be used; one line for the user."""


def load_image(path: Path) -> np.ndarray:
    """A PNG/JPEG file as a (H, W) uint8 array, transparent pixels shown on white. Images over
    Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, ~89 million pixels) are refused
    from their header, before anything is decoded: no digit photo comes near it."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise PredictError(f"{path}: no such file")
    if not path.is_file():
        raise PredictError(f"{path} is not a file")
    try:
        with warnings.catch_warnings():  # Pillow warns over its limit and raises over twice it: both refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            img.load()  # decode now, so a truncated file fails here
            if img.mode in ("RGBA", "LA", "P", "PA"):
                img = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
            import numpy as np

            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))  # Pillow names the count, not the width and height
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise PredictError(f"{path} is too large to be a digit image ({pixels}; Pillow reads at most "
                           f"{Image.MAX_IMAGE_PIXELS:,}); scale it down, e.g. to 280x280, and try again") from None
    except UnidentifiedImageError:
        raise PredictError(f"{path} is not an image Pillow can read (expected PNG or JPEG)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise PredictError(f"cannot decode {path}: {' '.join(str(e).split())[:150]}") from None


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A grayscale image of any size -> (784,) float32 in [-1, 1], prepared as MNIST's digits were:
    white ink on black, the digit's bounding box scaled to fit 20x20 (aspect kept), placed in
    28x28 with its centre of mass at the centre."""
    import numpy as np
    from PIL import Image

    def border(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])

    img = gray.astype(np.float32)
    if border(img).mean() > 127:  # dark ink on a light background: MNIST is the other way round
        img = 255 - img
    img = (img - np.median(border(img))).clip(0, 255)  # the background (paper grey, JPEG noise) to 0
    if img.max() <= 0:
        raise PredictError("the image is blank: no digit found")
    rows, cols = np.nonzero(img > 0.2 * img.max())  # ignore faint noise when finding the box
    box = img[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = box.shape
    scale = 20 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    digit = np.asarray(Image.fromarray(box * (255 / box.max())).resize(size, Image.LANCZOS)).clip(0, 255)
    h, w = digit.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mass = digit.sum()
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass
    top = int(np.clip(round(14 - cy), 0, 28 - h))
    left = int(np.clip(round(14 - cx), 0, 28 - w))
    out = np.zeros((28, 28), dtype=np.float32)
    out[top: top + h, left: left + w] = digit
    return ((out / 255 - 0.5) / 0.5).reshape(-1)  # the chapter's ToTensor + Normalize(0.5, 0.5)


def load_run(run_dir: Path) -> tuple[Arch, Params, Config]:
    """The saved weights of a completed run and the config it was trained with."""
    import torch

    from .config import ConfigError, from_container, with_defaults
    from .network import init_params
    from .rundir import WEIGHTS, read_summary
    from .train import arch_of

    if not run_dir.is_dir():
        raise PredictError(f"{run_dir} is not a directory")
    if not (run_dir / WEIGHTS).is_file():
        raise PredictError(f"{run_dir} has no {WEIGHTS}: it is not a completed run (weights are saved when a run completes)")
    try:
        with warnings.catch_warnings():  # torch warns in several lines about what it then refuses anyway
            warnings.simplefilter("ignore")
            params = torch.load(run_dir / WEIGHTS, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable weights file means the same to the user
        why = " ".join(str(e).split())[:150] or type(e).__name__
        raise PredictError(f"cannot read {run_dir / WEIGHTS}: {why}; it is not a weights file of a completed "
                           f"run") from None
    try:  # keys added to backprop-lab after the run take their defaults, as the run had them
        saved = read_summary(run_dir).get("config") or {}
        if not isinstance(saved, dict):
            raise ValueError("its config is not a mapping")
        cfg = from_container(with_defaults(saved))
    except (OSError, ValueError, ConfigError) as e:
        raise PredictError(f"cannot read the config of {run_dir} from its summary.json: {e}") from None
    arch = arch_of(cfg)
    # every tensor the forward pass reads (biases, batch norm's statistics too), at its shape
    expected = {k: tuple(v.shape) for k, v in init_params(arch, cfg.model.init, 1.0, torch.Generator()).items()}
    found = {k: tuple(v.shape) for k, v in params.items() if isinstance(v, torch.Tensor)} if isinstance(params, dict) else {}
    if found != expected:
        missing = sorted(expected.keys() - found.keys())
        detail = f"it lacks {', '.join(missing)}" if missing else "its tensors have other names or shapes"
        raise PredictError(f"{run_dir / WEIGHTS} does not match the run's config ({arch.describe()}): {detail}")
    return arch, params, cfg


def predict_main(argv: list[str]) -> int:
    import numpy as np
    import torch
    from rich.table import Table

    from .report import OutputConsole, SubcommandParser, error_line

    parser = SubcommandParser(
        prog="backprop-lab predict",
        description="Classify digit images (PNG/JPEG, any size, dark-on-light or light-on-dark) with a saved run.",
        epilog="Example: backprop-lab predict outputs/2026-11-30/02-46-00 my_seven.png",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("images", nargs="*", default=[], type=Path, metavar="IMAGE")  # default: not named as missing
    parser.add_argument("--from-test", metavar="N", type=int, action="append", default=[],
                        help="also classify MNIST test image N (0-9999) and draw it; repeatable")
    # intermixed: IMAGE files may come before or after --from-test N, as a user would type them
    args = parser.parse_intermixed_args(argv)
    if not args.images and not args.from_test:
        parser.error("give IMAGE files or --from-test N")
    try:
        arch, params, cfg = load_run(args.run_dir)
        names, parts = [str(p) for p in args.images], []
        if args.images:
            mine = torch.from_numpy(np.stack([to_mnist_file(p) for p in args.images]))
            if cfg.data.image_size == 14:
                from .data import pool2x2

                mine = pool2x2(mine)
            parts.append(mine)
        if args.from_test:
            from .data import DataError, load_mnist

            try:
                data = load_mnist(cfg.data.root, train_subset=1, image_size=cfg.data.image_size)
            except DataError as e:
                raise PredictError(str(e)) from None
            n = len(data.y_test)
            for i in args.from_test:
                if not 0 <= i < n:
                    raise PredictError(f"--from-test {i} is out of range: the test set has images 0-{n - 1}")
            names += [f"test image {i} (true label {data.y_test[i].item()})" for i in args.from_test]
            parts.append(data.X_test[args.from_test])
    except PredictError as e:
        error_line(str(e))
        return 2
    X = torch.cat(parts)  # (images + test images, n_inputs)
    probs = predict_probs(arch, params, X)
    top_p, top_c = probs.topk(3, dim=1)
    table = Table(title=f"predictions of {args.run_dir}", title_justify="left")
    table.add_column("image")
    for rank in ("1st", "2nd", "3rd"):
        table.add_column(rank, justify="right")
    for name, ps, cs in zip(names, top_p.tolist(), top_c.tolist()):
        table.add_row(name, *(f"[bold]{c}[/bold]  {p:6.1%}" if i == 0 else f"{c}  {p:6.1%}"
                              for i, (c, p) in enumerate(zip(cs, ps))))
    console = OutputConsole()
    if args.from_test:
        from .views import digit_art, digit_text

        for x in X[len(args.images):]:  # the test images: they come after the user's own
            console.print(digit_art(x) if console.color_system else digit_text(x), highlight=False)
    console.print(table)
    return 0


def to_mnist_file(path: Path) -> np.ndarray:
    try:
        return to_mnist(load_image(path))
    except PredictError as e:
        raise PredictError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
