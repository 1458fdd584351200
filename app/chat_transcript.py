"""A chat conversation as files to download: JSON for tools (labels, settings, every reply with its figures) and
Markdown for people. Pure functions of the conversation and already-translated labels; no Streamlit here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass
class TranscriptInfo:
    """What a conversation belongs to, written at the top of both files."""

    source: str
    """"run" (a trained run) or "model" (any model folder)."""

    name: str
    """The run's name, or the model folder as the page shows it."""

    checkpoint: str
    """What of the run was chatted with ("final", "checkpoint-N", "export-N"); empty for a model folder."""

    persona: str
    """The system prompt sent with every turn (empty: the model template's own default)."""

    params: dict
    """The generation settings of the last replies (GenParams as a dict)."""

    exported_at: str
    """UTC time of the export, ISO 8601."""

    sides: dict[str, dict] = field(default_factory=dict)
    """Per column shown ("ft", "base" or another checkpoint's name): {"label": text, "by": [kind, name],
    "model": folder}."""


def _reply_fields(msg: dict) -> dict:
    out = {"role": msg["role"], "content": msg["content"]}
    if msg["role"] == "assistant":
        out["by"] = msg.get("by")
        for k in ("tokens", "tokens_per_s"):
            if msg.get(k) is not None:
                out[k] = msg[k]
        out["stopped"] = bool(msg.get("stopped"))
        out["complete"] = bool(msg.get("done", True)) and not msg.get("stopped")
    return out


def transcript_json(conv: dict, info: TranscriptInfo) -> str:
    """The conversation as JSON: the labels, then each column's messages in order (with the persona probe's
    answers when it was run)."""
    doc = {
        "source": info.source, "name": info.name, "checkpoint": info.checkpoint, "persona": info.persona,
        "params": info.params, "exported_at": info.exported_at,
        "sides": [{"side": side, **meta, "messages": [_reply_fields(m) for m in conv.get(side, [])]}
                  for side, meta in info.sides.items()],
    }
    if conv.get("probe"):
        doc["probe"] = conv["probe"]
    return json.dumps(doc, ensure_ascii=False, indent=2)


def _fenced(text: str) -> str:
    """Text verbatim in a fence longer than any run of backticks inside it: a reply's `_` and `*` stay as written."""
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def transcript_markdown(conv: dict, info: TranscriptInfo, words: dict[str, str]) -> str:
    """The conversation for reading. `words` holds the page's translated labels: title, persona, none (no persona),
    exported, user, stopped, interrupted, speed (a template with {tokens} and {rate})."""
    lines = [f"# {words['title']}", "", f"- {words['exported']}: {info.exported_at}",
             f"- {words['persona']}: {info.persona or words['none']}", ""]
    for side, meta in info.sides.items():
        lines += [f"## {meta['label']}", ""]
        for msg in conv.get(side, []):
            if msg["role"] == "user":
                lines += [f"**{words['user']}**", "", _fenced(msg["content"]), ""]
                continue
            notes = ([words["stopped"]] if msg.get("stopped")
                     else [] if msg.get("done", True) else [words["interrupted"]])
            if msg.get("tokens"):
                rate = msg.get("tokens_per_s")
                notes.append(words["speed"].format(tokens=msg["tokens"], rate=f"{rate:.1f}" if rate else "-"))
            lines += [f"**{meta['label']}**", "", _fenced(msg["content"])]
            lines += [f"*{' · '.join(notes)}*", ""] if notes else [""]
    return "\n".join(lines)


def file_stem(info: TranscriptInfo) -> str:
    """A file name without odd characters: chat-<name>-<checkpoint>-<time>."""
    parts = ["chat", info.name.rsplit("/", 1)[-1], info.checkpoint, info.exported_at.replace(":", "")]
    return re.sub(r"[^\w.-]+", "_", "-".join(p for p in parts if p))
