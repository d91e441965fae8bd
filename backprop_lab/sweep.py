"""Sweep reporting: a Hydra callback, registered in conf/config.yaml under hydra.callbacks.

    on_job_end        one result line as soon as each job of a sweep (-m) ends: job number,
                      overrides, final test accuracy, status, training time; a failed, diverged
                      or refused job with its error, read from the job's own files
    on_multirun_end   a table of every job, best test accuracy first, and sweep_summary.csv and
                      sweep_summary.json in the sweep's root folder

It also carries the sweep's own options, set under hydra.callbacks.sweep_report (they are
about the sweep, not a run, so they stay out of each run's config, its hash and `compare`):

    resume     re-running a sweep into the same hydra.sweep.dir skips every job whose folder
               holds a completed (or diverged) run of the same config, continues interrupted
               or killed ones from their checkpoint.pt, and runs the rest
    fail_fast  after the first job that fails, diverges or is refused, no new job starts (jobs
               already running finish); the sweep still writes its summary, then exits 1

`sweep_job` is what the task function runs for each job of a sweep: it applies those options
and the per-launcher torch thread count, and always returns a float for the sweeper (the final
test accuracy; 0.0 for a job that did not complete: Optuna cannot take None or NaN).

Everything is read back from the run directories, as `backprop-lab compare` reads them (and
with its code), so the lines and files describe exactly what is on disk, and a launcher that
runs jobs in other processes or on other machines changes nothing here. Single runs (no -m)
print nothing extra. Hydra turns an exception in a callback into a warning, so a problem here
never stops a sweep.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from . import compare, runs as saved_runs
from .config import ConfigError, config_changes, from_dictconfig, is_memory_gb
from .errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OF_SIGNAL, EXIT_SIGPIPE, ErrorConsole, LabError, error_line,
                     refuse)
from .report import OutputConsole, plural
from .rundir import (CHECKPOINT, INTERRUPT_FILE, KEPT_HYDRA, METRICS, MULTIRUN_YAML, OPTUNA_RESULTS, PLANNED_FILE,
                     REFUSED_FILE, STOP_FILE, SUMMARY, SUMMARY_CSV, SUMMARY_JSON, SWEEP_MARK, SWEEP_MARKS, WEIGHTS,
                     RunDirError, effective_status, locked, read_summary, still_running)

OPTIONS = ("resume", "fail_fast", "verbose")
FAILED_SCORE = 0.0  # what a job that did not complete returns to the sweeper


def options(hydra_cfg: Any) -> dict[str, Any]:
    """The sweep options as set under hydra.callbacks.sweep_report (false if it is absent)."""
    node = (hydra_cfg.get("callbacks") or {}).get("sweep_report") or {}
    return {name: node.get(name, False) for name in OPTIONS}


def check_options(hydra_cfg: Any) -> None:
    for name, value in options(hydra_cfg).items():
        if not isinstance(value, bool):
            shown = repr(value) if isinstance(value, str) else value
            raise ConfigError(f"hydra.callbacks.sweep_report.{name}={shown} is not valid: expected true or false")


def is_vectorized(hydra_cfg: Any) -> bool:
    """Whether hydra/launcher=vectorized runs the sweep's jobs."""
    return str(hydra_cfg.launcher.get("_target_", "")).endswith(".VectorizedLauncher")


def check_launcher(hydra_cfg: Any) -> None:
    """submitit's SLURM launcher needs the cluster's commands; without them it fails with a traceback
    after the sweep's folder is made."""
    if is_vectorized(hydra_cfg):
        check_vectorized_settings(hydra_cfg.launcher)
    if str(hydra_cfg.launcher.get("_target_", "")).endswith(".SlurmLauncher") and shutil.which("srun") is None:
        raise ConfigError("hydra/launcher=submitit_slurm needs a SLURM cluster, and this machine has no srun: run the "
                          "sweep from the cluster's login node, or here with hydra/launcher=submitit_local or joblib")


def check_vectorized_settings(launcher: Any) -> None:
    """hydra/launcher=vectorized's memory_gb and plots, as a config file of the user's may set them
    (the command line's are checked with the other overrides, before Hydra starts)."""
    memory_gb, plots = launcher.get("memory_gb"), launcher.get("plots")
    if not is_memory_gb(memory_gb):
        raise ConfigError(f"hydra.launcher.memory_gb={memory_gb!r} is not valid: expected a number of gigabytes > 0, "
                          f"or null for half the available memory")
    if not isinstance(plots, bool):
        raise ConfigError(f"hydra.launcher.plots={plots!r} is not valid: expected true or false")


def stop_reason(sweep_dir: Path) -> str | None:
    try:
        return (sweep_dir / STOP_FILE).read_text().strip() or "an earlier job failed"
    except OSError:
        return None


def request_stop(sweep_dir: Path, reason: str) -> None:
    """Record the first failure; "x" mode, so with parallel jobs the first one to fail wins."""
    try:
        with open(sweep_dir / STOP_FILE, "x") as f:
            f.write(reason + "\n")
    except OSError:
        pass


def request_interrupt(sweep_dir: Path, signal_name: str, what: str) -> None:
    """A job was stopped by a signal (Ctrl-C, SIGTERM, a closed stdout): no later job starts."""
    try:
        with open(sweep_dir / INTERRUPT_FILE, "x") as f:
            f.write(f"{signal_name} {what}\n")
    except OSError:
        pass


def interrupted(sweep_dir: Path) -> tuple[str, str] | None:
    """(signal name, the job it stopped) if a job of this sweep was stopped by a signal."""
    try:
        name, _, what = (sweep_dir / INTERRUPT_FILE).read_text().strip().partition(" ")
    except OSError:
        return None
    return name or "SIGINT", what


