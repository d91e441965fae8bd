"""The run directory's files, written by one writer.

    metrics.csv    one row per completed epoch, appended and flushed as each epoch ends
    grads.csv      per epoch and layer: gradient norm, weight norm, update-to-weight ratio
    summary.json   status and headline results; rewritten atomically (temp file + rename)
    weights.pt     the final parameters, a dict of CPU tensors for torch.load
    checkpoint.pt  the state after the last completed epoch (parameters, momentum buffers,
                   the shuffle and dropout generators, config hash, that epoch's metrics
                   row and per-layer statistics), rewritten atomically each epoch
    .hydra/        Hydra's resolved config and overrides (written by Hydra itself)
    .backprop-lab.lock  present only while `resume` continues the run: holds its pid and
                   an exclusive flock, so a second resume of the same folder is refused

A directory that already holds a run is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import LabError

if TYPE_CHECKING:
    from torch import Tensor

METRICS = "metrics.csv"
GRADS = "grads.csv"
GRADS_COLUMNS = ["epoch", "layer", "grad_norm", "weight_norm", "update_ratio", "dead_fraction"]
GRADS_COLUMNS_BEFORE_DEAD = GRADS_COLUMNS[:5]  # grads.csv of runs from before dead_fraction: still read, still resumed
SUMMARY = "summary.json"
# summary.json's layout version, its `schema` field. 1: the field itself, with `warnings`,
# `dead_layers` and `diverged_at.rule`; runs of earlier releases have none (read as 0) and every
# field they have keeps its name and meaning, so they are read as they are.
SCHEMA = 1
STATUSES = ("running", "completed", "interrupted", "diverged", "failed")  # what a run writes as its `status`
RESUME_HINT = "continue with: backprop-lab resume"  # ends a stopped run's error, before its folder
WEIGHTS = "weights.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "backprop-lab.log"  # named by hydra.job.name in conf/config.yaml
LOCK = ".backprop-lab.lock"  # hidden: no reader of run directories looks for it
CHECKPOINT_KEYS = ("params", "generator", "epoch", "config_hash", "row")


class RunDirError(LabError, RuntimeError):
    """The run directory cannot be used; the message is one line meant for the user."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def locked(run_dir: Path, busy: str = "is being resumed by") -> Iterator[None]:
    """Hold the run directory's lock: an exclusive, non-blocking flock on LOCK, which holds
    our pid for the message of whoever is refused. RunDirBusy if another process holds it;
    OSError if the lock file cannot be made (a read-only or full file system). The file is
    removed on exit (the kernel drops the flock of a killed process; a stale file is reused)."""
    path = run_dir / LOCK
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid just after its flock: give it a moment
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            who = f"another process (pid {holder})" if holder.isdigit() else "another process"
            raise RunDirBusy(f"{run_dir} {busy} {who}; wait for it to finish or stop it first") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file between our open and our flock
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    else:
        raise RunDirBusy(f"{run_dir} {busy} other processes; wait for them to finish")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding the flock: see the inode check above
        os.close(fd)


def atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename over `path`.

    A reader (or a crash) sees either the old file or the new one, never half of one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: reading it means setting it for a moment, which a thread creating a file then would see.
UMASK = _umask()


def refuse_existing_run(run_dir: Path) -> None:
    for name in (SUMMARY, METRICS, WEIGHTS):
        if (run_dir / name).exists():
            raise RunDirError(
                f"{run_dir} already holds a run ({name}); it is kept as it is: "
                f"choose another hydra.run.dir or leave it unset for a fresh timestamped one"
            )


def check_usable(run_dir: Path) -> None:
    """Refuse a directory that holds an earlier run or cannot be written, before any work."""
    refuse_existing_run(run_dir)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to the run directory {run_dir}: permission denied")


