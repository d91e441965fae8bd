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


Stamp = tuple[int, int, int, int, int]  # what changes when a file is replaced or written to

# path -> (the reading thread, its results: path -> (the file's stamp, its content) or the exception raised)
_prefetched: dict[Path, tuple[threading.Thread, dict[Path, tuple[Stamp | None, bytes] | Exception]]] = {}
# path -> (its stamp when it was read, its verified content), for reads asked to `keep` it: the
# basic launcher runs a sweep's jobs one after another in one process, each loading the same four
# files, and reading, inflating and hashing them again took ~0.4 s a job. A file whose stamp has
# changed since is read and checked again. The content kept is the canonical files' (55 MB),
# whatever path it came from; a single run keeps nothing, as it loads the data once.
_verified: dict[Path, tuple[Stamp, bytes]] = {}


def stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns  # ctime: set by any write, not by users


def kept(path: Path) -> bytes | None:
    """The verified content read from path earlier in this process, if the file is unchanged since."""
    entry = _verified.get(path)
    return entry[1] if entry is not None and entry[0] == stamp(path) else None


def stamped_read(path: Path, name: str) -> tuple[Stamp | None, bytes]:
    """read_now's result, with the file's stamp from before the read."""
    before = stamp(path)
    return before, read_now(path, name)


def prefetch(root: str | Path | None) -> None:
    """Start reading the files under data.root on a background thread, but those kept from an earlier
    read and those whose read is pending already. Whatever it finds wrong is raised later, by the
    read_verified call that picks the file up."""
    try:
        found = find_files(folder_of(root))
    except OSError:  # an unreadable folder: load_mnist meets it again and says so
        return
    todo = {name: path for name, path in found.items() if path not in _prefetched and kept(path) is None}
    if not todo:
        return
    results: dict[Path, tuple[Stamp | None, bytes] | Exception] = {}

    def work() -> None:
        for name, path in todo.items():
            try:
                results[path] = stamped_read(path, name)
            except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
                results[path] = e

    thread = threading.Thread(target=work, name="mnist-prefetch", daemon=True)
    for path in todo.values():
        _prefetched[path] = (thread, results)
    thread.start()


def read_verified(path: Path, name: str, keep: bool = False) -> bytes:
    """read_now's result: kept from an earlier read of the unchanged file, taken from a prefetch of
    this path if one is pending, or read now; with `keep`, kept for the next load."""
    content = kept(path)
    if content is not None:
        return content
    before, content = _read_or_take(path, name)
    if keep and before is not None:
        _verified[path] = (before, content)
    return content


def _read_or_take(path: Path, name: str) -> tuple[Stamp | None, bytes]:
    pending = _prefetched.pop(path, None)
    if pending is None:
        return stamped_read(path, name)
    thread, results = pending
    thread.join()
    got = results.get(path)
    if got is None:  # the thread died before this file: read it here
        return stamped_read(path, name)
    if isinstance(got, Exception):
        raise got
    return got
