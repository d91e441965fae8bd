"""`backprop-lab bench`: how fast the trainer is on this machine, and against what.

Per-epoch training time over the training set, each figure the median of --epochs epochs
after one warm-up epoch. The variants run interleaved, one epoch of each per round, so the
drift of a shared machine hits them all alike:

  (a) chapter   the chapter's pipeline: torchvision DataLoader (batch 64, shuffle, no worker
                processes) over PIL images with ToTensor + Normalize per sample, feeding
                backprop.forward / backward / sgd_step;
  (b) autograd  nn.Linear-ReLU-nn.Linear, nn.CrossEntropyLoss, torch.optim.SGD on the
                preloaded tensors of load_mnist, reshuffled every epoch;
  (c) trainer   train.train() as the CLI runs it (fused step), timed over its batches alone
                (EpochMetrics.batch_seconds), like (a) and (b); its whole epoch, with the train
                and test metrics after the batches, is timed too; and the plain forward /
                backward / sgd_step path (train.fused=False);
  (d) limit     the epoch's five matrix products alone (see `matmul_flops`), back to back at
                the training shapes into preallocated outputs: the machine's matmul
                throughput at those shapes, expressed as seconds per epoch.

Also measured: what (c)'s per-epoch metrics cost (its epoch less its batches, round by
round); start-up of the CLI (`--help`, a one-batch
run's wall time, and from that run's log the time from the command to its first batch, beside the
time a bare `python -c "import torch"` takes to finish its import); peak resident memory of the
full article run (--memory); (c) over hidden and batch sizes (--plot draws it).

Left out: (d) counts no bias add, softmax, ReLU or indexing, and no test pass; loading the data is in
no epoch; every figure comes from this one run on this one machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from .backprop import N_CLASSES, N_INPUTS, Params, backward, forward, init_params, one_hot, sgd_step
from .compare import output_problem, plot_format_problem
from .config import DEVICE_PATTERN, Config, ConfigError
from .data import MNIST, SHIPPED_ROOT, DataError, load_mnist, read_idx
from .errors import EXIT_BAD_INPUT, EXIT_SIGINT, SubcommandParser, error_line
from .rundir import LOG, cpu_description
from .bench_timing import COUNTED, Epoch, interleave, matmul_epoch, matmul_flops, trainer_epoch
from .train import resolve_device

QUICK_SUBSET = 2048  # --quick: training and test images, enough for every batch size of the scaling table
SCALING = [(128, 64), (512, 64), (2048, 64), (128, 256), (128, 1024)]  # (hidden, batch)
SCALING_EPOCHS = 2  # timed per scaling point after its warm-up; (c) at hidden 2048 takes seconds
STARTUP_REPEATS = 3
GB = 1e9
# name -> (what, comparison, limit), issue 5's targets on the 2-core CPU
TARGETS = {
    "a_over_c": ("(a) / (c): trainer vs the chapter's loop", ">=", 8.0),
    "b_over_c": ("(b) / (c): trainer vs autograd", ">=", 2.0),
    "c_over_d": ("(c) / (d): trainer vs the compute limit", "<=", 1.5),
    "eval_added_pct": ("per-epoch metrics, % added to training", "<=", 10.0),
    "help_s": ("`backprop-lab --help`, s", "<=", 1.5),
    "to_first_batch_s": ("enter to the first batch (from the run's log), s", "<=", 3.0),
    "peak_rss_gb": ("peak RSS of experiment=article, GB", "<=", 1.5),
}


# --- the variants, each built once and returning a function that runs one epoch ----------


class PILDigits(torch.utils.data.Dataset):
    """The chapter's per-sample source: a PIL image per index, transformed on every access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i].numpy())), int(self.labels[i])


def make_params(cfg: Config, generator: torch.Generator, device: torch.device) -> Params:
    """The chapter's W1, b1, W2, b2, drawn as train.make_state draws them."""
    return init_params(cfg.model.hidden_size, cfg.model.init_scale, generator, device=device)