# Hydra writes each job's .hydra/*.yaml before any code of ours runs in the job, so a resumed
# sweep would overwrite the record of a run it then skips or refuses (one of another config,
# say). on_multirun_start sets each earlier job's .hydra/ aside; the job puts it back.
def set_hydra_files_aside(sweep_dir: Path) -> None:
    """RunDirError, with every folder as it was, if one cannot be changed: Hydra might still write
    into its .hydra/ (a folder of another user's, say, whose .hydra/ is writable)."""
    moved: list[Path] = []
    for job in sweep_dir.iterdir():
        if (job / ".hydra").is_dir() and not (job / KEPT_HYDRA).exists():  # an earlier crash's copy is older
            if (job / SUMMARY).is_file() or (job / METRICS).is_file():
                try:
                    os.rename(job / ".hydra", job / KEPT_HYDRA)
                except OSError as e:
                    for done in moved:
                        put_hydra_files_back(done)
                    raise RunDirError(f"cannot resume the sweep in {sweep_dir}: its job folder {job} cannot be "
                                      f"changed ({e.strerror or e}); make it writable, or run the sweep afresh in "
                                      f"another hydra.sweep.dir") from None
                moved.append(job)


def put_hydra_files_back(job: Path, keep_old: bool = True) -> None:
    """The run's own .hydra/ back in place of the one Hydra just wrote (keep_old), or, for a
    job that starts afresh in the folder, the new one kept and the old one dropped."""
    kept = job / KEPT_HYDRA
    if not kept.is_dir():
        return
    if keep_old:
        shutil.rmtree(job / ".hydra", ignore_errors=True)
        os.rename(kept, job / ".hydra")
    else:
        shutil.rmtree(kept, ignore_errors=True)


def shown(overrides: Any) -> str:
    """A job's overrides as the user would type them, in one line (see shown_words)."""
    return " ".join(shown_words(overrides))


def shown_words(overrides: Any) -> list[str]:
    """Each of a job's overrides as the user would type it: Hydra's sweepers write a swept boolean
    as Python's True/False, where the config, the tables and the command line say true/false;
    a float Optuna proposed with 16 digits is shown with 4 (the run's config keeps them all)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, words = OverridesParser.create(), []
    for line in overrides or []:
        try:
            value = parser.parse_override(line).value()
        except HydraException:  # shown as it was given
            value = None
        key = line.split("=", 1)[0]
        if isinstance(value, bool):
            line = f"{key}={str(value).lower()}"
        elif isinstance(value, float) and len(repr(value)) > 10:  # an Optuna proposal, e.g. 0.06260326907499733
            line = f"{key}={value:.4g}"
        words.append(line)
    return words


@functools.lru_cache(maxsize=8)
def fixed_overrides(sweep_dir: Path) -> frozenset[str]:
    """The sweep's overrides that every job shares (no sweep syntax), from Hydra's multirun.yaml:
    a job's result line leaves them out, so it names what this job varies and fits the width."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        if (sweep_dir / MULTIRUN_YAML).is_file():
            task = yaml.safe_load((sweep_dir / MULTIRUN_YAML).read_text())["hydra"]["overrides"]["task"]
        else:  # Optuna writes no multirun.yaml: on_multirun_start kept them with the planned trials
            task = read_planned(sweep_dir)["overrides"]
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, HydraException):
        return frozenset()
    # both as typed and as the basic sweeper hands them to jobs (model.batch_norm=True for =true)
    return frozenset(form for o in parsed if not o.is_sweep_override()
                     for form in (o.input_line, f"{o.get_key_element()}={o.get_value_element_as_str()}"))


def varied(overrides: Sequence[str], fixed: frozenset[str]) -> list[str]:
    """The overrides of a job less those all jobs share (all of them if that leaves none)."""
    return [o for o in overrides if o not in fixed] or list(overrides)


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The basic sweeper's jobs, each as its overrides, in the order it launches them; None for
    another sweeper (Optuna proposes its trials as it goes)."""
    if not is_grid(config):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def is_grid(config: DictConfig) -> bool:
    """Whether Hydra's basic sweeper runs the sweep (a grid, every job known up front), not a search."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")


def typed(job_config: DictConfig) -> Any:
    """A job's composed config as the typed Config its run checks it into (ConfigError as the run
    would raise it); `job_config` is not changed. Only the task's keys are copied: the hydra node
    is most of a composed config (3x faster than copying all of it)."""
    from omegaconf import OmegaConf

    return from_dictconfig(OmegaConf.masked_copy(job_config, [key for key in job_config if key != "hydra"]))


def check_tensorboard() -> None:
    """log.tensorboard=true in a grid: refused whole when TensorBoard is missing, as a single run is,
    not once for every job."""
    from .tensorboard_events import TensorBoardMissing, require

    try:
        require()
    except TensorBoardMissing as e:
        raise ConfigError(f"{e}; no job was started") from None


def check_planned_jobs(config: DictConfig, jobs: list[list[str]] | None) -> list[dict[str, Any]] | None:
    """Every job's config checked as its run would check it, before the first starts: a bad value
    in the last job is refused now, not hours in (ConfigError naming the job), and so are two jobs
    given one folder (Hydra would write the second's .hydra/ over the first's record) or one
    outside the sweep. Returns each job's overrides and folder in the sweep (PLANNED_FILE's entries)."""
    from hydra.core.global_hydra import GlobalHydra

    from .composing import compose_once, keep_checked

    loader = GlobalHydra.instance().config_loader()
    compose_once(loader)
    keep = is_vectorized(config.hydra)  # its launcher takes the checked configs next
    subdir = config.hydra.sweep._get_node("subdir")._value()  # as given, for the messages
    planned: list[dict[str, Any]] = []
    first_in: dict[str, int] = {}  # folder -> the first job given it
    for num, job in enumerate(jobs or []):
        planned.append({"overrides": list(job), "folder": str(num)})
        try:
            job_config = loader.load_sweep_config(config, list(job))
        except Exception:  # noqa: BLE001 - a composition error: Hydra's own check reports it next
            continue
        try:
            typed_config = typed(job_config)
        except ConfigError as e:
            raise ConfigError(f"job {num} ({shown(job)}): {e}; no job was started") from None
        if typed_config.log.tensorboard:
            check_tensorboard()
        folder = job_folder(job_config, num)
        if keep:
            keep_checked(loader, config, list(job), num, job_config, typed_config)
        if folder is not None and (Path(folder).is_absolute() or ".." in Path(folder).parts):
            raise ConfigError(f"hydra.sweep.subdir={subdir} puts job {num} in {folder}, outside the sweep's folder; "
                              f"give a folder inside it, e.g. hydra.sweep.subdir='job${{hydra.job.num}}'; no job was "
                              f"started")
        if folder in first_in:
            raise ConfigError(f"hydra.sweep.subdir={subdir} gives jobs {first_in[folder]} and {num} the same folder "
                              f"({folder}); each job needs its own: include the job's number, e.g. "
                              f"hydra.sweep.subdir='{subdir}_${{hydra.job.num}}'; no job was started")
        planned[-1]["folder"] = folder or str(num)
        first_in[planned[-1]["folder"]] = num
    return None if jobs is None else planned


