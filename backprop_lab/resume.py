"""`backprop-lab resume RUN_DIR [KEY=VALUE ...]`: continue an interrupted run where it stopped.

Reads the run's summary.json and checkpoint.pt (written after every completed epoch), checks
that the config, with any KEY=VALUE given, is exactly the one the run started with, and hands
over to `cli.run`, which continues in the same directory and appends to its metrics.csv. On
the same device the continued run is bitwise identical to one that was never interrupted.
Hydra is not involved: the run directory already holds the resolved config.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from .cli import EXIT_BAD_INPUT, error_line, run
from .config import ConfigError, config_changes, from_container, with_defaults
from .rundir import LOG, RunDirError, effective_status, read_summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backprop-lab resume", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the interrupted run's directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="must agree with the run's own config")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    try:
        return resume(run_dir, args.overrides)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        return EXIT_BAD_INPUT


def resume(run_dir: Path, overrides: list[str]) -> int:
    try:
        summary = read_summary(run_dir)
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a backprop-lab run directory (no summary.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {run_dir / 'summary.json'}: {e}") from None
    status = effective_status(summary)
    done, planned = summary.get("epochs_completed"), summary.get("epochs_planned")
    if status == "completed":
        print(f"{run_dir} already completed {done}/{planned} epochs; nothing to do")
        return 0
    if status == "running":
        raise RunDirError(f"{run_dir} is still running (pid {summary.get('pid')} on {summary.get('host')})")
    if status == "diverged":
        raise RunDirError(f"{run_dir} diverged; resuming would diverge again from the same state: "
                          f"start a new run with a smaller optim.lr")

    # Keys added to backprop-lab after the run started take their defaults.
    saved = with_defaults(summary["config"])
    try:
        asked = OmegaConf.to_container(OmegaConf.merge(saved, OmegaConf.from_dotlist(overrides)))
    except Exception as e:  # noqa: BLE001 - OmegaConf's errors for bad KEY=VALUE strings vary
        raise ConfigError(f"cannot read the overrides {' '.join(overrides)!r}: {str(e).splitlines()[0]}") from None
    cfg = from_container(asked)
    changes = config_changes(saved, cfg)
    if changes:
        raise ConfigError(f"resume refused: the config differs from the run's own in {', '.join(changes)}; "
                          f"start a new run for a different config")

    handler = logging.FileHandler(run_dir / LOG)  # the run's log continues, as Hydra wrote it
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    print(f"resuming {run_dir} after epoch {done} of {planned}")
    try:
        run(cfg, run_dir, summary.get("overrides", []), resume=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