def chapter_epoch(cfg: Config, n: int, device: torch.device) -> Epoch:
    try:
        from torchvision import transforms  # only (a) needs torchvision
    except ImportError as e:  # absent, or built for another torch: one line, not a traceback
        raise RuntimeError(f"(a), the chapter's DataLoader pipeline, needs torchvision, which does not import "
                           f"here ({e}); install the torchvision built for this torch") from None

    def shipped(name: str) -> torch.Tensor:
        return read_idx(SHIPPED_ROOT / f"{name}.gz", name)[:n]

    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = PILDigits(shipped("train-images-idx3-ubyte"), shipped("train-labels-idx1-ubyte"), to_input)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, generator=generator)
    params = make_params(cfg, generator, device)

    def epoch() -> None:
        for x, y in loader:  # x: (m,1,28,28) in [-1,1], y: (m,)
            X = x.reshape(x.shape[0], -1).to(device)  # (m,784); the chapter copies each batch over
            cache = forward(params, X)
            sgd_step(params, backward(params, cache, one_hot(y.to(device))), cfg.optim.lr)

    return epoch


def autograd_model(params: Params) -> torch.nn.Sequential:
    """nn.Linear-ReLU-nn.Linear holding a copy of `params` (nn.Linear stores W transposed)."""
    hidden = params.W1.shape[1]
    model = torch.nn.Sequential(
        torch.nn.Linear(N_INPUTS, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, N_CLASSES)
    ).to(params.W1.device)
    with torch.no_grad():
        for layer, W, b in ((model[0], params.W1, params.b1), (model[2], params.W2, params.b2)):
            layer.weight.copy_(W.T)
            layer.bias.copy_(b)
    return model