def job_folder(job_config: DictConfig, num: int) -> str | None:
    """The folder hydra.sweep.subdir gives job `num` (None if it cannot be resolved yet)."""
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    with open_dict(job_config):
        job_config.hydra.job.num = job_config.hydra.job.id = num  # as the launcher sets them
    try:
        return str(Path(str(job_config.hydra.sweep.subdir)))
    except OmegaConfBaseException:
        return None


def search_space(config: DictConfig) -> list[tuple[str, Any, str]]:
    """The values an Optuna search can propose that bound what it can propose: each value of a
    choice, both ends of an interval or range; as (key, value, where it comes from)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    parser = OverridesParser.create()
    for line in config.hydra.overrides.task:  # the command line's search space replaces the preset's
        o = parser.parse_override(str(line))
        if o.is_sweep_override():
            params[o.key_or_group] = str(line).split("=", 1)[1]
    values = []
    for key, text in params.items():
        space = parser.parse_override(f"{key}={text}").value()
        if isinstance(space, ChoiceSweep):
            values += [(key, v, "one of its choices") for v in space.list]
        elif isinstance(space, IntervalSweep):
            values += [(key, space.start, "the low end of its interval"), (key, space.end, "the high end of its interval")]
        elif isinstance(space, RangeSweep):
            steps = list(space.range())  # Hydra's own values, floats included
            if steps:
                values += [(key, steps[0], "the start of its range"), (key, steps[-1], "the end of its range")]
    return values


def check_search_space(config: DictConfig) -> None:
    """An Optuna search proposes its trials as it goes, so they cannot all be checked up front; the
    values that bound its search space can: each is checked as a run would check it (ConfigError
    naming it), so a bad bound is refused now, not when a trial happens to draw it."""
    import copy

    from omegaconf import OmegaConf, open_dict

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return
    base = copy.deepcopy(config)
    with open_dict(base):
        del base["hydra"]
    for key, value, where in search_space(config):
        trial = copy.deepcopy(base)
        with open_dict(trial):
            OmegaConf.update(trial, key, value, merge=True)
        try:
            from_dictconfig(trial)
        except ConfigError as e:
            raise ConfigError(f"the Optuna search can propose {key}={value} ({where}): {e}; no trial was started") from None


def checked_jobs(config: DictConfig) -> list[dict[str, Any]] | None:
    """planned_jobs, each checked (check_planned_jobs); a bad one ends the sweep in one line, before
    any job starts, taking back the sweep folder this start made."""
    from .claim import discard_if_empty

    try:
        jobs = planned_jobs(config)
        if jobs is None:
            check_search_space(config)
        return check_planned_jobs(config, jobs)
    except ConfigError as e:
        error_line(str(e))
        discard_if_empty(Path(str(config.hydra.sweep.dir)).resolve())
        raise SystemExit(EXIT_BAD_INPUT) from None  # not an Exception, so Hydra does not turn it into a warning


def read_planned(sweep_dir: Path) -> Any:
    """PLANNED_FILE as on_multirun_start wrote it: a grid's jobs (a list of {"overrides": [...],
    "folder": ...}; before 2026-12-07 a list of override lists, each in the folder of its number) or
    an Optuna search's {"trials": n, "overrides": [...], "hydra": [...]} (the command's task and hydra
    overrides, for `resume SWEEP_DIR`: Optuna writes no multirun.yaml); None if there is none or it
    is unreadable."""
    try:
        return json.loads((sweep_dir / PLANNED_FILE).read_text())
    except (OSError, ValueError):
        return None


def trials_not_started(sweep_dir: Path, runs: Sequence[Any]) -> str | None:
    """For an Optuna search stopped part way, e.g. '3 of 8 trials never started (...)'; else None.
    They cannot be rows: Optuna proposes each trial's values only when it is about to run."""
    planned = read_planned(sweep_dir)
    total = planned.get("trials") if isinstance(planned, dict) else None
    missing = total - len(runs) if isinstance(total, int) else 0
    if missing <= 0:
        return None
    return f"{missing} of {total} trials never started (an Optuna search proposes each trial's values only as it runs it)"


def not_started(sweep_dir: Path, runs: Sequence[Any]) -> list[Any]:
    """Rows for the planned jobs (PLANNED_FILE) that have no run: a sweep stopped before them. A
    job has run if its planned folder holds a run, or a run holds its overrides: the planned
    folder is a guess where hydra.sweep.subdir names the launcher's job id or the time."""
    planned = read_planned(sweep_dir)
    have = {job_key(sweep_dir, run.path) for run in runs}
    ran: set[tuple[str, ...]] | None = None  # read only if a planned folder holds no run
    shared = next((run.config for run in runs if run.config), {})  # what the sweep's jobs have in common
    rows = []
    for num, job in enumerate(planned if isinstance(planned, list) else []):
        overrides, folder = (job.get("overrides"), job.get("folder")) if isinstance(job, dict) else (job, str(num))
        if not isinstance(overrides, list) or not isinstance(folder, str) or folder in have:
            continue
        if ran is None:
            ran = {tuple(job_overrides(run.path)) for run in runs}
        if tuple(map(str, overrides)) not in ran:
            own = {w.split("=", 1)[0]: yaml.safe_load(w.split("=", 1)[1]) for w in map(str, overrides) if "=" in w}
            rows.append(saved_runs.Run(path=sweep_dir / folder, label=folder, group=sweep_dir,
                                       status="not started", config={**shared, **own}))
    return rows


