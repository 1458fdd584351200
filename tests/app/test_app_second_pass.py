# .venv/bin/python -m pytest tests/app/test_app_second_pass.py -q
"""Issue 18, the dashboard's second pass: each defect a new user tripped over, through Streamlit's AppTest.

The fixtures and run-directory helpers are tests/app/test_app_pages.py's, so runs on disk look exactly as there.
Chat tests generate with the real starter model in-process (sampling, 16 tokens unless a stop ends it sooner); the
two that walk through many pages and models are marked slow.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pandas as pd
import pytest

from app import chat_view as cv
from app.i18n import EN, ZH
from pages_helpers import goto, make_run, texts
from app.data_view import shown_path
from trainer_core.common import paths
from trainer_core.runs import protocol

STARTER = shown_path(paths.STARTER_MODEL_DIR)  # as the page shows it: relative to the project where it lies inside


def _chat_messages(at) -> list[tuple[str, str]]:
    """(role, text) of every chat message on the page, the text as plain-text elements."""
    return [(m.name, "".join(e.value for e in m.text)) for m in at.chat_message]


def _captions(at) -> list[str]:
    return [c.value for m in at.chat_message for c in m.caption]


# ---------------------------------------------------------------------------------------------------- chat


@pytest.mark.slow
def test_chat_history_belongs_to_its_model_and_each_reply_says_who_wrote_it(app, runs_root):
    make_run(runs_root, "a", "completed", final=True)
    make_run(runs_root, "b", "completed", final=True)
    goto(app, "pages/chat.py")
    app.selectbox(key="p.chat.run").set_value("a").run()
    app.slider(key="p.chat.max_new").set_value(16)
    app.chat_input(key="chat.input").set_value("my_var_name 是*谁*？").run()
    assert not app.exception, [e.value for e in app.exception]
    # Plain text, not Markdown: the underscores and asterisks stay as typed.
    messages = _chat_messages(app)
    assert messages[0] == ("user", "my_var_name 是*谁*？") and messages[1][0] == "assistant"
    assert not app.chat_message[0].markdown
    assert ZH["chat.side.ft"].format(name="a · final") in _captions(app)
    # Compare mode: the base model answers too, labelled as the base.
    app.toggle(key="p.chat.compare").set_value(True)
    app.chat_input(key="chat.input").set_value("皇上驾到！").run()
    assert not app.exception
    conv = app.session_state["chat.conversations"][cv.conversation_key("run", "a", "final", "你是华妃")]
    base_reply = [m for m in conv["base"] if m["role"] == "assistant"]
    assert len(base_reply) == 1 and base_reply[0]["by"] == ["base", STARTER]
    shown = _chat_messages(app)
    assert ZH["chat.side.base"].format(name=STARTER) in _captions(app)
    # Another run: its own (empty) history, nothing relabelled.
    app.selectbox(key="p.chat.run").set_value("b").run()
    assert not app.chat_message
    # Back on run a, and after a visit to another page: the same replies, none asked for again.
    app.selectbox(key="p.chat.run").set_value("a").run()
    goto(app, "pages/monitor.py")
    goto(app, "pages/chat.py")
    assert _chat_messages(app) == shown
    # The probe's results belong to run a: a plain model folder shows none, and its replies are not "fine-tuned".
    app.button(key="chat.probe_btn").click().run()
    assert not app.exception and ZH["chat.probe_results"] in [h.value for h in app.subheader]
    app.radio(key="p.chat.source").set_value("model").run()
    assert not app.chat_message and ZH["chat.probe_results"] not in [h.value for h in app.subheader]
    app.chat_input(key="chat.input").set_value("你好").run()
    assert ZH["chat.side.model"].format(name=STARTER) in _captions(app)
    assert not any(c.startswith(ZH["chat.side.ft"].split("{")[0]) for c in _captions(app))
    app.radio(key="p.chat.source").set_value("run").run()
    assert _chat_messages(app) == shown and ZH["chat.probe_results"] in [h.value for h in app.subheader]


def test_a_plain_model_folder_is_not_labelled_fine_tuned(app, runs_root):
    goto(app, "pages/chat.py")
    app.radio(key="p.chat.source").set_value("model").run()
    headers = [m.value for m in app.markdown]
    assert f"**{ZH['chat.side.model'].format(name=STARTER)}**" in headers
    assert not any(ZH["chat.side.ft"].split("{")[0] in h for h in headers)
    app.radio(key="lang").set_value("en").run()
    assert f"**{EN['chat.side.model'].format(name=STARTER)}**" in [m.value for m in app.markdown]


def test_a_reply_cut_short_by_leaving_the_page_is_kept_not_asked_again(app, runs_root):
    """A page left mid-reply stops the script: what was streamed so far is in the history (unfinished), and an
    unanswered turn stays unanswered. Coming back must show that, not ask the model again (a different answer)."""
    make_run(runs_root, "a", "completed", final=True)
    goto(app, "pages/chat.py")
    app.toggle(key="p.chat.compare").set_value(True).run()
    key = cv.conversation_key("run", "a", "final", "你是华妃")
    ft = [{"role": "user", "content": "你是谁？"},
          {"role": "assistant", "content": "臣妾是", "by": ["ft", "a · final"], "done": False}]
    app.session_state["chat.conversations"] = {key: {"ft": ft, "base": [{"role": "user", "content": "你是谁？"}],
                                                     "probe": None}}
    goto(app, "pages/monitor.py")
    goto(app, "pages/chat.py")
    assert _chat_messages(app) == [("user", "你是谁？"), ("assistant", "臣妾是"), ("user", "你是谁？")]
    assert ZH["chat.side.ft"].format(name="a · final") + " · " + ZH["chat.interrupted"] in _captions(app)
    conv = app.session_state["chat.conversations"][key]
    assert len(conv["ft"]) == 2 and len(conv["base"]) == 1  # nothing generated


def test_chat_with_it_opens_that_run(app, runs_root):
    make_run(runs_root, "older", "completed", final=True)
    goto(app, "pages/chat.py")
    app.selectbox(key="p.chat.run").set_value("older").run()
    make_run(runs_root, "newer", "completed", final=True)
    goto(app, "pages/monitor.py")
    app.selectbox(key="mon.run").set_value("newer").run()
    app.button(key="mon.chat_now").click().run()
    assert not app.exception
    assert app.title[0].value == ZH["chat.title"]
    assert app.radio(key="p.chat.source").value == "run"
    assert app.selectbox(key="p.chat.run").value == "newer"
    assert app.selectbox(key="p.chat.target").value == "final"


# ---------------------------------------------------------------------------------------------------- runs, monitor


def _seconds(text: str) -> int:
    parts = [int(x) for x in text.split(":")]
    return sum(v * 60 ** i for i, v in enumerate(reversed(parts)))


def test_run_time_survives_resume_and_is_the_same_measure_on_monitor_and_runs(app, runs_root):
    """A resumed run: a first segment of 100 s, then the live one (started 60 s ago by make_run's manifest). Both
    pages show the sum, not the live segment alone, nor the trainer's per-segment elapsed_s (16 s here)."""
    run = make_run(runs_root, "resumed", "running", alive=True)
    protocol.update_status(run, segments=[[time.time() - 1000, time.time() - 900]])
    goto(app, "pages/monitor.py")
    shown = {m.label: m for m in app.metric}[ZH["mon.elapsed"]]
    assert 159 <= _seconds(shown.value) <= 165, shown.value
    assert shown.help == ZH["mon.run_time_help"]
    goto(app, "pages/runs.py")
    table = app.dataframe[0].value.set_index("name")
    assert 159 <= _seconds(table.loc["resumed", "duration"]) <= 165


def test_runs_table_shows_a_dash_for_a_missing_eval_loss(app, runs_root):
    run = make_run(runs_root, "no-eval", "completed")
    protocol.update_status(run, eval_loss=None)
    goto(app, "pages/runs.py")
    row = app.dataframe[0].value.set_index("name").loc["no-eval"]
    assert row["eval loss"] == "-" and row["final loss"] == "9.6000"


def test_the_preset_box_shows_what_the_form_holds(app):
    goto(app, "pages/train.py")
    assert app.selectbox(key="p.f.preset").value == "zero2_offload"  # the quickstart: ZeRO-2, CPU Adam
    app.selectbox(key="p.f.deepspeed.offload_optimizer").set_value("none").run()
    assert app.selectbox(key="p.f.preset").value == "zero2"
    app.selectbox(key="p.f.deepspeed.offload_param").set_value("cpu").run()  # matches no preset (and is linted)
    assert app.selectbox(key="p.f.preset").value == "custom"
    assert ZH["train.preset_custom"] in app.selectbox(key="p.f.preset").options
    # Picking a preset fills the form at once.
    app.selectbox(key="p.f.preset").set_value("zero3_offload").run()
    assert app.selectbox(key="p.f.deepspeed.stage").value == 3
    assert app.selectbox(key="p.f.deepspeed.offload_param").value == "cpu"
    assert app.selectbox(key="p.f.preset").value == "zero3_offload"


# ---------------------------------------------------------------------------------------------------- speed


def test_the_train_form_draws_before_the_slow_checks_finish(app, monkeypatch):
    """Preflight encodes the whole dataset with the model's tokenizer (seconds for a new file, minutes for a large
    one): the page used to be blank below its title until it was done. Now the form draws first; checks that
    outlast the page's wait leave a placeholder where the plan goes, filled once they are done. The checks are held
    here by a gate, and the wait is 0."""
    import threading
    import uuid

    from app import data_jobs, train_checks
    from trainer_core.runs import orchestrate

    gate, real = threading.Event(), orchestrate.plan

    def held(cfg):
        assert gate.wait(60), "the page waited for the checks"
        return real(cfg)

    monkeypatch.setattr(orchestrate, "plan", held)
    monkeypatch.setattr(train_checks, "WAIT_S", 0.0)
    app.session_state["p.f.data.persona"] = f"你是华妃 {uuid.uuid4()}"  # a config no earlier test has checked
    goto(app, "pages/train.py")
    assert app.text_input(key="p.f.run.name") and app.selectbox(key="p.f.deepspeed.stage").value == 2
    assert ZH["train.checking"] in texts(app, "info")
    assert ZH["plan.fits"] not in texts(app, "success")
    gate.set()
    for job in list(data_jobs._jobs.values()):
        assert job.finished.wait(60)
    app.run()
    assert not app.exception
    assert ZH["train.checking"] not in texts(app, "info") and ZH["plan.fits"] in texts(app, "success")
    assert app.button(key="train.launch").disabled is False


def test_the_server_starts_with_our_menu_not_streamlits_page_folder_list(monkeypatch):
    """A server next to a pages/ folder ran its first request in Streamlit's old folder mode, whose raw page list
    ("streamlit app / chat / data ...") flashed before our menu. app.serve switches that mode off before Streamlit
    starts (the browser test watches the menu from the first paint)."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as stcli

    from app import serve

    seen = []
    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)
    monkeypatch.setattr(stcli, "main", lambda: seen.append(PagesManager.uses_pages_directory) or 0)
    assert serve.main(["--server.address", "127.0.0.1"]) == 0
    assert seen == [False]


# ---------------------------------------------------------------------------------------------------- friction


def test_launch_is_disabled_while_the_config_is_invalid_and_says_why(app, runs_root):
    goto(app, "pages/train.py")
    assert app.button(key="train.launch").disabled is False
    app.text_input(key="p.f.train.learning_rate").set_value("-1").run()
    assert app.button(key="train.launch").disabled is True
    reason = [c for c in texts(app, "caption") if c.startswith(ZH["train.launch_blocked"].split("{")[0])]
    assert reason and "train.learning_rate" in reason[0]
    app.text_input(key="p.f.train.learning_rate").set_value("2e-5").run()
    assert app.button(key="train.launch").disabled is False
    assert list(runs_root.iterdir()) == []


def test_force_stop_asks_first(app, runs_root):
    """A child process in its own session stands in for the run's supervisor (the manifest names it and its group):
    the first click only asks, "cancel" leaves it running, "yes" ends it."""
    import subprocess
    import sys

    import psutil

    from helpers import wait_for

    from trainer_core.runs.processes import RUN_DIR_ENV

    run = make_run(runs_root, "live", "running")
    # It names the run as every process of a run does (nothing unproven is counted or signalled as the run's).
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                  env={**os.environ, RUN_DIR_ENV: str(run)})
    try:
        proc = psutil.Process(supervisor.pid)
        protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": proc.pid, "pgid": proc.pid, "create_time": proc.create_time(),
                                                 "started": time.time() - 60})
        goto(app, "pages/monitor.py")
        app.button(key="mon.force_stop").click().run()
        assert ZH["mon.force_confirm"].format(name="live") in texts(app, "warning")
        time.sleep(0.5)
        assert supervisor.poll() is None, "force stop ended the run without asking"
        app.button(key="mon.force_no").click().run()
        assert ZH["mon.force_confirm"].format(name="live") not in texts(app, "warning")
        assert not [b for b in app.button if b.key == "mon.force_yes"] and supervisor.poll() is None
        app.button(key="mon.force_stop").click().run()
        app.button(key="mon.force_yes").click().run()
        assert not app.exception
        wait_for(lambda: supervisor.poll() is not None, 30, "the force stop to end the stand-in supervisor")
    finally:
        supervisor.kill()
        supervisor.wait()


def test_resume_from_a_chosen_checkpoint(app, runs_root, monkeypatch):
    """The Monitor offers the run's complete checkpoints, newest preselected; picking an older one says what is
    removed, and Resume starts from it. The supervisor's process start is replaced by a recorder (the real resume
    from a chosen checkpoint runs in tests/app/test_browser_e2e.py); the rest is the real lifecycle.resume."""
    from trainer_core.runs import lifecycle

    run = make_run(runs_root, "paused", "stopped", steps=8)
    (run / protocol.CHECKPOINTS / "checkpoint-4").mkdir()
    (run / protocol.CHECKPOINTS / "checkpoint-4" / protocol.COMPLETE_MARKER).write_text("{}")
    (run / protocol.CHECKPOINTS / "checkpoint-6").mkdir()  # partial: never offered
    started = []
    monkeypatch.setattr(lifecycle, "start", lambda run, detach, resume_from: started.append(resume_from))
    goto(app, "pages/monitor.py")
    box = app.selectbox(key="mon.resume_step.paused")
    assert box.options == [ZH["mon.resume_newest"].format(step=8), ZH["mon.resume_step"].format(step=4)]
    assert box.value == 8 and not texts(app, "warning")
    box.set_value(4).run()
    assert ZH["mon.resume_drops"].format(step=4, later="8") in texts(app, "warning")
    app.button(key="mon.resume").click().run()
    assert not app.exception and started == [run / protocol.CHECKPOINTS / "checkpoint-4"]
    assert sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()) == ["checkpoint-4"]


def test_monitor_estimates_total_steps_before_training_starts(app, runs_root):
    from trainer_core.config.run_config import load_config
    from trainer_core.training.step_estimate import estimate_total_steps

    run = make_run(runs_root, "starting", "starting", steps=0, alive=True)
    protocol.update_status(run, step=0, total_steps=None)
    (run / protocol.METRICS).unlink()
    expected = estimate_total_steps(load_config(run / protocol.CONFIG))
    assert expected > 0
    goto(app, "pages/monitor.py")
    step = {m.label: m for m in app.metric}[ZH["mon.step"]]
    assert step.value == f"0 / ≈{expected}" and step.help == ZH["mon.total_estimate"]
    assert f"0 / ≈{expected}" in app.get("progress")[0].proto.text


def test_the_sidebar_says_when_the_followed_run_ends_while_on_another_page(app, runs_root):
    """Said in the sidebar until the Monitor is opened, not in a toast: a toast covered the page's right column."""
    run = make_run(runs_root, "r", "running", alive=True)
    goto(app, "pages/data.py")
    ended = ZH["frame.ended.completed"].format(name="r")
    assert ended not in [x.value for x in app.sidebar.info]
    protocol.update_status(run, state="completed")
    app.run()
    assert not app.toast and [x.value for x in app.sidebar.info] == [ended]
    goto(app, "pages/chat.py")
    assert [x.value for x in app.sidebar.info] == [ended]
    # On the Monitor the page itself says so: not in the sidebar there, nor afterwards.
    goto(app, "pages/monitor.py")
    assert ended not in [x.value for x in app.sidebar.info]
    goto(app, "pages/data.py")
    assert ended not in [x.value for x in app.sidebar.info]
    other = make_run(runs_root, "s", "running", alive=True)
    goto(app, "pages/monitor.py")
    app.selectbox(key="mon.run").set_value("s").run()
    protocol.update_status(other, state="failed", error="boom")
    app.run()
    assert not app.toast and not app.sidebar.info


