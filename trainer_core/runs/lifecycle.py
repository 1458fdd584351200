"""Stop and resume a run that exists, whatever part of it died first."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from trainer_core.common.errors import UserError
from trainer_core.runs import processes as run_processes
from trainer_core.runs import protocol
from trainer_core.runs.state import RunState, one_writer, read_state, record_end, segment_end
from trainer_core.runs.supervisor import STOP_GRACE_S, start


@dataclasses.dataclass
class Stopped:
    """What a stop did: the run's state afterwards and the processes it had to end (`pid module`)."""

    state: RunState
    """The run as read once the stop returned."""
    ended: list[str]
    """Processes signalled because they did not exit by themselves."""
    already_ended: bool = False
    """The run had already ended: nothing was asked, signalled or changed."""


def _not_running(run: Path) -> UserError:
    return UserError("runs.not_running", "run {name} is not running", name=run.name)


def stop(run: Path, *, force: bool = False, save_timeout: float = 600.0) -> Stopped:
    """Stop a run. Normal stop asks the ranks to save a checkpoint and exit, then ends whatever is left of the run's
    processes (SIGTERM, then SIGKILL after a grace period). Force stop skips the save. Either works whatever part of
    the run died first and reports in `ended` the processes it had to end. A run that has ended is left exactly as
    it is: no signal (its recorded ids may belong to strangers by now), no new state."""
    state = read_state(run)  # records the end of a run none of whose processes remain
    if state.terminal:
        if not run_processes.members(run, protocol.read_manifest(run)):
            protocol.remove_partial(run)
        return Stopped(state, [], already_ended=True)
    manifest = protocol.read_manifest(run)
    if not manifest:
        return Stopped(_stop_external(run, force=force, save_timeout=save_timeout), [])
    if not run_processes.members(run, manifest):
        raise _not_running(run)  # queued: never started
    protocol.request(run, protocol.FORCE_STOP if force else protocol.SAVE_AND_STOP)
    with one_writer(run):  # not over a final state the supervisor has just written
        if protocol.read_status(run).live:
            protocol.update_status(run, state=protocol.STOPPING)
    if not force:
        # The ranks poll the control file every step, save and exit; the supervisor then records `stopped`.
        run_processes.wait_gone(run, manifest, save_timeout)
    ended = run_processes.end(run, manifest, grace_s=STOP_GRACE_S)
    # The supervisor was gone (or killed here) before it could write: record the end ourselves.
    record_end(run, None, ended=time.time())
    protocol.remove_partial(run)
    return Stopped(read_state(run), ended)


def _stop_external(run: Path, *, force: bool, save_timeout: float) -> RunState:
    """A run launched outside our supervisor (launch_node.sh, Slurm) has no process group here to signal, but its
    trainer reads control.json every step like any other: ask it to save and stop, and wait for it to say so."""
    state = read_state(run)
    if state.terminal:
        return state
    if state.heartbeat_age_s is None:
        raise _not_running(run)
    if force:
        raise UserError("runs.external_force_stop",
                        "run {name} was started outside the studio (launch_node.sh or Slurm): force-stop it where it "
                        "runs (scancel, or Ctrl-C on its launcher); a normal stop saves and ends it from here",
                        name=run.name)
    protocol.request(run, protocol.SAVE_AND_STOP)
    protocol.update_status(run, state=protocol.STOPPING)
    deadline = time.time() + save_timeout
    while time.time() < deadline and not read_state(run).terminal:
        time.sleep(0.5)
    return read_state(run)


def resume(run: Path, *, detach: bool = True, checkpoint: int | None = None) -> Path | None:
    """Restart a stopped, failed or interrupted run from a complete checkpoint: the one of step `checkpoint`, else
    the newest (from scratch if there is none). Returns the checkpoint it resumes from.

    Whatever the run wrote after that step belongs to the continuation being abandoned: later checkpoint folders
    (complete or partial) and metric rows. They are removed first, so the resumed run's own saves never land in an
    old folder that still carries a COMPLETE marker, rotation never keeps an old one over a new one, and the curves
    show one history. If the start is refused (devices busy), they are put back."""
    state = read_state(run)
    if state.live:
        raise UserError("runs.resume_live", "run {name} is still {state}; stop it first", name=run.name,
                        state=protocol.state_text(state.state))
    if state.state == protocol.COMPLETED:
        raise UserError("runs.resume_completed", "run {name} already completed; clone it to train again",
                        name=run.name)
    ckpt = _chosen_checkpoint(run, checkpoint)
    # The segment that ended is kept (start, end), so the run's time survives the new manifest; recorded once even
    # when this resume is refused and tried again.
    segments = [list(x) for x in state.segments]
    started = protocol.read_manifest(run).get("started")
    if started is not None and all(x[0] != started for x in segments):
        segments.append([started, segment_end(run, state, started)])
    before = protocol.read_status(run)
    step = protocol.checkpoint_step(ckpt) if ckpt else 0
    protocol.update_status(run, resumed_from=step if ckpt else None, segments=segments, step=step)
    aside = _set_aside(run, step)
    try:
        start(run, detach=detach, resume_from=ckpt)
    except BaseException:
        for src, dst in aside:
            os.replace(dst, src)
        protocol.update_status(run, resumed_from=before.resumed_from, step=before.step)
        raise
    for _, dst in aside:
        if dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
    return ckpt


def _chosen_checkpoint(run: Path, step: int | None) -> Path | None:
    complete = protocol.complete_checkpoints(run)
    if step is None:
        return complete[-1] if complete else None
    for p in complete:
        if protocol.checkpoint_step(p) == step:
            return p
    have = ", ".join(str(protocol.checkpoint_step(p)) for p in complete) or "none"
    raise UserError("runs.no_such_checkpoint", "run {name} has no complete checkpoint {step}; complete checkpoints: "
                    "{have}", name=run.name, step=step, have=have)


def _set_aside(run: Path, step: int) -> list[tuple[Path, Path]]:
    """Move what the run wrote after `step` out of sight: later checkpoint folders (renamed outside the
    checkpoint-* pattern, so never offered) and metric rows (metrics.jsonl rewritten without them). Returns the
    (original, set-aside) pairs, to delete after the start or to put back if it is refused."""
    moved = []
    for p in sorted((run / protocol.CHECKPOINTS).glob(f"{protocol.CHECKPOINT_PREFIX}*"), key=protocol.checkpoint_step):
        if protocol.checkpoint_step(p) > step:
            moved.append((p, p.with_name(f".superseded-{p.name}")))
            os.replace(*moved[-1])
    metrics = run / protocol.METRICS
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