def job_overrides(run_dir: Path) -> list[str]:
    """The overrides Hydra recorded for the job in run_dir, else those its summary.json keeps
    (hydra.output_subdir=null writes no .hydra/); [] if there is no readable record."""
    try:
        recorded = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        try:
            recorded = json.loads((run_dir / SUMMARY).read_text()).get("overrides")
        except (OSError, ValueError, AttributeError):
            return []
    return [str(o) for o in recorded] if isinstance(recorded, list) else []


def job_key(sweep_dir: Path, run_dir: Path) -> str:
    """The job folder's path within the sweep folder ('' for one outside it)."""
    try:
        return str(run_dir.resolve().relative_to(sweep_dir.resolve()))
    except (OSError, ValueError):
        return ""


def record_refused(sweep_dir: Path, run_dir: Path, why: str) -> None:
    """A job refused in this pass whose folder holds an earlier run: that run is not this
    job's result, so the report lists the job as refused, not with the earlier run's status."""
    try:
        with open(sweep_dir / REFUSED_FILE, "a") as f:  # one short line per write: parallel jobs don't interleave
            f.write(f"{job_key(sweep_dir, run_dir)}\t{why}\n")
    except OSError:
        pass


def unsaved_end(run: saved_runs.Run) -> saved_runs.Run:
    """A run of this process that failed on a write its summary.json may not show: `failed`, not
    the `running` its file still says."""
    from .runner import UNSAVED_ENDS

    error = UNSAVED_ENDS.get(str(run.path.resolve()))
    if error is None or run.status not in ("running", "incomplete"):
        return run
    run.status, run.note = "failed", error
    return run


def refused_jobs(sweep_dir: Path) -> dict[str, str]:
    try:
        lines = (sweep_dir / REFUSED_FILE).read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def launcher_threads(launcher: Any, cores: int) -> int | None:
    """torch threads for a job whose config says threads=null, from the launcher running it.

    joblib runs n_jobs jobs side by side on this machine: cores // n_jobs each (n_jobs=-1, its
    default, is one job per core, so 1 thread each); submitit: the cpus_per_task it asked the
    scheduler for, if set. Otherwise None: torch's own default.
    """
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = launcher.get("n_jobs") or -1
        at_once = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 all cores, -2 all but one
        return max(1, cores // at_once)
    if "hydra_submitit_launcher" in target and launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    return None


def sweep_job(dcfg: DictConfig, run_dir: Path, hydra_cfg: Any) -> float:
    """One job of a sweep (called by cli.hydra_main): the sweep options, then cli.run."""
    if in_own_process(hydra_cfg):
        from .runner import StopRequest, set_handlers

        # A Ctrl-C reaches this process too: as in a single run, one that comes while the job
        # starts stops it at the first batch. Between jobs the process has nothing to stop, and
        # the waiting process (WaitingForJobs) has marked the sweep stopped for the next job.
        starting = StopRequest(starting=True)
        previous = set_handlers({signal.SIGINT: starting, signal.SIGTERM: starting})
        try:
            return _sweep_job(dcfg, run_dir, hydra_cfg)
        finally:
            set_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: previous[signal.SIGTERM]})
    return _sweep_job(dcfg, run_dir, hydra_cfg)


def in_own_process(hydra_cfg: Any) -> bool:
    """Whether the launcher runs each job in a process other than the sweep's (joblib, submitit)."""
    return "BasicLauncher" not in str(hydra_cfg.launcher.get("_target_", "")) and not is_vectorized(hydra_cfg)


@dataclass
class SweepJob:
    """One job of a sweep, as the sweep callback sees it: where it runs and how it reports."""

    run_dir: Path
    sweep_dir: Path
    opts: dict[str, Any]
    what: str  # e.g. "job 1 (optim.lr=0.1)"

    def failed(self, reason: str) -> float:
        if self.opts["fail_fast"] is True:
            request_stop(self.sweep_dir, f"{self.what} {reason}")
        return FAILED_SCORE

    def refused_holding_a_run(self, message: str, why: str) -> float:
        refuse(message, EXIT_BAD_INPUT, in_sweep=True)
        record_refused(self.sweep_dir, self.run_dir, why)
        return self.failed("was refused")


@dataclass
class Pending:
    """A job ready to train (prepare_job's checks passed): the vectorised launcher trains such
    jobs as groups, train_job one at a time."""

    job: SweepJob
    cfg: Any
    overrides: list[str]
    resume: bool


def _sweep_job(dcfg: DictConfig, run_dir: Path, hydra_cfg: Any) -> float:
    ready = prepare_job(dcfg, run_dir, hydra_cfg)
    return ready if not isinstance(ready, Pending) else train_job(ready, hydra_cfg)


