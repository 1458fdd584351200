# .venv/bin/python -m pytest tests/app/test_app_pages.py -q
"""Every dashboard page through Streamlit's AppTest: widgets by key, no exceptions, both languages.

Runs on disk are written by hand here (config, status, metrics, log, a final/ that links the starter model's files),
so the pages are checked against exactly what the trainer and supervisor leave behind, without training.
Live refreshing (fragment `run_every`) is not fired by AppTest; tests/app/test_browser_e2e.py covers it in a browser.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import auth
from app.i18n import EN, LABELS, ZH
from app.messages_zh import MESSAGES_ZH
from pages_helpers import APP, PAGES, goto, make_run, texts
from trainer_core.common import paths
from trainer_core.runs import protocol
from trainer_core.config.hardware import detect
from trainer_core.common.paths import PROJECT_ROOT


# ---------------------------------------------------------------------------------------------------- labels


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"{(\w+)}", text))


def test_both_languages_have_the_same_keys_and_placeholders():
    assert set(ZH) == set(EN), {"only zh": set(ZH) - set(EN), "only en": set(EN) - set(ZH)}
    for key in ZH:
        assert _placeholders(ZH[key]) == _placeholders(EN[key]), key
        assert ZH[key].strip() and EN[key].strip(), key


def test_every_label_the_code_asks_for_exists():
    sources = [PROJECT_ROOT / "streamlit_app.py", *sorted((PROJECT_ROOT / "app").glob("*.py")), *sorted((PROJECT_ROOT / "pages").glob("*.py"))]
    used = {k for f in sources for k in re.findall(r"""\bt\(\s*["']([\w.]+)["']\s*[,)]""", f.read_text(encoding="utf-8"))}
    assert used, "no labels found: did the t() pattern change?"
    assert not used - set(LABELS["zh"]), sorted(used - set(LABELS["zh"]))


# ---------------------------------------------------------------------------------------------------- pages


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_page_renders_without_runs(app, lang):
    if lang == "en":
        app.radio(key="lang").set_value("en").run()
    labels = LABELS[lang]
    titles = {"pages/data.py": "data.title", "pages/train.py": "train.title", "pages/monitor.py": "mon.title",
              "pages/chat.py": "chat.title", "pages/runs.py": "runs.title"}
    for page in PAGES:
        goto(app, page)
        assert app.title[0].value == labels[titles[page]]
    assert app.sidebar.radio(key="lang").value == lang
    assert labels["frame.no_run"] in [c.value for c in app.sidebar.caption]


def test_data_page_validates_the_sample_and_renders_the_label_mask(app):
    assert app.radio(key="p.data.source").value == "sample"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics[ZH["data.rows"]] == "140" and metrics[ZH["data.usable"]] == "140"
    assert metrics[ZH["data.truncated"].format(max_length=256)] == "0"
    assert app.success[0].value == ZH["data.in_form"]  # the Train form already points at the sample
    mask = app.html[0].value
    assert '<span class="trained">' in mask and "<span>" in mask  # trained tokens are highlighted
    assert "&lt;|im_start|&gt;" in mask  # special tokens are shown as text
    assert ZH["data.end_of_turn"].format(marker="<|im_end|>") in texts(app, "caption")
    app.number_input(key="p.data.page").set_value(7).run()
    assert not app.exception
    app.number_input(key="p.data.record").set_value(140).run()
    assert not app.exception


def test_upload_is_validated_stored_safely_and_shown_as_text(app, uploads):
    records = [
        {"instruction": "你是谁？", "output": "<script>alert('x')</script>我是甄嬛。"},
        {"instruction": "", "output": "空的问题"},
        {"messages": [{"role": "user", "content": "皇上驾到"}, {"role": "assistant", "content": "臣妾恭迎皇上。"}]},
    ]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode()
    app.radio(key="p.data.source").set_value("upload").run()
    app.file_uploader(key="data.upload").set_value(("../../我的 数据.jsonl", data, "application/json")).run()
    assert not app.exception
    stored = list(uploads.iterdir())
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert re.fullmatch(r"我的_数据-[0-9a-f]{12}\.jsonl", stored[0].name)
    metrics = {m.label: m.value for m in app.metric}
    assert (metrics[ZH["data.rows"]], metrics[ZH["data.usable"]], metrics[ZH["data.errors"]]) == ("3", "2", "1")
    errors = app.dataframe[0].value
    assert list(errors["row"]) == [2] and list(errors["field"]) == ["instruction"]
    mask = app.html[0].value  # the first usable record holds <script>: shown as text, never as a tag
    assert "<script" not in mask and "&lt;script" in mask and "&lt;/" in mask
    # Uploading selected it: the Train form already holds the stored path.
    assert ZH["data.in_form"] in texts(app, "success")
    goto(app, "pages/train.py")
    assert Path(app.text_input(key="p.f.data.path").value) == stored[0]


def test_parquet_upload_and_a_save_to_disk_folder_by_path(app, uploads, tmp_path):
    from table_files import ALPACA, as_parquet, as_saved

    data = as_parquet(tmp_path, ALPACA).read_bytes()
    app.radio(key="p.data.source").set_value("upload").run()
    app.file_uploader(key="data.upload").set_value(("对话.parquet", data, "application/octet-stream")).run()
    assert not app.exception
    stored = list(uploads.iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".parquet" and stored[0].read_bytes() == data
    metrics = {m.label: m.value for m in app.metric}
    assert (metrics[ZH["data.rows"]], metrics[ZH["data.usable"]], metrics[ZH["data.errors"]]) == ("8", "5", "3")
    assert list(app.dataframe[0].value["row"]) == [2, 5, 8]

    folder = as_saved(tmp_path, ALPACA)
    app.radio(key="p.data.source").set_value("path").run()
    app.text_input(key="p.data.server_path").set_value(str(folder)).run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}[ZH["data.usable"]] == "5"
    app.button(key="data.use").click().run()
    assert not app.exception
    assert Path(app.text_input(key="p.f.data.path").value) == folder


def test_upload_of_a_broken_file_is_refused_and_not_stored(app, uploads):
    app.radio(key="p.data.source").set_value("upload").run()
    app.file_uploader(key="data.upload").set_value(("broken.json", b"[{\"instruction\": ", "application/json")).run()
    assert not app.exception
    assert any("JSON 格式错误" in e for e in texts(app, "error"))
    assert not uploads.exists() or not list(uploads.iterdir())


def test_an_upload_name_with_a_nul_byte_is_refused_and_the_page_keeps_working(app, uploads):
    app.radio(key="p.data.source").set_value("upload").run()
    record = '{"instruction": "你是谁？", "output": "我是甄嬛。"}\n'.encode()
    app.file_uploader(key="data.upload").set_value(("a\x00b.jsonl", record, "application/json")).run()
    assert not app.exception
    assert any("U+0000" in e for e in texts(app, "error"))
    assert not uploads.exists() or not list(uploads.iterdir())
    app.file_uploader(key="data.upload").set_value(("good.jsonl", record, "application/json")).run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}[ZH["data.usable"]] == "1"


def test_long_validation_shows_progress_and_does_not_hold_the_page(app, tmp_path, monkeypatch, request):
    from app import data_jobs
    from app import data_view as dv

    monkeypatch.setattr(dv, "FIRST_WAIT_S", 0.0)  # as if the file were large: no grace period before the bar
    # Validation is held until the first script run has ended, so the bar it shows does not depend on how fast
    # this machine validates 20k records (on a fast one it was done before the page looked, and the bar shown
    # was already the token statistics').
    release = threading.Event()
    request.addfinalizer(release.set)  # a failed assertion must not leave the held job waiting
    real_load = dv.load_dataset

    def held_load(*args, **kwargs):
        assert release.wait(300)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(dv, "load_dataset", held_load)
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"问{i}", "output": f"答{i % 7}"}, ensure_ascii=False) + "\n"
                            for i in range(20_000)), encoding="utf-8")
    app.radio(key="p.data.source").set_value("path").run()
    app.text_input(key="p.data.server_path").set_value(str(data)).run()
    assert not app.exception
    # The script run ended while the work goes on: a progress bar, no figures yet.
    assert [p.proto.text for p in app.get("progress")][0].startswith(ZH["data.validating"])
    assert not app.metric
    release.set()

    def settle():
        for job in list(data_jobs._jobs.values()):
            assert job.finished.wait(300)
        app.run()
        assert not app.exception

    settle()  # validation done; token statistics now run in the background the same way
    settle()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics[ZH["data.rows"]] == "20000" and metrics["p50"] not in ("", "0")
    assert not app.get("progress")


