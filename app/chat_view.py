"""Chat page logic: what can be chatted with, cached model loading, streamed replies that can be stopped, the
persona probe set, the transcript download."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import streamlit as st

from app.chat_transcript import TranscriptInfo, file_stem, transcript_json, transcript_markdown
from app.i18n import say, t
from trainer_core.runs import protocol
from trainer_core.data.chat_template import specials_in
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError
from trainer_core.models.inference import (MAX_NEW_TOKENS_RANGE, REPETITION_PENALTY_RANGE, TEMPERATURE_RANGE,
                                           TOP_P_RANGE, GenParams, ReplyHandle, chat_model, held_adapter_over,
                                           release_chat_models, stream_reply)
from trainer_core.models.local import list_local_models  # noqa: F401 (the page's model list)
from trainer_core.runs import outputs
from trainer_core.runs.outputs import FINAL_LABEL, chat_models  # noqa: F401 (what the page picks from)
from trainer_core.runs.registry import list_runs

# Prompts that show whether the persona took: identity, an in-world cue, hostility, and something off-topic.
PROBES = ["你是谁？", "皇上驾到！", "你这个又蠢又丑的女人，滚开！", "帮我写一个 Python 快速排序函数。"]


def chat_runs() -> list[Path]:
    return [r for r in list_runs() if chat_models(r)]


def run_base(run: Path) -> tuple[str, bool]:
    """The model a run started from and whether it needs remote code: the "base" side of compare mode."""
    cfg = load_config(run / protocol.CONFIG)
    return cfg.model.path, cfg.model.trust_remote_code


def persona_for(model_dir: Path) -> str:
    """The persona a chat starts with (runs.outputs decides which): the one the run trained with; none for a plain
    model folder, so its own template supplies its default system prompt."""
    try:
        return outputs.trained_persona(model_dir).text
    except Exception:  # a damaged run config must not break the chat page; no persona is a fine start
        return ""


def persona_note(model_dir: Path, persona: str) -> str:
    """i18n key of the line that says which system prompt is in use."""
    if not persona.strip():
        return "chat.persona_model_default"
    return "chat.persona_trained" if persona == persona_for(model_dir) else "chat.persona_custom"


def special_tokens_in(model_dir: Path, trust_remote_code: bool, text: str) -> list[str]:
    """The model's special-token strings found in a persona or prompt (empty when the tokenizer cannot load: the
    chat itself reports that)."""
    from app.data_view import tokenizer_for

    if not text:
        return []
    try:
        return specials_in(tokenizer_for(str(model_dir), trust_remote_code), text)
    except (UserError, OSError, ValueError):
        return []


def chat_device():
    """Where this page's models go: a GPU no live run holds (raises UserError naming the runs when all are)."""
    from app.train_form import hardware
    from trainer_core.runs.chat_device import choose

    return choose(hardware())


def device_or_stop():
    """`chat_device()`, or (every GPU held by a run) what this page held given back, the reason shown, and the page
    stopped."""
    try:
        return chat_device()
    except UserError as e:
        keep_only({}, "")  # nothing to show: what this page held goes back to the runs
        st.error(say(e), icon=":material/error:")
        st.stop()


def params_form() -> GenParams:
    """The generation settings' sliders, in an expander; the engine's limits (inference.*_RANGE) bound each, the
    lowest steps are the sliders' own."""
    defaults = GenParams()
    with st.expander(t("chat.params")):
        c = st.columns(4)
        temperature = c[0].slider(t("chat.temperature"), TEMPERATURE_RANGE[0], TEMPERATURE_RANGE[1],
                                  defaults.temperature, 0.05, key="p.chat.temperature", persist_state="session",
                                  help=t("chat.temperature_help"))
        top_p = c[1].slider("top-p", 0.05, TOP_P_RANGE[1], defaults.top_p, 0.05, key="p.chat.top_p",
                            persist_state="session", help=t("chat.top_p_help"))
        max_new = c[2].slider(t("chat.max_new_tokens"), 16, MAX_NEW_TOKENS_RANGE[1], defaults.max_new_tokens, 16,
                              key="p.chat.max_new", persist_state="session")
        rep = c[3].slider(t("chat.repetition_penalty"), REPETITION_PENALTY_RANGE[0], REPETITION_PENALTY_RANGE[1],
                          defaults.repetition_penalty, 0.01, key="p.chat.repetition", persist_state="session",
                          help=t("chat.repetition_help"))
    return GenParams(max_new_tokens=int(max_new), temperature=temperature, top_p=top_p, repetition_penalty=rep)