class RunWriter:
    def __init__(self, run_dir: Path, columns: list[str], resume: bool = False):
        """A writer for a new run (the folder must not hold one) or, with `resume`, for
        continuing the run already there, appending to its metrics."""
        self.run_dir = run_dir
        self.columns = columns
        if resume:
            return
        check_usable(run_dir)
        try:
            with open(run_dir / METRICS, "x", newline="") as f:  # "x": never clobber
                csv.writer(f).writerow(columns)
        except OSError as e:
            raise RunDirError(f"cannot write {run_dir / METRICS}: {e.strerror or e}") from e

    def append(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / METRICS, "a", newline="") as f:
            csv.writer(f).writerow([_csv_value(row[c]) for c in self.columns])
            f.flush()
            os.fsync(f.fileno())

    def keep_rows_before(self, epoch: int) -> None:
        """Drop metrics.csv's and grads.csv's rows of `epoch` and later, and a last line cut
        off mid-row, before a resumed run writes that epoch's rows again from its checkpoint
        (a kill between the checkpoint and the summary can leave them missing, partial or cut).
        A whole line that is not a row of numbers is kept: nothing is dropped that is not redone."""
        for name in (METRICS, GRADS):
            path = self.run_dir / name
            try:
                with open(path, newline="") as f:  # the csv module's \r\n kept as written
                    lines = f.read().splitlines(keepends=True)
            except FileNotFoundError:
                continue
            kept = [line for n, line in enumerate(lines)
                    if n == 0 or (line.endswith("\n") and not _epoch_at_least(line, epoch))]
            if kept and not kept[0].endswith("\n"):  # the header itself was cut
                kept = [",".join(self.columns if name == METRICS else GRADS_COLUMNS) + "\r\n"]
            if kept != lines:
                atomic_write(path, lambda f: f.write("".join(kept)))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.run_dir / SUMMARY, lambda f: json.dump(summary, f, indent=2) or f.write("\n"))

    def append_layers(self, epoch: int, layers: Any) -> None:
        """One grads.csv row per layer for this epoch (the header first, if the file is new)."""
        if not layers:
            return
        columns = self._grads_header() or GRADS_COLUMNS  # a resumed older run keeps its file's columns
        with open(self.run_dir / GRADS, "a", newline="") as f:
            out = csv.writer(f)
            if f.tell() == 0:
                out.writerow(columns)
            for stats in layers:
                out.writerow([_csv_value(v) for v in ({**stats, "epoch": epoch}[c] for c in columns)])
            f.flush()
            os.fsync(f.fileno())

    def _grads_header(self) -> list[str] | None:
        """grads.csv's columns when it exists with a whole header this writer knows, else None."""
        try:
            with open(self.run_dir / GRADS, newline="") as f:
                header = f.readline()
        except FileNotFoundError:
            return None
        columns = header.strip().split(",")
        return columns if header.endswith("\n") and columns in (GRADS_COLUMNS, GRADS_COLUMNS_BEFORE_DEAD) else None

    def save_weights(self, params: dict[str, Tensor]) -> None:
        cpu = {name: t.detach().to("cpu", copy=True) for name, t in params.items()}  # a member's are views
        atomic_write(self.run_dir / WEIGHTS, lambda f: torch_save(cpu, f), mode="wb")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.run_dir / CHECKPOINT, lambda f: torch_save(state, f), mode="wb")


class _KeepWriteError:
    """A file whose failed write is kept: torch.save turns it into its own RuntimeError
    ('unexpected pos ...'), which would hide a full disk behind a message about zip offsets."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj: Any, f: Any) -> None:
    """torch.save into an open file; a failed write raises its OSError (e.g. no space left on device)."""
    import torch

    out = _KeepWriteError(f)
    try:
        torch.save(obj, out)
    except RuntimeError:
        if out.error is not None:
            raise out.error from None
        raise


def missing_checkpoint(run_dir: Path) -> str:
    return (f"cannot resume {run_dir}: its {CHECKPOINT} is missing (deleted, or the run is from a backprop-lab "
            f"older than checkpoints), and resume needs it; the run's metrics and summary are intact")


def load_checkpoint(run_dir: Path, device: str | None = None) -> dict[str, Any]:
    """The checkpoint's state, with its CPU tensors; RunDirError with one line if it is missing
    or unreadable. `device`: where training continues, see _fit_dropout_generator."""
    import torch

    path = run_dir / CHECKPOINT
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(missing_checkpoint(run_dir)) from None
    except (IsADirectoryError, PermissionError) as e:
        raise RunDirError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
        raise RunDirError(unreadable_checkpoint(path, load_failure(path, e))) from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in CHECKPOINT_KEYS):
        raise RunDirError(unreadable_checkpoint(path, "it holds no training state"))
    _fit_dropout_generator(checkpoint, device)
    return checkpoint


def load_weights(run_dir: Path) -> Any:
    """weights.pt's contents (CPU tensors, unchecked); RunDirError with one line if it cannot be read."""
    import warnings

    import torch

    path = run_dir / WEIGHTS
    try:
        with warnings.catch_warnings():  # torch warns in several lines about what it then refuses anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise RunDirError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable weights file means the same to the user
        raise RunDirError(f"cannot read {path}: not a readable weights file (corrupt or truncated: "
                          f"{load_failure(path, e)})") from None


def checkpoint_looks_whole(run_dir: Path) -> bool:
    """checkpoint.pt is there and a whole zip archive (torch.save's format): what `compare` can
    tell without torch (torch.load may refuse it still, and resume then says why)."""
    import zipfile

    try:
        return zipfile.is_zipfile(run_dir / CHECKPOINT)
    except OSError:
        return False


def unreadable_checkpoint(path: Path, reason: str) -> str:
    return (f"cannot read {path}: not a readable checkpoint (corrupt or truncated: {reason}); "
            f"the run cannot be resumed, but its metrics and summary are intact")


def load_failure(path: Path, e: Exception) -> str:
    """A few words for why torch.load failed; its own messages run to paragraphs, or to a bare key."""
    text = " ".join(str(e).split())
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "the file is empty"
    if isinstance(e, EOFError):
        return "the file ends too early"
    if "PytorchStreamReader failed" in text:  # a torch zip archive cut short or damaged
        detail = text.split("PytorchStreamReader failed", 1)[1].split(".")[0].strip()
        detail = detail.removeprefix("reading zip archive:").strip()
        return f"damaged torch archive, {detail}" if detail else "damaged torch archive"
    if isinstance(e, KeyError) or "invalid load key" in text or "Weights only load failed" in text:
        return "not a torch save file"
    return (text.split(". ")[0] or type(e).__name__)[:100]