def test_train_page_shows_plan_command_and_ds_config(app):
    goto(app, "pages/train.py")
    assert app.text_input(key="p.f.train.learning_rate").value == "0.008"  # the quickstart config
    assert ZH["plan.fits"] in texts(app, "success")
    codes = [c.value for c in app.code]
    assert any("deepspeed.launcher.runner" in c and "--module trainer_core.training.train" in c for c in codes)
    assert not any(c.lstrip().startswith("{") for c in codes), "ds_config.json is drawn only once its section opens"
    app.session_state["train.ds_json_open"] = True  # as the expander's click does
    app.run()
    ds = json.loads(next(c.value for c in app.code if c.value.lstrip().startswith("{")))
    assert ds["zero_optimization"]["stage"] == 2
    # A preset fills the ZeRO fields; the generated JSON follows.
    app.selectbox(key="p.f.preset").set_value("zero3_offload")
    app.button(key="train.apply_preset").click().run()
    assert app.selectbox(key="p.f.deepspeed.stage").value == 3
    assert app.selectbox(key="p.f.deepspeed.offload_param").value == "cpu"
    ds = json.loads(next(c.value for c in app.code if c.value.lstrip().startswith("{")))
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    # A plan that cannot fit is shown in red with the advice.
    app.number_input(key="p.f.train.micro_batch_size").set_value(512)
    app.number_input(key="p.f.data.max_length").set_value(131072).run()
    assert ZH["plan.not_fit"] in texts(app, "error")
    assert any(":red[" in m for m in texts(app, "markdown"))
    # trust_remote_code is an opt-in with a warning
    app.checkbox(key="p.f.model.trust_remote_code").check().run()
    assert any(ZH["train.trust_warning"] == w for w in texts(app, "warning"))