def prepare_job(dcfg: DictConfig, run_dir: Path, hydra_cfg: Any) -> float | Pending:
    """Everything a sweep's job does before it trains: the sweep's stop marks, its folder, an
    earlier run there (skipped, refused or resumed), its config; the score of a job that ends
    here, else the Pending job."""
    from .claim import discard_if_empty

    job = SweepJob(run_dir, Path(str(hydra_cfg.sweep.dir)).resolve(), options(hydra_cfg),
                   f"job {hydra_cfg.job.num} ({shown(hydra_cfg.overrides.task) or 'no overrides'})")
    sweep_dir, opts = job.sweep_dir, job.opts
    if sweep_dir not in run_dir.parents:  # e.g. hydra.sweep.subdir=../.. set in a config file of the user's
        refuse(f"{job.what}: its folder {run_dir} is not inside the sweep's {sweep_dir}; set hydra.sweep.subdir to "
               f"a folder inside it", EXIT_BAD_INPUT, in_sweep=True)
        return job.failed("was refused")
    # killed before its first summary.json: no epoch was completed, so it starts afresh
    fresh_start = (opts["resume"] is True and not (run_dir / SUMMARY).exists() and (run_dir / METRICS).exists()
                   and not (run_dir / WEIGHTS).exists() and len((run_dir / METRICS).read_text().splitlines()) <= 1)
    put_hydra_files_back(run_dir, keep_old=not fresh_start)
    if interrupted(sweep_dir) or (opts["fail_fast"] is True and stop_reason(sweep_dir)):
        discard_if_empty(run_dir, claimed_only=False)
        return FAILED_SCORE  # on_job_end reports it as not run
    with contextlib.ExitStack() as held:
        if opts["resume"] is True and (run_dir / SUMMARY).exists():
            try:  # as `backprop-lab resume` does: two sweeps resumed at once must not both train a job
                held.enter_context(locked(run_dir))
            except (OSError, RunDirError) as e:
                return job.refused_holding_a_run(
                    str(e) if isinstance(e, RunDirError) else f"cannot resume {run_dir}: {e.strerror or e}",
                    "its folder's run is being resumed by another process" if isinstance(e, RunDirError)
                    else f"its folder cannot be written ({e.strerror or e})")
        try:
            check_options(hydra_cfg)
            cfg = from_dictconfig(dcfg)
        except ConfigError as e:
            refuse(str(e), EXIT_BAD_INPUT, in_sweep=True)
            return job.failed("was refused")
        resume = False
        if (run_dir / SUMMARY).exists():
            outcome = earlier_run(job, cfg)
            if outcome is not True:
                return outcome
            resume = True
        elif fresh_start:
            (run_dir / METRICS).unlink()
            (run_dir / CHECKPOINT).unlink(missing_ok=True)
        return Pending(job, cfg, list(hydra_cfg.overrides.task), resume)


def earlier_run(job: SweepJob, cfg: Any) -> float | bool:
    """A job whose folder holds a run: True to resume it, else the score to return (skipped as
    completed or diverged, or refused in one line)."""
    from .runs import check_files, checked_summary  # as `backprop-lab resume` checks a run

    run_dir = job.run_dir
    if not job.opts["resume"]:
        return job.refused_holding_a_run(
            f"{run_dir} already holds a run; it is kept as it is: to continue this sweep add "
            f"hydra.callbacks.sweep_report.resume=true, or choose another hydra.sweep.dir",
            "its folder already holds a run")
    try:
        summary = checked_summary(run_dir)
    except RunDirError as e:
        return job.refused_holding_a_run(str(e), f"its folder's {SUMMARY} is unreadable or damaged")
    changes = config_changes(summary.get("config") or {}, cfg)
    if changes:
        diff = ", ".join(changes)
        return job.refused_holding_a_run(f"cannot resume {run_dir}: it holds a run of another config: {diff}; "
                                         f"the sweep command must be the one that made this sweep",
                                         f"its folder holds a run of another config: {diff}")
    status = effective_status(summary)
    if status in ("completed", "diverged"):  # final: the same config and seed give the same outcome
        acc = summary.get("final_test_acc")
        say(job, f"{job.what}: already {status} in {run_dir}; skipped")
        return float(acc) if status == "completed" and acc is not None else FAILED_SCORE
    if status == "running":
        return job.refused_holding_a_run(still_running(run_dir, summary), "its folder's run is still running")
    try:
        from .train import resolve_device

        check_files(run_dir, summary, str(resolve_device(cfg.device)))
    except (ConfigError, RunDirError) as e:
        return job.refused_holding_a_run(str(e), f"its folder's run cannot be resumed: {e}")
    say(job, f"{job.what}: {status} in {run_dir} after {plural(summary.get('epochs_completed') or 0, 'epoch')}; "
             f"resuming")
    return FAILED_SCORE if interrupted(job.sweep_dir) else True  # a closed stdout: it stays as it is


def say(job: SweepJob, line: str) -> None:
    """A line from inside a job's task; a closed stdout stops the sweep, as in on_job_end."""
    with closed_stdout(job.sweep_dir, job.what):
        OutputConsole(highlight=False, soft_wrap=True).print(line, markup=False)


def train_job(ready: Pending, hydra_cfg: Any) -> float:
    """Train (or resume) the job with the launcher's share of the cores; its score for the sweeper."""
    from .runner import run

    job, cfg = ready.job, ready.cfg
    threads = None if cfg.threads is not None else launcher_threads(hydra_cfg.launcher, cpu_cores())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    # quiet unless verbose: the job's tables are in its folder (show), its result line comes from
    # on_job_end; no progress bar from a process of its own, whose lines would interleave
    acc = run(cfg, job.run_dir, ready.overrides, in_sweep=True, resume=ready.resume,
              quiet=job.opts["verbose"] is not True, progress=not in_own_process(hydra_cfg))
    return job_score(job, acc)


def job_score(job: SweepJob, acc: float | None) -> float:
    """What the sweeper gets for a job that ran (`acc`: runner.run's, None unless it completed);
    a job stopped by a signal marks the sweep stopped, a failed one counts for fail_fast."""
    try:
        summary = read_summary(job.run_dir)
    except (OSError, ValueError):
        summary = None
    if summary is not None and summary.get("signal"):
        request_interrupt(job.sweep_dir, summary["signal"], job.what)
        return FAILED_SCORE  # run() returns None once a signal stopped it, even after training
    if acc is None:
        return job.failed(effective_status(summary) if summary is not None else "was refused")
    return acc


def job_line(num: Any, overrides: list[str], run: saved_runs.Run, job_return: JobReturn | None = None) -> str:
    """e.g. `job 1  model.hidden_size=16  ->  test acc 11.35%, completed, 0.0 s`."""
    head = f"job {num}  {shown(overrides) or '(no overrides)'}  ->  "
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


