"""MNIST, offline first.

Reads the four IDX files (plain or gzipped) from the copy shipped inside the package or
from `data.root`, checks each file's uncompressed bytes against the canonical MD5, and
returns the whole dataset as tensors on the target device, normalised exactly as the
chapter does: (x/255 - 0.5) / 0.5. There is no per-sample pipeline: the trainer slices
these tensors directly. torchvision is imported only when files must be downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .backprop import one_hot
from .mnist_files import CANONICAL_MD5, SHIPPED_ROOT, DataError, find_files, folder_of, read_verified

__all__ = ["CANONICAL_MD5", "SHIPPED_ROOT", "DataError", "MNIST", "load_mnist", "normalise", "pool2x2", "read_idx"]


@dataclass
class MNIST:
    X_train: Tensor  # (n, 784) float, in [-1, 1]
    Y_train: Tensor  # (n, 10) one-hot, same dtype as X
    y_train: Tensor  # (n,) int64 labels 0-9
    X_test: Tensor  # (10000, 784)
    Y_test: Tensor  # (10000, 10)
    y_test: Tensor  # (10000,)
    source: Path
    md5: dict[str, str]


def normalise(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (n, 28, 28) -> (n, 784) in [-1, 1], the chapter's ToTensor + Normalize(0.5, 0.5)."""
    x = images.reshape(images.shape[0], -1).to(dtype, copy=True)
    return x.div_(255).sub_(0.5).div_(0.5)  # in place: each new 188 MB tensor costs page faults


def pool2x2(X: Tensor) -> Tensor:
    """(n, 784) images -> (n, 196): each output pixel the mean of a 2x2 block, as the book's
    chapter-10 network sees MNIST at 14x14."""
    n = X.shape[0]
    blocks = X.reshape(n, 14, 2, 14, 2)  # (n, row, row-in-block, column, column-in-block)
    return blocks.mean(dim=(2, 4)).reshape(n, 196)


def read_idx(path: Path, name: str, keep: bool = False) -> Tensor:
    """One IDX file as a uint8 tensor of its dimensions, refused unless its content has the canonical
    MD5; `keep`: its verified bytes kept for the process's next load (mnist_files.read_verified)."""
    raw = read_verified(path, name, keep)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)


def download(root: Path, missing: list[str] | None = None) -> None:
    """Fetch the files into `<root>/MNIST/raw` with torchvision; one-line error when it fails.
    The folders torchvision creates for them are removed again if it fails, so a mistyped
    data.root leaves nothing behind."""
    created = missing_folders(root / "MNIST" / "raw")
    done = False
    try:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        TorchvisionMNIST(str(root), train=True, download=True)
        TorchvisionMNIST(str(root), train=False, download=True)
        done = True
    except Exception as e:  # noqa: BLE001 - any failure of the download means the same to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"MNIST files are missing under {root}{' (' + ', '.join(missing) + ')' if missing else ''} and "
            f"downloading them failed ({reason}); "
            f"copy the four files there, or set data.root=null to use the copy shipped with backprop-lab"
        ) from e
    finally:  # also on Ctrl-C
        if not done:
            for folder in created:  # deepest first
                try:
                    folder.rmdir()  # only ever an empty folder: a partly downloaded file stays, with its folder
                except OSError:
                    break


def missing_folders(path: Path) -> list[Path]:
    """path and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def load_mnist(
    root: str | Path | None = None,
    train_subset: int | None = None,
    device: torch.device | str = "cpu",
    download_missing: bool = False,
    dtype: torch.dtype = torch.float32,
    image_size: int = 28,
    keep_files: bool = False,
) -> MNIST:
    """Load, verify and normalise MNIST; `train_subset` keeps the first N training images;
    `image_size=14` mean-pools each 2x2 block (after normalising: the mean is linear, so the same);
    `keep_files`: the files' verified bytes are kept for the next load in this process (a sweep's)."""
    folder = folder_of(root)
    try:  # a folder the user cannot read raises here (Path.exists and is_file pass only "not found")
        if root is not None and folder.exists() and not folder.is_dir():
            raise DataError(f"data.root={str(root)!r} is a file, not a folder holding the MNIST files")
        found = find_files(folder)
    except OSError as e:
        raise DataError(f"cannot look for the MNIST files in {e.filename or folder}: {e.strerror or e}; make "
                        f"it readable, or point data.root at another folder (null: the copy shipped with "
                        f"backprop-lab)") from e
    if len(found) < len(CANONICAL_MD5) and download_missing and root is not None:
        download(folder, [name for name in CANONICAL_MD5 if name not in found])
        found = find_files(folder)
    missing = [name for name in CANONICAL_MD5 if name not in found]
    if missing:
        raise DataError(
            f"MNIST files not found in {folder} (nor in {folder / 'MNIST' / 'raw'}): missing "
            f"{', '.join(missing)} (.gz or plain); point data.root at a folder that holds them, "
            f"or set data.root=null to use the copy shipped with backprop-lab"
        )
    arrays = {name: read_idx(path, name, keep_files) for name, path in found.items()}
    # Move bytes, not floats, to the device: four times less to copy.
    train_images = arrays["train-images-idx3-ubyte"][:train_subset].to(device)
    y_train = arrays["train-labels-idx1-ubyte"][:train_subset].to(device).long()
    y_test = arrays["t10k-labels-idx1-ubyte"].to(device).long()
    X_train = normalise(train_images, dtype)
    X_test = normalise(arrays["t10k-images-idx3-ubyte"].to(device), dtype)
    if image_size == 14:
        X_train, X_test = pool2x2(X_train), pool2x2(X_test)
    return MNIST(
        X_train=X_train,
        Y_train=one_hot(y_train, dtype),
        y_train=y_train,
        X_test=X_test,
        Y_test=one_hot(y_test, dtype),
        y_test=y_test,
        source=folder,
        md5={name: CANONICAL_MD5[name] for name in found},
    )