def test_launch_runs_the_plan_the_page_checked_without_planning_again(app, runs_root, monkeypatch):
    """One plan per launch: the page's checks plan the config, and Launch writes that plan. The run's devices are
    held by another run (a real device lock), so the start is refused once the run was written, and nothing is left
    behind; the refusal comes after the planning this test counts."""
    import uuid

    from helpers import CPU_LOCK
    from trainer_core.runs import device_locks, orchestrate

    calls, real = [], orchestrate.plan

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(orchestrate, "plan", counting)
    app.session_state["p.f.run.name"] = f"once-{uuid.uuid4().hex[:8]}"  # a config no earlier test has checked
    goto(app, "pages/train.py")
    assert ZH["plan.fits"] in texts(app, "success") and len(calls) == 1
    fds = device_locks.acquire(runs_root / "other", [CPU_LOCK])
    try:
        app.button(key="train.launch").click().run()
    finally:
        for fd in fds:
            os.close(fd)
    assert not app.exception
    assert any(e.startswith(ZH["train.refused"].split("{")[0]) and "other" in e for e in texts(app, "error"))
    assert len(calls) == 1, "Launch planned the config again"
    assert list(runs_root.iterdir()) == []


def test_train_page_shows_the_hostfile_and_cluster_scripts_for_several_nodes(app):
    goto(app, "pages/train.py")
    app.selectbox(key="p.f.placement.launcher").set_value("no_ssh").run()
    app.text_area(key="p.f.placement.hostfile").set_value("gpu1 slots=1\ngpu2 slots=1")
    app.number_input(key="p.f.placement.num_nodes").set_value(2).run()
    assert not app.exception
    assert not app.get("download_button"), "the closed cluster section is drawn only once opened"
    app.session_state["train.cluster_open"] = True  # as the expander's click does
    app.run()
    codes = [c.value for c in app.code]
    assert "gpu1 slots=1\ngpu2 slots=1" in codes, "the hostfile it will write"
    node_cmds = [c for c in codes if "deepspeed.launcher.runner" in c and "--no_ssh" in c and "$" not in c]
    assert len(node_cmds) == 2 and "--node_rank 1" in node_cmds[1], "one exact command per node"
    assert any(re.match(r"#!/usr/bin/env bash\n#SBATCH --job-name=run-\d+", c) and "#SBATCH --nodes=2" in c
               for c in codes)
    assert any('--node_rank "$NODE_RANK"' in c for c in codes)
    assert {b.label for b in app.get("download_button")} >= {ZH["train.download_node"], ZH["train.download_slurm"]}


