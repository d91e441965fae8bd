"""Confusion matrix, report PNGs, `show --plot` and `predict`: the numbers against hand-computed
ones, the files of a real (small) training run, and digit images written from the test set."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backprop_lab import analysis, predict
from backprop_lab.backprop import Params, forward

from .conftest import run_cli


def test_precision_recall_accuracy_by_hand():
    # 3 classes, 10 examples; rows true, columns predicted
    y_true = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    conf = analysis.confusion(y_true, y_pred, n=3)
    assert conf.counts == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert conf.precision == pytest.approx([3 / 4, 2 / 3, 2 / 3])  # column sums 4, 3, 3
    assert conf.recall == pytest.approx([3 / 4, 2 / 3, 2 / 3])  # row sums 4, 3, 3
    # class 0: TP 3, TN = the 4 examples neither true nor predicted 0 (rows/cols 1-2: 2+1+0+2 = 5)
    assert conf.accuracy == pytest.approx([8 / 10, 8 / 10, 8 / 10])
    assert conf.overall_accuracy == pytest.approx(7 / 10)
    assert [(t, p) for t, p, _ in conf.most_confused] == [(0, 1), (1, 2), (2, 0)]


def test_never_predicted_class_has_nan_precision():
    conf = analysis.confusion(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]), n=2)
    assert conf.precision[0] == pytest.approx(1 / 3) and math.isnan(conf.precision[1])
    assert conf.recall == [1.0, 0.0]
    assert conf.most_confused == [(1, 0, 2)]


# --- a real run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small completed run (5,000 images, 2 epochs: about 73 % test accuracy, a few seconds)."""
    tmp = tmp_path_factory.mktemp("analysis")
    proc = subprocess.run(
        [sys.executable, "-m", "backprop_lab", "data.train_subset=5000", "train.epochs=2", f"hydra.run.dir={tmp}/run"],
        cwd=tmp, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def mnist():
    from backprop_lab.data import load_mnist

    return load_mnist(train_subset=1)


def test_confusion_of_a_run_matches_its_accuracy(trained, mnist):
    params = Params(**torch.load(trained / "weights.pt", weights_only=True))
    correct = (forward(params, mnist.X_test).z2.argmax(dim=1) == mnist.y_test).sum().item()
    rows = (trained / "confusion.csv").read_text().splitlines()
    assert rows[0].startswith("true,pred_0,") and len(rows) == 11
    counts = [[int(v) for v in row.split(",")[1:11]] for row in rows[1:]]
    total = sum(map(sum, counts))
    assert total == len(mnist.y_test) == 10_000
    trace = sum(counts[i][i] for i in range(10))
    assert trace / total == correct / total
    import json

    assert trace / total == pytest.approx(json.loads((trained / "summary.json").read_text())["final_test_acc"], abs=1e-6)


def test_confusion_csv_from_given_predictions_needs_no_forward_pass(tmp_path, mnist, monkeypatch):
    """A vectorised member hands write_reports the predictions of its last test pass: confusion.csv
    alone is then written from them, with no forward pass (predict_probs is not called)."""
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass")

    monkeypatch.setattr(analysis, "predict_probs", no_forward)
    predicted = (mnist.y_test + (torch.arange(len(mnist.y_test)) % 4 == 0)) % 10  # every 4th image one class on
    conf = analysis.write_reports(tmp_path, None, {}, mnist, [], pngs=False, predicted=predicted)
    assert conf.overall_accuracy == pytest.approx(0.75)
    rows = [[int(v) for v in row.split(",")[1:11]] for row in (tmp_path / "confusion.csv").read_text().splitlines()[1:]]
    assert sum(rows[i][i] for i in range(10)) == 7_500 and sum(map(sum, rows)) == 10_000
    assert not list(tmp_path.glob("*.png"))


def test_pngs_exist_open_and_have_their_sizes(trained):
    from matplotlib.image import imread

    for name, (w, h) in [("confusion.png", analysis.CONFUSION_SIZE), ("errors.png", analysis.ERRORS_SIZE),
                         ("curves.png", analysis.CURVES_SIZE)]:
        image = imread(trained / name)
        assert image.shape[:2] == (round(h * analysis.DPI), round(w * analysis.DPI)), name
        assert image.std() > 0.01, f"{name} is blank"


def test_the_most_confident_mistakes_come_first():
    y_true = torch.tensor([0, 1, 2, 3, 4])
    probs = torch.tensor([[0.9, 0.1, 0, 0, 0],  # right
                          [0.6, 0.4, 0, 0, 0],  # wrong at 0.6
                          [0.0, 0.1, 0, 0.9, 0],  # wrong at 0.9
                          [0.0, 0.0, 0, 1.0, 0],  # right
                          [0.0, 0.8, 0, 0, 0.2]])  # wrong at 0.8
    assert analysis.most_confident_mistakes(y_true, probs, 2) == ([2, 4], 3)
    assert analysis.most_confident_mistakes(y_true, probs, 24) == ([2, 4, 1], 3)
    assert analysis.most_confident_mistakes(y_true[[0, 3]], probs[[0, 3]], 24) == ([], 0)


def test_tiled_images_sit_in_their_cells_row_by_row_each_with_its_title_above():
    side, pad, band, columns = 3, 1, 2, 2
    images = np.stack([np.full((side, side), v, dtype=np.float32) for v in (0.1, 0.2, 0.3)])
    images[1, 0, 0] = 0.9  # the top-left pixel marks where a cell's image starts
    grid, anchors = analysis.tile(images, columns, pad, band)
    cell_w, cell_h = side + 2 * pad, band + side + pad  # 5 x 6
    assert grid.shape == (2 * cell_h, columns * cell_w)
    for n, (top, left) in enumerate([(band, pad), (band, cell_w + pad), (cell_h + band, pad)]):
        assert (grid[top: top + side, left: left + side] == images[n]).all()
        assert anchors[n] == (left + 1.0, top - 1)  # the middle of its top edge, just above it
    assert grid[band, cell_w + pad] == np.float32(0.9)
    assert np.isnan(grid).sum() == grid.size - 3 * side * side  # the rest is background, the 4th cell too
    blank, none = analysis.tile(np.zeros((0, side, side), dtype=np.float32), columns, pad, band, rows=4)
    assert blank.shape == (4 * cell_h, columns * cell_w) and np.isnan(blank).all() and none == []
    assert analysis.tile(images, columns, pad, band, rows=1)[0].shape == grid.shape  # as many rows as it needs


def test_show_plot_redraws_curves(trained):
    (trained / "curves.png").unlink()
    proc = run_cli("show", str(trained), "--plot", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert (trained / "curves.png").stat().st_size > 1000


def test_show_plot_with_an_unreadable_confusion_csv_says_so_once_and_claims_no_confusion_png(trained, tmp_path,
                                                                                             capsys):
    from backprop_lab.compare import show_main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "confusion.csv").write_text("garbage\n")
    old_png = (run / "confusion.png").read_bytes()
    assert show_main([str(run), "--plot"]) == 0
    out, err = capsys.readouterr()
    assert err.count("confusion.csv lacks its header") == 1 and err.count("warning:") == 1, err
    assert f"learning curves: {run / 'curves.png'}" in out and "confusion matrix:" not in out
    assert (run / "confusion.png").read_bytes() == old_png  # the old picture, not one of the garbage


# --- predict ---------------------------------------------------------------------------------


def test_predict_digits_written_as_images(trained, mnist, tmp_path):
    from PIL import Image, ImageOps

    params = Params(**torch.load(trained / "weights.pt", weights_only=True))
    predicted = forward(params, mnist.X_test[:200]).z2.argmax(dim=1)
    # two confidently right images of different digits, chosen from the raw 28x28 tensors
    probs = forward(params, mnist.X_test[:200]).p.max(dim=1).values
    picks: dict[int, int] = {}
    for i in (probs * (predicted == mnist.y_test[:200])).argsort(descending=True).tolist():
        picks.setdefault(int(mnist.y_test[i]), i)
        if len(picks) == 2:
            break
    files, labels = [], []
    for digit, i in picks.items():
        pixels = ((mnist.X_test[i] * 0.5 + 0.5) * 255).round().to(torch.uint8).reshape(28, 28).numpy()
        image = Image.fromarray(pixels)
        image.save(tmp_path / f"{i}.png")
        ImageOps.invert(image).save(tmp_path / f"{i}_inverted.png")  # dark ink on white
        ImageOps.invert(image).resize((100, 100), Image.BILINEAR).save(tmp_path / f"{i}_100.png")
        files += [tmp_path / f"{i}.png", tmp_path / f"{i}_inverted.png", tmp_path / f"{i}_100.png"]
        labels += [digit] * 3
    X = torch.from_numpy(np.stack([predict.to_mnist(predict.load_image(f)) for f in files]))
    assert forward(params, X).z2.argmax(dim=1).tolist() == labels

    proc = run_cli("predict", str(trained), *map(str, files), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for f, digit in zip(files, labels):
        line = next(row for row in proc.stdout.splitlines() if f.name in row)
        assert line.split("│")[2].split()[0] == str(digit), line  # the 1st column


def test_predict_from_test(trained, tmp_path):
    proc = run_cli("predict", str(trained), "--from-test", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test image 0 (true label 7)" in proc.stdout
    # the digit itself, drawn in characters (the output is a pipe, not a colour terminal)
    from backprop_lab.data import load_mnist
    from backprop_lab.views import digit_text

    assert digit_text(load_mnist(train_subset=1).X_test[0]) in proc.stdout


@pytest.mark.parametrize("order", ["image first", "image last"])
def test_predict_images_and_test_images_together(trained, mnist, tmp_path, order, capsys, monkeypatch):
    from PIL import Image

    from backprop_lab.views import digit_text

    pixels = ((mnist.X_test[1] * 0.5 + 0.5) * 255).round().to(torch.uint8).reshape(28, 28).numpy()
    Image.fromarray(pixels).save(tmp_path / "mine.png")
    tests = ["--from-test", "0", "--from-test", "3"]
    monkeypatch.chdir(tmp_path)
    argv = [str(trained), "mine.png", *tests] if order == "image first" else [str(trained), *tests, "mine.png"]
    assert predict.predict_main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == [
        "mine.png", "test image 0 (true label 7)", "test image 3 (true label 0)"]
    assert digit_text(mnist.X_test[0]) in out and digit_text(mnist.X_test[3]) in out


@pytest.mark.parametrize("case", ["missing", "not an image", "truncated", "no weights", "out of range",
                                  "summary not a record", "empty weights.pt", "truncated weights.pt",
                                  "weights.pt lacks b2", "weights.pt of another size", "a folder of runs"])
def test_predict_bad_input_is_one_line(trained, tmp_path, case, capsys, monkeypatch):
    from PIL import Image

    Image.effect_noise((200, 200), 64).save(tmp_path / "noise.png")  # noise: a PNG too big to survive a cut
    (tmp_path / "truncated.png").write_bytes((tmp_path / "noise.png").read_bytes()[:2000])
    (tmp_path / "text.png").write_text("not a picture\n")
    damaged = tmp_path / "damaged"
    if case in ("summary not a record", "empty weights.pt"):
        shutil.copytree(trained, damaged)
        (damaged / ("summary.json" if case == "summary not a record" else "weights.pt")).write_text(
            "null\n" if case == "summary not a record" else "")
    if case == "a folder of runs":
        shutil.copytree(trained, tmp_path / "sweep" / "0")
    if case == "truncated weights.pt":
        shutil.copytree(trained, damaged)
        (damaged / "weights.pt").write_bytes((trained / "weights.pt").read_bytes()[:500])
    if case.startswith("weights.pt "):  # a whole file, but not of this run's network
        import torch

        shutil.copytree(trained, damaged)
        weights = torch.load(damaged / "weights.pt", weights_only=True)
        if case == "weights.pt lacks b2":
            del weights["b2"]
        else:
            weights["b1"] = torch.zeros(7)
        torch.save(weights, damaged / "weights.pt")
    args, expected = {
        "missing": ([str(trained), "nope.png"], "nope.png: no such file"),
        "not an image": ([str(trained), "text.png"], "is not an image"),
        "truncated": ([str(trained), "truncated.png"], "cannot decode truncated.png"),
        "no weights": ([str(tmp_path), "noise.png"], "has no weights.pt"),
        "out of range": ([str(trained), "--from-test", "10000"], "out of range"),
        "summary not a record": ([str(damaged), "noise.png"], "summary.json does not hold the run's record"),
        "empty weights.pt": ([str(damaged), "noise.png"],
                             "weights.pt: not a readable weights file (corrupt or truncated: the file is empty)"),
        "truncated weights.pt": ([str(damaged), "noise.png"],
                                 "weights.pt: not a readable weights file (corrupt or truncated: damaged torch archive"),
        "weights.pt lacks b2": ([str(damaged), "noise.png"], "does not match the run's config (784-128-10 relu, softmax + cross_entropy): it lacks b2"),
        "weights.pt of another size": ([str(damaged), "noise.png"], "have other names or shapes"),
        "a folder of runs": ([str(tmp_path / "sweep"), "noise.png"],
                             f"it holds 1 run: give one of them, e.g. {tmp_path / 'sweep' / '0'}"),
    }[case]
    monkeypatch.chdir(tmp_path)
    if case == "missing":  # once through the real command line: exit status, no traceback
        proc = run_cli("predict", *args, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:  # the rest in-process, to save a second of torch import each
        code, err = predict.predict_main(args), capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit black PNG of any size, compressed row by row: a 20000x20000 one takes ~60 kB
    and a fraction of a second, where Pillow would hold its 400 million pixels in memory to save it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pack, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    idat = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_predict_refuses_an_image_too_large_to_be_a_digit(trained, tmp_path):
    # 400 million pixels: over twice Pillow's limit, where Image.open raises DecompressionBombError
    write_blank_png(tmp_path / "big.png", 20000, 20000)
    proc = run_cli("predict", str(trained), "big.png", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: big.png is too large to be a digit image (400,000,000 pixels; "
                                  "Pillow reads at most 89,478,485); scale it down")


@pytest.mark.parametrize("side", [40, 100], ids=["over the limit (Pillow warns)", "over twice the limit (Pillow raises)"])
def test_predict_refuses_an_image_over_pillows_limit_before_decoding_it(trained, tmp_path, side, capsys, monkeypatch):
    from PIL import Image

    write_blank_png(tmp_path / "big.png", side, side)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own check, at a size quick to test
    assert predict.predict_main([str(trained), str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "Warning" not in err
    assert f"big.png is too large to be a digit image ({side * side:,} pixels; Pillow reads at most 1,000)" in err


def test_blank_image_is_refused(tmp_path):
    from PIL import Image

    Image.new("L", (50, 50), 255).save(tmp_path / "white.png")
    with pytest.raises(predict.PredictError, match="blank"):
        predict.to_mnist(predict.load_image(tmp_path / "white.png"))


def test_a_failing_plot_does_not_fail_the_run(tmp_path, monkeypatch):
    """The hook in cli.run: a broken matplotlib gives one warning, the run still completes."""
    sitecustom = tmp_path / "site"
    sitecustom.mkdir()
    (sitecustom / "matplotlib.py").write_text("raise ImportError('matplotlib broken for this test')\n")
    import os

    env = {"PYTHONPATH": f"{sitecustom}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli("data.train_subset=500", "train.epochs=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: could not write the analysis plots" in proc.stderr
    assert (tmp_path / "run" / "weights.pt").exists()
    assert '"status": "completed"' in (tmp_path / "run" / "summary.json").read_text()


def test_ctrl_c_twice_while_the_plots_are_drawn_keeps_the_completed_run(tmp_path):
    """Signals after the last epoch: the plots may be lost, never the weights or the summary."""
    sitecustom = tmp_path / "site"
    sitecustom.mkdir()
    # importing matplotlib (the first thing write_reports does) sends this process two SIGINTs
    (sitecustom / "matplotlib.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\nos.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(1)\n")
    import os

    env = {"PYTHONPATH": f"{sitecustom}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli("data.train_subset=500", "train.epochs=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env)
    assert proc.returncode == 130, proc.stderr  # stopped, as asked, though nothing of the run is missing
    assert "Traceback" not in proc.stderr
    assert "analysis plots skipped (SIGINT); the run is complete" in proc.stderr
    assert (tmp_path / "run" / "weights.pt").exists()
    assert '"status": "completed"' in (tmp_path / "run" / "summary.json").read_text()


@pytest.mark.parametrize("loss,title", [("mse", "mean squared error loss"), ("cross_entropy", "cross-entropy loss")])
def test_the_curves_name_the_runs_loss(tmp_path, monkeypatch, loss, title):
    from matplotlib.figure import Figure

    from backprop_lab.analysis import plot_curves

    titles = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: titles.append([ax.get_title() for ax in fig.axes]))
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "train_acc": 0.5, "test_acc": 0.5} for e in (1, 2)]
    plot_curves(tmp_path / "curves.png", rows, loss)
    assert titles == [[title, "accuracy"]]
