"""Sweep reporting: a Hydra callback, registered in conf/config.yaml under hydra.callbacks.

    on_job_end        one result line as soon as each job of a sweep (-m) ends: job number,
                      overrides, final test accuracy, status, training time; a failed, diverged
                      or refused job with its error, read from the job's own files
    on_multirun_end   a table of every job, best test accuracy first, and sweep_summary.csv and
                      sweep_summary.json in the sweep's root folder

Everything is read back from the run directories, as `backprop-lab compare` reads them (and
with its code), so the lines and files describe exactly what is on disk, and a launcher that
runs jobs in other processes or on other machines changes nothing here. Single runs (no -m)
print nothing extra. Hydra turns an exception in a callback into a warning, so a problem here
never stops a sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from . import compare

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_JSON = "sweep_summary.json"


def job_line(num: Any, overrides: list[str], run: compare.Run, job_return: JobReturn | None = None) -> str:
    """e.g. `job 1  model.hidden_size=16  ->  test acc 11.35%, completed, 0.0 s`."""
    head = f"job {num}  {' '.join(overrides) or '(no overrides)'}  ->  "
    if job_return is not None and job_return.status == JobStatus.FAILED:
        e = job_return._return_value  # the exception the task raised; `.return_value` would re-raise it
        return head + f"failed: {type(e).__name__}: {e}"
    if run.status == "refused":
        return head + f"refused: {run.note}"
    parts = [] if run.final_test_acc is None else [f"test acc {compare._pct(run.final_test_acc)}"]
    parts.append(run.status)
    if run.train_seconds is not None:
        parts.append(f"{run.train_seconds:.1f} s")
    line = head + ", ".join(parts)
    return line + (f": {run.note}" if run.note else "")


class SweepReport(Callback):
    def __init__(self, console: Console | None = None):
        self.console = console

    def _console(self) -> Console:
        return self.console or Console(highlight=False, soft_wrap=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = job_return.hydra_cfg.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(hydra_cfg.runtime.output_dir)
        run = compare.load_run(run_dir, label=str(hydra_cfg.job.num))
        if not run_dir.exists() or (run.status == "incomplete" and run.epochs_completed is None):
            run.status, run.note = "refused", run.note if run_dir.exists() else "no run directory"
        self._console().print(job_line(hydra_cfg.job.num, list(job_return.overrides or []), run, job_return),
                              markup=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        console = self._console()
        if not sweep_dir.is_dir():
            return  # nothing ran (e.g. every job was rejected before Hydra made a folder)
        runs = compare.sort_runs(compare.collect([sweep_dir]), "test_acc")
        if not runs:
            return
        keys = compare.differing_keys(runs)
        console.print()
        compare.print_table(console, runs, keys, title=f"sweep {sweep_dir}: {len(runs)} jobs, best test acc first")
        compare.write_csv(str(sweep_dir / SUMMARY_CSV), runs, keys)
        compare.write_json(str(sweep_dir / SUMMARY_JSON), runs, keys)
        console.print(f"wrote {SUMMARY_CSV} and {SUMMARY_JSON} in {sweep_dir}", markup=False)