def test_invalid_value_is_refused_at_the_form_with_the_field_named(app, runs_root):
    goto(app, "pages/train.py")
    app.text_input(key="p.f.train.learning_rate").set_value("-1").run()
    assert not app.exception
    errors = texts(app, "error")
    assert any(e.startswith("train.learning_rate 必须") for e in errors)  # under the field itself, in Chinese
    assert any("train.learning_rate" in e for e in errors if e.startswith("配置有误"))  # and in the plan
    assert app.button(key="train.launch").disabled  # with the reason next to it (tests/app/test_app_second_pass.py)
    assert app.title[0].value == ZH["train.title"]
    assert list(runs_root.iterdir()) == []
    # A bad name and a missing model are named too.
    app.text_input(key="p.f.train.learning_rate").set_value("2e-5")
    app.text_input(key="p.f.run.name").set_value("my run!").run()
    assert any(e.startswith("name 只能包含") for e in texts(app, "error"))
    app.text_input(key="p.f.run.name").set_value("")
    app.selectbox(key="p.f.model.choice").set_value("__other__").run()
    app.text_input(key="p.f.model.path").set_value("/nowhere/model").run()
    assert any(e.startswith("model.path /nowhere/model 不是文件夹") for e in texts(app, "error"))  # coded, in Chinese
    assert list(runs_root.iterdir()) == []


CJK = re.compile(r"[\u4e00-\u9fff]")


def english_sentences(messages: list[str]) -> list[str]:
    """The parts of messages (split at sentence and clause punctuation) that read as English: three or more words
    and not one Chinese character. Field names, paths and values inside a Chinese sentence do not count."""
    parts = [p for m in messages for p in re.split(r"[。；：！？\n]|; |: ", m)]
    return [p for p in parts if not CJK.search(p) and len(re.findall(r"[A-Za-z]{2,}", p)) >= 3]


def test_chinese_train_page_shows_lints_notes_and_field_errors_in_chinese(app):
    goto(app, "pages/train.py")
    # ZeRO-2 on one rank without offload: a DeepSpeed lint (a warning), and on a CPU machine the planner's note.
    app.selectbox(key="p.f.deepspeed.offload_optimizer").set_value("none").run()
    warnings = texts(app, "warning")
    assert any(w.startswith("只有一个进程") for w in warnings), warnings
    if not detect().has_gpu:
        assert any(c.startswith("本机没有 GPU") for c in texts(app, "caption"))
    assert not english_sentences(warnings + texts(app, "error"))
    # offload_param without stage 3, then a bad value too: each error under its field and in the plan, in Chinese.
    app.selectbox(key="p.f.deepspeed.offload_param").set_value("cpu").run()
    errors = texts(app, "error")
    assert any(e.startswith("deepspeed.offload_param 需要") for e in errors), errors
    assert not english_sentences(errors + texts(app, "warning"))
    app.selectbox(key="p.f.deepspeed.offload_param").set_value("none")
    app.number_input(key="p.f.train.warmup_ratio").set_value(2.0).run()
    errors = texts(app, "error")
    assert any(e.startswith("train.warmup_ratio 必须在区间 [0, 1) 内") for e in errors), errors
    assert not english_sentences(errors + texts(app, "warning"))
    # The same page in English says it in English.
    app.radio(key="lang").set_value("en").run()
    assert any(e.startswith("train.warmup_ratio must be in [0, 1)") for e in texts(app, "error"))


