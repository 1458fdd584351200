# .venv/bin/python -m pytest tests/test_run_dir.py -q
"""The run directory as a channel: rank 0's heartbeat, and how the state of a run launched outside our supervisor
(launch_node.sh, Slurm) is judged from it. The processes here are this test's own; the real trainer's heartbeat and
a really killed external job are in tests/test_scale_out.py."""

import json
import os
import socket
import time

import psutil
import pytest

from helpers import wait_for
from trainer_core.runs import protocol
from trainer_core.runs.state import read_state


def beat_time(run):
    return (protocol.read_json(run / protocol.HEARTBEAT) or {}).get("time")


def test_heartbeat_is_rewritten_until_stopped(tmp_path):
    stop = protocol.start_heartbeat(tmp_path, every_s=0.05)
    first = wait_for(lambda: beat_time(tmp_path), 5, "the first beat")
    wait_for(lambda: beat_time(tmp_path) != first, 5, "a second beat")
    beat = protocol.read_json(tmp_path / protocol.HEARTBEAT)
    assert beat["host"] == socket.gethostname() and beat["pid"] == os.getpid()
    stop.set()
    time.sleep(0.1)
    last = beat_time(tmp_path)
    time.sleep(0.3)
    assert beat_time(tmp_path) == last
    assert 0.3 <= protocol.heartbeat_age(tmp_path) < 5


def test_a_full_disk_does_not_stop_the_heartbeat_thread(tmp_path):
    missing = tmp_path / "gone"  # every write fails, as on a full disk; the thread must keep trying, not die
    stop = protocol.start_heartbeat(missing, every_s=0.05)
    time.sleep(0.2)
    missing.mkdir()
    wait_for(lambda: beat_time(missing), 5, "a beat once writing works again")
    stop.set()


def external_run(tmp_path, state=protocol.RUNNING, beat_age=None, log=""):
    run = tmp_path / "run"
    run.mkdir()
    protocol.update_status(run, state=state)
    if beat_age is not None:
        protocol.write_json_atomic(run / protocol.HEARTBEAT, {"time": time.time() - beat_age, "host": "node0", "pid": 1})
    if log:
        (run / protocol.LOG).write_text(log, encoding="utf-8")
    return run


def test_external_run_with_a_recent_heartbeat_is_running(tmp_path):
    st = read_state(external_run(tmp_path, beat_age=protocol.HEARTBEAT_EVERY_S))
    assert st.state == protocol.RUNNING and not st.interrupted
    assert protocol.HEARTBEAT_EVERY_S <= st.heartbeat_age_s < protocol.HEARTBEAT_EVERY_S + 5


def test_external_run_whose_heartbeat_stopped_is_failed_with_the_reason(tmp_path):
    run = external_run(tmp_path, beat_age=protocol.HEARTBEAT_STALE_S + 60)
    st = read_state(run)
    assert st.state == protocol.FAILED and st.interrupted
    assert st.error.startswith("no heartbeat from the trainer for 6 min")
    assert protocol.read_status(run).state == protocol.RUNNING  # judged, not rewritten: a beat that resumes revives it


def test_the_log_names_the_cause_when_it_has_one(tmp_path):
    log = "[rank0]: Traceback (most recent call last):\n[rank0]: RuntimeError: NCCL communicator was aborted\n"
    st = read_state(external_run(tmp_path, beat_age=protocol.HEARTBEAT_STALE_S + 1, log=log))
    assert st.state == protocol.FAILED and "NCCL communicator was aborted" in st.error


def test_without_a_heartbeat_nothing_is_judged(tmp_path):
    # Runs written before heartbeats existed, or a job whose rank 0 has not started yet.
    assert read_state(external_run(tmp_path)).state == protocol.RUNNING


def test_finished_runs_are_not_judged_by_their_heartbeat(tmp_path):
    assert read_state(external_run(tmp_path, protocol.COMPLETED, beat_age=10 * protocol.HEARTBEAT_STALE_S)).state == protocol.COMPLETED


def test_supervised_runs_are_judged_by_their_supervisor_not_the_heartbeat(tmp_path):
    run = external_run(tmp_path, beat_age=10 * protocol.HEARTBEAT_STALE_S)
    me = psutil.Process()
    protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": me.pid, "create_time": me.create_time()})  # "alive"
    st = read_state(run)
    assert st.state == protocol.RUNNING and st.alive and st.heartbeat_age_s is None


