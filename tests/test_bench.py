"""`backprop-lab bench`: runs end to end on a tiny setting, and its autograd baseline is right.

No timing is asserted: these tests run on shared machines. They check that the benchmark
works and that baseline (b) trains the same network as the hand-written path.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import replace

import pytest
import torch
from rich.console import Console

from backprop_lab.backprop import Params, evaluate
from backprop_lab.bench import autograd_model, autograd_train_epoch, main
from backprop_lab.config import Config
from backprop_lab.bench import make_params
from backprop_lab.train import make_state, train

from .conftest import run_cli

QUICK = ["bench", "--quick", "--device", "cpu"]


def model_params(model: torch.nn.Sequential) -> Params:
    """The inverse of bench.autograd_model, so the hand-written `evaluate` can score a model."""
    with torch.no_grad():
        return Params(model[0].weight.T.clone(), model[0].bias.clone(), model[2].weight.T.clone(), model[2].bias.clone())


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = run_cli(*QUICK, "--json", str(tmp / "b.json"), "--no-scaling", "--no-startup", cwd=tmp)
    return proc, tmp / "b.json"


def test_quick_bench_prints_the_table_and_writes_the_figures(quick_bench):
    proc, json_path = quick_bench
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for name in ("(a) chapter", "(b) autograd", "(c) trainer", "(c) plain", "(d) limit", "targets"):
        assert name in proc.stdout
    figures = json.loads(json_path.read_text())
    assert figures["settings"]["train_size"] == 2048
    assert figures["machine"]["cpu"].endswith(", " + torch.backends.cpu.get_cpu_capability())
    seconds = figures["epoch_seconds"]
    assert set(seconds) == {"a_chapter", "b_autograd", "c_trainer", "c_trainer_epoch", "c_plain", "d_limit"}
    assert all(v > 0 for v in seconds.values())
    # (c) is the batches of the trainer's epochs; the metrics are the rest of the same epochs
    rounds = figures["epoch_seconds_all"]
    assert all(0 < b < e for b, e in zip(rounds["c_trainer_batches"], rounds["c_trainer"]))
    assert seconds["c_trainer"] == rounds["c_trainer_batches"][0]  # one timed epoch in --quick
    # with one round, the per-round ratio is the ratio itself
    assert figures["ratios_per_round"]["b_over_c"]["median"] == pytest.approx(figures["ratios"]["b_over_c"])
    assert figures["ratios_per_round"]["c_over_d"]["all"] == [pytest.approx(figures["ratios"]["c_over_d"])]
    assert {"c_over_a", "c_over_b", "c_over_d"} <= set(figures["ratios"])
    assert figures["compute"]["flops_per_epoch"] == 2 * 2048 * (2 * 784 * 128 + 3 * 128 * 10)
    assert figures["compute"]["gflops_at_training_shapes"] > 0
    assert figures["metrics_cost"]["seconds"] > 0
    assert {"a_over_c", "b_over_c", "c_over_d"} <= set(figures["targets"])
    assert all(t["met"] is None for t in figures["targets"].values())  # a smoke run judges nothing
    assert "targets (not judged: --quick times one epoch of 2,048 images" in proc.stdout
    assert figures["startup"] is None and figures["memory"] is None and figures["scaling"] is None


def test_plot_writes_a_png_of_the_scaling_table(tmp_path, capsys):
    from matplotlib.image import imread

    png = tmp_path / "scaling.png"
    assert main(["--quick", "--device", "cpu", "--json", "-", "--plot", str(png)]) == 0  # in-process: saves a start-up
    figures = json.loads(capsys.readouterr().out)  # with --json -, stdout carries nothing but the JSON
    assert [(r["hidden"], r["batch"]) for r in figures["scaling"]] == [
        (128, 64), (512, 64), (2048, 64), (128, 256), (128, 1024)
    ]
    assert all(r["seconds"] > 0 for r in figures["scaling"])
    assert imread(png).shape == (350, 900, 4)


def test_scaling_plot_labels_few_minor_ticks_over_a_wide_range():
    from backprop_lab.bench import minor_label

    class Axis:
        def __init__(self, low, high):
            self.limits = (low, high)

        def get_ylim(self):
            return self.limits

    wide = minor_label(Axis(0.4, 7))  # more than a decade: 0.5, 2 and 5, not 0.6-0.9, 3, 4
    assert [wide(y, 0) for y in (0.5, 0.6, 0.9, 2, 3, 4, 5)] == ["0.5", "", "", "2", "", "", "5"]
    narrow = minor_label(Axis(0.35, 0.47))  # a tenth of a decade: every tick is labelled
    assert [narrow(y, 0) for y in (0.36, 0.4, 0.44)] == ["0.36", "0.4", "0.44"]


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--device", "gpu"], ["--frobnicate"], ["--quick", "--no-scaling", "--plot", "x.png"]])
def test_bad_arguments_give_a_one_line_usage_error_without_a_traceback(capsys, args):
    with pytest.raises(SystemExit) as exit:
        main(args)  # in-process: argparse answers before anything is measured
    assert exit.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # no usage text before it
    assert line.startswith("error: ") and line.endswith("; see backprop-lab bench --help")


def test_help_describes_the_grid_itself(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert exit.value.code == 0 and "issue" not in out
    assert "a 16-job grid (4 learning rates x 2 init scales x 2 seeds, 3 epochs each)" in out


def test_grid_takes_16_or_64_jobs_on_bench_s_device(capsys):
    """`--grid` alone is the 16-job grid, judged by the CPU target; `--grid 64` the GPU target's 64
    jobs, judged by that one; both on --device."""
    from backprop_lab.bench import parse
    from backprop_lab.bench_sweep import grid_of, target

    assert parse(["--grid", "--rounds", "2"]).grid == 16 and parse(["--grid", "64"]).grid == 64
    assert parse([]).grid is None
    for jobs in (16, 64):
        grid = grid_of(jobs, "cuda")
        assert grid[-1] == "device=cuda" and "train.epochs=3" in grid
        swept = [len(o.split("=", 1)[1].split(",")) for o in grid]
        assert math.prod(swept) == jobs
    cpu, gpu = target(16, 20.0, 15.0, 14.0), target(64, 9.9, 1.0, 100.0)
    assert cpu == {"target": "vectorized wall <= basic training", "target_met": False}
    assert gpu == {"target": "vectorized >= 10x faster, the GPU target for 64 jobs", "target_met": False}
    assert target(64, 10.0, 20.0, 1.0)["target_met"] and target(16, 1.0, 14.0, 14.0)["target_met"]
    with pytest.raises(SystemExit) as exit:
        parse(["--grid", "32"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: argument --grid: expected 16 or 64 (jobs), got '32'; "
                                               "see backprop-lab bench --help")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_an_absent_device_is_refused_with_bench_s_own_option_as_the_hint(capsys, monkeypatch, device):
    import backprop_lab.bench as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "load_mnist", lambda *a, **k: pytest.fail("the benchmark started measuring"))
    assert main(["--quick", "--device", device, "--json", "-"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: --device {device} is not available: this machine has no CUDA device; "
                                 f"use --device cpu\n")  # bench takes no device=... and no auto


@pytest.mark.parametrize("case", ["json folder", "json under a file", "json folder missing", "plot format",
                                  "plot folder", "plot under a file", "json where writing fails"])
def test_an_output_that_cannot_be_written_is_refused_before_anything_is_measured(tmp_path, case, capsys, monkeypatch):
    import backprop_lab.bench as bench

    def measured(*args, **kwargs):
        raise AssertionError("the benchmark started measuring")

    monkeypatch.setattr(bench, "load_mnist", measured)  # its first step: the figures would be lost after it
    (tmp_path / "afile").write_text("")
    args, expected = {
        "json folder": (["--json", str(tmp_path)], f"--json {tmp_path} is a folder; give a file name"),
        "json under a file": (["--json", str(tmp_path / "afile" / "x.json")], "afile is a file, not a folder"),
        "json folder missing": (["--json", str(tmp_path / "nope" / "x.json")], "nope does not exist"),
        "plot format": (["--json", "-", "--plot", "p.xyz"], "--plot p.xyz: matplotlib cannot write .xyz files; use one of:"),
        "plot folder": (["--json", "-", "--plot", str(tmp_path)], f"--plot {tmp_path} is a folder; give a file name"),
        "plot under a file": (["--json", "-", "--plot", str(tmp_path / "afile" / "p.png")], "afile is a file, not a folder"),
        # /proc passes a permission check (and every one for root) but takes no new file
        "json where writing fails": (["--json", "/proc/x.json"], "--json /proc/x.json cannot be written"),
    }[case]
    assert main(["--quick", "--device", "cpu", *args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_figures_that_cannot_be_written_after_measuring_go_to_stdout(tmp_path, capsys):
    """The --json folder went while the benchmark ran: one line, and the figures are not lost."""
    import argparse

    from backprop_lab.bench import write_figures

    from backprop_lab.bench import plot_scaling

    gone = tmp_path / "gone"
    args = argparse.Namespace(json=str(gone / "bench.json"), plot=str(tmp_path / "scaling.png"))
    rows = [{"hidden": 128, "batch": 64, "seconds": 0.25, "train_size": 1000}]
    results = {"scaling": rows}
    assert write_figures(args, Console(file=io.StringIO()), results, plot_scaling, rows, "scaling") == 2
    out, err = capsys.readouterr()
    assert err == f"error: cannot write {gone / 'bench.json'}: no such file or directory; the figures follow on standard output\n"
    assert json.loads(out) == results
    assert (tmp_path / "scaling.png").stat().st_size > 1000  # the plot is still drawn


def test_a_plot_that_cannot_be_written_after_measuring_is_one_line(tmp_path, capsys):
    import argparse

    from backprop_lab.bench import plot_scaling, write_figures

    args = argparse.Namespace(json="-", plot=str(tmp_path / "gone" / "scaling.png"))
    rows = [{"hidden": 128, "batch": 64, "seconds": 0.25, "train_size": 1000}]
    assert write_figures(args, Console(), {"scaling": rows}, plot_scaling, rows, "scaling") == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"scaling": rows}
    assert err.startswith(f"error: cannot write {tmp_path / 'gone' / 'scaling.png'}: no such file or directory")
    assert len(err.splitlines()) == 1


@pytest.mark.slow  # a subprocess run or two; `make test-slow` (and CI) run it
def test_bench_into_a_folder_fails_at_once_on_the_command_line(tmp_path):
    proc = run_cli(*QUICK, "--json", str(tmp_path), cwd=tmp_path)  # the audit's `bench --quick --json /etc`
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: --json {tmp_path} is a folder; give a file name, e.g. --json {tmp_path / 'bench.json'}\n"
    assert list(tmp_path.iterdir()) == []


def test_autograd_baseline_trains_like_the_hand_written_path(small_mnist):
    """One epoch from the same weights over the same shuffle: (b) and train.train agree."""
    cfg = replace(Config(), train=replace(Config().train, epochs=1, fused=False))
    state = make_state(cfg, torch.device("cpu"))
    hand = Params(state.params["W1"], state.params["b1"], state.params["W2"], state.params["b2"])
    model = autograd_model(hand)  # a copy: each path trains its own weights
    (record,) = train(cfg, small_mnist, state)

    g = torch.Generator().manual_seed(0)
    make_params(cfg, g, "cpu")  # advance the generator as above, so the shuffle is the same
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    autograd_train_epoch(model, optimizer, small_mnist.X_train, small_mnist.y_train, cfg.data.batch_size, g)

    loss_sum, correct = evaluate(model_params(model), small_mnist.X_test, small_mnist.Y_test)
    n_test = small_mnist.X_test.shape[0]
    assert loss_sum.item() / n_test == pytest.approx(record.test_loss, rel=1e-4)
    assert abs(correct.item() / n_test - record.test_acc) <= 2 / n_test  # a borderline digit may flip
    trained = model_params(model)
    assert torch.allclose(trained.W1, hand.W1, atol=1e-5) and torch.allclose(trained.W2, hand.W2, atol=1e-5)


@pytest.mark.slow  # two CLI runs, about 8 s
def test_startup_reads_the_time_to_the_first_batch_from_the_run_log(tmp_path):
    from backprop_lab.bench import measure_startup

    startup = measure_startup(torch.device("cpu"), str(tmp_path), say=lambda *a: None, repeats=1)
    # the first batch comes after Python, torch, Hydra and the data, and before the run ends
    assert 0.5 < startup["to_first_batch_s"] < startup["first_batch_s"]
    assert 0 < startup["help_s"] < startup["first_batch_s"]
    # the bare import, timed to its end: no data, no training, no exit
    assert 0 < startup["to_torch_imported_s"] < startup["first_batch_s"]
    assert startup["cli_share_s"] == pytest.approx(startup["to_first_batch_s"] - startup["to_torch_imported_s"])
    assert "import torch" in startup["import_torch_cmd"]


@pytest.mark.slow  # a torch import and a 2 s exit, about 5 s
def test_the_import_baseline_excludes_the_interpreters_exit(tmp_path):
    """A child that sleeps after importing torch: the baseline must not count the sleep."""
    import backprop_lab.bench as bench

    slow_exit = bench.TORCH_IMPORTED + "; import atexit, time as t; atexit.register(t.sleep, 2)"
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "TORCH_IMPORTED", slow_exit)
        seconds = bench.torch_imported(str(tmp_path))
    assert time.perf_counter() - start > 2  # the child did wait before exiting
    assert 0 < seconds < time.perf_counter() - start - 1.5


def test_a_log_without_the_config_line_is_a_clear_error(tmp_path):
    from backprop_lab.bench import training_started

    (tmp_path / "backprop-lab.log").write_text("[2026-11-30 04:44:14,359][backprop_lab][INFO] - resumed\n")
    with pytest.raises(RuntimeError, match="did not reach its first batch"):
        training_started(tmp_path / "backprop-lab.log")
    (tmp_path / "ok.log").write_text("[2026-11-30 04:44:14,359][backprop_lab][INFO] - config: {}\n")
    assert training_started(tmp_path / "ok.log") % 1 == pytest.approx(0.359, abs=1e-6)


def test_peak_rss_is_the_childs_own_not_the_benchmarks(tmp_path):
    from backprop_lab.bench import peak_rss

    held = torch.ones(400 * 2**20 // 4)  # 400 MB resident in this process, as the benchmark holds its data
    allocate = [sys.executable, "-c", "b = bytearray(300 * 2**20)"]  # touches 300 MB
    with open(tmp_path / "err", "w+") as err:
        small = peak_rss([sys.executable, "-c", "pass"], str(tmp_path), err)
        big = peak_rss(allocate, str(tmp_path), err)
    assert small < 100e6  # a bare interpreter: none of this process's 400 MB
    assert 300 * 2**20 < big < 300 * 2**20 + 100e6
    with open(tmp_path / "err", "w+") as err, pytest.raises(RuntimeError, match="exited 3"):
        peak_rss([sys.executable, "-c", "import sys; sys.exit(3)"], str(tmp_path), err)
    del held


def test_without_torchvision_the_chapters_pipeline_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now raises ImportError
    code = main(["--quick", "--no-scaling", "--no-startup", "--json", str(tmp_path / "b.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and not (tmp_path / "b.json").exists()
    (line,) = err.splitlines()
    assert line.startswith("error: (a), the chapter's DataLoader pipeline, needs torchvision") and "Traceback" not in err