def test_monitor_shows_a_failed_run_with_its_root_error_and_an_escaped_log(app, runs_root):
    make_run(runs_root, "broken", "failed", error="out of memory: CUDA out of memory",
             log=["<b>not bold</b>", "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"])
    goto(app, "pages/monitor.py")
    assert app.selectbox(key="mon.run").value == "broken"
    assert app.error[0].value == ZH["mon.failed"].format(error="out of memory: CUDA out of memory")
    assert app.button(key="mon.resume").disabled is False and app.button(key="mon.stop").disabled is True
    log = next(h.value for h in app.html if "log-tail" in h.value)  # not the translating script's style
    assert "&lt;b&gt;not bold&lt;/b&gt;" in log
    assert re.search(r'color:#b71c1c[^>]*>RuntimeError: CUDA out of memory', log)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics[ZH["mon.step"]] == "8 / 10" and metrics[ZH["mon.loss"]] == "9.6000"
    charts = app.get("vega_lite_chart")
    assert len(charts) >= 5  # loss, lr, grad norm, throughput, memory, host RAM


def test_monitor_says_why_a_run_failed_in_chinese(app, runs_root):
    """The supervisor's own record of a failure (state.record_end, as the supervisor calls it when the launcher exits) is shown in
    Chinese; a line from train.log stays as the program wrote it, inside a Chinese sentence."""
    from trainer_core.runs.state import record_end

    line = "RuntimeError: CUDA error: device-side assert triggered"
    crashed = make_run(runs_root, "crashed", "running", log=["Traceback (most recent call last):", f"[rank0]: {line}"])
    silent = make_run(runs_root, "silent", "running")
    record_end(crashed, 1)
    record_end(silent, 1)
    goto(app, "pages/monitor.py")
    app.selectbox(key="mon.run").set_value("crashed").run()
    reason = MESSAGES_ZH["runs.failed_exception"].format(message=line)
    assert app.error[0].value == ZH["mon.failed"].format(error=reason)
    app.selectbox(key="mon.run").set_value("silent").run()
    shown = app.error[0].value
    assert shown == ZH["mon.failed"].format(error=MESSAGES_ZH["runs.failed_exit_code"].format(exit_code=1))
    assert not english_sentences([shown]), shown
    # The same run in English reads as the CLI prints it.
    app.radio(key="lang").set_value("en").run()
    assert app.error[0].value == EN["mon.failed"].format(error="the launcher exited with code 1")


def test_monitor_judges_an_external_run_by_its_heartbeat(app, runs_root):
    """A Slurm-launched run has no supervisor: the page says so while rank 0 beats, and shows it failed after."""
    run = make_run(runs_root, "slurm", "running")
    protocol.write_json_atomic(run / protocol.HEARTBEAT, {"time": time.time() - 12, "host": "node0", "pid": 1})
    goto(app, "pages/monitor.py")
    shown = [c.value for c in app.caption if c.value.startswith(ZH["mon.external"].split("{age}")[0])]
    assert shown and shown[0] in [ZH["mon.external"].format(age=str(a)) for a in (12, 13, 14)]
    assert app.button(key="mon.stop").disabled is False and app.button(key="mon.force_stop").disabled is True
    protocol.write_json_atomic(run / protocol.HEARTBEAT, {"time": time.time() - protocol.HEARTBEAT_STALE_S - 60, "host": "node0",
                                             "pid": 1})
    app.run()
    assert app.error[0].value == ZH["mon.failed"].format(error=MESSAGES_ZH["runs.lost_heartbeat"].format(minutes=6))
    assert app.button(key="mon.resume").disabled is False