def answer(hist: list[dict], side: str, path: str | Path, trust_remote_code: bool, by: list[str], persona: str,
           params: GenParams, device: str) -> None:
    """Stream one side's reply to the user's last turn under a stop button. A refused reply (the model cannot load,
    the prompt is too long) is shown and its turn taken back, so the history never holds an unanswered prompt."""
    with st.chat_message("assistant"):
        try:
            handle = ReplyHandle()
            with st.spinner(t("chat.loading")):
                stream = reply_stream(path, trust_remote_code, hist, persona, params, handle, device)
            text = stream_into(hist, by, stream, handle, stop_key=f"chat.stop.{side}")
            if not text.strip():
                st.caption(t("chat.empty"))
            reply_captions(hist[-1])
        except (UserError, OSError, ValueError) as e:
            if hist[-1]["role"] == "assistant":
                hist.pop()
            hist.pop()
            st.error(say(e), icon=":material/error:")


def _stamp(p: Path) -> float:
    marker = p / protocol.COMPLETE_MARKER if (p / protocol.COMPLETE_MARKER).exists() else p / "config.json"
    return marker.stat().st_mtime if marker.exists() else 0.0


def load(model_dir: str | Path, trust_remote_code: bool, device: str = "cpu"):
    """(model, tokenizer), loaded once per folder and device; a re-written folder (new mtime) loads again. Never
    mutated."""
    p = Path(model_dir)
    return chat_model(str(p), trust_remote_code=trust_remote_code, device=device, stamp=_stamp(p))


def keep_only(sides: dict[str, tuple], device: str) -> None:
    """Release every chat model the page no longer shows (compare mode off, another model or device picked), so its
    GPU memory goes back before anything else loads."""
    release_chat_models({(str(Path(path)), trust, device) for path, trust, _ in sides.values()})


def reply_stream(model_dir: str | Path, trust_remote_code: bool, messages: list[dict], persona: str,
                 params: GenParams, handle: ReplyHandle | None = None, device: str = "cpu") -> Iterator[str]:
    # Compare mode's base side of a LoRA run: the fine-tuned side (answered first) holds base + adapter, which
    # answers as the base with its adapter off; the base is not loaded a second time.
    over = held_adapter_over(model_dir, trust_remote_code=trust_remote_code, device=device)
    if over is not None:
        model, tok = over
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        return stream_reply(model, tok, turns, persona=persona, params=params, handle=handle, adapter_off=True)
    model, tok = load(model_dir, trust_remote_code, device)
    # A snapshot: the generator reads the messages only when first iterated, after the reply being written has
    # been added to the history.
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return stream_reply(model, tok, turns, persona=persona, params=params, handle=handle)


def conversation_key(source: str, name: str, target: str, persona: str) -> str:
    """What a conversation belongs to: the run (or model folder), the checkpoint chatted with, and the persona."""
    return json.dumps([source, name, target, persona], ensure_ascii=False)


def conversation(key: str) -> dict:
    """The conversation of one (model or run, checkpoint, persona): a message list per side ("ft": the chosen model,
    "base": the model it was trained from) and the persona-probe results. Made the current one, so the buttons'
    callbacks act on it."""
    st.session_state["chat.current"] = key
    return st.session_state.setdefault("chat.conversations", {}).setdefault(key, {"ft": [], "base": [], "probe": None})


def _current() -> dict:
    return st.session_state.get("chat.conversations", {}).get(st.session_state.get("chat.current"), {})


def regenerate(sides: list[str]) -> None:
    """Drop the last reply of each side shown and ask for a new one on the next run."""
    for side in sides:
        hist = _current().get(side, [])
        if hist and hist[-1]["role"] == "assistant":
            hist.pop()
    st.session_state["chat.regenerate_now"] = True


def clear() -> None:
    conv = _current()
    for hist in conv.values():
        if isinstance(hist, list):  # every column's history, another checkpoint's included
            hist.clear()
    if conv:
        conv["probe"] = None


def add_prompt(conv: dict, sides, prompt: str) -> None:
    """The user's turn on every side shown; an unanswered turn left by an interrupted run is replaced. The turn is
    numbered, the same on every side, so that each reply is drawn beside its own question (show_conversation)."""
    conv["turns"] = turn = conv.get("turns", 0) + 1
    for side in sides:
        hist = conv[side]
        if hist and hist[-1]["role"] == "user":
            hist.pop()
        hist.append({"role": "user", "content": prompt, "turn": turn})


