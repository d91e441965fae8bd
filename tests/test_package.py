"""The built wheel, installed (not editable) in a fresh virtual environment, works from a folder
outside the clone: configs, presets, the shipped data, a sweep with the joblib launcher and the
commands. The fresh environment borrows the test environment's dependencies through a .pth
file (no download); `.ci/run` also runs tools/wheel_check.sh, which installs them for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines()
                if "warning" in line.lower() and "WARNING: Location" not in line]  # pip's notes on this machine's index folders
    assert problems == []  # setuptools says nothing: every data folder is declared
    return next(out.glob("backprop_lab-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel; its dependencies are this environment's."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]  # torch, Hydra, ... (not backprop_lab: its editable finder is not loaded)
    Path(site, "borrowed_dependencies.pth").write_text(deps + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return subprocess.run([str(bin_dir / "backprop-lab"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**env, "COLUMNS": "120"})


def test_the_wheel_holds_every_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"backprop_lab/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    data = {f"backprop_lab/datasets/mnist/{p.name}" for p in (ROOT / "backprop_lab/datasets/mnist").iterdir()}
    assert configs and configs <= names and data <= names


def test_the_installed_wheel_runs_every_command_from_any_folder(installed, tmp_path):
    work = tmp_path / "somewhere"
    work.mkdir()
    probe = subprocess.run([str(installed / "python"), "-c", "import backprop_lab; print(backprop_lab.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(installed.parent) in probe  # the installed copy, not the clone

    assert run(installed, work, "--help").returncode == 0
    shown = run(installed, work, "experiment=article", "--cfg", "job")
    assert shown.returncode == 0 and "epochs: 20" in shown.stdout
    single = run(installed, work, "data.train_subset=500", "train.epochs=1", "hydra.run.dir=outputs/one")
    assert single.returncode == 0, single.stderr
    sweep = run(installed, work, "-m", "optim.lr=0.05,0.1", "data.train_subset=500", "train.epochs=1",
                "hydra/launcher=joblib", "hydra.sweep.dir=outputs/sweep")
    assert sweep.returncode == 0, sweep.stderr
    assert (work / "outputs/sweep/sweep_summary.json").is_file()
    # the launcher plugin ships in the wheel, and Hydra's own scan finds it there
    plugins = run(installed, work, "--info", "plugins")
    assert "VectorizedLauncher" in plugins.stdout, plugins.stdout
    grouped = run(installed, work, "-m", "optim.lr=0.05,0.1", "data.train_subset=500", "train.epochs=1",
                  "hydra/launcher=vectorized", "hydra.sweep.dir=outputs/vec")
    assert grouped.returncode == 0 and "2 x 784-128-10, varying optim.lr" in grouped.stdout, grouped.stderr
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]  # Hydra's convention, nothing else
    one = work / "outputs/one"
    assert json.loads((one / "summary.json").read_text())["status"] == "completed"
    for args in (["compare", "outputs"], ["show", str(one)], ["predict", str(one), "--from-test", "0"],
                 ["gradcheck"], ["bench", "--help"]):
        proc = run(installed, work, *args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    resumed = run(installed, work, "resume", str(one))
    assert resumed.returncode == 0 and "nothing to do" in resumed.stdout + resumed.stderr
