"""`backprop-lab bench --sweep K,K,...` and `--grid`: what a vectorised sweep saves.

--sweep: for each K, seconds per epoch per job of the chapter's network, for K jobs
  one by one   trained one after another: train.train's epoch (batches, train and test metrics,
               gradient probe), which is the same for every job;
  vectorized   K members trained as one members.Group, its whole epoch / K;
  limit        the five matrix products of one job's epoch (bench.matmul_epoch): at the training
               shapes, the machine's matmul rate puts a run at no less.
The variants run interleaved, one epoch of each per round after a warm-up round (bench.interleave);
each figure is the median of --epochs rounds. --plot draws the three over K.

--grid: a 16-job grid (`optim.lr=0.05,0.1,0.2,0.4 model.init_scale=0.01,0.05
seed=0,1 train.epochs=3`) run by the CLI with the basic launcher and with the vectorised one, one
after the other in each of --rounds rounds (order alternating), on bench's --device: each sweep's
wall clock from the command to its exit, and the sum of the basic jobs' train_seconds. The target:
the vectorised sweep costs no more than the basic jobs' training alone. `--grid 64` runs 64 jobs
(4 learning rates x 4 init scales x 4 seeds) for the GPU target: the vectorised sweep at least 10x
faster than the basic one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from .bench_timing import interleave, matmul_epoch, trainer_epoch
from .config import Config
from .data import MNIST
from .members import Group
from .rundir import SUMMARY
from .train import make_state

GRID = ("optim.lr=0.05,0.1,0.2,0.4", "model.init_scale=0.01,0.05", "seed=0,1", "train.epochs=3")
# --grid 64: the GPU target is for 64 members of the chapter's network
GRID_64 = ("optim.lr=0.025,0.05,0.1,0.2", "model.init_scale=0.01,0.02,0.05,0.1", "seed=0,1,2,3", "train.epochs=3")
GRIDS = {16: GRID, 64: GRID_64}
GPU_SPEEDUP = 10  # the GPU target: 64 members at least this many times faster than the basic launcher
ENDLESS = 10 ** 6  # planned epochs of the timed trainers: each call advances one


def group_epoch(cfg: Config, data: MNIST, device: torch.device, k: int) -> Callable[[], object]:
    """One epoch of a Group of k members per call: lr and seed differ, as in a sweep."""
    cfgs = [replace(cfg, seed=i, optim=replace(cfg.optim, lr=0.05 + 0.01 * i),
                    train=replace(cfg.train, epochs=ENDLESS)) for i in range(k)]
    epochs = Group(cfgs, data, [make_state(c, device) for c in cfgs]).epochs()
    return lambda: next(epochs)


def measure_sweep(cfg: Config, data: MNIST, device: torch.device, ks: list[int], timed: int,
                  say: Callable) -> list[dict[str, Any]]:
    n, batch, hidden = data.X_train.shape[0], cfg.data.batch_size, cfg.model.hidden_size
    rows = []
    for k in ks:
        say(f"--sweep: K={k}")
        times = interleave({"one_by_one": trainer_epoch(cfg, data, device, ENDLESS),
                            "vectorized": group_epoch(cfg, data, device, k),
                            "limit": matmul_epoch(n, batch, hidden, device)}, timed, device, say)
        one, vec, limit = (statistics.median(times[name]) for name in ("one_by_one", "vectorized", "limit"))
        rows.append({"K": k, "one_by_one_s": one, "vectorized_s": vec / k, "limit_s": limit,
                     "speedup": one / (vec / k)})
    return rows


def sweep_wall(command: list[str], grid: tuple[str, ...], launcher: str, sweep_dir: Path, cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*command, "-m", *grid, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the {launcher} sweep exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return seconds


def train_seconds(sweep_dir: Path) -> float:
    """The sum of a sweep's jobs' train_seconds (a vectorised member's is its share of its group's)."""
    return sum(json.loads(s.read_text())["train_seconds"] for s in sweep_dir.glob(f"*/{SUMMARY}"))


def grid_of(jobs: int, device: str) -> tuple[str, ...]:
    """The overrides of the --grid of `jobs` jobs, on bench's --device (both launchers alike)."""
    return (*GRIDS[jobs], f"device={device}")


