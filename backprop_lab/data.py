"""MNIST, offline first.

Reads the four IDX files (plain or gzipped) from the copy shipped inside the package or
from `data.root`, checks each file's uncompressed bytes against the canonical MD5, and
returns the whole dataset as tensors on the target device, normalised exactly as the
chapter does: (x/255 - 0.5) / 0.5. There is no per-sample pipeline: the trainer slices
these tensors directly. torchvision is imported only when files must be downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .backprop import one_hot

SHIPPED_ROOT = Path(__file__).parent / "datasets" / "mnist"

# The widely published MD5 of each uncompressed canonical file (as in torchvision's MNIST).
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


class DataError(RuntimeError):
    """Missing, corrupt or unreadable data; the message is one line meant for the user."""


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


def candidate_dirs(root: Path) -> list[Path]:
    """Where files may sit: the folder itself, or torchvision's `<root>/MNIST/raw` layout."""
    return [root, root / "MNIST" / "raw"]


def find_files(root: Path) -> dict[str, Path]:
    """name -> path of each file found (plain preferred over .gz); missing names left out."""
    found = {}
    for name in CANONICAL_MD5:
        for folder in candidate_dirs(root):
            for path in (folder / name, folder / f"{name}.gz"):
                if name not in found and path.is_file():
                    found[name] = path
    return found


def read_idx(path: Path, name: str) -> Tensor:
    """Read one IDX file, refusing it unless its content has the canonical MD5."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read MNIST file {path}: {e}; replace it with a good copy") from e
    digest = hashlib.md5(raw).hexdigest()
    if digest != CANONICAL_MD5[name]:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated: MD5 of its content is {digest}, "
            f"expected {CANONICAL_MD5[name]}; replace it with a good copy"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if raw[2] != IDX_UBYTE:  # cannot happen once the MD5 matched; kept as a guard for edits
        raise DataError(f"MNIST file {path} is not an unsigned-byte IDX file")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)


def download(root: Path) -> None:
    """Fetch the files into `<root>/MNIST/raw` with torchvision; one-line error when it fails."""
    try:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        TorchvisionMNIST(str(root), train=True, download=True)
        TorchvisionMNIST(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any failure of the download means the same to the user
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
            f"MNIST files are missing under {root} and downloading them failed ({reason}); "
            f"copy the four files there, or set data.root=null to use the copy shipped with backprop-lab"
        ) from e


def load_mnist(
    root: str | Path | None = None,
    train_subset: int | None = None,
    device: torch.device | str = "cpu",
    download_missing: bool = False,
    dtype: torch.dtype = torch.float32,
    image_size: int = 28,
) -> MNIST:
    """Load, verify and normalise MNIST; `train_subset` keeps the first N training images;
    `image_size=14` mean-pools each 2x2 block (after normalising: the mean is linear, so the same)."""
    folder = SHIPPED_ROOT if root is None else Path(root).expanduser()
    if root is not None and folder.exists() and not folder.is_dir():
        raise DataError(f"data.root={str(root)!r} is a file, not a folder holding the MNIST files")
    found = find_files(folder)
    if len(found) < len(CANONICAL_MD5) and download_missing and root is not None:
        download(folder)
        found = find_files(folder)
    missing = [name for name in CANONICAL_MD5 if name not in found]
    if missing:
        raise DataError(
            f"MNIST files not found in {folder} (nor in {folder / 'MNIST' / 'raw'}): missing "
            f"{', '.join(missing)} (.gz or plain); point data.root at a folder that holds them, "
            f"or set data.root=null to use the copy shipped with backprop-lab"
        )
    arrays = {name: read_idx(path, name) for name, path in found.items()}
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
