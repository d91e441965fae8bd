"""Errors as the user meets them: the exit codes (one table), the error types (one hierarchy), and
the one way an error reaches the terminal (a single line on stderr, never a traceback).

Every error a user can cause is a `LabError` whose message is one line naming what is wrong and
what to do; the modules that find them subclass it (config.ConfigError, data.DataError,
rundir.RunDirError, RunError for saved runs and options, predict.PredictError).
Nothing here imports the rest of backprop-lab: every module may import it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

# --- exit codes: the one table --------------------------------------------------------------
EXIT_OK = 0
EXIT_FAILED = 1  # failed unexpectedly or a write failed; a sweep where no job completed
EXIT_NO_RUNS = 1  # like grep: "nothing found" is a result, not an error, but a script should notice it
EXIT_BAD_INPUT = 2  # a bad value, path, option or file: refused before anything is written
EXIT_DIVERGED = 3  # the loss became NaN/inf or exploded (train.max_loss_ratio)
EXIT_SIGINT = 130  # 128 + the signal's number, as a shell reports a command it stopped
EXIT_SIGPIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose output pipe closed
EXIT_SIGTERM = 143
EXIT_OF_SIGNAL = {"SIGINT": EXIT_SIGINT, "SIGTERM": EXIT_SIGTERM, "SIGPIPE": EXIT_SIGPIPE}

log = logging.getLogger("backprop_lab")


# --- error types: one hierarchy ----------------------------------------------------------------


class LabError(Exception):
    """An error the user can cause and fix; the message is one line meant for them."""


class RunError(LabError, ValueError):
    """A saved run directory, file or option that cannot be used."""


# --- the one way an error is shown ------------------------------------------------------------


def to_devnull(stream: Any) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so later writes (Python's final
    flush too) go nowhere instead of failing again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


class ErrorConsole(Console):
    """Rich's Console on stderr, except that a closed stderr (`backprop-lab ... 2>&1 | head`) is
    not a reason to change the exit status: rich would exit 1 there; the line is dropped."""

    def __init__(self) -> None:
        super().__init__(stderr=True, soft_wrap=True, highlight=False)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        to_devnull(sys.stderr)


stderr = ErrorConsole()


def error_line(message: str) -> None:
    """One line on stderr, never wrapped: how every user-facing error ends."""
    ErrorConsole().print(f"[bold red]error:[/bold red] {escape(message)}")  # the message's own [...] is text


def warning_line(message: str) -> None:
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[yellow]warning:[/yellow] {message}")


def refuse(message: str, code: int, in_sweep: bool) -> None:
    """Report a run's end in one line; outside a sweep, exit with `code`. In a sweep the
    other jobs must go on, so the job just returns."""
    error_line(message)
    log.error(message)
    if not in_sweep:
        sys.exit(code)


def cannot_write(run_dir: Path, e: OSError, then: str) -> str:
    """One line for a write into the run directory that failed, saying how to go on."""
    fix = "free some space" if e.errno == errno.ENOSPC else "make it writable"
    return f"cannot write to the run directory {run_dir}: {(e.strerror or str(e)).lower()}; {fix}, then {then}"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class SubcommandParser(argparse.ArgumentParser):
    """argparse's parser for the subcommands, except that a usage error ends as every other
    error here does, in one line (argparse prints the usage first, which buries the reason):
    `error: <argparse's message>; see backprop-lab <sub> --help`, exit 2."""

    def error(self, message: str) -> NoReturn:
        error_line(f"{message}; see {self.prog} --help")
        raise SystemExit(EXIT_BAD_INPUT)