def autograd_train_epoch(model, optimizer, X: torch.Tensor, y: torch.Tensor, batch: int, generator) -> None:
    """One epoch the usual PyTorch way; the shuffle is drawn exactly as train.train draws it."""
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.randperm(X.shape[0], generator=generator).to(X.device)
    for start in range(0, X.shape[0], batch):
        idx = order[start : start + batch]
        loss = loss_fn(model(X.index_select(0, idx)), y.index_select(0, idx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def autograd_epoch(cfg: Config, data: MNIST, device: torch.device) -> Epoch:
    generator = torch.Generator().manual_seed(cfg.seed)
    model = autograd_model(make_params(cfg, generator, device))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    return lambda: autograd_train_epoch(model, optimizer, data.X_train, data.y_train, cfg.data.batch_size, generator)


# --- the measurements --------------------------------------------------------------------


def measure_epochs(cfg: Config, data: MNIST, device: torch.device, timed: int, say: Callable) -> dict[str, Any]:
    """(c) is the trainer's batches, as (a), (b) and (d) are training alone; its metrics (the
    rest of its epoch, timed inside the same epochs) are reported beside it."""
    n, hidden, batch = data.X_train.shape[0], cfg.model.hidden_size, cfg.data.batch_size
    if device.type != "cpu":
        say("note: (a) decodes and transforms every image on the CPU and copies each batch to the device, as the chapter does")
    epochs = {
        "a_chapter": chapter_epoch(cfg, n, device),
        "b_autograd": autograd_epoch(cfg, data, device),
        "c_trainer": trainer_epoch(cfg, data, device, timed + 1),
        "c_plain": trainer_epoch(cfg, data, device, timed + 1, fused=False),
        "d_matmul": matmul_epoch(n, batch, hidden, device),
    }
    times = interleave(epochs, timed, device, say)
    med = {name: statistics.median(t) for name, t in times.items()}
    run_flops = matmul_flops(math.ceil(n / batch) * batch, hidden)  # what d_matmul ran
    gflops = run_flops / med["d_matmul"] / GB
    d = matmul_flops(n, hidden) / (gflops * GB)
    c = med["c_trainer_batches"]
    metrics = statistics.median(e - b for e, b in zip(times["c_trainer"], times["c_trainer_batches"]))
    # The same ratios round by round: each round runs every variant back to back, so these
    # pair measurements taken under the same load; shown beside the targets' ratio of medians.
    d_rounds = [t * matmul_flops(n, hidden) / run_flops for t in times["d_matmul"]]
    per_round = {
        "a_over_c": [a / c_ for a, c_ in zip(times["a_chapter"], times["c_trainer_batches"])],
        "b_over_c": [b / c_ for b, c_ in zip(times["b_autograd"], times["c_trainer_batches"])],
        "c_over_d": [c_ / d_ for c_, d_ in zip(times["c_trainer_batches"], d_rounds)],
    }
    seconds = {"a_chapter": med["a_chapter"], "b_autograd": med["b_autograd"], "c_trainer": c,
               "c_trainer_epoch": med["c_trainer"], "c_plain": med["c_plain_batches"], "d_limit": d}
    return {
        "epoch_seconds": seconds,
        "epoch_seconds_all": times,
        "ratios": {
            "c_over_a": c / seconds["a_chapter"], "c_over_b": c / seconds["b_autograd"], "c_over_d": c / d,
            "a_over_c": seconds["a_chapter"] / c, "b_over_c": seconds["b_autograd"] / c, "c_plain_over_c": seconds["c_plain"] / c,
        },
        "ratios_per_round": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                             for k, v in per_round.items()},
        "metrics_cost": {
            "seconds": metrics,
            "share_of_epoch_pct": 100 * metrics / med["c_trainer"],
            "added_to_training_pct": 100 * metrics / c,
        },
        "compute": {
            "flops_per_epoch": matmul_flops(n, hidden),
            "counted": COUNTED,
            "gflops_at_training_shapes": gflops,
        },
    }


def cli_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m backprop_lab`."""
    script = Path(sys.executable).with_name("backprop-lab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "backprop_lab"]


def wall(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return seconds


def training_started(log: Path) -> float:
    """When the run logged its config, the last thing before its first batch: the line
    `[2026-11-30 04:44:14,359][backprop_lab][INFO] - config: ...`, as a Unix time."""
    for line in log.read_text().splitlines():
        if "] - config: " in line:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")  # the log's local time
            return stamp.timestamp()
    raise RuntimeError(f"{log} has no config line: the run did not reach its first batch")


TORCH_IMPORTED = "import torch, time; print(time.time())"


def torch_imported(cwd: str) -> float:
    """Seconds from launching a bare Python to the end of its `import torch`. The child
    prints the time itself: its wall time would add the interpreter's exit, which takes
    most of a second once torch is loaded, and which a run's first batch never waits for."""
    pressed = time.time()
    proc = subprocess.run([sys.executable, "-c", TORCH_IMPORTED], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"import torch failed: {proc.stderr.strip()[-300:]}")
    return float(proc.stdout) - pressed


def measure_startup(device: torch.device, tmp: str, say: Callable, repeats: int = STARTUP_REPEATS) -> dict[str, Any]:
    """Interleaved repeats of three commands. The one-batch run's wall time also covers a test
    pass, the plots and the files; the time to its first batch is read from its log. The
    baseline is a bare `import torch`, timed to the end of the import: the floor under any
    run's start; the first batch less that floor is what the CLI itself adds."""
    say("start-up: --help, a one-batch run and a bare `import torch`")
    help_cmd = cli_command() + ["--help"]
    one_batch = [sys.executable, "-m", "backprop_lab", "data.train_subset=64", "train.epochs=1", f"device={device}"]
    helps, firsts, to_first, imports = [], [], [], []
    for i in range(repeats):
        helps.append(wall(help_cmd, tmp))
        pressed = time.time()
        firsts.append(wall(one_batch + [f"hydra.run.dir={tmp}/first{i}"], tmp))
        to_first.append(training_started(Path(tmp) / f"first{i}" / LOG) - pressed)
        imports.append(torch_imported(tmp))
    return {
        "help_s": statistics.median(helps), "first_batch_s": statistics.median(firsts),
        "to_first_batch_s": statistics.median(to_first), "to_torch_imported_s": statistics.median(imports),
        "cli_share_s": statistics.median(f - t for f, t in zip(to_first, imports)),
        "help_cmd": " ".join(help_cmd), "one_batch_cmd": " ".join(one_batch),
        "import_torch_cmd": f"{sys.executable} -c {TORCH_IMPORTED!r}", "repeats": repeats,
    }


# Runs argv[1:], then prints its peak RSS as ru_maxrss. On Linux a child's high-water mark
# starts at its parent's RSS when it forks (exec keeps it), so the run measured must not be
# forked from the benchmark, which holds gigabytes by then: this small launcher forks it.
PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(cmd: list[str], cwd: str, err: Any) -> int:
    """Peak resident memory of `cmd` in bytes; its stderr goes to the open file `err`."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_LAUNCHER, *cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        err.seek(0)
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.read().strip()[-300:]}")
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return int(proc.stdout.split()[-1]) * kib


def measure_memory(device: torch.device, tmp: str, say: Callable) -> dict[str, Any]:
    """Peak RSS of one full article run in a child process of its own (see PEAK_RSS_LAUNCHER)."""
    say("memory: a full experiment=article run (about 20-50 s)")
    cmd = [sys.executable, "-m", "backprop_lab", "experiment=article", f"device={device}", f"hydra.run.dir={tmp}/article"]
    start = time.perf_counter()
    with open(Path(tmp) / "article.err", "w+") as err:
        peak = peak_rss(cmd, tmp, err)
    return {"peak_rss_gb": peak / GB, "wall_s": time.perf_counter() - start, "cmd": " ".join(cmd)}


def measure_scaling(cfg: Config, data: MNIST, device: torch.device, say: Callable) -> list[dict[str, Any]]:
    say(f"scaling: {len(SCALING)} settings, {SCALING_EPOCHS} timed epochs each")
    epochs = {}
    for hidden, batch in SCALING:
        point = replace(cfg, model=replace(cfg.model, hidden_size=hidden), data=replace(cfg.data, batch_size=batch))
        epochs[f"{hidden}x{batch}"] = trainer_epoch(point, data, device, SCALING_EPOCHS + 1)
    times = interleave(epochs, SCALING_EPOCHS, device, say)
    n = data.X_train.shape[0]
    rows = []
    for hidden, batch in SCALING:
        seconds = statistics.median(times[f"{hidden}x{batch}"])
        rows.append({"hidden": hidden, "batch": batch, "train_size": n, "seconds": seconds,
                     "gflops": matmul_flops(n, hidden) / seconds / GB})
    return rows


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    values = {**results["ratios"], "eval_added_pct": results["metrics_cost"]["added_to_training_pct"],
              **(results["startup"] or {}), **(results["memory"] or {})}
    checked = {}
    for key, (what, op, limit) in TARGETS.items():
        if values.get(key) is not None:
            v = values[key]
            met = v >= limit if op == ">=" else v <= limit
            # one epoch of 2,048 images is a smoke test of the benchmark, not a measurement to judge
            checked[key] = {"what": what, "value": v, "target": f"{op} {limit:g}",
                            "met": None if results["settings"]["quick"] else met}
    return checked


# --- output ------------------------------------------------------------------------------

VARIANTS = [
    ("a_chapter", "(a) chapter", "DataLoader, PIL + ToTensor + Normalize per sample, hand-written math"),
    ("b_autograd", "(b) autograd", "nn.Linear + CrossEntropyLoss + optim.SGD, preloaded tensors"),
    ("c_trainer", "(c) trainer", "train.train()'s batches, fused step"),
    ("c_trainer_epoch", "(c) + metrics", "its whole epoch: the batches, then train + test metrics"),
    ("c_plain", "(c) plain", "train.train()'s batches with train.fused=false"),
    ("d_limit", "(d) limit", "the epoch's matrix products alone, at the training shapes"),
]


def render(console: Console, r: dict[str, Any]) -> None:
    s = r["settings"]
    t = Table(title=f"seconds per training epoch: {s['train_size']:,} images, 784-{s['hidden']}-10, batch {s['batch']}, "
              f"{s['device']}, median of {s['epochs']} after 1 warm-up", title_justify="left")
    for col in ("variant", "what", "s / epoch", "samples/s", "c / this"):
        t.add_column(col, justify="left" if col in ("variant", "what") else "right")
    c = r["epoch_seconds"]["c_trainer"]
    for key, name, what in VARIANTS:
        v = r["epoch_seconds"][key]
        t.add_row(name, what, f"{v:.3f}", f"{s['train_size'] / v:,.0f}", f"{c / v:.2f}")
    console.print(t)
    m = r["metrics_cost"]
    console.print(f"per-epoch metrics: {m['seconds']:.3f} s = {m['share_of_epoch_pct']:.1f}% of (c)'s epoch, "
                  f"{m['added_to_training_pct']:.1f}% added to its training; matmul at training shapes: "
                  f"{r['compute']['gflops_at_training_shapes']:.1f} GFLOP/s, {r['compute']['flops_per_epoch'] / GB:.2f} GFLOP per epoch")
    paired = r["ratios_per_round"]
    console.print("per round (each variant's epochs back to back): " + ", ".join(
        f"{k.replace('_over_', '/')} median {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in paired.items()))
    if r["startup"]:
        st = r["startup"]
        console.print(f"start-up: first batch {st['to_first_batch_s']:.2f} s after the command; a bare `import torch` "
                      f"is done {st['to_torch_imported_s']:.2f} s after its command, so the CLI itself adds about "
                      f"{st['cli_share_s']:.2f} s; `--help` {st['help_s']:.2f} s")
    if r["machine"].get("load_average_1min"):  # includes this benchmark's own threads
        console.print("machine load (1-min average, this run included): {start:.2f} at start, {end:.2f} at end".format(**r["machine"]["load_average_1min"]))
    quick = f" (not judged: --quick times one epoch of {QUICK_SUBSET:,} images; run without it to measure)" if s["quick"] else ""
    t = Table(title=f"targets{quick}", title_justify="left")
    for col in ("measure", "value", "target", "met"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for row in r["targets"].values():
        met = "-" if row["met"] is None else "[green]yes[/green]" if row["met"] else "[red]no[/red]"
        t.add_row(row["what"], f"{row['value']:.2f}", row["target"], met)
    console.print(t)
    if r["scaling"]:
        t = Table(title=f"(c) seconds per epoch, {r['scaling'][0]['train_size']:,} images", title_justify="left")
        for col in ("hidden", "batch", "s / epoch", "GFLOP/s"):
            t.add_column(col, justify="right")
        for row in r["scaling"]:
            t.add_row(str(row["hidden"]), str(row["batch"]), f"{row['seconds']:.3f}", f"{row['gflops']:.1f}")
        console.print(t)


def minor_label(ax: Any) -> Callable[[float, int], str]:
    """Plain numbers on a log axis's minor ticks; over more than half a decade only those
    starting with 2 or 5, so that the labels never run into each other."""
    def label(y: float, _: int) -> str:
        low, high = ax.get_ylim()
        lead = round(y / 10 ** math.floor(math.log10(y)))
        return f"{y:g}" if math.log10(high / low) <= 0.5 or lead in (2, 5) else ""
    return label


def plot_scaling(rows: list[dict[str, Any]], path: str) -> None:
    """Two panels, seconds per epoch against hidden size (batch 64) and batch size (hidden 128); 900x350 px."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for ax, key, fixed, value in ((axes[0], "hidden", "batch", 64), (axes[1], "batch", "hidden", 128)):
        points = sorted((row[key], row["seconds"]) for row in rows if row[fixed] == value)
        ax.plot(*zip(*points), marker="o")
        ax.set(xscale="log", yscale="log", xlabel=f"{key} size ({fixed} {value})", ylabel="seconds per epoch")
        ax.set_xticks([x for x, _ in points], [str(x) for x, _ in points])
        ax.set_xticks([], minor=True)  # log axes label minor ticks too; only the measured sizes matter
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor_label(ax)))
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"backprop-lab trainer, {rows[0]['train_size']:,} images per epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = cpu_description()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}


# --- entry point -------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = SubcommandParser(prog="backprop-lab bench", usage="%(prog)s [options]", description=__doc__.splitlines()[0])

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        return int(text)

    def k_list(text: str) -> list[int]:
        return [positive(k) for k in text.split(",")]

    def grid_jobs(text: str) -> int:
        from .bench_sweep import GRIDS

        if not text.isdigit() or int(text) not in GRIDS:
            raise argparse.ArgumentTypeError(f"expected {' or '.join(map(str, GRIDS))} (jobs), got {text!r}")
        return int(text)

    p.add_argument("--epochs", type=positive, default=5, help="timed epochs per variant after the warm-up (default 5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's own, one per core)")
    p.add_argument("--json", default="bench.json", help="where the figures go; '-' for stdout (default bench.json)")
    p.add_argument("--plot", help="PNG of the scaling table (matplotlib)")
    p.add_argument("--memory", action="store_true", help="also a full experiment=article run for peak RSS (~20-50 s)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_SUBSET} training and test images, 1 epoch, no memory/start-up/scaling (scaling runs if --plot asks)")
    p.add_argument("--no-scaling", action="store_true", help="skip the hidden/batch-size table")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    p.add_argument("--sweep", type=k_list, metavar="K,K,...",
                   help="instead: K jobs one by one vs vectorised (hydra/launcher=vectorized), per job, e.g. 1,4,16,64")
    p.add_argument("--grid", type=grid_jobs, nargs="?", const=16, metavar="JOBS",
                   help="instead (or with --sweep): a 16-job grid (4 learning rates x 2 init scales x 2 seeds, 3 epochs "
                        "each) through both launchers, wall clock (~1 min a round); --grid 64: 4 learning rates x 4 "
                        "init scales x 4 seeds, the GPU target's 64 jobs")
    p.add_argument("--rounds", type=positive, default=1, help="--grid rounds, launchers alternating (default 1)")
    args = p.parse_args(argv)
    if not DEVICE_PATTERN.match(args.device) or args.device == "auto":
        p.error(f"--device {args.device!r}: expected cpu, cuda, cuda:N or mps")
    if args.quick:
        args.epochs, args.memory, args.no_startup = 1, False, True
        args.no_scaling = args.no_scaling or not args.plot
    if args.plot and args.no_scaling and not args.sweep:
        p.error("--plot draws the scaling table; drop --no-scaling")
    return args


def outputs_problem(args: argparse.Namespace) -> str | None:
    """The first reason --json or --plot could not be written, or None."""
    problems = [] if args.json == "-" else [output_problem("--json", args.json, "bench.json")]
    if args.plot:  # the format first: matplotlib would only refuse it at the end
        problems += [plot_format_problem(args.plot), output_problem("--plot", args.plot, "scaling.png")]
    return next((problem for problem in problems if problem), None)


def main(argv: list[str]) -> int:
    args = parse(argv)
    problem = outputs_problem(args)
    if problem:
        error_line(problem)
        return EXIT_BAD_INPUT
    console = Console(stderr=args.json == "-")  # keep stdout pure JSON when it carries the figures
    say = lambda text: Console(stderr=True, soft_wrap=True).print(f"[dim]bench: {text}[/dim]")  # noqa: E731
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # how busy the machine was: read with the figures
    try:
        device = resolve_device(args.device, option="--device ", instead="--device cpu")  # bench has no auto
        if args.threads:  # on a shared machine, fewer threads than cores can avoid waiting on busy ones
            torch.set_num_threads(args.threads)
        cfg = replace(Config(), device=args.device)
        data = load_mnist(train_subset=QUICK_SUBSET if args.quick else None, device=device)
        if args.quick:  # the test pass would otherwise outweigh the tiny epoch
            data = replace(data, X_test=data.X_test[:QUICK_SUBSET], Y_test=data.Y_test[:QUICK_SUBSET], y_test=data.y_test[:QUICK_SUBSET])
        n = data.X_train.shape[0]
        results: dict[str, Any] = {
            "machine": machine(device),
            "settings": {"train_size": n, "hidden": cfg.model.hidden_size, "batch": cfg.data.batch_size,
                         "epochs": args.epochs, "warmup_epochs": 1, "quick": args.quick, "device": str(device)},
        }
        if args.sweep or args.grid:
            return sweep_main(args, cfg, data, device, results, console, say)
        results.update(measure_epochs(cfg, data, device, args.epochs, say))
        with tempfile.TemporaryDirectory(prefix="backprop-lab-bench-") as tmp:
            results["startup"] = None if args.no_startup else measure_startup(device, tmp, say)
            results["memory"] = measure_memory(device, tmp, say) if args.memory else None
        results["scaling"] = None if args.no_scaling else measure_scaling(cfg, data, device, say)
    except (ConfigError, DataError, RuntimeError) as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {' '.join(str(e).split())}")
        return 2 if isinstance(e, (ConfigError, DataError)) else 1
    except KeyboardInterrupt:
        return EXIT_SIGINT
    results["machine"]["load_average_1min"] = {"start": load[0], "end": os.getloadavg()[0]} if load else None
    results["targets"] = check_targets(results)
    render(console, results)
    return write_figures(args, console, results, plot_scaling, results["scaling"], "scaling")


def write_figures(args: argparse.Namespace, console: Console, results: dict[str, Any], plot: Callable,
                  plotted: Any, what: str) -> int:
    """The figures as JSON (to stdout with --json -, else into the --json file), then the --plot
    of `plotted` (if any); the exit code. The paths were tried before the measuring, but a disk
    can fill or a folder go meanwhile: then one line says so, and figures that could not be
    written go to stdout rather than be lost."""
    text, code = json.dumps(results, indent=2), 0
    if args.json == "-":
        print(text)
    else:
        try:
            Path(args.json).expanduser().write_text(text + "\n")
            console.print(f"figures written to {args.json}")
        except OSError as e:
            error_line(f"cannot write {args.json}: {(e.strerror or str(e)).lower()}; the figures follow on "
                       f"standard output")
            print(text)
            code = EXIT_BAD_INPUT
    if args.plot and plotted:
        try:
            plot(plotted, args.plot)
            console.print(f"{what} plot written to {args.plot}")
        except OSError as e:
            error_line(f"cannot write {args.plot}: {(e.strerror or str(e)).lower()}; the figures are in the table above")
            code = EXIT_BAD_INPUT
    return code


def sweep_main(args: argparse.Namespace, cfg: Config, data: MNIST, device: torch.device, results: dict[str, Any],
               console: Console, say: Callable) -> int:
    """--sweep and --grid (bench_sweep): their table, figures (--json) and plot (--plot)."""
    from . import bench_sweep

    results["sweep"] = bench_sweep.measure_sweep(cfg, data, device, args.sweep, args.epochs, say) if args.sweep else None
    if args.grid:
        with tempfile.TemporaryDirectory(prefix="backprop-lab-bench-") as tmp:
            results["grid"] = bench_sweep.measure_grid(cli_command(), args.rounds, tmp, say,
                                                       bench_sweep.grid_of(args.grid, args.device))
    else:
        results["grid"] = None
    bench_sweep.render(console, results["sweep"], results["grid"])
    return write_figures(args, console, results, bench_sweep.plot_sweep, results["sweep"], "sweep")