def turn_rows(hists: dict[str, list[dict]]) -> list[dict[str, list[dict]]]:
    """The conversation as rows, one per question: each side's question and reply of that turn. A side shown only
    for later turns (compare switched on mid-conversation) has no cell in the earlier rows. Messages written before
    turns were numbered are aligned from the newest turn."""
    rows: dict[int, dict[str, list[dict]]] = {}
    for side, hist in hists.items():
        questions = sum(m["role"] == "user" for m in hist)
        key, seen = -questions, 0
        for msg in hist:
            if msg["role"] == "user":
                key = msg.get("turn", seen - questions)
                seen += 1
            rows.setdefault(key, {}).setdefault(side, []).append(msg)
    return [rows[k] for k in sorted(rows)]


def show_conversation(conv: dict, sides: dict[str, tuple]) -> dict:
    """Each side's title over its column, then one row per question with every side's question and reply side by
    side. Returns the last row's column of each side, where the replies to a new question stream."""
    cols = dict(zip(sides, st.columns(len(sides))))
    for side, (_, _, by) in sides.items():
        cols[side].markdown(f"**{side_title(by)}**")
    for row in turn_rows({side: conv[side] for side in sides}):
        cols = dict(zip(sides, st.columns(len(sides))))
        for side, msgs in row.items():
            with cols[side]:
                for msg in msgs:
                    show_message(msg)
    return cols


_REPLY_LOCK = threading.Lock()
"""Between a streaming page run adding to a reply and the stop button's run marking it final. With Streamlit's
fast reruns the click starts the new run (and its callback) on a new thread at once, while the old run may still be
waiting for its next piece: without the lock that piece was added after the reply was marked stopped."""
STOP_WAIT_S = 10.0
"""How long a stop waits for the generation to end (it ends after the token being computed)."""


def stream_into(hist: list[dict], by: list[str], chunks: Iterator[str], handle: ReplyHandle | None = None,
                stop_key: str | None = None) -> str:
    """Stream a reply as plain text (a model's underscores and asterisks are not Markdown) and keep it in the
    history as it grows, marked unfinished until the end: a page left mid-reply keeps what was said rather than
    asking the model again when it comes back. With a `stop_key`, a stop button under the growing text ends it;
    a reply marked done (stopped) is final, and nothing more is added to it here."""
    msg = {"role": "assistant", "content": "", "by": by, "done": False}
    hist.append(msg)
    box = st.empty()
    stop = st.empty()
    if stop_key and handle is not None:
        st.session_state["chat.live"] = {"handle": handle, "msg": msg}
        stop.button(t("chat.stop"), key=stop_key, on_click=stop_reply, icon=":material/stop_circle:")
    try:
        for chunk in chunks:
            with _REPLY_LOCK:
                if msg.get("done"):  # stopped by a newer run of the page, which now owns the history
                    return msg["content"]
                msg["content"] += chunk
            box.text(msg["content"])
    except Exception:  # a failed generation: no stop button left behind (a rerun, a BaseException, keeps both)
        stop.empty()
        st.session_state.pop("chat.live", None)
        raise
    stop.empty()
    st.session_state.pop("chat.live", None)
    with _REPLY_LOCK:
        if not msg.get("done"):
            msg["done"] = True
            if handle is not None:
                msg.update(stopped=handle.stopped, tokens=handle.tokens, tokens_per_s=handle.tokens_per_s)
    return msg["content"]


def stop_reply() -> None:
    """The stop button's callback. A click reruns the page: Streamlit first interrupts the script that is streaming
    (at its next element update), then calls this before the new run. Ending the generation here does not wait for
    the abandoned generator to be collected; the partial reply stays in the history, marked stopped."""
    live = st.session_state.pop("chat.live", None)
    if live:
        mark_stopped(live["handle"], live["msg"])


def mark_stopped(handle: ReplyHandle, msg: dict) -> None:
    """End the generation, wait for it to end, and record the reply as final: every token generated, its text
    and its count together (the page run that streamed it may not have taken the last pieces yet, and adds nothing
    once the reply is marked)."""
    handle.stop()
    handle.finished.wait(STOP_WAIT_S)
    with _REPLY_LOCK:
        if not msg.get("done"):
            # The handle's text runs ahead of the page's; a handle no streamer fed has none, and what was shown stays.
            content = handle.text if len(handle.text) >= len(msg["content"]) else msg["content"]
            msg.update(content=content, done=True, stopped=handle.stopped, tokens=handle.tokens,
                       tokens_per_s=handle.tokens_per_s)


