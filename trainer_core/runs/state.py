"""A run's state from its directory alone, and the one writer of its terminal state (record_end).

read_state checks status.json against the processes: the supervisor's liveness (manifest.json), or for runs
launched outside it (launch_node.sh, Slurm) rank 0's heartbeat. A live state whose processes are gone reads
`failed`, with the best cause train.log offers.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from trainer_core.common.errors import Text, text
from trainer_core.runs import outputs
from trainer_core.runs import processes as run_processes
from trainer_core.runs import protocol
from trainer_core.common.tailing import read_tail_bytes


@dataclass
class RunState(protocol.Status):
    """status.json as checked against the run's processes and checkpoints. Read, never written."""

    alive: bool = False
    """A process of the run (its supervisor, or a survivor of its group) is alive on this machine."""
    run_dir: str = ""
    """The run directory."""
    checkpoints: list[int] = field(default_factory=list)
    """Steps of the complete checkpoints, oldest first."""
    has_final: bool = False
    """final/ is complete."""
    run_s: float | None = None
    """How long the run has run: its segments added up, the time stopped left out."""
    interrupted: bool = False
    """The processes ended without recording a final state (the state reads `failed`)."""
    supervisor_lost: int | None = None
    """The supervisor died: how many processes of the run still run."""
    heartbeat_age_s: float | None = None
    """For a run launched outside the supervisor: seconds since rank 0's heartbeat."""
    warning: str | None = None
    """Something the user should know about a live run (its supervisor was lost)."""

    def to_json(self) -> dict[str, Any]:
        derived = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunState)
                   if f.name not in {g.name for g in dataclasses.fields(protocol.Status)}}
        return {**super().to_json(), **derived}


# ---------------------------------------------------------------- why a run failed, from its log

def root_error(log_path: Path, tail_bytes: int = 256_000) -> Text | None:
    """The failing rank's final exception line; out-of-memory and full disks are named as such. A line taken from
    the log is the program's own output and stays as it is, a parameter of the sentence that frames it."""
    log = read_tail_bytes(log_path, tail_bytes).decode("utf-8", "replace")
    lines = [ln.rstrip() for ln in log.splitlines()]
    candidates = [c for ln in lines if (c := protocol.error_message(ln))]
    # The launcher's own "exits with return code" noise and our supervisor lines are not root causes.
    candidates = [c for c in candidates if "subprocess.CalledProcessError" not in c and "sigkill_handler" not in c]
    joined = "\n".join(lines)
    if protocol.NO_SPACE.search(joined):
        detail = next((c for c in reversed(candidates) if protocol.NO_SPACE.search(c)), None)
        return (text("runs.failed_no_space_detail", "no space left on device: {detail}", detail=detail) if detail
                else text("runs.failed_no_space", "no space left on device"))
    if protocol.OOM.search(joined):
        detail = next((c for c in reversed(candidates) if protocol.OOM.search(c)), None)
        return (text("runs.failed_oom_detail", "out of memory: {detail}", detail=detail) if detail
                else text("runs.failed_oom", "out of memory"))
    # DeepSpeed's launcher names the first rank that failed; a negative code means a signal ended it, and the
    # errors the surviving ranks print afterwards (lost connections) are consequences, not the cause.
    first = protocol.RANK_EXIT.search(joined)
    if first and int(first.group(1)) < 0:
        sig = -int(first.group(1))
        name = signal_name(sig)
        if sig == signal.SIGKILL:
            return text("runs.failed_rank_sigkill", "a rank process was killed by {signal} (kill -9 or the kernel's "
                        "out-of-memory killer); the launcher stopped the other ranks", signal=name)
        return text("runs.failed_rank_signal", "a rank process was killed by {signal}; the launcher stopped the "
                    "other ranks", signal=name)
    if not candidates:
        return None
    # Prefer our own one-line user errors, then the last real exception.
    mine = [c for c in candidates if c.startswith("error: ")]
    if mine:
        return text("runs.failed_trainer_said", "{message}", message=mine[-1][len("error: "):][:500])
    return text("runs.failed_exception", "{message}", message=candidates[-1][:500])