def other_overrides(sweep_dir: Path, overrides: list[str]) -> str:
    """The single-valued overrides, of keys swept in neither pass, by which `overrides` differ
    from those of the pass that last ran in sweep_dir (Hydra's multirun.yaml), e.g.
    "train.epochs=4 there, train.epochs=5 here": they change every job's config, so every
    earlier job would be refused. "" if there are none, or no record (Optuna writes none).
    Swept values may differ: a sweep can be resumed with more of them."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        recorded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        parsed = OverridesParser.create().parse_overrides(list(recorded) + list(overrides))
    except Exception:  # noqa: BLE001 - an unreadable record: each job still compares its config
        return ""
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    single = {o.input_line for o in parsed if o.key_or_group not in swept}
    there = [o for o in recorded if o in single and o not in overrides]
    here = [o for o in overrides if o in single and o not in recorded]
    if not there and not here:
        return ""
    return f"{' '.join(there) or 'none'} there, {' '.join(here) or 'none'} here"


@contextlib.contextmanager
def refused_before_any_job() -> Any:
    """A sweep refused before its first job: one line and exit 2. SystemExit, not an Exception,
    so that Hydra does not turn it into a warning and go on."""
    try:
        yield
    except LabError as e:
        error_line(str(e))
        raise SystemExit(EXIT_BAD_INPUT) from None


def unusable_sweep_folder(doing: str, sweep_dir: Path, why: Any) -> RunDirError:
    return RunDirError(f"cannot {doing} the sweep directory {sweep_dir}: {why}; run from a writable folder or set "
                       f"hydra.sweep.dir=<writable path>")


def make_sweep_folder(sweep_dir: Path) -> None:
    """Made here, as Hydra's launcher would next, so a path that cannot be a folder is one line."""
    from .claim import not_a_folder

    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = not_a_folder(sweep_dir) if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise unusable_sweep_folder("create", sweep_dir, why) from None


# The sweep folders this process holds, by path: not on SweepReport, which submitit pickles.
HELD_FOLDERS: dict[str, contextlib.ExitStack] = {}


def hold_sweep_folder(sweep_dir: Path) -> contextlib.ExitStack:
    """The sweep folder's lock, held until the sweep's report is written: a second command on the
    same folder (a resume started twice) is refused whole, before it clears or marks anything."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(locked(sweep_dir, busy="is the folder of a sweep run by"))
    except OSError as e:
        raise unusable_sweep_folder("write in", sweep_dir, e.strerror or e) from None
    return held


def check_sweep_folder(sweep_dir: Path, resume: bool, overrides: list[str]) -> None:
    """Refuse a folder that holds other runs, or another sweep unless this pass resumes it with
    the same overrides: nothing already there is mixed in or overwritten."""
    # e.g. hydra.sweep.dir=outputs: its runs sit 2 levels down, this sweep's jobs would sit 1 down
    inner = next((found for depth in range(2, 5) for found in sweep_dir.glob("*/" * depth + SUMMARY)), None)
    is_sweep = saved_runs.is_sweep_root(sweep_dir)
    if inner is not None and not is_sweep:  # a sweep's own jobs: refused below
        raise RunDirError(f"hydra.sweep.dir={sweep_dir} holds other runs ({inner.parent}); a sweep needs a folder of "
                          f"its own, or `compare` would mix its jobs with them: choose a new one, e.g. "
                          f"{sweep_dir / 'sweep1'}")
    earlier = [d.name for d in sweep_dir.iterdir() if (d / SUMMARY).is_file() or (d / METRICS).is_file()]
    if inner is not None and not earlier:  # a sweep whose hydra.sweep.subdir put its jobs deeper
        raise RunDirError(f"{sweep_dir} already holds a sweep (jobs such as {inner.parent}); it is kept as it is: " + (
            "a sweep whose jobs sit in folders within folders cannot be resumed as a whole: resume each job with "
            "backprop-lab resume JOB_DIR" if resume else "choose another hydra.sweep.dir"))
    if earlier and not is_sweep:
        raise RunDirError(f"hydra.sweep.dir={sweep_dir} holds runs ({len(earlier)}) but no sweep (none of "
                          f"{', '.join(SWEEP_MARKS)}); a sweep needs a folder of its own: choose a new one, "
                          f"e.g. {sweep_dir / 'sweep1'}")
    if earlier and not resume:
        raise RunDirError(f"{sweep_dir} already holds a sweep ({len(earlier)} job folder(s)); it is kept as it is: "
                          f"choose another hydra.sweep.dir, or add hydra.callbacks.sweep_report.resume=true to "
                          f"continue it")
    other = other_overrides(sweep_dir, overrides) if earlier else ""
    if other:
        raise RunDirError(f"{sweep_dir} was made by a sweep with other overrides ({other}); to resume it, give the "
                          f"same ones; it is kept as it is (for other values, choose another hydra.sweep.dir)")


def check_job_folders(sweep_dir: Path, planned: list[dict[str, Any]]) -> None:
    """A file where a grid's job folder goes would stop the sweep at that job with a traceback."""
    from .claim import in_the_way

    for job in planned:
        why = in_the_way(sweep_dir / job["folder"])
        if why:
            raise RunDirError(f"{why}, and the sweep's job {job['folder']} needs a folder there: move it, or choose "
                              f"another hydra.sweep.dir")


def mark_sweep_folder(sweep_dir: Path, sweeper: str) -> None:
    """Clear an earlier pass's stop marks; mark the folder a sweep's, whatever the sweeper (Optuna
    writes no multirun.yaml), so that a resume and `compare` know it."""
    try:
        for name in (STOP_FILE, INTERRUPT_FILE, REFUSED_FILE):
            (sweep_dir / name).unlink(missing_ok=True)
        (sweep_dir / SWEEP_MARK).write_text(f"{sweeper}\n")
    except OSError as e:
        raise unusable_sweep_folder("write in", sweep_dir, e.strerror or e) from None


@contextlib.contextmanager
def closed_stdout(sweep_dir: Path, what: str) -> Any:
    """`backprop-lab -m ... | head`: once the reader has gone, the sweep stops as it stops for
    Ctrl-C (no later job starts; the table is still written to the sweep's folder; exit 141)."""
    try:
        yield
    except BrokenPipeError:  # OutputConsole has pointed stdout at /dev/null: later lines go nowhere
        request_interrupt(sweep_dir, "SIGPIPE", what)


