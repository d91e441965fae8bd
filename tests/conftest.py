"""Shared helpers: the real CLI as a subprocess, the real config composed with Hydra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
SHARED_MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


def run_cli(*args: str, cwd: Path, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """`backprop-lab ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "backprop_lab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose("config", overrides=list(overrides))


@pytest.fixture(autouse=True)
def signal_handlers_kept():
    """The entry point (cli.main) leaves SIGINT and SIGTERM ignored after a finished run, as its
    process is about to end; here the process goes on, so pytest's own handlers come back."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def small_mnist():
    from backprop_lab.data import load_mnist

    return load_mnist(train_subset=2000)
