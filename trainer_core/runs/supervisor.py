"""Run supervision: detached launch, status from disk, save-then-stop, resume, device locks.

    python -m trainer_core.runs.supervisor --run-dir runs/<name> [--resume-from CKPT]   (started by `start()`)

Each run gets one small supervisor process in its own session (so its process group holds every process of the
run). It starts DeepSpeed's launcher as its child, samples memory into resources.jsonl, and when the child ends
writes the final state to status.json, whether or not a dashboard is alive, once no other process of the run is
left. The device locks (device_locks) are shared by the supervisor and the ranks; the ranks watch the supervisor and
their launcher (train.share_fate), so no part of a run outlives the others for long.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from trainer_core import paths

from trainer_core.runs import device_locks
from trainer_core.runs import protocol as rd
from trainer_core.runs import processes as run_processes
from trainer_core.config.run_config import load_config
from trainer_core.errors import UserError
from trainer_core.config.hardware import detect
from trainer_core.runs.launch import launch_env, node_argv
from trainer_core.runs.tailing import read_tail_bytes

STOP_GRACE_S = 15.0
# How long the supervisor waits for orphaned ranks to save and stop after DeepSpeed's launcher died under them.
ORPHAN_SAVE_TIMEOUT_S = 300.0


# ---------------------------------------------------------------- device locks

def device_keys(run: Path) -> list[str]:
    """Lock names for the devices this node's ranks use (see device_locks)."""
    cfg = load_config(run / rd.CONFIG)
    return device_locks.device_keys(cfg.placement.num_ranks, cfg.placement.gpus, detect().has_gpu)


# ---------------------------------------------------------------- starting

def start(run: Path, *, detach: bool = True, resume_from: Path | None = None) -> subprocess.Popen:
    """Start the run's supervisor. The device locks are taken here, before returning, so two launches on the same
    devices cannot both start; the supervisor inherits the lock descriptors and holds them for the run's life."""
    run = run.resolve()
    state = read_state(run)["state"]
    if state in ("starting", "running", "stopping"):
        raise UserError(f"run {run.name} is already {state}")
    keys = device_keys(run)
    fds = device_locks.acquire(run, keys)
    try:
        rd.update_status(run, state="starting", exit_code=None, error=None, final=False)
        (run / rd.CONTROL).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "trainer_core.runs.supervisor", "--run-dir", str(run),
                "--lock-fds", ",".join(map(str, fds)), "--lock-keys", ",".join(keys)]
        if resume_from is not None:
            argv += ["--resume-from", str(resume_from)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), env.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            argv, cwd=paths.PROJECT_ROOT, env=env, pass_fds=fds, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(run / "supervisor.log", "ab"),
        )
    finally:
        for fd in fds:
            os.close(fd)
    # Wait until the supervisor has written its manifest, so status is meaningful as soon as we return.
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        if (rd.read_json(run / rd.MANIFEST, {}) or {}).get("pid") == proc.pid:
            break
        time.sleep(0.05)
    if not detach:
        proc.wait()
    return proc


# ---------------------------------------------------------------- the supervisor process itself

def _proc_info(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)
    return {"pid": pid, "pgid": os.getpgid(pid), "create_time": p.create_time()}


def sample_resources(run: Path, root_pid: int, stop: threading.Event, every_s: float) -> None:
    """Append memory samples of every process of the run (and GPUs through NVML when present)."""
    nvml = None
    try:
        import pynvml

        pynvml.nvmlInit()
        nvml = pynvml
    except Exception:  # no NVIDIA driver: CPU-only sampling
        nvml = None
    with open(run / rd.RESOURCES, "a", encoding="utf-8") as out:
        while not stop.is_set():
            row: dict[str, Any] = {"time": time.time()}
            try:
                procs = psutil.Process(root_pid).children(recursive=True)
            except psutil.Error:
                procs = []
            ranks = []
            for p in procs:
                try:
                    cmd = p.cmdline()
                    if "trainer_core.training.train" not in " ".join(cmd) or "deepspeed.launcher" in " ".join(cmd):
                        continue
                    env_rank = None
                    try:
                        env_rank = p.environ().get("RANK")
                    except psutil.Error:
                        pass
                    ranks.append({"pid": p.pid, "rank": int(env_rank) if env_rank else None,
                                  "rss_bytes": p.memory_info().rss})
                except psutil.Error:
                    continue
            vm = psutil.virtual_memory()
            row["ranks"] = sorted(ranks, key=lambda r: (r["rank"] is None, r["rank"]))
            row["host_used_bytes"] = vm.total - vm.available
            row["host_total_bytes"] = vm.total
            if nvml is not None:
                gpus = []
                for i in range(nvml.nvmlDeviceGetCount()):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    mem = nvml.nvmlDeviceGetMemoryInfo(h)
                    util = nvml.nvmlDeviceGetUtilizationRates(h)
                    gpus.append({"index": i, "used_bytes": int(mem.used), "total_bytes": int(mem.total),
                                 "util_pct": int(util.gpu)})
                row["gpus"] = gpus
            if ranks or nvml is not None:
                try:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                except OSError:
                    pass  # disk full: sampling is lost, the run's outcome is still recorded
            stop.wait(every_s)