def _fit_dropout_generator(checkpoint: dict[str, Any], device: str | None) -> None:
    """A generator's state is device-specific (a CPU and a CUDA generator's states differ in
    size), so one saved on another kind of device cannot be restored: it is replaced by a
    fresh state for `device`, seeded from the saved one (the masks differ from then on, as
    all results do after a device change)."""
    saved = checkpoint.get("dropout_generator")
    if saved is None or device is None:
        return
    import torch

    fresh = torch.Generator(device=device)
    if saved.numel() == fresh.get_state().numel():
        return
    seed = int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little") >> 1
    checkpoint["dropout_generator"] = fresh.manual_seed(seed).get_state()


def _csv_value(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v  # repr keeps every digit of a float


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _epoch_at_least(line: str, epoch: int) -> bool:
    """A metrics.csv or grads.csv line (both start with the epoch) of `epoch` or later."""
    try:
        return float(line.split(",", 1)[0]) >= epoch
    except ValueError:
        return False


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json's record; ValueError (as for JSON cut short) if it holds no JSON object, or
    one of a newer schema than this release reads. Every reader of the file comes through here."""
    with open(run_dir / SUMMARY) as f:
        summary = json.load(f)
    if not isinstance(summary, dict):
        raise ValueError(f"{SUMMARY} does not hold the run's record (a JSON object)")
    schema = summary.get("schema", 0)
    if isinstance(schema, int) and schema > SCHEMA:
        raise ValueError(f"{SUMMARY} has schema {schema}: it was written by a newer backprop-lab (this one reads "
                         f"up to {SCHEMA}); upgrade backprop-lab to read it")
    return summary


def boot_id() -> str | None:
    """This boot of this machine (Linux; None elsewhere): a run's pid from before a restart
    names no process now, or another one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def cpu_description() -> str:
    """The CPU and the instruction set torch's kernels use, e.g. 'AMD EPYC (family 25, model 17),
    AVX512': MKL picks its kernels by instruction set, and the last digits of a run's results
    can differ between CPU types that do (bit for bit the same on one machine)."""
    import torch

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def effective_status(summary: dict[str, Any]) -> str:
    """The status a reader should show: a run still marked `running` whose process is gone
    (killed, machine restarted) is `incomplete`; its completed epochs are still in metrics.csv."""
    status = summary.get("status", "incomplete")
    if status != "running":
        return status
    if summary.get("host") != platform.node():
        return "running"  # another machine's run: we cannot look at its process
    recorded, now = summary.get("boot_id"), boot_id()
    if recorded and now and recorded != now:
        return "incomplete"
    pid = summary.get("pid")
    return "running" if isinstance(pid, int) and not isinstance(pid, bool) and process_alive(pid) else "incomplete"


def process_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 would ask about a process group, not a process
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def still_running(run_dir: Path, summary: dict[str, Any]) -> str:
    """Why a run marked running cannot be continued, and what to do, in one line."""
    pid, host = summary.get("pid"), summary.get("host")
    if host != platform.node():
        return (f"{run_dir} is marked running (pid {pid} on {host}, another machine, whose processes this one cannot "
                f"see); if it no longer runs there, continue it here with: backprop-lab resume {run_dir} --force")
    return f"{run_dir} is still running (pid {pid} on {host}); wait for it to finish, or stop it first"


# A sweep's root folder: Hydra's basic sweeper writes multirun.yaml there and the Optuna sweeper
# optimization_results.yaml (at the end only); sweep.SweepReport marks every sweep it starts.
OPTUNA_RESULTS = "optimization_results.yaml"  # in the sweep root: the Optuna sweeper's best parameters and value
PLANNED_FILE = ".planned_jobs"  # in the sweep root (JSON): a grid's jobs (overrides, folder), or a search's command
MULTIRUN_YAML = "multirun.yaml"  # Hydra's record of a sweep: its overrides, in the sweep root
SWEEP_MARKS = (MULTIRUN_YAML, OPTUNA_RESULTS, ".backprop-lab-sweep")


CONFUSION_CSV, CONFUSION_PNG, ERRORS_PNG, CURVES_PNG = "confusion.csv", "confusion.png", "errors.png", "curves.png"


SUMMARY_CSV = "sweep_summary.csv"


SUMMARY_JSON = "sweep_summary.json"


STOP_FILE = ".fail_fast_stop"  # in the sweep root: the first failure, once fail_fast is on


INTERRUPT_FILE = ".interrupted"  # in the sweep root: "SIGINT job 1 (...)", the signal that stopped a job


REFUSED_FILE = ".refused_jobs"  # in the sweep root: "FOLDER<tab>why" for each job refused this pass whose folder holds an earlier run


SWEEP_MARK = SWEEP_MARKS[-1]  # in the sweep root: the sweeper that started it


KEPT_HYDRA = ".hydra.kept"  # in a job folder, while a resumed sweep runs: the run's own .hydra/