def test_ema_is_bias_corrected():
    from app.monitor_view import ema

    out = ema(pd.Series([1.0, 2.0, 3.0]), 0.5)
    assert out.round(4).tolist() == [1.0, 1.6667, 2.4286]
    assert ema(pd.Series([4.0, 4.0]), 0.9).tolist() == pytest.approx([4.0, 4.0])


def test_monitor_smooths_the_loss_and_draws_over_epochs_or_tokens(app, runs_root):
    run = make_run(runs_root, "curves", "completed")
    rows = [{"step": s, "total_steps": 8, "epoch": s / 4, "tokens": 1000 * s, "loss": 12 - s * 0.3 + (s % 2),
             "eval_loss": None, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 500.0, "label_tokens_per_s": 250.0}
            for s in range(1, 9)]
    rows.append({"step": 8, "epoch": 2.0, "tokens": 8000, "loss": None, "eval_loss": 11.0})
    (run / protocol.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    goto(app, "pages/monitor.py")

    def loss_spec() -> dict:
        return json.loads(app.get("vega_lite_chart")[0].proto.spec)

    assert loss_spec()["encoding"]["x"]["field"] == "step"
    assert loss_spec()["encoding"]["color"]["scale"]["domain"] == [ZH["mon.loss"], ZH["mon.eval_loss"]]
    app.slider(key="p.mon.smooth").set_value(0.6).run()
    assert loss_spec()["encoding"]["color"]["scale"]["domain"] == [
        ZH["mon.loss"], ZH["mon.loss_smoothed"].format(w=0.6), ZH["mon.eval_loss"]]
    for x in ("epoch", "tokens"):
        app.radio(key="p.mon.x").set_value(x).run()
        assert not app.exception
        assert loss_spec()["encoding"]["x"]["field"] == x
        assert loss_spec()["encoding"]["x"]["title"] == ZH[f"mon.x_{x}"]


def test_runs_compare_shows_eval_loss_and_the_config_differences(app, runs_root):
    from trainer_core.config.run_config import load_config, save_config

    make_run(runs_root, "a", "completed")
    b = make_run(runs_root, "b", "completed")
    save_config(load_config(b / protocol.CONFIG, ["train.learning_rate=2e-5"]), b / protocol.CONFIG)
    goto(app, "pages/runs.py")
    spec = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["strokeDash"]["scale"]["domain"] == [ZH["mon.loss"], ZH["mon.eval_loss"]]
    assert len(app.dataframe) == 2  # the history table, then the differences
    diff = app.dataframe[1].value
    assert list(diff["field"]) == ["train.learning_rate"]
    assert set(diff.columns) == {"field", "a", "b"} and diff.iloc[0]["b"] == "2e-05"
    # Same configs (but the name): said in words, no table.
    app.multiselect(key="p.runs.compare").set_value(["a"]).run()
    assert len(app.dataframe) == 1
    save_config(load_config(b / protocol.CONFIG, ["train.learning_rate=0.008"]), b / protocol.CONFIG)
    app.multiselect(key="p.runs.compare").set_value(["a", "b"]).run()
    assert ZH["runs.no_diff"] in texts(app, "caption")


def test_the_reply_being_written_is_not_part_of_its_own_prompt(starter_model):
    """The page adds the growing reply to the history before the model's generator first reads its messages (a
    generator runs nothing until iterated); the prompt must still be the turns before it."""
    from trainer_core.models.inference import GenParams

    user = {"role": "user", "content": "你是谁？"}
    hist = [dict(user)]
    chunks = cv.reply_stream(starter_model, False, hist, "你是甄嬛", GenParams(max_new_tokens=8, temperature=0.0))
    hist.append({"role": "assistant", "content": "", "by": ["ft", "x"], "done": False})
    assert chunks.gi_frame.f_locals["messages"] == [user]  # what trainer_core.models.inference.stream_reply will read
    assert isinstance("".join(chunks), str)


# ---------------------------------------------------------------------------------------------------- downloads, saved configs


def _links(at) -> list[str]:
    return [h.proto.body for h in at.get("html") if "studio-download" in h.proto.body or "download=" in h.proto.body]


def test_runs_page_offers_the_model_as_a_streamed_zip_and_the_config_yaml(app, runs_root, monkeypatch):
    """With the server's download route mounted (as app.serve mounts it), each model folder is an <a download>
    link to it; the link is minted once per tab, not on every rerun, and nothing is written to disk."""
    from app import file_route
    from trainer_core.config.memory import fmt_bytes

    monkeypatch.setattr(file_route, "_mounted", True)
    monkeypatch.setattr(file_route, "_grants", {})
    run = make_run(runs_root, "done", "completed", final=True)
    before = sorted(p.name for p in run.iterdir())
    goto(app, "pages/runs.py")
    size = sum(f.stat().st_size for f in (run / protocol.FINAL).iterdir() if f.name != protocol.COMPLETE_MARKER)
    (link,) = _links(app)
    assert ZH["dl.model"].format(name="done-final", size=fmt_bytes(size)) in link
    assert 'download="done-final.zip"' in link and "/studio-download/" in link
    token = link.split("/studio-download/")[1].split("/")[0]
    assert file_route.lookup(token).folder == (run / protocol.FINAL).resolve()
    assert ZH["dl.config"] in [b.proto.label for b in app.get("download_button")]
    app.run()
    assert _links(app) == [link] and len(file_route._grants) == 1, "a rerun reuses the tab's link"
    assert sorted(p.name for p in run.iterdir()) == before, "no archive is written next to the run"


def test_without_the_route_the_runs_page_names_the_folder(app, runs_root):
    """Where the download route is not mounted (AppTest, or the page script served without its `st.App`) the page
    says where the model is and how to get the download, instead of a link that would fail."""
    run = make_run(runs_root, "done", "completed", final=True)
    goto(app, "pages/runs.py")
    assert not _links(app)
    assert ZH["dl.no_route"].format(name="done-final", path=str(run / protocol.FINAL)) in [c.value for c in app.caption]


def test_the_zip_streams_the_whole_model_folder_in_chunks(runs_root, starter_model, tmp_path):
    """Every file of final/ (links followed) under one top folder, byte for byte; a 64 MiB weights file goes
    through in 1 MiB blocks: the Python heap never holds more than a few MiB of it, and no file is written."""
    import io
    import os
    import tracemalloc
    import zipfile

    from trainer_core.models.archive import CHUNK, zip_chunks

    run = make_run(runs_root, "done", "completed", final=True)
    big = tmp_path / "model-00002-of-00002.safetensors"
    big.write_bytes(os.urandom(1024) * (64 * 1024))
    (run / protocol.FINAL / big.name).symlink_to(big)
    before = sorted(p.name for p in run.rglob("*"))
    tracemalloc.start()
    blocks, total, largest = 0, 0, 0
    with open(tmp_path / "out.zip", "wb") as out:
        for block in zip_chunks(run / protocol.FINAL, "done-final"):
            blocks, total, largest = blocks + 1, total + len(block), max(largest, len(block))
            out.write(block)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, f"streaming held {peak / 2**20:.1f} MiB"
    assert blocks >= 64 and largest <= CHUNK + 64 * 1024, (blocks, largest)
    assert sorted(p.name for p in run.rglob("*")) == before
    with zipfile.ZipFile(io.BytesIO((tmp_path / "out.zip").read_bytes())) as zf:
        assert zf.testzip() is None
        names = sorted(zf.namelist())
        expected = sorted(f"done-final/{f.name}" for f in (run / protocol.FINAL).iterdir() if f.name != protocol.COMPLETE_MARKER)
        assert names == expected and "done-final/persona.json" in names and "done-final/model.safetensors" in names
        assert zf.read("done-final/model.safetensors") == (starter_model / "model.safetensors").read_bytes()
        assert zf.read(f"done-final/{big.name}") == big.read_bytes()


def test_an_incomplete_folder_is_not_zipped(runs_root):
    from trainer_core.common.errors import UserError
    from trainer_core.models.archive import zip_chunks

    run = make_run(runs_root, "done", "completed", final=True)
    (run / protocol.FINAL / protocol.COMPLETE_MARKER).unlink()
    with pytest.raises(UserError) as e:
        next(zip_chunks(run / protocol.FINAL, "done-final"))
    assert e.value.code == "models.archive_incomplete"


def test_a_saved_config_loads_into_the_train_form(app, runs_root):
    from trainer_core.config.run_config import load_config

    cfg = load_config(paths.CONFIGS_DIR / "quickstart.yaml", ["name=old-run", "train.learning_rate=2e-5",
                                                              "data.max_length=384", "deepspeed.stage=3"])
    goto(app, "pages/train.py")
    app.file_uploader(key="train.config_upload").set_value(("old-run.yaml", cfg.to_yaml().encode(),
                                                            "application/x-yaml")).run()
    assert not app.exception
    assert ZH["train.config_loaded"].format(name="old-run.yaml") in texts(app, "success")
    assert app.text_input(key="p.f.train.learning_rate").value == "2e-05"
    assert app.number_input(key="p.f.data.max_length").value == 384
    assert app.selectbox(key="p.f.deepspeed.stage").value == 3
    assert app.text_input(key="p.f.run.name").value == ""  # a fresh name: "old-run" may exist already


@pytest.mark.parametrize("content,expected", [
    (b"model: [unclosed", "不是有效的 YAML"),
    (b"- just\n- a list\n", "应该是一个映射"),
    (b"\xff\xfe not text", "不是 UTF-8 文本"),
    (b"train:\n  learning_rate: -1\n", "train.learning_rate"),
])
def test_a_bad_config_file_is_refused_and_the_form_kept(app, content, expected):
    goto(app, "pages/train.py")
    before = app.text_input(key="p.f.train.learning_rate").value
    app.file_uploader(key="train.config_upload").set_value(("broken.yaml", content, "application/x-yaml")).run()
    assert not app.exception
    errors = texts(app, "error")
    assert any(expected in e for e in errors), errors
    assert app.text_input(key="p.f.train.learning_rate").value == before
    assert not [s for s in texts(app, "success") if "broken.yaml" in s]


# ---------------------------------------------------------------------------------------------------- chat, second pass


def _click_mid_run(key: str, ready, timeout: float = 120.0) -> threading.Thread:
    """Click button `key` while the page's script is still running, as a browser does: a rerun request carrying the
    page's widget states plus the button's trigger, which Streamlit serves by interrupting the running script at its
    next element update and calling the button's callback before the new run. AppTest has no mid-run click, so this
    makes the same request the server makes, through the running script's context. `ready(session_state)` says when."""
    from streamlit.proto.WidgetStates_pb2 import WidgetStates
    from streamlit.runtime.scriptrunner import RerunData
    from streamlit.runtime.scriptrunner_utils.script_run_context import SCRIPT_RUN_CONTEXT_ATTR_NAME

    def click():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for thread in threading.enumerate():
                ctx = getattr(thread, SCRIPT_RUN_CONTEXT_ATTR_NAME, None)
                if ctx is not None and ctx.script_requests is not None and ready(ctx.session_state):
                    state = ctx.session_state._state
                    prompt = state._get_widget_id("chat.input")  # a sent message is not sent again by a click
                    states = WidgetStates()
                    states.widgets.extend(w for w in ctx.session_state.get_widget_states() if w.id != prompt)
                    states.widgets.add(id=state._get_widget_id(key), trigger_value=True)
                    ctx.script_requests.request_rerun(RerunData(widget_states=states,
                                                                page_script_hash=ctx.page_script_hash))
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=click, daemon=True)
    thread.start()
    return thread


