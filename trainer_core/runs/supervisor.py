"""The supervisor: one small process per run that owns DeepSpeed's launcher and records how the run ended.

    python -m trainer_core.runs.supervisor --run-dir runs/<name> [--resume-from CKPT]   (started by `start()`)

Each run gets one small supervisor process in its own session (so its process group holds every process of the
run). It starts DeepSpeed's launcher as its child, samples memory into resources.jsonl, and when the child ends
writes the final state to status.json, whether or not a dashboard is alive, once no other process of the run is
left. The device locks (device_locks) are shared by the supervisor and the ranks; the ranks watch the supervisor and
their launcher (train.share_fate), so no part of a run outlives the others for long.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from trainer_core.common import paths
from trainer_core.config.hardware import detect, include_ids, lock_ids
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError, text
from trainer_core.runs import device_locks, keep_locks
from trainer_core.runs import processes as run_processes
from trainer_core.runs import protocol
from trainer_core.runs.launch import launch_env, node_argv
from trainer_core.runs.resources import sample_resources
from trainer_core.runs.state import launcher_end, read_state, record_end, signal_name

STOP_GRACE_S = 15.0
# A stop during start-up: how long the ranks get to leave at their next start-up step before the supervisor ends
# them (loading a 7B or building a kernel cannot be interrupted from inside), and how long SIGTERM gets then.
STARTUP_STOP_WAIT_S = 3.0
STARTUP_STOP_GRACE_S = 2.0  # nothing to save yet: SIGKILL soon after
# How long the supervisor waits for orphaned ranks to save and stop after DeepSpeed's launcher died under them.
ORPHAN_SAVE_TIMEOUT_S = 300.0


# ---------------------------------------------------------------- device locks

def device_keys(run: Path) -> list[str]:
    """Lock names for the devices this node's ranks use (see device_locks)."""
    cfg = load_config(run / protocol.CONFIG)
    hw = detect()
    # By the machine's ids, so that runs with different CUDA_VISIBLE_DEVICES (or Slurm jobs) see each other.
    return device_locks.device_keys(cfg.placement.num_ranks, lock_ids(hw, cfg.placement), hw.has_gpu)


# ---------------------------------------------------------------- starting

def start(run: Path, *, detach: bool = True, resume_from: Path | None = None) -> subprocess.Popen:
    """Start the run's supervisor. The device locks are taken here, before returning, so two launches on the same
    devices cannot both start; the supervisor inherits the lock descriptors and holds them for the run's life."""
    run = run.resolve()
    state = read_state(run).state
    if state in protocol.LIVE:
        raise UserError("runs.already_live", "run {name} is already {state}", name=run.name,
                        state=protocol.state_text(state))
    keys = device_keys(run)
    fds = _acquire(run, keys)
    try:
        protocol.remove_partial(run)  # nothing of this run runs: whatever a killed save left is garbage
        protocol.update_status(run, state=protocol.STARTING, exit_code=None, error=None, note=None, final=False)
        (run / protocol.CONTROL).unlink(missing_ok=True)
        (run / protocol.LAUNCH_EXIT).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "trainer_core.runs.supervisor", "--run-dir", str(run),
                "--lock-fds", ",".join(map(str, fds)), "--lock-keys", ",".join(keys)]
        if resume_from is not None:
            argv += ["--resume-from", str(resume_from)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), env.get("PYTHONPATH", "")]))
        env[run_processes.RUN_DIR_ENV] = str(run)  # inherited by every process of the run: its proof of identity
        proc = subprocess.Popen(
            argv, cwd=paths.PROJECT_ROOT, env=env, pass_fds=fds, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(run / protocol.SUPERVISOR_LOG, "ab"),
        )
    finally:
        for fd in fds:
            os.close(fd)
    # Wait until the supervisor has written its manifest, so status is meaningful as soon as we return.
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        if protocol.read_manifest(run).get("pid") == proc.pid:
            break
        time.sleep(0.05)
    if not detach:
        proc.wait()
    return proc


# How long a start waits for the last process of the devices' previous run to exit, once that run has recorded its
# end (its supervisor holds the lock until it exits, a moment after writing the final state).
RELEASE_WAIT_S = 10.0


def _acquire(run: Path, keys: list[str]) -> list[int]:
    deadline = time.time() + RELEASE_WAIT_S
    while True:
        try:
            return device_locks.acquire(run, keys)
        except UserError as e:
            if e.code != "runs.device_busy" or time.time() > deadline or not _holders_ended(keys):
                raise
        time.sleep(0.1)


def _holders_ended(keys: list[str]) -> bool:
    """Every held lock among `keys` belongs to a run that has recorded its end (its last processes are exiting)."""
    held = [h for h in map(device_locks.holder, keys) if h]
    return bool(held) and all(protocol.read_status(Path(h)).terminal for h in held)


