"""hydra/launcher=vectorized: the jobs Hydra's sweeper hands over (a grid, or a batch of Optuna
trials) are grouped by everything that changes shapes or code paths, and each group of same-shape
jobs trains as one model (group_runner, members); the plugin class in hydra_plugins/ only calls
`launch`.

A job runs one by one, as the basic launcher runs it, when its config is refused (it is reported
as in any sweep) or when no other job shares its group. A group's members each get a complete
run directory, with their own `.hydra/` files: `stage` makes the folder and those files for each
member first, as Hydra's run_job would (with no on_job_end), the group trains, then every
member's on_job_end reports it, so the sweep's result lines and table are those of any sweep.

A group larger than the memory budget (hydra.launcher.memory_gb; by default half of the memory
available when the batch starts, on a GPU 90 % of its free memory) is trained in parts, one after
another, never into an out-of-memory error.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from rich.console import Console

from .config import ConfigError
from .report import OutputConsole, plural

GPU_SHARE = 0.9  # of a GPU's free memory, for a group's members
RAM_SHARE = 0.5  # of the memory available on a CPU


@dataclass
class Planned:
    """One job of the batch: its number, overrides and composed config, its typed config, and the
    group `plan` puts it in (key None: it runs alone)."""

    idx: int
    overrides: list[str]
    config: DictConfig
    cfg: Any = None
    key: str | None = None


def compose_jobs(loader: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]], first: int) -> list[Planned]:
    """Each job's composed and typed config: those the sweep's checks made (a grid), else new."""
    from .composing import take_checked
    from .sweep import typed

    jobs = []
    for idx, overrides in enumerate(job_overrides, start=first):
        checked = take_checked(loader, config, list(overrides), idx)
        if checked is not None:
            jobs.append(Planned(idx, list(overrides), *checked))
            continue
        job_config = loader.load_sweep_config(config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = idx
            job_config.hydra.job.num = idx
        job = Planned(idx, list(overrides), job_config)
        try:
            job.cfg = typed(job_config)
        except ConfigError:  # its own run refuses it, in one line, as in any sweep
            pass
        jobs.append(job)
    return jobs


def budget(memory_gb: float | None, device: str) -> int:
    """Bytes a group's members may take (hydra.launcher.memory_gb, else a share of what is free)."""
    if memory_gb is not None:
        return int(memory_gb * 1e9)
    from .train import memory_available, resolve_device

    try:
        where = resolve_device(device)
    except ConfigError:
        where = None
    if where is not None and where.type == "cuda":
        import torch

        index = where.index if where.index is not None else torch.cuda.current_device()  # torch < 2.5 needs one
        return int(GPU_SHARE * torch.cuda.mem_get_info(index)[0])
    available = memory_available()
    return int(RAM_SHARE * available) if available is not None else 4 * 10 ** 9


def told_apart(groups: list[tuple[str, str]]) -> list[str]:
    """Each group's description (members.describe) and key (members.group_key), as plan lines;
    groups described alike get the values that set them apart, e.g. '(data.batch_size=32)'."""
    import json
    from collections import Counter

    from .runs import flatten

    alike = Counter(line for line, _ in groups)
    lines = []
    for line, key in groups:
        if alike[line] > 1:
            mine = flatten(json.loads(key))
            others = [flatten(json.loads(k)) for other, k in groups if other == line and k != key]
            apart = [name for name, value in mine.items() if any(o.get(name) != value for o in others)]
            line += f" ({' '.join(f'{name}={mine[name]}' for name in apart)})"
        lines.append(line)
    return lines