def disk_full(run: Path) -> Text | None:
    """A full runs folder, named as the cause: when the disk is full the ranks' own error often cannot even be
    written to train.log."""
    usage = shutil.disk_usage(run)
    if usage.free >= max(32 * 2**20, usage.total // 1000):
        return None
    return text("runs.failed_disk_full", "no space left on device: {free} MiB free of {total} MiB on the runs folder "
                "{folder}; free space or move TRAINER_RUNS_ROOT, then resume", free=usage.free // 2**20,
                total=usage.total // 2**20, folder=str(run.parent))


def _own_words(run: Path, from_log: Text | None) -> Text | None:
    """The coded message rank 0 recorded for the user error it stopped on (training/train.py), when that is the
    line the log names: the same sentence, but with its own code, so it reads in the tab's language."""
    recorded = protocol.read_status(run).error_text
    if from_log is None or from_log.code != "runs.failed_trainer_said" or recorded is None:
        return None
    return recorded if str(recorded)[:500] == from_log.params["message"] else None


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"


def launcher_end(run: Path, code: int, signalled: int | None = None) -> Text:
    """How the supervisor's child (DeepSpeed's runner) ended, naming the process and the signal: the supervisor's
    own termination, DeepSpeed's `launch` killed under the runner (which exits 0 then; keep_locks records it), the
    runner killed, or the runner's exit code."""
    if signalled:
        return text("runs.supervisor_signalled", "the run's supervisor was terminated by {signal}",
                    signal=signal_name(signalled))
    killed = protocol.read_json(run / protocol.LAUNCH_EXIT)
    if isinstance(killed, dict) and isinstance(killed.get("signal"), int):
        return text("runs.launch_killed", "DeepSpeed's launch process was killed by {signal}",
                    signal=signal_name(killed["signal"]))
    if code < 0:
        return text("runs.runner_killed", "DeepSpeed's runner process was killed by {signal}",
                    signal=signal_name(-code))
    return text("runs.runner_exited", "DeepSpeed's runner exited with code {exit_code}", exit_code=code)


def final_of_this_segment(run: Path, manifest: dict[str, Any]) -> bool:
    """final/ is complete and was written by the segment the manifest started (not left by an earlier one)."""
    if not protocol.has_final(run):
        return False
    started = manifest.get("started")
    written = (protocol.read_json(run / protocol.FINAL / protocol.COMPLETE_MARKER) or {}).get("time")
    return not isinstance(started, (int, float)) or (isinstance(written, (int, float)) and written >= started)


def end_fields(run: Path, code: int | None, signalled: int | None = None) -> dict[str, Any]:
    """The final state from the launcher's exit code (None: unknown, the supervisor was lost), the stop request and
    what is on disk. A complete final/ means `completed`, whatever died afterwards (said in `note`)."""
    control = protocol.read_control(run)
    manifest = protocol.read_manifest(run)
    status = protocol.read_status(run)
    started = manifest.get("started")
    ended = time.time() if code is not None or started is None else segment_end(run, status, started)
    out: dict[str, Any] = {"exit_code": code, "ended": ended, "phase": None, "phase_done": None,
                           "phase_total": None, "eta_s": None}
    after = launcher_end(run, code, signalled) if code is not None else None
    if final_of_this_segment(run, manifest):
        note = None
        if code is None:
            note = text("runs.completed_unrecorded", "the final model was complete, but the run's supervisor ended "
                        "before recording it (killed?)")
        elif code != 0 or signalled or control.cause:
            note = text("runs.completed_then", "the final model was complete; afterwards: {what}",
                        what=control.cause_text or control.cause or after)
        return {**out, "state": protocol.COMPLETED, "final": True, "error": None, "note": note}
    if control.cause:
        ckpt = protocol.latest_checkpoint(run)
        saved = (text("runs.saved_checkpoint", "last complete checkpoint: {step}", step=protocol.checkpoint_step(ckpt))
                 if ckpt else text("runs.saved_none", "no complete checkpoint"))
        return {**out, "state": protocol.FAILED,
                "error": text("runs.failed_asked_to_save", "{cause}; they were asked to save and stop ({saved}); "
                              "resume to go on", cause=control.cause_text or control.cause, saved=saved)}
    if control.action in (protocol.SAVE_AND_STOP, protocol.FORCE_STOP):
        ckpt = protocol.latest_checkpoint(run)
        return {**out, "state": protocol.STOPPED, "error": None, "forced": control.action == protocol.FORCE_STOP,
                "last_checkpoint": protocol.checkpoint_step(ckpt) if ckpt else None}
    error = root_error(run / protocol.LOG)
    if code is None:
        # Nobody recorded the end: rank 0's own record of why it stopped (it saw its supervisor go), else the log.
        error = status.error_text or (text("runs.failed_recorded", "{message}", message=status.error)
                                      if status.error else None) or error
        return {**out, "state": protocol.FAILED, "error": error or text(
            "runs.lost_silently", "the run's processes ended without reporting a result (killed?)")}
    if error is None or error.code not in NAMED_CAUSES:
        named = after if (signalled or code < 0 or after.code == "runs.launch_killed") else None
        error = (named or disk_full(run) or _own_words(run, error) or error
                 or text("runs.failed_exit_code", "the launcher exited with code {exit_code}", exit_code=code))
    return {**out, "state": protocol.FAILED, "error": error}


_WRITING: set[str] = set()  # runs this process holds one_writer for (a signal handler may re-enter it)


@contextmanager
def one_writer(run: Path):
    """Serialise the writers of a run's final state (the supervisor, `stop`, and any reader that finds no process
    left): an flock on the run directory itself, re-entrant within a process."""
    key = str(run)
    if key in _WRITING:
        yield
        return
    fd = os.open(run, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            # A cluster filesystem without locks (Lustre mounted without flock, NFS without lockd), where rank 0 of
            # a Slurm job records its end: that run has no other writer here, so it writes unlocked.
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        _WRITING.add(key)
        yield
    finally:
        _WRITING.discard(key)
        os.close(fd)


def record_end(run: Path, code: int | None, signalled: int | None = None, **extra: Any) -> bool:
    """The one writer of a run's terminal state (state, cause, exit code, end time) in status.json, written once:
    whoever comes first while the state is still live writes it; later callers find it terminal and leave it.
    Returns whether this call wrote it. Its callers hand it what they know, and end_fields reads the rest from the
    run directory:
      - the supervisor, once its launcher exited: `code`, and `signalled`, the signal that terminated it;
      - rank 0 of a run launched without a supervisor (by hand, Slurm), as it exits: `code` 0;
      - `stop`, or a reader, finding no process of the run left: `code` None (nobody saw the end)."""
    with one_writer(run):
        if not protocol.read_status(run).live:
            return False
        fields = end_fields(run, code, signalled)
        protocol.update_status(run, **{**fields, **extra})
        return True


# Causes the log names outright; a nearly full disk or the trainer's own message does not override them.
NAMED_CAUSES = frozenset({"runs.failed_no_space", "runs.failed_no_space_detail", "runs.failed_oom",
                          "runs.failed_oom_detail"})


# ---------------------------------------------------------------- the state a reader sees

def _alive(info: dict[str, Any]) -> bool:
    """The recorded process is alive *and* is the same process (its start time matches; pids get reused)."""
    try:
        p = psutil.Process(int(info["pid"]))
        return abs(p.create_time() - float(info["create_time"])) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def _lost(run: Path, s: RunState, fallback: Text) -> None:
    """A run whose processes are gone without a final state, as judged (not written): failed, with the best cause
    the log offers (or the one rank 0 recorded before it went: status.json's own error, kept with its coded form
    when it has one)."""
    if not s.error:
        s.error_text = root_error(run / protocol.LOG) or fallback
        s.error = str(s.error_text)
    s.interrupted = True
    s.state = protocol.FAILED


def segment_end(run: Path, status: protocol.Status, started: float) -> float:
    """When the segment that started at `started` ended: its recorded end, or for one that ended without a word
    (killed, lost) the last write to its log."""
    if status.ended is not None and status.ended >= started:
        return status.ended
    try:
        return max((run / protocol.LOG).stat().st_mtime, started)
    except OSError:
        return started


def run_seconds(run: Path, status: protocol.Status, manifest: dict[str, Any]) -> float | None:
    """How long the run has run: each segment (a launch or a resume, to its end; start-up, evaluation and saving
    included) added up. The time a run sat stopped before a resume is not counted."""
    past = sum(end - start for start, end in status.segments)
    started = manifest.get("started") or status.created
    if started is None:
        return past or None
    if status.state in protocol.TERMINAL:
        return past + segment_end(run, status, started) - started
    return past + max(time.time() - started, 0.0)


def read_state(run: Path) -> RunState:
    """State of a run from its directory alone. A run is `failed` only once no process of it remains: while its
    ranks outlive a lost supervisor it stays live, with the cause in `warning`."""
    disk = protocol.read_status(run)
    s = RunState(**{f.name: getattr(disk, f.name) for f in dataclasses.fields(protocol.Status)})
    manifest = protocol.read_manifest(run)
    s.alive = bool(manifest) and _alive(manifest)
    if s.live and manifest and not s.alive:
        rest = run_processes.members(run, manifest)
        if rest:
            s.alive = True
            s.supervisor_lost = len(rest)
            s.warning = (f"supervisor lost; {len(rest)} process(es) of the run still running (the ranks save and "
                         "stop at their next step) — stop or force-stop")
        else:
            # Gone without writing a final state (killed with the whole group, machine reboot, lost supervisor):
            # no process is left to write it, so this reader does, once (another reader may have just done it).
            try:
                record_end(run, None)
                disk = protocol.read_status(run)
                s = RunState(**{f.name: getattr(disk, f.name) for f in dataclasses.fields(protocol.Status)})
            except OSError:  # a run directory this reader may not write: judge it without writing
                _lost(run, s, text("runs.lost_silently", "the run's processes ended without reporting a result "
                                   "(killed?)"))
    elif s.live and not manifest:
        age = s.heartbeat_age_s = protocol.heartbeat_age(run)
        if age is not None and age > protocol.HEARTBEAT_STALE_S:
            _lost(run, s, text("runs.lost_heartbeat", "no heartbeat from the trainer for {minutes:.0f} min: its job "
                               "ended without reporting a result (node lost or job killed?)", minutes=age / 60))
    if s.state == protocol.RUNNING and protocol.read_control(run).action:
        s.state = protocol.STOPPING
    if s.terminal:
        # What a run was doing and how long it had left are over with it (older writers left them behind).
        s.phase = s.phase_done = s.phase_total = s.eta_s = None
        # Its end was written by a reader that found its processes gone: nobody saw it end.
        s.interrupted = s.interrupted or (s.state == protocol.FAILED and s.exit_code is None and bool(manifest))
    s.run_dir, s.name = str(run), run.name
    s.checkpoints = [protocol.checkpoint_step(p) for p in outputs.checkpoints(run)]
    s.has_final = outputs.final_model(run) is not None
    s.run_s = run_seconds(run, s, manifest)
    return s