# ---------------------------------------------------------------- the supervisor process itself

def _proc_info(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)
    return {"pid": pid, "pgid": os.getpgid(pid), "create_time": p.create_time()}


def supervise(run: Path, resume_from: Path | None, lock_fds: list[int], lock_keys: list[str]) -> int:
    me = _proc_info(os.getpid())
    cfg = load_config(run / protocol.CONFIG)
    hw = detect()
    # The final state is ours to write; the runner is started through keep_locks, so it, `launch` and every rank
    # hold the device locks from birth.
    argv = keep_locks.wrap(node_argv(cfg, run, resume_from=resume_from, has_gpu=hw.has_gpu,
                                     master_port=_pick_port(cfg), supervised=True,
                                     include=include_ids(hw, cfg.placement)))
    # The ranks read host, pid and lock_keys to watch this process and to hold the device locks with it.
    protocol.write_json_atomic(run / protocol.MANIFEST, {**me, "host": socket.gethostname(), "argv": argv,
                                             "started": time.time(), "lock_fds": lock_fds, "lock_keys": lock_keys,
                                             "resume_from": str(resume_from) if resume_from else None})
    protocol.write_json_atomic(run / protocol.COMMAND, {"argv": [argv], "cwd": str(paths.PROJECT_ROOT)})
    log = open(run / protocol.LOG, "ab", buffering=0)
    _note(log, f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor {me['pid']} starting: {argv}\n")
    env = launch_env(cfg, hw.has_gpu)
    env[run_processes.RUN_DIR_ENV] = str(run)
    env[keep_locks.LOCK_FDS_ENV] = ",".join(map(str, lock_fds))
    child = subprocess.Popen(argv, cwd=paths.PROJECT_ROOT, env=env, pass_fds=lock_fds,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    protocol.update_status(run, state=protocol.STARTING, launcher_pid=child.pid,
                           **protocol.startup_phase(protocol.PHASE_LAUNCHING))
    signalled: list[int] = []

    def on_signal(signum, frame):
        """Terminated from outside (SIGTERM, SIGINT, SIGHUP): the ranks save and stop, and the end names why. A
        stop already asked for (stop, force-stop) goes its own way: the signal is passed on to the runner."""
        if signalled or protocol.read_control(run).action:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass
            return
        signalled.append(signum)
        protocol.request(run, protocol.SAVE_AND_STOP, cause=launcher_end(run, 0, signum))
        _note(log, f"=== supervisor: {signal_name(signum)}; asking the ranks to save and stop\n")
        threading.Thread(target=_end_late, args=(run, me, log), daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stop = threading.Event()
    # The run's GPUs by machine id, as NVML numbers them ([] for CPU ranks).
    gpu_ids = include_ids(hw, cfg.placement) or lock_ids(hw, cfg.placement) or []
    sampler = threading.Thread(target=sample_resources, args=(run, child.pid, stop, 2.0),
                               kwargs={"gpu_ids": gpu_ids, "warn": lambda line: _note(log, f"=== {line}\n")},
                               daemon=True)
    sampler.start()
    watcher = threading.Thread(target=_stop_while_starting, args=(run, me, child, log), daemon=True)
    watcher.start()
    code = child.wait()
    watcher.join()  # when it is ending the run's processes, let it finish: they are not orphans to save
    _collect_orphans(run, me, code, log, signalled[0] if signalled else None)
    stop.set()
    sampler.join(timeout=5)
    # The device locks stay held until this process exits, right after the final state is written: a start that
    # sees the state waits that moment for them (_acquire).
    record_end(run, code, signalled[0] if signalled else None, **_startup_note(run))
    _note(log, f"=== supervisor: launcher exited with {code}\n")
    if cfg.eval.persona_at_end and read_state(run).state == protocol.COMPLETED:
        _evaluate_at_end(run, cfg, lock_fds, log)
    return 0


# The background evaluation's module, started by name: evaluation sits beside runs, so runs does not import it.
EVAL_MODULE = "trainer_core.evaluation.background"


def _evaluate_at_end(run: Path, cfg, lock_fds: list[int], log) -> None:
    """eval.persona_at_end: start the persona evaluation of final/ and the base model in its own process once the
    run's end is recorded. The training devices' locks are released first (the evaluation picks its device as chat
    does), and the process is no member of the run (own session, no run identity), so it changes nothing of the
    run's state; its outcome goes to RUN/eval/status.json."""
    for fd in lock_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    env = {k: v for k, v in os.environ.items() if k not in (run_processes.RUN_DIR_ENV, keep_locks.LOCK_FDS_ENV)}
    argv = [sys.executable, "-m", EVAL_MODULE, "--run-dir", str(run), "--max-records", str(cfg.eval.max_records),
            "--max-new-tokens", str(cfg.eval.max_new_tokens)]
    try:
        (run / "eval").mkdir(exist_ok=True)
        proc = subprocess.Popen(argv, cwd=paths.PROJECT_ROOT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(run / "eval" / "eval.log", "ab"))
    except OSError as e:
        _note(log, f"=== supervisor: could not start the persona evaluation: {e}\n")
        return
    _note(log, f"=== supervisor: persona evaluation started (pid {proc.pid}, see eval/status.json)\n")


def _starting(run: Path) -> bool:
    """The run is at a start-up step (it has not begun training)."""
    return protocol.read_status(run).phase in protocol.STARTUP_PHASES


def _stop_while_starting(run: Path, me: dict[str, Any], child: subprocess.Popen, log) -> None:
    """A stop asked during start-up ends the run within seconds: the ranks leave by themselves at their next
    start-up step (train.py); ranks still starting STARTUP_STOP_WAIT_S later are in a step they cannot leave
    (loading the model, building a kernel, launching), so the run's processes are ended (only proven members, never
    this supervisor). Nothing is lost: no step was trained, no checkpoint written."""
    asked = None
    while child.poll() is None:
        if not _starting(run):
            return  # training began: a stop now saves a checkpoint the usual way
        if protocol.read_control(run).action:
            asked = asked or time.time()
            if time.time() - asked >= STARTUP_STOP_WAIT_S:
                _note(log, "=== supervisor: stop requested during start-up and the ranks are still starting; ending "
                           "the run's processes\n")
                ended = run_processes.end(run, me, grace_s=STARTUP_STOP_GRACE_S, exclude_self=True)
                _note(log, f"=== supervisor: stopped during start-up; ended {', '.join(ended) or 'nothing'}\n")
                return
        time.sleep(0.2)


def _startup_note(run: Path) -> dict[str, Any]:
    """The note for a run stopped on request before it trained a step."""
    control = protocol.read_control(run)
    if control.action and not control.cause and _starting(run):
        return {"note": text("runs.stopped_starting", "stopped during start-up, before training a step; nothing "
                             "was saved by this start")}
    return {}


def _end_late(run: Path, me: dict[str, Any], log) -> None:
    """After the supervisor was signalled: end whatever of the run has not saved and stopped in time."""
    if not run_processes.wait_gone(run, me, ORPHAN_SAVE_TIMEOUT_S, exclude_self=True):
        ended = run_processes.end(run, me, grace_s=STOP_GRACE_S, exclude_self=True)
        _note(log, f"=== supervisor: ended {', '.join(ended)}\n")


def _collect_orphans(run: Path, me: dict[str, Any], code: int, log, signalled: int | None) -> None:
    """The launcher ended but some of its processes did not (its runner or `launch` was killed under the ranks):
    ask the ranks to save and stop, wait for them, and end what is left, so the final state is written only once
    no process of the run remains."""
    leftover = run_processes.members(run, me, exclude_self=True)
    if not leftover:
        return
    cause = text("runs.orphans_left", "{what} while {n} process(es) of the run were still running",
                 what=launcher_end(run, code, signalled), n=len(leftover))
    _note(log, f"=== supervisor: {cause}: {', '.join(map(run_processes.describe, leftover))}; asking them to "
               "save and stop\n")
    if not protocol.read_control(run).action:
        protocol.request(run, protocol.SAVE_AND_STOP, cause=cause)
    if not run_processes.wait_gone(run, me, ORPHAN_SAVE_TIMEOUT_S, exclude_self=True):
        ended = run_processes.end(run, me, grace_s=STOP_GRACE_S, exclude_self=True)
        _note(log, f"=== supervisor: ended {', '.join(ended)}\n")


def _note(log, text: str) -> None:
    try:
        log.write(text.encode())
    except OSError:
        pass  # a full disk must not stop the supervisor from recording the final state


def _pick_port(cfg) -> int | None:
    from trainer_core.runs.launch import free_port

    # Two local runs on different GPUs must not share a rendezvous port; multi-node runs use the configured one.
    return free_port() if cfg.placement.launcher == "local" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume-from", type=Path, default=None)
    parser.add_argument("--lock-fds", default="")
    parser.add_argument("--lock-keys", default="")
    args = parser.parse_args(argv)
    fds = [int(x) for x in args.lock_fds.split(",") if x]
    keys = [x for x in args.lock_keys.split(",") if x]
    return supervise(args.run_dir.resolve(), args.resume_from, fds, keys)


if __name__ == "__main__":
    sys.exit(main())