def test_stop_ends_the_reply_being_written_and_keeps_it_marked_stopped(app, runs_root):
    make_run(runs_root, "a", "completed", final=True)
    goto(app, "pages/chat.py")
    app.slider(key="p.chat.max_new").set_value(1024)  # sampling: the untrained model would babble to the end
    live = {}

    def streaming(session_state) -> bool:
        if "chat.live" in session_state and session_state["chat.live"]["msg"]["content"]:
            live.update(session_state["chat.live"])
            return True
        return False

    clicker = _click_mid_run("chat.stop.ft", streaming)
    app.chat_input(key="chat.input").set_value("你是谁？").run()
    clicker.join(5)
    assert not app.exception, [e.value for e in app.exception]
    handle = live["handle"]
    # The generation itself ended early, not only the display. (Which of the click's callback and the interrupted
    # run's abandoned generator reaches it first varies; either ends `generate`.)
    assert handle.finished.wait(60) and handle.tokens < 1024, handle.tokens
    conv = app.session_state["chat.conversations"][cv.conversation_key("run", "a", "final", "你是华妃")]
    user, reply = conv["ft"]
    assert user["content"] == "你是谁？" and reply is live["msg"]
    assert reply["stopped"] and reply["done"] and reply["content"].strip() and 0 < reply["tokens"] < 1024
    assert _chat_messages(app) == [("user", "你是谁？"), ("assistant", reply["content"].strip())]
    assert ZH["chat.side.ft"].format(name="a · final") + " · " + ZH["chat.stopped"] in _captions(app)
    assert ZH["chat.speed"].format(tokens=reply["tokens"], rate=f"{reply['tokens_per_s']:.1f}") in _captions(app)
    assert not [b for b in app.button if b.key == "chat.stop.ft"], "no stop button once nothing is being written"
    assert "chat.live" not in app.session_state