def plan(jobs: list[Planned], memory_gb: float | None) -> tuple[list[list[Planned]], list[str]]:
    """The units to run, in the order of their first job (a group's part, or one job alone), and
    the plan's lines for the terminal."""
    from .members import describe, group_key, member_bytes

    groups: dict[str, list[Planned]] = {}
    for job in jobs:
        if job.cfg is not None:
            job.key = group_key(job.cfg)
            groups.setdefault(job.key, []).append(job)
    units: list[list[Planned]] = []
    lines, splits = [], []
    for members in groups.values():
        if len(members) == 1:  # a group of one is a basic job
            members[0].key = None
            continue
        cfg = members[0].cfg
        n_train = cfg.data.train_subset or 60_000
        allowed, needs = budget(memory_gb, cfg.device), member_bytes(cfg, n_train)
        fits = max(1, allowed // needs)
        parts = [members[i:i + fits] for i in range(0, len(members), fits)]
        units += parts
        lines.append((describe([m.cfg for m in members]), members[0].key))
        if len(parts) > 1:
            over = f" (one member needs ~{needs / 1e9:.2g} GB, more than all of it)" if needs > allowed else ""
            splits.append(f"the group of {len(members)} trains in {len(parts)} parts of up to {fits}: memory "
                          f"budget{over}")
    alone = [job for job in jobs if job.key is None]
    units += [[job] for job in alone]
    units.sort(key=lambda unit: unit[0].idx)
    # one short line each, so the plan fits an 80-column terminal
    out = [f"vectorized: {plural(len(jobs), 'job')} -> {plural(len(lines), 'group') if lines else 'no group'}"]
    out += [f"  {line}" for line in told_apart(lines)] + [f"  {s}" for s in splits]
    if alone:
        out.append(f"  {plural(len(alone), 'job')} one by one")
    return units, out


def _prepare(task_cfg: DictConfig) -> Any:
    """The task function of a member's first pass: sweep.prepare_job's checks, no training."""
    from .group_runner import MemberLogs
    from .sweep import prepare_job

    hydra_cfg = HydraConfig.get()
    run_dir, logs = Path(hydra_cfg.runtime.output_dir).resolve(), MemberLogs()
    try:
        with logs.of(run_dir):  # a refusal's line goes to the job's log, as a basic job's; not to the terminal
            return prepare_job(task_cfg, run_dir, hydra_cfg)
    finally:
        logs.close()


def stage(context: Any, job: Planned) -> Any:
    """A member's folder, its `.hydra/` files and on_job_start, then `_prepare` as its task
    function: what Hydra's run_job does for a job before the job itself, with its JobReturn. Made
    here, not by run_job, which copies the whole composed config twice per job for what a
    member's staging never changes, and sets Hydra's own copy of config.hydra twice. The files
    are the same (hydra-core 1.3, pinned; the twin tests compare them). hydra.job.chdir is not
    followed: a group trains in one process, each member writing only to its own folder by path."""
    from hydra.core.utils import JobReturn, JobRuntime, JobStatus, env_override
    from omegaconf import OmegaConf, read_write

    config, hydra_config = job.config, HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(config)  # a copy of config.hydra (most of staging's time); ${hydra:...} reads it
    try:
        output_dir = Path(os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))))
        for runtime in (config.hydra.runtime, hydra_config.cfg.hydra.runtime):  # set in both, not copied again
            with read_write(runtime), open_dict(runtime):
                runtime.output_dir = str(output_dir)
        task_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=task_cfg, hydra_cfg=hydra_config.cfg,
                        working_dir=str(Path.cwd()))
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            files = output_dir / str(config.hydra.output_subdir)
            files.mkdir(parents=True, exist_ok=True)
            for name, node in (("config.yaml", task_cfg), ("hydra.yaml", hydra_config.cfg),
                               ("overrides.yaml", config.hydra.overrides.task)):
                (files / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
        with env_override(config.hydra.job.env_set):
            context.callbacks.on_job_start(config=config, task_function=_prepare)
            try:
                ret.return_value, ret.status = _prepare(task_cfg), JobStatus.COMPLETED
            except Exception as e:  # noqa: BLE001 - as run_job: the job failed, the sweep goes on
                ret.return_value, ret.status = e, JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        return ret
    finally:
        hydra_config.cfg = before


def run_group_unit(launcher: Any, unit: list[Planned]) -> dict[int, Any]:
    """A group (or a part of one): each member's folder and checks, the training, the reports."""
    from .group_runner import run_group
    from .sweep import Pending

    context = launcher.hydra_context
    # no logging set up per member here: group_runner.MemberLogs gives each member its own log file
    staged = [(job, stage(context, job)) for job in unit]
    pending = [ret for _, ret in staged if isinstance(ret._return_value, Pending)]
    if pending:
        for ret, score in zip(pending, run_group([ret.return_value for ret in pending], pngs=launcher.plots)):
            ret.return_value = score
    for job, ret in staged:
        HydraConfig.instance().cfg = ret.hydra_cfg  # the member's, as staged: set_config would copy it again
        context.callbacks.on_job_end(config=job.config, job_return=ret)
    return {job.idx: ret for job, ret in staged}


def show_plan(console: Console, lines: list[str]) -> None:
    """The plan, each line wrapped to a terminal's width; on a pipe a line stays one line (grep)."""
    for line in lines:
        text = textwrap.fill(line, width=console.width, subsequent_indent=" " * 4) if console.is_terminal else line
        console.print(text, markup=False)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Launcher.launch: every job of the batch, as groups where they can be; their JobReturns in order."""
    from hydra.core.utils import configure_log, run_job, setup_globals

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = compose_jobs(launcher.hydra_context.config_loader, config, job_overrides, initial_job_idx)
    from .mnist_files import prefetch
    from .sweep import closed_stdout, interrupted, stop_reason

    for root in {job.cfg.data.root for job in jobs if job.cfg is not None}:
        prefetch(root)  # read on another core while torch loads (plan imports it), as a run's start does
    units, lines = plan(jobs, launcher.memory_gb)
    if not (interrupted(sweep_dir) or stop_reason(sweep_dir)):  # else no job of the batch starts (Optuna's next)
        with closed_stdout(sweep_dir, ""):  # `| head`: no job starts, as for Ctrl-C
            show_plan(OutputConsole(highlight=False, soft_wrap=True), lines)
    returns: dict[int, Any] = {}
    for unit in units:
        if len(unit) == 1 and unit[0].key is None:
            returns[unit[0].idx] = run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function,
                                           config=unit[0].config, job_dir_key="hydra.sweep.dir",
                                           job_subdir_key="hydra.sweep.subdir")
        else:
            returns.update(run_group_unit(launcher, unit))
    return [returns[job.idx] for job in jobs]