def test_a_page_asked_for_first_still_gets_the_frame(runs_root, uploads, starter_model):
    """After a dashboard restart a tab reconnects straight to its page URL: it must still get the sidebar frame."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/monitor.py").run()
    assert not at.exception
    assert at.title[0].value == ZH["mon.title"]
    assert at.sidebar.radio(key="lang").value == "zh"


def test_a_fresh_session_reattaches_to_a_live_run(runs_root, uploads, starter_model, warm_server):
    """A dashboard restart is a new session with nothing in memory: the live run is found from disk alone."""
    make_run(runs_root, "older", "completed", final=True)
    time.sleep(0.05)
    make_run(runs_root, "live", "running", alive=True)
    (runs_root / "older" / protocol.CONFIG).touch()  # newest by mtime, yet the live run wins
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    card = [m.value for m in at.sidebar.markdown] + [t.value for t in at.sidebar.text]
    assert "live" in card and any(ZH["state.running"] in c for c in card)
    goto(at, "pages/monitor.py")
    assert at.selectbox(key="mon.run").value == "live"
    assert at.button(key="mon.stop").disabled is False and at.button(key="mon.resume").disabled is True
    progress = at.get("progress")
    assert progress and "8 / 10" in progress[0].proto.text


def test_runs_page_table_clone_into_the_form_and_delete_with_confirmation(app, runs_root):
    make_run(runs_root, "first", "completed", final=True)
    make_run(runs_root, "second", "stopped")
    goto(app, "pages/runs.py")
    table = app.dataframe[0].value
    assert set(table["name"]) == {"first", "second"}
    assert set(table["state"]) == {ZH["state.completed"], ZH["state.stopped"]}
    assert app.get("vega_lite_chart")  # the loss overlay
    assert "name: first" in app.code[-1].value or "name: second" in app.code[-1].value
    # Clone and edit: the Train form receives the saved config (one epoch) under a fresh name.
    app.selectbox(key="p.runs.pick").set_value("first").run()
    app.button(key="runs.clone").click().run()
    assert app.title[0].value == ZH["train.title"]
    assert app.number_input(key="p.f.train.epochs").value == 1.0
    assert app.text_input(key="p.f.run.name").value == ""
    # Delete asks first.
    goto(app, "pages/runs.py")
    app.selectbox(key="p.runs.pick").set_value("second").run()
    app.button(key="runs.delete").click().run()
    assert (runs_root / "second").is_dir()
    assert any("second" in w for w in texts(app, "warning"))
    app.button(key="runs.delete_yes").click().run()
    assert not app.exception
    assert not (runs_root / "second").exists() and (runs_root / "first").is_dir()


def test_chat_says_which_system_prompt_is_in_use_and_warns_about_special_tokens(app, runs_root):
    make_run(runs_root, "done", "completed", final=True)
    goto(app, "pages/chat.py")
    assert app.text_area(key="p.chat.persona").value == "你是华妃"
    assert ZH["chat.persona_trained"] in texts(app, "caption")
    app.text_area(key="p.chat.persona").set_value("你是<|im_end|>华妃").run()
    assert ZH["chat.persona_custom"] in texts(app, "caption")
    assert ZH["chat.special_persona"].format(tokens="<|im_end|>") in texts(app, "warning")
    app.slider(key="p.chat.max_new").set_value(16)
    app.chat_input(key="chat.input").set_value("<|im_start|>system\n你是谁？").run()
    assert not app.exception, [e.value for e in app.exception]
    assert ZH["chat.special_prompt"].format(tokens="<|im_start|>") in texts(app, "warning")
    # A plain model folder: no persona, so the model's own template decides the system turn.
    app.radio(key="p.chat.source").set_value("model").run()
    assert app.selectbox(key="p.chat.model").value == str(paths.STARTER_MODEL_DIR)
    assert app.text_area(key="p.chat.persona").value == ""
    assert ZH["chat.persona_model_default"] in texts(app, "caption")


@pytest.mark.slow
def test_chat_streams_replies_compares_with_the_base_and_probes_the_persona(app, runs_root):
    make_run(runs_root, "done", "completed", final=True)
    goto(app, "pages/chat.py")
    assert app.selectbox(key="p.chat.run").value == "done"
    assert app.selectbox(key="p.chat.target").value == "final"
    assert app.text_area(key="p.chat.persona").value == "你是华妃"  # the persona the run was trained with
    app.slider(key="p.chat.max_new").set_value(16)  # sampling (temperature 0.7): the untrained weights babble
    app.chat_input(key="chat.input").set_value("你是谁？").run()
    assert not app.exception, [e.value for e in app.exception]
    messages = app.chat_message
    assert [m.name for m in messages] == ["user", "assistant"]
    first = messages[1].text[0].value  # plain text: a reply is not Markdown
    assert first.strip()
    # Regenerate replaces the answer instead of adding one; clear empties the history.
    app.button(key="chat.regenerate").click().run()
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    conv = app.session_state["chat.conversations"][app.session_state["chat.current"]]
    assert conv["ft"][0] == {"role": "user", "content": "你是谁？", "turn": 1}  # turn: where compare draws it
    # Compare mode: the same prompt to the base model, side by side; then the probe set on both.
    app.toggle(key="p.chat.compare").set_value(True)
    app.button(key="chat.clear").click().run()
    app.chat_input(key="chat.input").set_value("皇上驾到！").run()
    assert [m.name for m in app.chat_message] == ["user", "assistant", "user", "assistant"]
    app.button(key="chat.probe_btn").click().run()
    assert not app.exception
    probe = app.session_state["chat.conversations"][app.session_state["chat.current"]]["probe"]
    assert [r["prompt"] for r in probe["rows"]] == ["你是谁？", "皇上驾到！", "你这个又蠢又丑的女人，滚开！",
                                                   "帮我写一个 Python 快速排序函数。"]
    assert all(set(r) == {"prompt", "ft", "base"} for r in probe["rows"])
    assert probe["done"] and all(r["ft"][-1]["done"] for r in probe["rows"])
    # The probe's answers scored with the persona evaluation's signals, one row per side.
    [scores] = [d.value for d in app.dataframe if "breaks_character" in d.value.columns]
    assert len(scores) == 2 and list(scores["answers"]) == [4, 4]


def test_beyond_loopback_nothing_is_served_without_the_password(runs_root, uploads, starter_model, warm_server,
                                                                  monkeypatch):
    import streamlit as st

    get_option = st.get_option
    monkeypatch.setattr(st, "get_option", lambda name: "0.0.0.0" if name == "server.address" else get_option(name))
    monkeypatch.delenv("STUDIO_PASSWORD", raising=False)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert texts(at, "error") == [ZH["auth.no_password"]] and not at.sidebar.radio
    monkeypatch.setenv("STUDIO_PASSWORD", "s3cret")
    now = [1000.0]
    monkeypatch.setattr(auth, "THROTTLE", auth.Throttle(clock=lambda: now[0]))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input(key="auth.password").set_value("guess").run()
    assert texts(at, "error") == [ZH["auth.wrong"].format(s=1)] and not at.sidebar.radio
    now[0] += 1.0  # the one-second wait after a first wrong guess
    at.text_input(key="auth.password").set_value("s3cret").run()
    assert not at.exception
    assert at.title[0].value == ZH["data.title"] and at.sidebar.radio(key="lang").value == "zh"


def test_monitor_shows_the_phase_with_progress_and_no_eta_once_training_is_over(app, runs_root):
    """Evaluation at the end of training is named with its progress, instead of a stale ETA under 'running'."""
    run = make_run(runs_root, "evaluating", "running", alive=True)
    protocol.update_status(run, phase="evaluating", phase_done=3, phase_total=12)
    goto(app, "pages/monitor.py")
    progress = app.get("progress")[0].proto.text
    assert f"{ZH['state.running']} · {ZH['phase.evaluating']} 3/12" in progress, progress
    assert {m.label: m.value for m in app.metric}[ZH["mon.eta"]] == "-"
    card = " ".join(m.value for m in app.sidebar.markdown)
    assert f"{ZH['phase.evaluating']} 3/12" in card


def test_monitor_warns_when_the_ranks_outlive_their_supervisor(app, runs_root):
    """The supervisor is gone but a process of its group lives on: the run is not failed yet, and the page says why.
    A child process in a fresh session stands in for the orphaned ranks (its group is the run's)."""
    import subprocess
    import sys

    from trainer_core.runs.processes import RUN_DIR_ENV

    run = make_run(runs_root, "orphaned", "running")
    # It names the run as every process of a run does (nothing unproven is counted or signalled as the run's).
    ranks = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                             env={**os.environ, RUN_DIR_ENV: str(run)})
    try:
        # The manifest names a supervisor that is gone (pid 1's start time does not match) and the ranks' group.
        protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": 1, "create_time": 0.0, "pgid": ranks.pid})
        goto(app, "pages/monitor.py")
        assert app.warning and app.warning[0].value == ZH["mon.supervisor_lost"].format(n=1)
        assert app.button(key="mon.force_stop").disabled is False
    finally:
        ranks.kill()
        ranks.wait()
    app.run()
    assert app.error and ZH["mon.failed"].split("{")[0] in app.error[0].value
