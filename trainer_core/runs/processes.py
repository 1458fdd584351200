"""The processes of a run, found and ended as one: the supervisor's process group, whatever part of it died first.

The supervisor starts in its own session; DeepSpeed's runner, its `launch` process and the ranks inherit that
process group. So the group id recorded in manifest.json names every process of the run, even after the supervisor
itself is gone. A process counts as the run's (and may be signalled) only when all of this is proven: it is in that
group, it started no earlier than the supervisor (manifest.json's create_time), and it carries the run directory in
its environment (RUN_DIR_ENV, set for every process of the run at launch) or on its command line (`--run-dir`). So
after the run is over, a stranger that reuses the group id (pids and group ids are recycled) is never counted or
signalled.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

PR_SET_PDEATHSIG = 1
# Set to the run directory in the environment of the supervisor, and so of every process it starts.
RUN_DIR_ENV = "TRAINER_RUN_DIR"


def belongs(p: psutil.Process, run: Path) -> bool:
    """The process names `run` as its run: in its environment (readable for our own processes only), or as the
    `--run-dir` argument of its command line (the supervisor, DeepSpeed's runner and launch, and the ranks)."""
    names = {str(run), os.path.realpath(run)}
    try:
        if p.environ().get(RUN_DIR_ENV) in names:
            return True
    except psutil.Error:
        pass
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return False
    return any(a == "--run-dir" and b in names for a, b in zip(cmd, cmd[1:]))


def members(run: Path, manifest: dict[str, Any], *, exclude_self: bool = False) -> list[psutil.Process]:
    """Living processes of the run (zombies excluded), oldest first: in the recorded group, started since the
    recorded supervisor, and naming the run (see the module docstring)."""
    try:
        pgid = int(manifest["pgid"])
        since = float(manifest["create_time"]) - 0.01  # psutil's create_time is rounded to clock ticks
    except (KeyError, TypeError, ValueError):
        return []
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if exclude_self and p.pid == me:
                continue
            if os.getpgid(p.pid) != pgid or p.info["create_time"] < since:
                continue
            if p.info["status"] == psutil.STATUS_ZOMBIE or not belongs(p, run):
                continue
            out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return sorted(out, key=lambda p: p.info["create_time"])


def describe(p: psutil.Process) -> str:
    """`pid name` for a report: the ranks, `launch`, `runner` and the supervisor by their module names."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return str(p.pid)
    i = cmd.index("-m") + 1 if "-m" in cmd[:-1] else None
    if i is not None and cmd[i] == "trainer_core.runs.keep_locks" and i + 1 < len(cmd):
        i += 1  # DeepSpeed's runner or launch, started through keep_locks
    module = cmd[i] if i is not None else None
    return f"{p.pid} {module or ' '.join(cmd[:2])}"


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    """Signal processes found by `members`. psutil checks each one's start time again right before the signal, so
    a process that exited meanwhile and whose pid was reused is not hit."""
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def end(run: Path, manifest: dict[str, Any], *, grace_s: float, exclude_self: bool = False) -> list[str]:
    """End every process of the run: SIGTERM, then SIGKILL after `grace_s`. Returns what it found to end."""
    procs = members(run, manifest, exclude_self=exclude_self)
    ended = [describe(p) for p in procs]
    signal_all(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    return ended


def wait_gone(run: Path, manifest: dict[str, Any], timeout: float, *, exclude_self: bool = False) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not members(run, manifest, exclude_self=exclude_self):
            return True
        time.sleep(0.2)
    return not members(run, manifest, exclude_self=exclude_self)


# ---------------------------------------------------------------- inside a rank

def die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent (DeepSpeed's `launch`) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor watchdog below still covers a lost supervisor
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def watch_process(info: dict[str, Any], on_lost: Callable[[], None], every_s: float = 2.0) -> threading.Thread:
    """Call `on_lost` once when the process in `info` (pid + create_time, as in manifest.json) is gone."""

    def same_process() -> bool:
        try:
            p = psutil.Process(int(info["pid"]))
            return abs(p.create_time() - float(info["create_time"])) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except (KeyError, TypeError, ValueError, psutil.Error):
            return False

    def loop() -> None:
        while same_process():
            time.sleep(every_s)
        on_lost()

    thread = threading.Thread(target=loop, name="supervisor-watchdog", daemon=True)
    thread.start()
    return thread


def on_this_host(manifest: dict[str, Any]) -> bool:
    """Whether the manifest's supervisor runs on this machine (a rank on another node cannot watch it)."""
    return manifest.get("host") == socket.gethostname()
