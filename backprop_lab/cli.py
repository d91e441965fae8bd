"""Command line: `backprop-lab [overrides]` trains one run (or a sweep with -m).

The path from the shell to the epoch loop is three hops: the entry point (`main` checks
the overrides and hands over to Hydra, whose task function `hydra_main` builds the typed
config) -> `run` (data, files, report) -> `train.train` (the loop). Subcommands (resume,
show, compare, bench, predict, gradcheck) live in their own modules and are imported only when named.
Every error the user can cause ends in one line on stderr and a non-zero exit status, never
a traceback; the full traceback of an unexpected failure goes to the run's log file.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from . import __version__
from .claim import _claimed, claim_run_dir, discard_if_empty, discard_named
from .config import CONF_DIR, ConfigError, from_dictconfig
from .errors import EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM, error_line, first_line, refuse, to_devnull
from .overrides import (SUBCOMMANDS, check_command, check_mode, check_overrides, check_shown_config, compose_as_given,
                        config_groups, note_sweep_preset, register_launcher)
from .rundir import RunDirError
from .runner import StopRequest, run, set_handlers

# --- a fresh run directory per run -------------------------------------------------------


# --- hop 1: the entry point --------------------------------------------------------------


def print_help(argv: list[str]) -> None:
    """`--help`, as Hydra's default template lays it out, without the listing of Hydra's own
    ~80 config groups that Hydra computes (and throws away) first: about a second here."""
    cfg = compose_as_given(argv)  # with --config-dir's files; a sweep's values left out: they make no one config
    if cfg is None:  # an override Hydra cannot apply: the lab's own config, as it ships
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", return_hydra_config=True)
    text = cfg.hydra.help
    groups = "\n".join(f"{name}: {', '.join(options)}" for name, options in sorted(config_groups().items()))
    with open_dict(cfg):
        del cfg["hydra"]
    print(f"{text.header}\n== Configuration groups ==\nCompose your configuration from those groups "
          f"(group=option)\n\n{groups}\n\n\n== Config ==\nOverride anything in the config (foo.bar=value)"
          f"\n\n{OmegaConf.to_yaml(cfg)}\n{text.footer}")


def print_hydra_help() -> None:
    """`--hydra-help`: conf/config.yaml's hydra.hydra_help.template, the flags and groups that work."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", return_hydra_config=True)
    print(str(cfg.hydra.hydra_help.template).replace("$VERSION", hydra.__version__))


def main(noted: Sequence[int] = ()) -> None:
    """`noted`: the signals that came while this module was imported (__main__ noted them)."""
    argv = sys.argv[1:]
    trains = not argv or argv[0] not in SUBCOMMANDS or argv[0] == "resume"
    # Ctrl-C or SIGTERM while Hydra, torch and the data load (seconds) would land in the middle
    # of an import as a traceback; this handler only notes it, and run() stops at the first batch.
    early = StopRequest(starting=True)
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = set_handlers({sig: early if trains else handler for sig, handler in defaults.items()})
    try:
        for signum in noted:  # the first asks for a stop at the first batch; a second stops now
            if not trains:
                early.signum = early.signum or signum
                raise KeyboardInterrupt
            early(signum, None)
        dispatch(argv)
    except BrokenPipeError:  # `backprop-lab ... | head`: the reader has what it wanted; end as a shell's SIGPIPE would
        to_devnull(sys.stdout)
        sys.exit(EXIT_SIGPIPE)
    except OmegaConfBaseException as e:  # e.g. hydra.run.dir='${oops}', resolved by Hydra outside any check of ours
        key = getattr(e, "full_key", None)
        error_line(f"{'cannot resolve ' + key + ': ' if key else ''}{first_line(e)}")
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # a second signal while starting: stop at once, leaving no empty run folder
        sweep = sys.modules.get(f"{__package__}.sweep")
        waiting = sweep.WaitingForJobs.current if sweep is not None else None
        if waiting is not None and waiting.signum is not None:  # a job's process was stopped while it started
            waiting.finish()
        name = signal.Signals(early.signum or signal.SIGINT).name
        for folder in _claimed.values():
            discard_if_empty(Path(folder).resolve())
        discard_named()
        error_line(f"stopped by {name} while starting; nothing was trained" if trains else f"stopped by {name}")
        sys.exit(EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT)
    finally:
        # after a finished run the process only exits: Python's finalization would put SIG_DFL
        # back for a Python handler, and a signal then would kill it (exit -2, not the run's)
        set_handlers({sig: signal.SIG_IGN if early.finished else handler for sig, handler in previous.items()})


def dispatch(argv: list[str]) -> None:
    """A subcommand, or Hydra's command line: one run, a sweep, or what --help/--cfg/... print."""
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, function = SUBCOMMANDS[argv[0]]
        sys.exit(getattr(importlib.import_module(module), function)(argv[1:]))
    if "--version" in argv:  # Hydra's own flag would name only Hydra's version
        print(f"backprop-lab {__version__} (Hydra {hydra.__version__})")
        return
    try:
        register_launcher(sweep="-m" in argv or "--multirun" in argv)
        check_command(argv)
        check_mode(argv)
        to_claim = check_overrides(argv)
        check_shown_config(argv)
        if "--help" in argv or "-h" in argv:
            print_help(argv)
            return
        if "--hydra-help" in argv:  # Hydra's own composes no app config, so lists what backprop-lab refuses
            print_hydra_help()
            return
        if to_claim is not None:  # once every check has passed, so a refusal leaves no folder
            claim_run_dir(to_claim)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        sys.exit(EXIT_BAD_INPUT)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(dcfg: DictConfig) -> float | None:
    """Hydra's task function: the typed config at the boundary, then one run."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep:  # resume, fail-fast, threads per launcher; returns a float for every job
        from .sweep import sweep_job

        return sweep_job(dcfg, run_dir, hydra_cfg)
    try:
        cfg = from_dictconfig(dcfg)
    except ConfigError as e:
        discard_if_empty(run_dir)
        return refuse(str(e), EXIT_BAD_INPUT, in_sweep)
    note_sweep_preset(hydra_cfg)
    return run(cfg, run_dir, list(hydra_cfg.overrides.task), in_sweep)


# --- hop 2: one run ----------------------------------------------------------------------


if __name__ == "__main__":
    main()
