"""`backprop-lab predict RUN_DIR IMAGE ...`: classify the user's own digit images (or test images)
with a trained run's weights, after turning each image into MNIST's form."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .analysis import predict_probs
from .backprop import Params
from .config import Config
from .errors import EXIT_BAD_INPUT, LabError
from .network import Arch


class PredictError(LabError, ValueError):
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


def load_network(run_dir: Path) -> tuple[Arch, Params, Config]:
    """The saved weights of a completed run and the config it was trained with."""
    import torch

    from .config import ConfigError, from_container, with_defaults
    from .network import init_params
    from .report import plural
    from .rundir import SUMMARY, WEIGHTS, RunDirError, load_weights, read_summary
    from .runs import find_run_dirs
    from .train import arch_of

    if not run_dir.is_dir():
        raise PredictError(f"{run_dir} is not a directory")
    if not (run_dir / WEIGHTS).is_file():
        inside = [] if (run_dir / SUMMARY).exists() else find_run_dirs(run_dir)
        if inside:  # a sweep's folder, or outputs/
            example = next((d for d in inside if (d / WEIGHTS).is_file()), inside[0])  # a completed one
            raise PredictError(f"{run_dir} is not a run directory (no {SUMMARY}); it holds "
                               f"{plural(len(inside), 'run')}: give one of them, e.g. {example}")
        raise PredictError(f"{run_dir} has no {WEIGHTS}: it is not a completed run (weights are saved when a run completes)")
    try:
        params = load_weights(run_dir)
    except RunDirError as e:
        raise PredictError(str(e)) from None
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

    from .errors import SubcommandParser, error_line
    from .report import OutputConsole

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
        arch, params, cfg = load_network(args.run_dir)
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
        return EXIT_BAD_INPUT
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