def end_stale_reply() -> None:
    """A reply whose run was interrupted by anything but the stop button (another widget, a new prompt): end its
    generation so the next reply does not queue behind it on the one inference thread."""
    live = st.session_state.pop("chat.live", None)
    if live:
        live["handle"].cancel()


def show_message(msg: dict) -> None:
    """One message as plain text, with the model that wrote it (and whether it was cut short) under a reply."""
    with st.chat_message(msg["role"]):
        if msg["content"].strip():
            st.text(msg["content"])
        elif msg["role"] == "assistant" and msg.get("done", True):
            st.caption(t("chat.empty"))
        if msg["role"] == "assistant":
            reply_captions(msg)


def reply_captions(msg: dict) -> None:
    """Under a reply: who wrote it (and whether it was stopped or cut short), then its length and speed."""
    note = (" · " + t("chat.stopped") if msg.get("stopped")
            else "" if msg.get("done", True) else " · " + t("chat.interrupted"))
    st.caption(side_title(msg["by"]) + note)
    if msg.get("tokens"):
        rate = msg.get("tokens_per_s")
        st.caption(t("chat.speed", tokens=msg["tokens"], rate=f"{rate:.1f}" if rate else "-"))


def side_title(by: list[str]) -> str:
    """Label of what produced a reply: by = [kind, name], kind "ft" (a run's model), "base" or "model"."""
    return t(f"chat.side.{by[0]}", name=by[1])


def run_probe(conv: dict, sides: dict[str, tuple], persona: str, params: GenParams, device: str = "cpu", *,
              run: Path | None = None, models: dict[str, str] | None = None) -> None:
    """Ask every side each probe prompt (one turn, no history), streaming the answers in columns under a progress
    bar, each with a stop button: a stop ends the probe there and keeps what was answered. The results stay with
    this conversation, so they stay on the page and never show under another model. With `run` (and `models`: each
    side's model label in that run), a completed probe can be sent to the run's persona evaluation."""
    probe = conv["probe"] = {"by": {side: v[2] for side, v in sides.items()}, "rows": [], "done": False,
                             "persona": persona, "run": str(run) if run else None, "models": models or {},
                             "paths": {side: str(v[0]) for side, v in sides.items()}}
    st.subheader(t("chat.probe_results"))
    bar = st.progress(0.0)
    total = len(PROBES) * len(sides)
    for i, prompt in enumerate(PROBES):
        row = {"prompt": prompt}
        probe["rows"].append(row)  # kept as it fills: a stop (a rerun) leaves the answers so far
        st.markdown(f"**{prompt}**")
        for j, ((side, (path, trust, by)), col) in enumerate(zip(sides.items(), st.columns(len(sides)))):
            bar.progress((i * len(sides) + j) / total, text=t("chat.probe_progress", done=i * len(sides) + j,
                                                               total=total))
            with col:
                st.caption(side_title(by))
                answer: list[dict] = []
                try:
                    handle = ReplyHandle()
                    chunks = reply_stream(path, trust, [{"role": "user", "content": prompt}], persona, params, handle,
                                          device=device)
                    row[side] = answer  # the message grows in place while it streams
                    stream_into(answer, by, chunks, handle, stop_key=f"chat.probe_stop.{i}.{side}")
                except (UserError, OSError, ValueError) as e:
                    row[side] = []
                    st.error(say(e), icon=":material/error:")
    bar.empty()
    probe["done"] = True
    show_probe_scores(probe)


def probe_text(cell) -> str:
    """A probe answer as text (kept as the streamed message, so a stopped one shows what it had)."""
    return cell[-1]["content"] if isinstance(cell, list) and cell else cell if isinstance(cell, str) else ""


def probe_scores(probe: dict) -> dict[str, dict[str, float]]:
    """Per side, the persona evaluation's judge-free signals on the probe answers: names the persona, breaks
    character, and the share that ended by themselves."""
    from trainer_core.evaluation import metrics
    from trainer_core.evaluation import persona_signals as ps

    persona = probe.get("persona", "")
    names = ps.persona_names(persona)
    patterns = ps.AI_CLAIMS[ps.language(persona or "")]
    out = {}
    for side in probe["by"]:
        cells = [row.get(side) for row in probe["rows"] if row.get(side)]
        texts = [probe_text(c) for c in cells]
        out[side] = {"identity_in_persona": metrics.share(ps.names_persona(x, names) for x in texts),
                     "breaks_character": metrics.share(ps.breaks_character(x, patterns) for x in texts),
                     "answers": len(texts)}
    return out


