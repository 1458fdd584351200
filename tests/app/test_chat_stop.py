"""A stopped chat reply is final when it is marked stopped, and its exports say the same before and after.

The served dashboard runs the stop button's callback on a new script thread at once (Streamlit's fast reruns) while
the run that streams the reply may still be waiting for its next piece. Here a thread stands in for that old run
(AppTest serves one run at a time and cannot interleave them) and the test thread is the stop's run; the model, the
generation thread, the streamer and the page functions are the real ones, with the starter model."""

import json
import threading
import time

from app import chat_view as cv
from app.chat_transcript import TranscriptInfo, transcript_json, transcript_markdown
from trainer_core.models.inference import GenParams, ReplyHandle

WORDS = {"title": "对话", "persona": "人设", "none": "无", "exported": "导出时间", "user": "用户", "stopped": "已停止",
         "interrupted": "中断", "speed": "{tokens} 个 token，{rate} token/s"}


def test_a_stopped_reply_does_not_change_after_the_stop(starter_model):
    handle = ReplyHandle()
    params = GenParams(max_new_tokens=8192, temperature=1.0, seed=0)  # the untrained starter babbles to the end
    chunks = cv.reply_stream(starter_model, False, [{"role": "user", "content": "你是谁？"}], "你是甄嬛", params, handle)
    gate = threading.Event()

    def slow_reader():
        """The page run that streams the reply, held up after a few pieces while the model runs on ahead."""
        for i, chunk in enumerate(chunks):
            if i == 3:
                gate.wait(60)
            yield chunk

    conv = {"ft": [{"role": "user", "content": "你是谁？"}], "base": [], "probe": None}
    old_run = threading.Thread(target=cv.stream_into, args=(conv["ft"], ["ft", "run · final"], slow_reader(), handle))
    old_run.start()
    deadline = time.monotonic() + 60
    while handle.tokens < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.tokens >= 40 and not handle.finished.is_set()
    reply = conv["ft"][-1]

    cv.mark_stopped(handle, reply)  # the stop button's callback, in the new run
    at_stop = dict(reply)
    info = TranscriptInfo(source="run", name="run", checkpoint="final", persona="你是甄嬛", params={},
                          exported_at="2026-12-07T00:00:00Z", sides={"ft": {"label": "甄嬛", "by": ["ft", "run"]}})
    exports_at_stop = transcript_json(conv, info), transcript_markdown(conv, info, WORDS)
    gate.set()  # the old run takes the pieces that were still on their way
    old_run.join(60)
    assert not old_run.is_alive()

    assert reply == at_stop, "the reply changed after it was marked stopped"
    assert (transcript_json(conv, info), transcript_markdown(conv, info, WORDS)) == exports_at_stop
    # What is recorded is the whole of what the model generated: its text and its token count together.
    assert at_stop["stopped"] and at_stop["done"] and at_stop["tokens"] == handle.tokens < 8192
    assert at_stop["content"] == handle.text and at_stop["content"].strip()
    # The JSON export writes Chinese as UTF-8, not \uXXXX escapes.
    exported = exports_at_stop[0]
    assert "你是甄嬛" in exported and "\\u" not in exported
    assert json.loads(exported)["sides"][0]["messages"][1]["content"] == at_stop["content"]