def stopped_by(signal_name: str) -> str:
    return "a closed standard output (broken pipe)" if signal_name == "SIGPIPE" else signal_name


def tolerate_killed_jobs() -> None:
    """submitit_local: a Ctrl-C reaches its job controllers too, and each one kills its job a
    second after passing the signal on. A job still starting (importing torch) then leaves no
    result, and submitit's Job.results raises, which Hydra reports in a traceback, with no
    table. Once the sweep was stopped by a signal, such a job is one that did not run."""
    try:
        from submitit.core.core import Job
        from submitit.core.utils import UncompletedJobError
    except ImportError:
        return
    results = Job.results
    if getattr(results, "tolerant", False):
        return

    def results_or_not_run(self: Any) -> Any:
        try:
            return results(self)
        except UncompletedJobError:
            if WaitingForJobs.current is None or WaitingForJobs.current.signum is None:
                raise
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=FAILED_SCORE)]

    results_or_not_run.tolerant = True  # type: ignore[attr-defined]
    Job.results = results_or_not_run


def finish_hint(sweep_dir: Path) -> str:
    return (f"to finish the sweep, run the same command with hydra.sweep.dir={sweep_dir} "
            f"hydra.callbacks.sweep_report.resume=true")


class WaitingForJobs:
    """SIGINT/SIGTERM handler of the process that waits for a joblib or submitit sweep's jobs.
    Those run in processes of their own, which get a terminal's Ctrl-C too and stop after
    their batch; this one marks the sweep stopped, so no new job starts, and waits for them,
    so the sweep's table and the command that finishes it still come. A second signal stops
    it at once (the launcher then ends the jobs)."""

    current: WaitingForJobs | None = None  # the sweep this process is waiting for

    def __init__(self, report: SweepReport, sweep_dir: Path) -> None:
        self.report, self.sweep_dir = report, sweep_dir
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            error_line(f"sweep stopped at once by {name}; {finish_hint(self.sweep_dir)}")
            raise SystemExit(EXIT_OF_SIGNAL.get(name, 130))
        self.signum = signum
        request_interrupt(self.sweep_dir, name, "")  # a job the signal stopped may have named itself first
        ErrorConsole().print(f"\n{name}: the running jobs stop after their batch and no new job starts "
                             f"(again to stop at once)")

    def finish(self) -> None:
        """After the launcher gave up waiting (a job's process was stopped before its run could
        note the signal): the table of what there is, and the command that finishes the sweep."""
        name = signal.Signals(self.signum or signal.SIGINT).name
        self.report.on_multirun_end_of(self.sweep_dir, stopped=(name, ""))


