"""The shipped MNIST: checksums, the published facts, and refusal of bad copies."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from backprop_lab import data as D

from .conftest import SHARED_MNIST


@pytest.fixture(scope="module")
def full():
    return D.load_mnist()


def test_shipped_checksums_are_the_canonical_ones():
    listed = dict(reversed(line.split()) for line in
                  (D.SHIPPED_ROOT / "MD5SUMS.uncompressed").read_text().splitlines() if line.strip())
    assert listed == D.CANONICAL_MD5
    shared = SHARED_MNIST / "MD5SUMS.uncompressed"
    if shared.exists():  # the project's copy and the canonical list agree
        assert dict(reversed(l.split()) for l in shared.read_text().splitlines() if l.strip()) == listed


def test_published_facts(full):
    assert full.X_train.shape == (60000, 784) and full.X_test.shape == (10000, 784)
    assert torch.bincount(full.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(full.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert full.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    pixels = (full.X_train.double() * 0.5 + 0.5) * 255  # undo the chapter's normalisation
    assert abs(pixels.mean().item() - 33.318) < 0.001
    assert abs(pixels.std().item() - 78.567) < 0.001


def test_normalisation_is_the_chapters(full):
    raw = D.read_idx(D.SHIPPED_ROOT / "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
    expected = (raw[:100].reshape(100, -1).float() / 255 - 0.5) / 0.5
    assert torch.equal(full.X_train[:100], expected)
    assert full.X_train.min().item() == -1.0 and full.X_train.max().item() == 1.0
    assert torch.equal(full.Y_train.argmax(dim=1), full.y_train)


def test_subset_takes_the_first_n(full):
    small = D.load_mnist(train_subset=500)
    assert torch.equal(small.X_train, full.X_train[:500]) and small.X_test.shape[0] == 10000


def copy_shipped(dest: Path, plain: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in D.CANONICAL_MD5:
        src = D.SHIPPED_ROOT / f"{name}.gz"
        if plain:
            (dest / name).write_bytes(gzip.decompress(src.read_bytes()))
        else:
            shutil.copy(src, dest / src.name)


def test_user_copy_in_torchvision_layout_uncompressed(tmp_path, full):
    copy_shipped(tmp_path / "MNIST" / "raw", plain=True)
    mine = D.load_mnist(tmp_path, train_subset=1000)
    assert mine.source == tmp_path and torch.equal(mine.X_train, full.X_train[:1000])


def test_truncated_file_is_refused_naming_file_and_checksum(tmp_path):
    copy_shipped(tmp_path, plain=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-10])
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    assert str(labels) in msg and D.CANONICAL_MD5["t10k-labels-idx1-ubyte"] in msg and "\n" not in msg


def test_corrupt_gzip_is_refused_naming_the_file(tmp_path):
    copy_shipped(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[5000:5100] = bytes(100)
    bad.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match=str(bad)):
        D.load_mnist(tmp_path)


def test_flipped_byte_is_refused(tmp_path):
    copy_shipped(tmp_path, plain=True)
    f = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match="corrupt or truncated"):
        D.load_mnist(tmp_path)


def test_prefetched_files_load_the_same_and_are_taken_once(tmp_path, full, monkeypatch):
    import threading

    from backprop_lab import mnist_files as M

    copy_shipped(tmp_path)
    reads, real = [], M.read_now
    monkeypatch.setattr(M, "read_now", lambda path, name: reads.append(threading.current_thread().name) or real(path, name))
    M.prefetch(tmp_path)
    M.prefetch(tmp_path)  # pending already (the vectorised launcher's, then its first member's): not read twice
    early = D.load_mnist(tmp_path, keep_files=True)  # a sweep's job
    assert reads == ["mnist-prefetch"] * 4
    assert torch.equal(early.X_train, full.X_train) and torch.equal(early.y_test, full.y_test)
    again = D.load_mnist(tmp_path, train_subset=10)  # the sweep's next job: the verified bytes were kept
    assert len(reads) == 4 and torch.equal(again.X_train, full.X_train[:10])
    M.prefetch(tmp_path)  # nothing left to read
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes())  # the same bytes, but written since: read and checked again
    D.load_mnist(tmp_path)
    assert reads[4:] == [threading.current_thread().name]


def test_a_single_run_keeps_no_bytes(tmp_path, monkeypatch):
    from backprop_lab import mnist_files as M

    copy_shipped(tmp_path)
    reads, real = [], M.read_now
    monkeypatch.setattr(M, "read_now", lambda path, name: reads.append(name) or real(path, name))
    D.load_mnist(tmp_path)
    D.load_mnist(tmp_path)
    assert len(reads) == 8 and not any(path.parent == tmp_path for path in M._verified)


def test_a_file_damaged_after_a_good_load_is_refused_by_the_next(tmp_path):
    copy_shipped(tmp_path, plain=True)
    D.load_mnist(tmp_path, keep_files=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 1  # the same size, one label changed
    labels.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match="corrupt or truncated"):
        D.load_mnist(tmp_path)


def test_a_corrupt_file_found_by_the_prefetch_is_refused_by_the_load(tmp_path):
    from backprop_lab import mnist_files as M

    copy_shipped(tmp_path, plain=True)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    M.prefetch(tmp_path)
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path)
    assert str(labels) in str(info.value) and "corrupt or truncated" in str(info.value)


def test_prefetch_of_a_missing_folder_changes_nothing(tmp_path):
    from backprop_lab import mnist_files as M

    M.prefetch(tmp_path / "nowhere")
    with pytest.raises(D.DataError, match="MNIST files not found"):
        D.load_mnist(tmp_path / "nowhere")


def test_missing_files_without_download(tmp_path):
    with pytest.raises(D.DataError, match="MNIST files not found in .*missing train-images-idx3-ubyte"):
        D.load_mnist(tmp_path, download_missing=False)


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried all mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    copy_shipped(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()  # one file short
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path, download_missing=True)
    msg = str(info.value)
    assert "downloading them failed" in msg and "Tried all mirrors" in msg and "\n" not in msg
    assert f"missing under {tmp_path} (t10k-images-idx3-ubyte) and" in msg  # the file, not the first it would fetch


@pytest.mark.parametrize("case", ["not gzip", "truncated gzip"])
def test_unreadable_gzip_names_the_file_and_its_expected_md5(tmp_path, case):
    copy_shipped(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"garbage, not gzip\n" if case == "not gzip" else bad.read_bytes()[:-100])
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    assert str(bad) in msg and D.CANONICAL_MD5["t10k-labels-idx1-ubyte"] in msg and "\n" not in msg


def offline(monkeypatch, leave_partial_file: bool = False) -> None:
    """torchvision's real MNIST download (it makes <root>/MNIST/raw), with every mirror unreachable."""
    from urllib.error import URLError

    import torchvision.datasets.mnist

    def unreachable(url, download_root, **kwargs):
        if leave_partial_file:  # the connection dropped mid-file
            (Path(download_root) / "partial.gz").write_bytes(b"\x1f\x8b")
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", unreachable)


def test_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(D.DataError, match="downloading them failed"):
        D.load_mnist(tmp_path / "typo" / "data", download_missing=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_the_users_folder_and_every_file(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    offline(monkeypatch)
    with pytest.raises(D.DataError):
        D.load_mnist(mine, download_missing=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    offline(monkeypatch, leave_partial_file=True)  # a file in a folder it made: the file and folder stay
    with pytest.raises(D.DataError):
        D.load_mnist(mine, download_missing=True)
    assert (mine / "MNIST" / "raw" / "partial.gz").is_file() and (mine / "notes.txt").is_file()


def test_a_folder_that_cannot_be_read_is_one_clear_line(tmp_path, monkeypatch):
    """chmod does not stop root (CI may run as root), so the refusal the kernel would give a
    user is raised by the probe itself: Path.is_file passes on only "not found" errors."""
    copy_shipped(tmp_path)
    real_is_file = Path.is_file

    def denied(path):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(D.DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    assert "Permission denied" in msg and str(tmp_path) in msg and "data.root" in msg and "\n" not in msg