# ---------------------------------------------------------------- the typed records

def test_status_from_an_old_run_dir_reads_with_defaults_and_keeps_unknown_keys(tmp_path):
    # The format on disk, as an older (or newer) version wrote it: missing fields, one this version does not know.
    (tmp_path / protocol.STATUS).write_text(json.dumps({"state": "stopped", "step": 7, "some_future_field": [1, 2]}))
    status = protocol.read_status(tmp_path)
    assert status.state == protocol.STOPPED and status.terminal and status.step == 7
    assert status.total_steps is None and status.segments == [] and status.lints == []
    protocol.update_status(tmp_path, last_checkpoint=7)
    on_disk = json.loads((tmp_path / protocol.STATUS).read_text())
    assert on_disk["some_future_field"] == [1, 2] and on_disk["last_checkpoint"] == 7 and on_disk["updated"] > 0


def test_status_of_a_missing_or_damaged_file_is_queued(tmp_path):
    assert protocol.read_status(tmp_path).state == protocol.QUEUED
    (tmp_path / protocol.STATUS).write_text("{half")
    assert protocol.read_status(tmp_path) == protocol.Status()


def test_a_misspelt_status_field_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError):
        protocol.update_status(tmp_path, setp=3)
    assert not (tmp_path / protocol.STATUS).exists()


def test_states_partition_into_live_terminal_and_queued():
    assert protocol.LIVE.isdisjoint(protocol.TERMINAL) and set(protocol.STATES) == protocol.LIVE | protocol.TERMINAL | {protocol.QUEUED}


def test_metrics_row_round_trip_keeps_both_losses_and_drops_other_absent_values():
    row = protocol.MetricsRow(step=3, loss=1.5, lr=1e-3)
    assert row.to_json() == {"step": 3, "loss": 1.5, "eval_loss": None, "lr": 1e-3}
    assert protocol.MetricsRow.from_json(row.to_json()) == row
    old = protocol.MetricsRow.from_json({"step": 2, "loss": 2.0, "extra_metric": 9})
    assert old.eval_loss is None and old.to_json()["extra_metric"] == 9


def test_metrics_rows_are_appended_as_whole_lines(tmp_path):
    with open(tmp_path / protocol.METRICS, "a", encoding="utf-8") as f:
        protocol.append_metrics(f, protocol.MetricsRow(step=1, loss=3.0))
        protocol.append_metrics(f, protocol.MetricsRow(step=1, eval_loss=2.5))
    lines = (tmp_path / protocol.METRICS).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 1] and json.loads(lines[1])["loss"] is None


def test_control_requests_round_trip(tmp_path):
    assert protocol.read_control(tmp_path).action is None
    protocol.request(tmp_path, protocol.SAVE_AND_STOP, cause="the launcher died")
    control = protocol.read_control(tmp_path)
    assert control.action == protocol.SAVE_AND_STOP and control.cause == "the launcher died" and control.requested