def show_probe(conv: dict) -> None:
    probe = conv.get("probe")
    if not probe:
        return
    st.subheader(t("chat.probe_results"))
    if not probe.get("done", True):
        st.caption(t("chat.probe_stopped", done=sum(1 for r in probe["rows"] for s in probe["by"] if r.get(s)),
                     total=len(PROBES) * len(probe["by"])))
    for row in probe["rows"]:
        st.markdown(f"**{row['prompt']}**")
        for (side, by), col in zip(probe["by"].items(), st.columns(len(probe["by"]))):
            col.caption(side_title(by))
            col.text(probe_text(row.get(side, "")))
    show_probe_scores(probe)


def show_probe_scores(probe: dict) -> None:
    scores = probe_scores(probe)
    st.dataframe([{"side": side_title(probe["by"][side]), **{k: (f"{v:.2f}" if isinstance(v, float) else v)
                                                             for k, v in sc.items()}}
                  for side, sc in scores.items()], hide_index=True, key="chat.probe_scores",
                 column_config={"side": st.column_config.Column(t("chat.probe_side")),
                                "answers": st.column_config.Column(t("chat.probe_answers"))})
    st.caption(t("chat.probe_scores_help"))
    if probe.get("run") and probe.get("done"):
        if st.button(t("chat.probe_send"), key="chat.probe_send", icon=":material/fact_check:",
                     help=t("chat.probe_send_help")):
            try:
                labels = send_probe(probe)
            except (UserError, OSError) as e:
                st.error(say(e), icon=":material/error:")
            else:
                st.success(t("chat.probe_sent", labels=", ".join(labels)), icon=":material/check:")


def send_probe(probe: dict) -> list[str]:
    """Store each side's probe replies as a chat-probe result in the run's eval/ folder (shown in the Runs page's
    evaluation table); returns the labels written."""
    from trainer_core.evaluation import persona_eval as pe

    run = Path(probe["run"])
    prompts = [row["prompt"] for row in probe["rows"]]
    labels = []
    for side in probe["by"]:
        replies = [probe_text(row.get(side)) for row in probe["rows"]]
        labels.append(pe.store_chat_probe(run, probe["models"].get(side, side), model_dir=Path(probe["paths"][side]),
                                          persona=probe.get("persona", ""), prompts=prompts, replies=replies))
    return labels


def compare_choices(targets: dict[str, Path], target: str) -> list[str]:
    """What the chosen model can be compared with: the base model, then the run's other final/checkpoints/exports."""
    return ["base"] + [k for k in targets if k != target]


def compare_label(choice: str, base_name: str) -> str:
    if choice == "base":
        return t("chat.compare_base", name=base_name)
    return target_label(choice)


def target_label(choice: str) -> str:
    """A run's model as the page names it: final/ in the reader's language, the others by their label."""
    return t("chat.final") if choice == FINAL_LABEL else choice


def export_buttons(row, conv: dict, info: TranscriptInfo) -> None:
    """Download buttons for the conversation shown: JSON (labels, settings, figures) and Markdown."""
    words = {k: t(f"chat.md_{k}") for k in ("title", "persona", "none", "exported", "user")}
    words.update(stopped=t("chat.stopped"), interrupted=t("chat.interrupted"), speed=t("chat.speed"))
    empty = not any(conv.get(side) for side in info.sides)
    stem = file_stem(info)
    row.download_button(t("chat.export_json"), transcript_json(conv, info), f"{stem}.json", "application/json",
                        key="chat.export_json", icon=":material/download:", disabled=empty, on_click="ignore")
    row.download_button(t("chat.export_md"), transcript_markdown(conv, info, words), f"{stem}.md", "text/markdown",
                        key="chat.export_md", icon=":material/download:", disabled=empty, on_click="ignore")


def transcript_info(source: str, name: str, checkpoint: str, persona: str, params: GenParams,
                    sides: dict[str, tuple]) -> TranscriptInfo:
    from dataclasses import asdict

    from app.data_view import shown_path

    return TranscriptInfo(source=source, name=name, checkpoint=checkpoint, persona=persona, params=asdict(params),
                          exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          sides={side: {"label": side_title(by), "by": by, "model": shown_path(path)}
                                 for side, (path, _, by) in sides.items()})