class SweepReport(Callback):
    def __init__(self, console: Console | None = None, resume: Any = False, fail_fast: Any = False,
                 verbose: Any = False):
        self.console = console  # the options are read by each job from the Hydra config

    def _console(self) -> Console:
        # a closed stdout (`backprop-lab -m ... | head`) raises BrokenPipeError: see `closed_stdout`
        return self.console or OutputConsole(highlight=False, soft_wrap=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the options and the sweep's folder before any job starts; claim the folder."""
        from .claim import check_not_a_run, check_sweep_subdir

        with refused_before_any_job():
            check_options(config.hydra)
            check_launcher(config.hydra)
            check_sweep_subdir(config.hydra.sweep._get_node("subdir")._value(),  # unresolved: before any job exists
                               search=not is_grid(config))
            sweep_dir = Path(str(config.hydra.sweep.dir))  # after the checks: resolving the default makes its folder
            check_not_a_run(sweep_dir)
        planned = checked_jobs(config)
        if str(config.hydra.sweeper.get("_target_", "")).endswith("OptunaSweeper"):
            import optuna  # its own "A new study created" line, on a logger of its own

            optuna.logging.set_verbosity(optuna.logging.WARNING)
        if in_own_process(config.hydra):
            from .runner import set_handlers

            WaitingForJobs.current = WaitingForJobs(self, sweep_dir)
            set_handlers({signal.SIGINT: WaitingForJobs.current, signal.SIGTERM: WaitingForJobs.current})
            if "hydra_submitit_launcher" in str(config.hydra.launcher.get("_target_", "")):
                tolerate_killed_jobs()
        resume = options(config.hydra)["resume"]
        with refused_before_any_job():
            make_sweep_folder(sweep_dir)
            held = HELD_FOLDERS[str(sweep_dir)] = hold_sweep_folder(sweep_dir)
            try:
                check_sweep_folder(sweep_dir, resume, list(config.hydra.overrides.task))
                check_job_folders(sweep_dir, planned or [])
                mark_sweep_folder(sweep_dir, str(config.hydra.sweeper.get("_target_", "sweeper")))
            except LabError:
                held.close()  # refused: the folder is left as it was found
                raise
        if resume:
            self._resuming(sweep_dir)
        if planned is not None:  # the table at the end lists the jobs that never started
            (sweep_dir / PLANNED_FILE).write_text(json.dumps(planned))
        elif isinstance(config.hydra.sweeper.get("n_trials"), int):  # Optuna: the end counts the trials not run
            (sweep_dir / PLANNED_FILE).write_text(json.dumps({"trials": config.hydra.sweeper.n_trials,
                                                              "overrides": list(config.hydra.overrides.task),
                                                              "hydra": list(config.hydra.overrides.hydra)}))

    def _resuming(self, sweep_dir: Path) -> None:
        earlier = saved_runs.collect([sweep_dir]) if sweep_dir.is_dir() else []
        try:
            set_hydra_files_aside(sweep_dir)
        except RunDirError as e:
            error_line(str(e))
            raise SystemExit(EXIT_BAD_INPUT) from None  # not an Exception, so Hydra does not turn it into a warning
        done = sum(r.status == "completed" for r in earlier)
        with closed_stdout(sweep_dir, ""):
            self._console().print(
                f"resume: {sweep_dir} holds {len(earlier)} earlier job(s), {done} completed: completed ones "
                f"are skipped, interrupted ones continue from their checkpoint" if earlier else
                f"resume: nothing to resume in {sweep_dir} (no earlier jobs there); running every job",
                markup=False)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = job_return.hydra_cfg.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        # Not job_return's copy: it has lost the config's resolver cache, so its ${now:...} would
        # be read again, and name another folder once the job has crossed a second.
        sweep_dir = Path(str(HydraConfig.get().sweep.dir))
        with closed_stdout(sweep_dir, f"job {hydra_cfg.job.num}"):
            self._job_line(hydra_cfg, job_return, sweep_dir)

    def _job_line(self, hydra_cfg: Any, job_return: JobReturn, sweep_dir: Path) -> None:
        run_dir = Path(hydra_cfg.runtime.output_dir)
        reason = stop_reason(sweep_dir)
        stopped = interrupted(sweep_dir)
        if (reason or stopped) and not run_dir.exists():
            words = varied(list(job_return.overrides or []), fixed_overrides(sweep_dir))
            head = f"job {hydra_cfg.job.num}  {shown(words) or '(no overrides)'}  ->  "
            why = f"the sweep was stopped by {stopped_by(stopped[0])}{f' ({stopped[1]})' * bool(stopped[1])}" if stopped else \
                f"fail-fast, {reason}"
            self._console().print(head + f"not run: {why}", markup=False)
            return
        run = unsaved_end(saved_runs.load_run(run_dir, label=str(hydra_cfg.job.num)))
        held = refused_jobs(sweep_dir).get(job_key(sweep_dir, run_dir))
        if held:  # sweep_job refused it: its folder's results are not this job's
            run.status, run.note = "refused", held
        elif not run_dir.exists() or (run.status == "incomplete" and run.epochs_completed is None):
            run.status, run.note = "refused", run.note if run_dir.exists() else "no run directory"
        words = varied(list(job_return.overrides or []), fixed_overrides(sweep_dir))
        self._console().print(job_line(hydra_cfg.job.num, words, run, job_return),
                              markup=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_multirun_end_of(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end_of(self, sweep_dir: Path, stopped: tuple[str, str] | None = None) -> None:
        try:
            self._end_of(sweep_dir, stopped)
        finally:
            HELD_FOLDERS.pop(str(sweep_dir), contextlib.ExitStack()).close()  # once its report is written

    def _end_of(self, sweep_dir: Path, stopped: tuple[str, str] | None = None) -> None:
        for job in sweep_dir.glob(f"*/{KEPT_HYDRA}"):  # the jobs of a resumed sweep that never started
            put_hydra_files_back(job.parent)
        try:
            runs = self._report(sweep_dir)
        except BrokenPipeError:  # the table's reader went away: the sweep itself ended as it did
            runs, closed = saved_runs.collect([sweep_dir]), True
        else:
            closed = False
        stopped = interrupted(sweep_dir) or stopped
        if stopped:  # e.g. while the last job drew its plots: then there is nothing to finish
            done = bool(runs) and all(r.status == "completed" for r in runs) and not trials_not_started(sweep_dir, runs)
            error_line(f"sweep stopped by {stopped_by(stopped[0])}{f' in {stopped[1]}' * bool(stopped[1])}; " + (
                "every job had completed (only analysis plots may be missing)" if done else
                f"no job was started after it; {finish_hint(sweep_dir)}"))
            raise SystemExit(EXIT_OF_SIGNAL.get(stopped[0], 130))
        reason = stop_reason(sweep_dir)
        if reason:
            error_line(f"fail-fast: {reason}; no job was started after it")
            raise SystemExit(EXIT_FAILED)  # not an Exception, so Hydra does not turn it into a warning
        if not any(r.status == "completed" for r in runs):  # a script must be able to tell
            error_line("no job of this sweep completed: each one failed, diverged or was refused (see above)")
            raise SystemExit(EXIT_FAILED)
        if closed:  # as any command whose output was cut short: quietly
            raise SystemExit(EXIT_SIGPIPE)

    def _report(self, sweep_dir: Path) -> list[Any]:
        """Prints and writes the sweep's table; returns its runs (none if no job left a folder)."""
        console = self._console()
        if not sweep_dir.is_dir():
            return []  # nothing ran (e.g. every job was rejected before Hydra made a folder)
        runs = saved_runs.collect([sweep_dir])
        runs += not_started(sweep_dir, runs)  # a sweep stopped before its first job: all of them
        if not runs:
            return []
        held = refused_jobs(sweep_dir)
        # the earlier run in the folder of a job refused this pass is not that job's result
        runs = [saved_runs.Run(path=r.path, label=r.label, group=r.group, status="refused", note=held[key])
                if (key := job_key(sweep_dir, r.path)) in held else unsaved_end(r) for r in runs]
        runs = compare.sort_runs(runs, "test_acc")
        keys = compare.differing_keys(runs)
        compare.write_csv(str(sweep_dir / SUMMARY_CSV), runs, keys)  # first: a closed stdout stops the printing
        compare.write_json(str(sweep_dir / SUMMARY_JSON), runs, keys)
        console.print()
        # not the soft-wrapping console of the result lines: the table's title wraps to the width
        compare.print_table(self.console or OutputConsole(highlight=False), runs, keys,
                            title=f"sweep {sweep_dir}: {plural(len(runs), 'job')}, best test acc first",
                            hint=f"show them with: backprop-lab compare {sweep_dir} --keys KEY,KEY")
        untried = trials_not_started(sweep_dir, runs)
        if untried:
            import textwrap

            console.print(textwrap.fill(untried, width=console.width), markup=False)
        if (sweep_dir / OPTUNA_RESULTS).is_file() and any(r.status == "completed" for r in runs):
            console.print(f"Optuna's best parameters: {OPTUNA_RESULTS} in the sweep's folder", markup=False)
        elif (sweep_dir / OPTUNA_RESULTS).is_file():  # its best is a trial scored FAILED_SCORE
            console.print(f"no trial completed, so {OPTUNA_RESULTS} names no real best", markup=False)
        console.print(f"wrote {SUMMARY_CSV} and {SUMMARY_JSON} in the sweep's folder", markup=False)
        return runs
