# .venv/bin/python -m pytest tests/test_run_dir.py -q
"""The run directory as a channel: rank 0's heartbeat, and how the state of a run launched outside our supervisor
(launch_node.sh, Slurm) is judged from it. The processes here are this test's own; the real trainer's heartbeat and
a really killed external job are in tests/test_scale_out.py."""

import os
import socket
import time

import psutil

from helpers import wait_for
from trainer_core.runs import protocol as rd
from trainer_core.runs.supervisor import read_state


def beat_time(run):
    return (rd.read_json(run / rd.HEARTBEAT) or {}).get("time")


def test_heartbeat_is_rewritten_until_stopped(tmp_path):
    stop = rd.start_heartbeat(tmp_path, every_s=0.05)
    first = wait_for(lambda: beat_time(tmp_path), 5, "the first beat")
    wait_for(lambda: beat_time(tmp_path) != first, 5, "a second beat")
    beat = rd.read_json(tmp_path / rd.HEARTBEAT)
    assert beat["host"] == socket.gethostname() and beat["pid"] == os.getpid()
    stop.set()
    time.sleep(0.1)
    last = beat_time(tmp_path)
    time.sleep(0.3)
    assert beat_time(tmp_path) == last
    assert 0.3 <= rd.heartbeat_age(tmp_path) < 5


def test_a_full_disk_does_not_stop_the_heartbeat_thread(tmp_path):
    missing = tmp_path / "gone"  # every write fails, as on a full disk; the thread must keep trying, not die
    stop = rd.start_heartbeat(missing, every_s=0.05)
    time.sleep(0.2)
    missing.mkdir()
    wait_for(lambda: beat_time(missing), 5, "a beat once writing works again")
    stop.set()


def external_run(tmp_path, state="running", beat_age=None, log=""):
    run = tmp_path / "run"
    run.mkdir()
    rd.update_status(run, state=state)
    if beat_age is not None:
        rd.write_json_atomic(run / rd.HEARTBEAT, {"time": time.time() - beat_age, "host": "node0", "pid": 1})
    if log:
        (run / rd.LOG).write_text(log, encoding="utf-8")
    return run


def test_external_run_with_a_recent_heartbeat_is_running(tmp_path):
    st = read_state(external_run(tmp_path, beat_age=rd.HEARTBEAT_EVERY_S))
    assert st["state"] == "running" and not st.get("interrupted")
    assert rd.HEARTBEAT_EVERY_S <= st["heartbeat_age_s"] < rd.HEARTBEAT_EVERY_S + 5


def test_external_run_whose_heartbeat_stopped_is_failed_with_the_reason(tmp_path):
    run = external_run(tmp_path, beat_age=rd.HEARTBEAT_STALE_S + 60)
    st = read_state(run)
    assert st["state"] == "failed" and st["interrupted"]
    assert st["error"].startswith("no heartbeat from the trainer for 6 min")
    assert rd.read_status(run)["state"] == "running"  # judged, not rewritten: a beat that resumes revives it


def test_the_log_names_the_cause_when_it_has_one(tmp_path):
    log = "[rank0]: Traceback (most recent call last):\n[rank0]: RuntimeError: NCCL communicator was aborted\n"
    st = read_state(external_run(tmp_path, beat_age=rd.HEARTBEAT_STALE_S + 1, log=log))
    assert st["state"] == "failed" and "NCCL communicator was aborted" in st["error"]


def test_without_a_heartbeat_nothing_is_judged(tmp_path):
    # Runs written before heartbeats existed, or a job whose rank 0 has not started yet.
    assert read_state(external_run(tmp_path))["state"] == "running"


def test_finished_runs_are_not_judged_by_their_heartbeat(tmp_path):
    assert read_state(external_run(tmp_path, "completed", beat_age=10 * rd.HEARTBEAT_STALE_S))["state"] == "completed"


def test_supervised_runs_are_judged_by_their_supervisor_not_the_heartbeat(tmp_path):
    run = external_run(tmp_path, beat_age=10 * rd.HEARTBEAT_STALE_S)
    me = psutil.Process()
    rd.write_json_atomic(run / rd.MANIFEST, {"pid": me.pid, "create_time": me.create_time()})  # "alive"
    st = read_state(run)
    assert st["state"] == "running" and st["alive"] and "heartbeat_age_s" not in st