def measure_grid(command: list[str], rounds: int, tmp: str, say: Callable,
                 grid: tuple[str, ...] = GRID) -> dict[str, Any]:
    """The 16-job grid (or `grid`) with each launcher, alternating; medians and every round's figures."""
    walls: dict[str, list[float]] = {"basic": [], "vectorized": []}
    trains: dict[str, list[float]] = {"basic": [], "vectorized": []}
    for r in range(rounds):
        for launcher in (("basic", "vectorized") if r % 2 == 0 else ("vectorized", "basic")):
            say(f"--grid: round {r + 1}/{rounds}, {launcher} launcher")
            sweep_dir = Path(tmp) / f"{launcher}{r}"
            walls[launcher].append(sweep_wall(command, grid, launcher, sweep_dir, tmp))
            trains[launcher].append(train_seconds(sweep_dir))
    med = {name: statistics.median(values) for name, values in walls.items()}
    train = {name: statistics.median(values) for name, values in trains.items()}
    jobs = len(list(Path(tmp, "basic0").glob(f"*/{SUMMARY}")))
    speedup = med["basic"] / med["vectorized"]
    return {"grid": " ".join(grid), "jobs": jobs, "rounds": rounds, "basic_wall_s": med["basic"],
            "vectorized_wall_s": med["vectorized"], "basic_train_seconds_sum": train["basic"],
            "vectorized_train_seconds_sum": train["vectorized"],
            "per_round": {"basic_wall_s": walls["basic"], "vectorized_wall_s": walls["vectorized"],
                          "basic_train_seconds_sum": trains["basic"],
                          "vectorized_train_seconds_sum": trains["vectorized"]},
            "speedup": speedup, **target(jobs, speedup, med["vectorized"], train["basic"])}


def target(jobs: int, speedup: float, vectorized_wall: float, basic_train: float) -> dict[str, Any]:
    """The target a grid of `jobs` is measured against: 64 jobs, the GPU target (GPU_SPEEDUP x
    faster); fewer, the CPU target (the vectorised sweep within the basic jobs' training time)."""
    if jobs >= 64:
        return {"target": f"vectorized >= {GPU_SPEEDUP}x faster, the GPU target for 64 jobs",
                "target_met": speedup >= GPU_SPEEDUP}
    return {"target": "vectorized wall <= basic training", "target_met": vectorized_wall <= basic_train}


def render(console: Console, sweep: list[dict[str, Any]] | None, grid: dict[str, Any] | None) -> None:
    if sweep:
        table = Table(title="seconds per epoch per job: K jobs one by one vs vectorised")
        for name in ("K", "one by one", "vectorized", "speed-up", "matmul limit"):
            table.add_column(name, justify="right")
        for r in sweep:
            table.add_row(str(r["K"]), f"{r['one_by_one_s']:.3f}", f"{r['vectorized_s']:.3f}", f"{r['speedup']:.2f}x",
                          f"{r['limit_s']:.3f}")
        console.print(table)
    if grid:
        verdict = "met" if grid["target_met"] else "NOT met"
        console.print(f"{grid['jobs']}-job grid ({grid['grid']}), median of {grid['rounds']} round(s): vectorized sweep "
                      f"{grid['vectorized_wall_s']:.1f} s wall (training {grid['vectorized_train_seconds_sum']:.1f} s), "
                      f"basic sweep {grid['basic_wall_s']:.1f} s wall (its jobs' training "
                      f"{grid['basic_train_seconds_sum']:.1f} s): vectorized {grid['speedup']:.1f}x faster; "
                      f"target ({grid['target']}) {verdict}",
                      soft_wrap=True)


def plot_sweep(rows: list[dict[str, Any]], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ks = [r["K"] for r in rows]
    for key, label in (("one_by_one_s", "one by one"), ("vectorized_s", "vectorized"), ("limit_s", "matmul limit")):
        ax.plot(ks, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("jobs K")
    ax.set_ylabel("seconds per epoch per job")
    ax.legend()
    fig.savefig(path, dpi=100)