def _checkpoint_model(run, step: int) -> None:
    """Make checkpoint-N of a hand-written run chat-ready: the starter model's files, as final/ has them."""
    ckpt = run / protocol.CHECKPOINTS / f"checkpoint-{step}"
    for f in paths.STARTER_MODEL_DIR.iterdir():
        (ckpt / f.name).symlink_to(f)


def test_compare_a_checkpoint_with_another_each_reply_labelled_by_what_wrote_it(app, runs_root):
    run = make_run(runs_root, "a", "completed", final=True)
    _checkpoint_model(run, 8)
    goto(app, "pages/chat.py")
    app.toggle(key="p.chat.compare").set_value(True).run()
    other = app.selectbox(key="p.chat.other")
    assert other.value == "base" and other.options == [ZH["chat.compare_base"].format(name=STARTER), "checkpoint-8"]
    other.set_value("checkpoint-8").run()
    app.slider(key="p.chat.max_new").set_value(16)
    app.chat_input(key="chat.input").set_value("你是谁？").run()
    assert not app.exception, [e.value for e in app.exception]
    final, ckpt = ZH["chat.side.ft"].format(name="a · final"), ZH["chat.side.ft"].format(name="a · checkpoint-8")
    headers = [m.value for m in app.main.markdown]
    assert headers.index(f"**{final}**") < headers.index(f"**{ckpt}**")  # the chosen model left, its rival right
    assert final in _captions(app) and ckpt in _captions(app)
    conv = app.session_state["chat.conversations"][cv.conversation_key("run", "a", "final", "你是华妃")]
    assert [m["role"] for m in conv["checkpoint-8"]] == ["user", "assistant"]
    assert conv["checkpoint-8"][1]["by"] == ["ft", "a · checkpoint-8"] and conv["checkpoint-8"][1]["tokens"] > 0
    shown = _chat_messages(app)
    # The base model instead: its own (empty) column; the checkpoint's replies are not relabelled as the base's.
    app.selectbox(key="p.chat.other").set_value("base").run()
    assert _chat_messages(app) == shown[:2] and ZH["chat.side.base"].format(name=STARTER) not in _captions(app)
    app.selectbox(key="p.chat.other").set_value("checkpoint-8").run()
    assert _chat_messages(app) == shown
    # Chatting with the checkpoint, the final model is what it can be compared with (and the base).
    app.selectbox(key="p.chat.target").set_value("checkpoint-8").run()
    assert app.selectbox(key="p.chat.other").options == [ZH["chat.compare_base"].format(name=STARTER),
                                                         ZH["chat.final"]]
    assert not app.chat_message  # another conversation: the checkpoint's own


