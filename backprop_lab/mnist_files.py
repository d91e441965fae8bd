"""The four MNIST files as verified bytes: found, read, un-gzipped and checked against the
canonical MD5, with the standard library only.

Kept free of torch so the CLI can start reading the files before it imports torch:
`prefetch` runs the reads on a background thread, and since inflating and hashing run
outside Python's GIL, they overlap the seconds `import torch` takes. `read_verified`
hands over a prefetched result (once) or reads the file itself.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from pathlib import Path

from .errors import LabError

SHIPPED_ROOT = Path(__file__).parent / "datasets" / "mnist"

# The widely published MD5 of each uncompressed canonical file (as in torchvision's MNIST).
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


class DataError(LabError, RuntimeError):
    """Missing, corrupt or unreadable data; the message is one line meant for the user."""


def folder_of(root: str | Path | None) -> Path:
    """data.root as a folder: None means the copy shipped inside the package."""
    return SHIPPED_ROOT if root is None else Path(root).expanduser()


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


def read_now(path: Path, name: str) -> bytes:
    """The file's uncompressed content, refused unless its MD5 is the canonical one."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read MNIST file {path}: {' '.join(str(e).split()) or type(e).__name__}; replace it "
            f"with a good copy, whose uncompressed content has MD5 {CANONICAL_MD5[name]}"
        ) from e
    digest = hashlib.md5(raw).hexdigest()
    if digest != CANONICAL_MD5[name]:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated: MD5 of its content is {digest}, "
            f"expected {CANONICAL_MD5[name]}; replace it with a good copy"
        )
    if raw[2] != IDX_UBYTE:  # cannot happen once the MD5 matched; kept as a guard for edits
        raise DataError(f"MNIST file {path} is not an unsigned-byte IDX file")
    return raw


# path -> (the reading thread, its results: path -> bytes or the exception raised)
_prefetched: dict[Path, tuple[threading.Thread, dict[Path, bytes | Exception]]] = {}


def prefetch(root: str | Path | None) -> None:
    """Start reading the files under data.root on a background thread, unless a read of them is
    pending already. Whatever it finds wrong is raised later, by the read_verified call that picks
    the file up."""
    try:
        found = find_files(folder_of(root))
    except OSError:  # an unreadable folder: load_mnist meets it again and says so
        return
    if all(path in _prefetched for path in found.values()):
        return
    results: dict[Path, bytes | Exception] = {}

    def work() -> None:
        for name, path in found.items():
            try:
                results[path] = read_now(path, name)
            except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
                results[path] = e

    thread = threading.Thread(target=work, name="mnist-prefetch", daemon=True)
    for path in found.values():
        _prefetched[path] = (thread, results)
    thread.start()


def read_verified(path: Path, name: str) -> bytes:
    """read_now's result, taken from a prefetch of this path if one is pending."""
    pending = _prefetched.pop(path, None)
    if pending is None:
        return read_now(path, name)
    thread, results = pending
    thread.join()
    got = results.get(path)
    if got is None:  # the thread died before this file: read it here
        return read_now(path, name)
    if isinstance(got, Exception):
        raise got
    return got
