"""Run DeepSpeed's runner or `launch` so that the run's device locks stay held by every process it starts.

    python -m trainer_core.runs.keep_locks deepspeed.launcher.runner ARGS...   (the supervisor's child)

A device lock is an `flock` on an open file (device_locks); the kernel keeps it while any process has that open
file, so a child that inherits the descriptor holds the lock until it exits, kill -9 included. But DeepSpeed's runner
and `launch` start their children with `subprocess.Popen`'s default `close_fds=True`, which would drop it. Here the
descriptors named in LOCK_FDS_ENV are passed on to every child instead, and the runner's `launch` is started through
this module too, so the runner, `launch` and every rank hold the lock from birth: there is no moment while any of
them lives that another run could take the device.

The runner also exits 0 when `launch` is killed by a signal; the signal is recorded in the run directory
(protocol.LAUNCH_EXIT) so the run's end can name it.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

LOCK_FDS_ENV = "TRAINER_LOCK_FDS"
MODULE = "trainer_core.runs.keep_locks"
LAUNCH = "deepspeed.launcher.launch"


def wrap(argv: list[str]) -> list[str]:
    """`python ... -m MODULE ARGS` as `python ... -m keep_locks MODULE ARGS` (any other argv unchanged)."""
    if "-m" not in argv:
        return argv
    i = argv.index("-m")
    return argv[:i + 1] + [MODULE] + argv[i + 1:]


def lock_fds() -> list[int]:
    """The inherited lock descriptors named in the environment (those still open)."""
    out = []
    for x in os.environ.get(LOCK_FDS_ENV, "").split(","):
        try:
            fd = int(x)
            os.fstat(fd)
        except (ValueError, OSError):
            continue
        out.append(fd)
    return out


def _pass_on(fds: list[int], launched: list[subprocess.Popen]) -> None:
    base = subprocess.Popen

    class Popen(base):  # type: ignore[misc, valid-type]
        def __init__(self, args, *a, **kw):
            if kw.get("close_fds", True):
                kw["pass_fds"] = tuple(sorted(set(kw.get("pass_fds") or ()) | set(fds)))
            if isinstance(args, list) and args[:1] == [sys.executable] and LAUNCH in args:
                args = wrap(args)
                launched.append(self)
            super().__init__(args, *a, **kw)

    # DeepSpeed's launcher modules look subprocess.Popen up when they call it, so replacing it here reaches them.
    subprocess.Popen = Popen  # type: ignore[misc]


def _record_killed_launch(launched: list[subprocess.Popen]) -> None:
    from trainer_core.runs import protocol
    from trainer_core.runs.processes import RUN_DIR_ENV

    run = os.environ.get(RUN_DIR_ENV)
    for p in launched:
        if run and p.returncode is not None and p.returncode < 0:
            try:
                protocol.write_json_atomic(Path(run) / protocol.LAUNCH_EXIT, {"pid": p.pid, "signal": -p.returncode})
            except OSError:
                pass  # a full disk: the end is then told less precisely


def main() -> None:
    target, sys.argv = sys.argv[1], sys.argv[1:]
    launched: list[subprocess.Popen] = []
    _pass_on(lock_fds(), launched)
    try:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        _record_killed_launch(launched)


if __name__ == "__main__":
    main()