def test_the_conversation_downloads_as_json_and_markdown(app, runs_root, monkeypatch):
    """What the browser would download is what Streamlit's media storage is given: captured there."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    make_run(runs_root, "a", "completed", final=True)
    files = {}
    store = MemoryMediaFileStorage.load_and_get_id

    def capture(self, data, mimetype, kind, filename=None):
        files[filename.rsplit(".", 1)[-1]] = (filename, data)
        return store(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    goto(app, "pages/chat.py")
    app.toggle(key="p.chat.compare").set_value(True).run()
    assert [b.label for b in app.get("download_button")] == [ZH["chat.export_json"], ZH["chat.export_md"]]
    assert all(b.proto.disabled for b in app.get("download_button")), "nothing to download yet"
    reply = "我是 `my_var` *华妃*\n```\n代码\n```"
    ft = [{"role": "user", "content": "你是谁？"},
          {"role": "assistant", "content": reply, "by": ["ft", "a · final"], "done": True, "stopped": True,
           "tokens": 12, "tokens_per_s": 30.25}]
    base = [{"role": "user", "content": "你是谁？"},
            {"role": "assistant", "content": "不知道", "by": ["base", STARTER], "done": True, "tokens": 3,
             "tokens_per_s": 10.0}]
    key = cv.conversation_key("run", "a", "final", "你是华妃")
    app.session_state["chat.conversations"] = {key: {"ft": ft, "base": base, "probe": None}}
    app.run()
    assert not any(b.proto.disabled for b in app.get("download_button"))
    name, data = files["json"]
    assert name.startswith("chat-a-final-") and name.endswith(".json")
    doc = json.loads(data)
    assert (doc["source"], doc["name"], doc["checkpoint"], doc["persona"]) == ("run", "a", "final", "你是华妃")
    assert doc["params"]["max_new_tokens"] == app.slider(key="p.chat.max_new").value
    assert [(s["side"], s["label"]) for s in doc["sides"]] == [
        ("ft", ZH["chat.side.ft"].format(name="a · final")), ("base", ZH["chat.side.base"].format(name=STARTER))]
    assert doc["sides"][0]["messages"][1] == {"role": "assistant", "content": reply, "by": ["ft", "a · final"],
                                              "tokens": 12, "tokens_per_s": 30.25, "stopped": True,
                                              "complete": False}
    assert doc["sides"][1]["messages"][1]["complete"] is True
    md = files["md"][1].decode()
    assert md.startswith(f"# {ZH['chat.md_title']}") and f"- {ZH['chat.md_persona']}: 你是华妃" in md
    assert f"## {ZH['chat.side.base'].format(name=STARTER)}" in md
    assert f"````text\n{reply}\n````" in md, "a reply verbatim, in a fence longer than its own"
    assert f"*{ZH['chat.stopped']} · {ZH['chat.speed'].format(tokens=12, rate='30.2')}*" in md
    app.radio(key="lang").set_value("en").run()
    md = files["md"][1].decode()
    assert md.startswith(f"# {EN['chat.md_title']}") and EN["chat.side.ft"].format(name="a · final") in md