def supervise(run: Path, resume_from: Path | None, lock_fds: list[int], lock_keys: list[str]) -> int:
    me = _proc_info(os.getpid())
    cfg = load_config(run / rd.CONFIG)
    hw = detect()
    argv = node_argv(cfg, run, resume_from=resume_from, has_gpu=hw.has_gpu,
                     master_port=_pick_port(cfg))
    # The ranks read host, pid and lock_keys to watch this process and to hold the device locks with it.
    rd.write_json_atomic(run / rd.MANIFEST, {**me, "host": socket.gethostname(), "argv": argv,
                                             "started": time.time(), "lock_fds": lock_fds, "lock_keys": lock_keys,
                                             "resume_from": str(resume_from) if resume_from else None})
    rd.write_json_atomic(run / rd.COMMAND, {"argv": [argv], "cwd": str(paths.PROJECT_ROOT)})
    log = open(run / rd.LOG, "ab", buffering=0)
    _note(log, f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor {me['pid']} starting: {argv}\n")
    env = launch_env(cfg, hw.has_gpu)
    env["TRAINER_SUPERVISED"] = "1"  # the final state is ours to write, after the devices are free
    child = subprocess.Popen(argv, cwd=paths.PROJECT_ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    rd.update_status(run, state="starting", launcher_pid=child.pid)

    def forward(signum, frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_resources, args=(run, child.pid, stop, 2.0), daemon=True)
    sampler.start()
    code = child.wait()
    _collect_orphans(run, me, code, log)
    stop.set()
    sampler.join(timeout=5)
    # Free the devices before announcing the end, so whoever sees the final state can start the next run.
    for fd in lock_fds:
        os.close(fd)
    finish(run, code)
    _note(log, f"=== supervisor: launcher exited with {code}\n")
    return 0


def _collect_orphans(run: Path, me: dict[str, Any], code: int, log) -> None:
    """The launcher ended but some of its processes did not (its runner or `launch` was killed under the ranks):
    ask the ranks to save and stop, wait for them, and end what is left, so the final state is written only once
    no process of the run remains and the devices are free."""
    leftover = run_processes.members(me, exclude_self=True)
    if not leftover:
        return
    cause = (f"the DeepSpeed launcher exited with code {code} while {len(leftover)} process(es) of the run were "
             "still running")
    _note(log, f"=== supervisor: {cause}: {', '.join(map(run_processes.describe, leftover))}; asking them to "
               "save and stop\n")
    if not (rd.read_json(run / rd.CONTROL, {}) or {}).get("action"):
        rd.write_json_atomic(run / rd.CONTROL, {"action": "save_and_stop", "requested": time.time(), "cause": cause})
    if not run_processes.wait_gone(me, ORPHAN_SAVE_TIMEOUT_S, exclude_self=True):
        ended = run_processes.end(me, grace_s=STOP_GRACE_S, exclude_self=True)
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


def finish(run: Path, code: int) -> None:
    """Record the final state from the launcher's exit code, the stop request and what is on disk."""
    control = rd.read_json(run / rd.CONTROL, {}) or {}
    status = rd.read_status(run)
    if code == 0 and rd.has_final(run) and not control:
        rd.update_status(run, state="completed", exit_code=0, ended=time.time(), error=None)
    elif control.get("cause"):
        ckpt = rd.latest_checkpoint(run)
        saved = f"last complete checkpoint: {rd.checkpoint_step(ckpt)}" if ckpt else "no complete checkpoint"
        rd.update_status(run, state="failed", exit_code=code, ended=time.time(),
                         error=f"{control['cause']}; they were asked to save and stop ({saved}); resume to go on")
    elif control.get("action") in ("save_and_stop", "force_stop"):
        rd.update_status(run, state="stopped", exit_code=code, ended=time.time(),
                         error=None, forced=control.get("action") == "force_stop",
                         last_checkpoint=status.get("last_checkpoint"))
    else:
        error = root_error(run / rd.LOG)
        if not error or not error.startswith(("no space", "out of memory")):
            error = disk_full(run) or error or f"the launcher exited with code {code}"
        rd.update_status(run, state="failed", exit_code=code, ended=time.time(), error=error)


def disk_full(run: Path) -> str | None:
    """A full runs folder, named as the cause: when the disk is full the ranks' own error often cannot even be
    written to train.log."""
    usage = shutil.disk_usage(run)
    if usage.free >= max(32 * 2**20, usage.total // 1000):
        return None
    return (f"no space left on device: {usage.free // 2**20} MiB free of {usage.total // 2**20} MiB "
            f"on the runs folder {run.parent}; free space or move TRAINER_RUNS_ROOT, then resume")


# ---------------------------------------------------------------- status from disk

ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b.*|error: .*)$")
OOM = re.compile(r"out of memory|OutOfMemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc", re.I)
RANK_EXIT = re.compile(r"sigkill_handler\].*exits with return code = (-?\d+)")
NO_SPACE = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)


def root_error(log_path: Path, tail_bytes: int = 256_000) -> str | None:
    """The failing rank's final exception line; out-of-memory and full disks are named as such."""
    text = read_tail_bytes(log_path, tail_bytes).decode("utf-8", "replace")
    lines = [ln.rstrip() for ln in text.splitlines()]
    candidates = [m.group(1).strip() for ln in lines if (m := ERROR_LINE.match(ln.strip()))]
    # The launcher's own "exits with return code" noise and our supervisor lines are not root causes.
    candidates = [c for c in candidates if "subprocess.CalledProcessError" not in c and "sigkill_handler" not in c]
    joined = "\n".join(lines)
    if NO_SPACE.search(joined):
        detail = next((c for c in reversed(candidates) if NO_SPACE.search(c)), None)
        return "no space left on device" + (f": {detail}" if detail else "")
    if OOM.search(joined):
        detail = next((c for c in reversed(candidates) if OOM.search(c)), None)
        return "out of memory" + (f": {detail}" if detail else "")
    # DeepSpeed's launcher names the first rank that failed; a negative code means a signal ended it, and the
    # errors the surviving ranks print afterwards (lost connections) are consequences, not the cause.
    first = RANK_EXIT.search(joined)
    if first and int(first.group(1)) < 0:
        sig = -int(first.group(1))
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        why = " (kill -9 or the kernel's out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"a rank process was killed by {name}{why}; the launcher stopped the other ranks"
    if not candidates:
        return None
    # Prefer our own one-line user errors, then the last real exception.
    mine = [c for c in candidates if c.startswith("error: ")]
    return (mine[-1][len("error: "):] if mine else candidates[-1])[:500]


def _alive(info: dict[str, Any]) -> bool:
    """The recorded process is alive *and* is the same process (its start time matches; pids get reused)."""
    try:
        p = psutil.Process(int(info["pid"]))
        return abs(p.create_time() - float(info["create_time"])) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def _lost(run: Path, status: dict[str, Any], fallback: str) -> str:
    """A run whose processes are gone without a final state: failed, with the best cause the log offers."""
    status["error"] = status.get("error") or root_error(run / rd.LOG) or fallback
    status["interrupted"] = True
    return "failed"


def _segment_end(run: Path, status: dict[str, Any], started: float) -> float:
    """When the segment that started at `started` ended: its recorded end, or for one that ended without a word
    (killed, lost) the last write to its log."""
    ended = status.get("ended")
    if ended is not None and ended >= started:
        return ended
    try:
        return max((run / rd.LOG).stat().st_mtime, started)
    except OSError:
        return started


def run_seconds(run: Path, status: dict[str, Any], manifest: dict[str, Any], state: str) -> float | None:
    """How long the run has run: each segment (a launch or a resume, to its end; start-up, evaluation and saving
    included) added up. The time a run sat stopped before a resume is not counted."""
    past = sum(end - start for start, end in status.get("segments", []))
    started = manifest.get("started") or status.get("created")
    if started is None:
        return past or None
    if state in rd.TERMINAL_STATES:
        return past + _segment_end(run, status, started) - started
    return past + max(time.time() - started, 0.0)


def read_state(run: Path) -> dict[str, Any]:
    """State of a run from its directory alone: status.json checked against the supervisor's liveness, or for runs
    launched outside it (launch_node.sh, Slurm) against rank 0's heartbeat. A run is `failed` only once no process
    of it remains: while its ranks outlive a lost supervisor it stays live, with the cause in `warning`."""
    status = rd.read_status(run)
    state = status.get("state", "queued")
    manifest = rd.read_json(run / rd.MANIFEST, {}) or {}
    alive = bool(manifest) and _alive(manifest)
    active = state in ("starting", "running", "stopping")
    if active and manifest and not alive:
        rest = run_processes.members(manifest)
        if rest:
            alive = True
            status["supervisor_lost"] = len(rest)  # processes of the run still alive
            status["warning"] = (f"supervisor lost; {len(rest)} process(es) of the run still running (the ranks "
                                 "save and stop at their next step) — stop or force-stop")
        else:
            # Gone without writing a final state (killed with the whole group, machine reboot, lost supervisor).
            state = _lost(run, status, "the run's processes ended without reporting a result (killed?)")
    elif active and not manifest:
        age = rd.heartbeat_age(run)
        status["heartbeat_age_s"] = age
        if age is not None and age > rd.HEARTBEAT_STALE_S:
            state = _lost(run, status, f"no heartbeat from the trainer for {age / 60:.0f} min: its job ended "
                                       "without reporting a result (node lost or job killed?)")
    if state == "running" and (rd.read_json(run / rd.CONTROL, {}) or {}).get("action"):
        state = "stopping"
    status["state"] = state
    status["alive"] = alive
    status["run_dir"] = str(run)
    status["name"] = run.name
    status["checkpoints"] = [rd.checkpoint_step(p) for p in rd.complete_checkpoints(run)]
    status["has_final"] = rd.has_final(run)
    status["run_s"] = run_seconds(run, status, manifest, state)
    return status


# ---------------------------------------------------------------- stop / resume

def stop(run: Path, *, force: bool = False, save_timeout: float = 600.0) -> dict[str, Any]:
    """Stop a run. Normal stop asks the ranks to save a checkpoint and exit, then ends whatever is left of the run's
    processes (SIGTERM, then SIGKILL after a grace period). Force stop skips the save. Either works whatever part of
    the run died first, reports in `ended` the processes it had to end, and is a no-op on a run with none left."""
    manifest = rd.read_json(run / rd.MANIFEST, {}) or {}
    if not manifest:
        return _stop_external(run, force=force, save_timeout=save_timeout)
    if not run_processes.members(manifest):
        state = read_state(run)
        if state["state"] in rd.TERMINAL_STATES:
            return {**state, "ended": []}
        raise UserError(f"run {run.name} is not running")
    rd.write_json_atomic(run / rd.CONTROL, {"action": "force_stop" if force else "save_and_stop",
                                            "requested": time.time()})
    rd.update_status(run, state="stopping")
    if not force:
        # The ranks poll the control file every step, save and exit; the supervisor then records `stopped`.
        run_processes.wait_gone(manifest, save_timeout)
    ended = run_processes.end(manifest, grace_s=STOP_GRACE_S)
    if rd.read_status(run).get("state") not in rd.TERMINAL_STATES:
        # The supervisor was gone (or killed here) before it could write: record the stop ourselves.
        rd.update_status(run, state="stopped", ended=time.time(), forced=force,
                         last_checkpoint=rd.checkpoint_step(c) if (c := rd.latest_checkpoint(run)) else None)
    return {**read_state(run), "ended": ended}


def _stop_external(run: Path, *, force: bool, save_timeout: float) -> dict[str, Any]:
    """A run launched outside our supervisor (launch_node.sh, Slurm) has no process group here to signal, but its
    trainer reads control.json every step like any other: ask it to save and stop, and wait for it to say so."""
    state = read_state(run)
    if state["state"] in rd.TERMINAL_STATES:
        return state
    if state.get("heartbeat_age_s") is None:
        raise UserError(f"run {run.name} is not running")
    if force:
        raise UserError(f"run {run.name} was started outside the studio (launch_node.sh or Slurm): force-stop it "
                        "where it runs (scancel, or Ctrl-C on its launcher); a normal stop saves and ends it from here")
    rd.write_json_atomic(run / rd.CONTROL, {"action": "save_and_stop", "requested": time.time()})
    rd.update_status(run, state="stopping")
    deadline = time.time() + save_timeout
    while time.time() < deadline and read_state(run)["state"] not in rd.TERMINAL_STATES:
        time.sleep(0.5)
    return read_state(run)


def resume(run: Path, *, detach: bool = True, checkpoint: int | None = None) -> Path | None:
    """Restart a stopped, failed or interrupted run from a complete checkpoint: the one of step `checkpoint`, else
    the newest (from scratch if there is none).

    Whatever the run wrote after that step belongs to the continuation being abandoned: later checkpoint folders
    (complete or partial) and metric rows. They are removed first, so the resumed run's own saves never land in an
    old folder that still carries a COMPLETE marker, rotation never keeps an old one over a new one, and the curves
    show one history. If the start is refused (devices busy), the checkpoints are put back."""
    state = read_state(run)
    if state["state"] in ("starting", "running", "stopping"):
        raise UserError(f"run {run.name} is still {state['state']}; stop it first")
    if state["state"] == "completed":
        raise UserError(f"run {run.name} already completed; clone it to train again")
    ckpt = _chosen_checkpoint(run, checkpoint)
    # The segment that ended is kept (start, end), so the run's time survives the new manifest; recorded once even
    # when this resume is refused and tried again.
    segments = [list(x) for x in state.get("segments", [])]
    started = (rd.read_json(run / rd.MANIFEST, {}) or {}).get("started")
    if started is not None and all(x[0] != started for x in segments):
        segments.append([started, _segment_end(run, state, started)])
    step = rd.checkpoint_step(ckpt) if ckpt else 0
    rd.update_status(run, resumed_from=step if ckpt else None, segments=segments, step=step)
    aside = _set_aside(run, step)
    try:
        start(run, detach=detach, resume_from=ckpt)
    except BaseException:
        for src, dst in aside:
            os.replace(dst, src)
        rd.update_status(run, resumed_from=state.get("resumed_from"), step=state.get("step"))
        raise
    for _, dst in aside:
        if dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
    return ckpt


def _chosen_checkpoint(run: Path, step: int | None) -> Path | None:
    complete = rd.complete_checkpoints(run)
    if step is None:
        return complete[-1] if complete else None
    for p in complete:
        if rd.checkpoint_step(p) == step:
            return p
    have = ", ".join(str(rd.checkpoint_step(p)) for p in complete) or "none"
    raise UserError("runs.no_such_checkpoint", "run {name} has no complete checkpoint {step}; complete checkpoints: "
                    "{have}", name=run.name, step=step, have=have)


def _set_aside(run: Path, step: int) -> list[tuple[Path, Path]]:
    """Move what the run wrote after `step` out of sight: later checkpoint folders (renamed outside the
    checkpoint-* pattern, so never offered) and metric rows (metrics.jsonl rewritten without them). Returns the
    (original, set-aside) pairs, to delete after the start or to put back if it is refused."""
    moved = []
    for p in sorted((run / rd.CHECKPOINTS).glob("checkpoint-*"), key=rd.checkpoint_step):
        if rd.checkpoint_step(p) > step:
            moved.append((p, p.with_name(f".superseded-{p.name}")))
            os.replace(*moved[-1])
    metrics = run / rd.METRICS
    if metrics.is_file():
        kept, dropped = [], False
        with open(metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    later = (json.loads(line).get("step") or 0) > step
                except (ValueError, AttributeError):
                    later = True  # a torn last line of a killed run
                dropped |= later
                if not later:
                    kept.append(line)
        if dropped:
            tmp, aside = metrics.with_name(f".{metrics.name}.tmp"), metrics.with_name(f".superseded-{metrics.name}")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(metrics, aside)
            os.replace(tmp, metrics)
            moved.append((metrics, aside))
    return moved


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
