"""Device locks: one run per GPU (or per CPU host) at a time, machine-wide, for as long as any rank of it lives.

A lock is an `flock` on a file named after the host and device in one directory per machine (not per runs folder:
two dashboards with different runs folders share the GPUs). Starting a run takes the lock exclusively, which fails
while anybody holds it, then turns it into a shared lock that the supervisor keeps and every local rank of the run
joins (`hold_as_rank`). So the lock stays taken while *any* of them is alive, whichever dies first, and the kernel
frees it when the last one exits, kill -9 included. A machine-wide gate lock serialises the take-and-share step, so
no other launch can slip in while the exclusive lock becomes a shared one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trainer_core.common.errors import Text, UserError, text

LOCK_DIR_ENV = "TRAINER_LOCK_DIR"
GATE = ".gate"


def lock_dir() -> Path:
    """The machine's lock folder: $TRAINER_LOCK_DIR, else /run/lock/trainer-studio (or the temp folder where
    /run/lock is not writable). Shared by every user of the machine, so its files are world-writable."""
    if os.environ.get(LOCK_DIR_ENV):
        d = Path(os.environ[LOCK_DIR_ENV])
    else:
        base = Path("/run/lock")
        d = (base if base.is_dir() and os.access(base, os.W_OK) else Path(tempfile.gettempdir())) / "trainer-studio"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if d.stat().st_uid == os.getuid():
            d.chmod(0o1777)
    except OSError as e:
        raise UserError("runs.lock_dir_unusable", "cannot use the device-lock folder {folder} ({reason}); set {env} "
                        "to a writable folder that every dashboard on this machine uses", folder=d, reason=e.strerror,
                        env=LOCK_DIR_ENV) from None
    return d


def device_keys(num_ranks: int, gpus: list[int] | None, has_gpu: bool) -> list[str]:
    """Lock names for the devices this node's ranks use, prefixed with the host."""
    host = socket.gethostname()
    if not has_gpu:
        return [f"{host}-cpu"]
    return [f"{host}-gpu{g}" for g in (gpus or range(num_ranks))]


def _open(key: str) -> int:
    fd = os.open(lock_dir() / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass  # created by another user: already shared
    return fd


def _holder(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


@contextmanager
def _gate():
    fd = _open(GATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def acquire(run: Path, keys: list[str]) -> list[int]:
    """Take every device lock for `run` without waiting; on conflict release what was taken and name the holder.
    Returns descriptors holding shared locks: keep them open for the run's life (the supervisor inherits them)."""
    fds: list[int] = []
    with _gate():
        for key in keys:
            fd = _open(key)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                for f in fds:
                    os.close(f)
                raise UserError(busy_text(key, holder)) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(run).encode(), 0)
            fcntl.flock(fd, fcntl.LOCK_SH)  # under the gate: nobody can take it exclusively in between
            fds.append(fd)
    return fds


def hold_as_rank(run: Path, keys: list[str]) -> list[int]:
    """Join the run's shared locks from a rank process. Fails if a lock is not this run's: then the supervisor died
    before the rank got here and another run may own the device."""
    fds: list[int] = []
    with _gate():  # no launch can take a free lock between our check and our shared lock
        for key in keys:
            fd = _open(key)
            if _holder(fd) != str(run):
                os.close(fd)
                for f in fds:
                    os.close(f)
                raise UserError("runs.device_taken", "{key} is no longer held for run {name}: its supervisor ended "
                                "before the ranks started and another run took the device; resume this run later",
                                key=key, name=run.name)
            fcntl.flock(fd, fcntl.LOCK_SH)
            fds.append(fd)
    return fds


def busy_text(key: str, holder: str) -> Text:
    """Why a device cannot be taken, with advice that fits it: another GPU on a GPU, only waiting on a CPU host
    (a machine without a GPU has one CPU device; placement.gpus cannot help there)."""
    who = holder or text("runs.another_run", "another run")
    if key.endswith("-cpu"):
        return text("runs.device_busy_cpu", "{key} is in use by run {holder}; stop it or wait until it ends (this "
                    "machine has no GPU, so one run trains at a time)", key=key, holder=who)
    return text("runs.device_busy", "{key} is in use by run {holder}; stop it or pick other devices "
                "(placement.gpus)", key=key, holder=who)


def first_busy(keys: list[str]) -> Text | None:
    """Why a launch on these devices would be refused right now (the first one held by a run), else None."""
    for key in keys:
        who = holder(key)
        if who is not None:
            return busy_text(key, "" if who == "?" else who)
    return None


def holder(key: str) -> str | None:
    """The run (its path) holding a device lock right now, or None when it is free."""
    path = lock_dir() / f"{key}.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(fd) or "?"
    finally:
        os.close(fd)