def test_the_log_line_classifier_supervisor_and_monitor_share():
    assert protocol.error_message("[rank1]: RuntimeError: NCCL timeout") == "RuntimeError: NCCL timeout"
    assert protocol.error_message("error: data.path x not found") == "error: data.path x not found"
    assert protocol.error_message("step 3 loss 2.1") is None
    assert protocol.is_error_line("Traceback (most recent call last):")
    assert protocol.is_error_line("  torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not protocol.is_error_line("[INFO] saving checkpoint-4")


# ---------------------------------------------------------------- why a run failed, as a coded message

def test_a_failure_reason_round_trips_as_a_coded_message_with_nested_parts(tmp_path):
    from app.messages_zh import MESSAGES_ZH
    from trainer_core.common.errors import text

    cause = text("training.lost_supervisor", "the run's supervisor process was lost")
    reason = text("training.lost_saved", "{cause}; the ranks saved checkpoint {step} and stopped; resume to go on",
                  cause=cause, step=12)
    protocol.write_status(tmp_path, protocol.Status(state=protocol.RUNNING))
    protocol.update_status(tmp_path, state=protocol.FAILED, error=reason)
    on_disk = json.loads((tmp_path / protocol.STATUS).read_text())
    # Both forms are written: the English for the CLI and older readers, the coded one for the dashboard.
    assert on_disk["error"] == ("the run's supervisor process was lost; the ranks saved checkpoint 12 and stopped; "
                                "resume to go on")
    assert on_disk["error_text"]["code"] == "training.lost_saved"
    assert on_disk["error_text"]["params"]["cause"]["code"] == "training.lost_supervisor"
    back = protocol.read_status(tmp_path)
    assert back.error_text == reason and back.error == on_disk["error"]
    assert back.error_text.render(MESSAGES_ZH.get) == "运行的监督进程已丢失；各 rank 已保存检查点 12 并停止；恢复运行即可继续。"
    # Clearing the error (a new start) clears both.
    protocol.update_status(tmp_path, state=protocol.STARTING, error=None)
    assert protocol.read_status(tmp_path).error is None and protocol.read_status(tmp_path).error_text is None


def test_an_old_status_without_the_coded_reason_keeps_its_english(tmp_path):
    (tmp_path / protocol.STATUS).write_text(json.dumps({"state": "failed", "error": "out of memory: CUDA out of memory"}))
    status = protocol.read_status(tmp_path)
    assert status.error == "out of memory: CUDA out of memory" and status.error_text is None
    # A hand-edited or foreign value is not a message: read as absent, not as an exception.
    (tmp_path / protocol.STATUS).write_text(json.dumps({"state": "failed", "error": "x", "error_text": {"code": "Bad"}}))
    assert protocol.read_status(tmp_path).error_text is None


def test_a_stop_request_carries_its_cause_as_a_coded_message(tmp_path):
    from trainer_core.common.errors import text

    cause = text("runs.orphans_left", "the DeepSpeed launcher exited with code {exit_code} while {n} process(es) of "
                 "the run were still running", exit_code=-9, n=2)
    protocol.request(tmp_path, protocol.SAVE_AND_STOP, cause=cause)
    control = protocol.read_control(tmp_path)
    assert control.cause == str(cause) and control.cause_text == cause


@pytest.mark.parametrize("log,code,params", [
    (["step 3", "[rank0]: RuntimeError: CUDA error: device-side assert triggered"], "runs.failed_exception",
     {"message": "RuntimeError: CUDA error: device-side assert triggered"}),
    (["step 3"], "runs.failed_exit_code", {"exit_code": 1}),
    (["[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"], "runs.failed_oom_detail",
     {"detail": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"}),
])
def test_the_supervisor_records_a_failure_with_its_code(tmp_path, log, code, params):
    from trainer_core.runs.state import finish

    protocol.write_status(tmp_path, protocol.Status(state=protocol.RUNNING))
    (tmp_path / protocol.LOG).write_text("\n".join(log) + "\n")
    finish(tmp_path, 1)
    status = protocol.read_status(tmp_path)
    assert status.state == protocol.FAILED
    assert status.error_text.code == code and dict(status.error_text.params) == params
    assert status.error == str(status.error_text)


def test_a_lost_run_reads_failed_with_a_coded_reason(tmp_path):
    run = external_run(tmp_path, beat_age=protocol.HEARTBEAT_STALE_S + 60)
    st = read_state(run)
    assert st.error_text.code == "runs.lost_heartbeat" and st.error == str(st.error_text)


def test_the_longest_failure_reason_fits_in_the_blocks_status_json_already_has(tmp_path):
    """On a full disk the final state can only overwrite status.json in place: the reason, in both its forms, must
    fit in the file as it was written before (here just under a block boundary, the worst case)."""
    from trainer_core.common.errors import text

    def json_bytes(st: protocol.Status) -> int:
        return len(json.dumps(st.to_json(), ensure_ascii=False, indent=1).encode())

    status = protocol.Status(state=protocol.RUNNING, lints=[""])
    status.lints = ["x" * (protocol.STATUS_BLOCK - 2 - json_bytes(status))]  # one byte short of a whole block
    protocol.write_status(tmp_path, status)
    size = (tmp_path / protocol.STATUS).stat().st_size
    line = "RuntimeError: " + "显存" * 243  # a 500-character log line, 3 bytes a character
    failed = protocol.Status(state=protocol.FAILED, lints=status.lints, error=line,
                       error_text=text("runs.failed_exception", "{message}", message=line))
    assert json_bytes(failed) + 1 <= size, (json_bytes(failed), size)  # + its newline
