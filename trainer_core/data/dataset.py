"""Load and validate a dialogue dataset file: conversations for training plus row-level errors.

Three record formats are understood, detected per record (a file may mix them):

- alpaca (the huanhuan.json format): ``{"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}``
- messages: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- sharegpt: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...], "system"?}``

Files are ``.json`` (a top-level array of records), ``.jsonl`` (one record per line), ``.parquet`` or ``.csv``
(one record per row, columns named as the fields), or a folder written by ``datasets``' ``save_to_disk``. Problems
with the file as a whole raise ``UserError``; problems with single records become ``RowError``s and the record is
left out.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
import unicodedata
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from trainer_core import paths
from trainer_core.errors import UserError
from trainer_core.data.records import iter_json_array, iter_jsonl, json_type
from trainer_core.data.tables import iter_csv, iter_parquet, iter_saved_dataset, saved_dataset_files

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_CHARS = 20_000
MAX_REPORTED_ERRORS = 200
PROGRESS_EVERY = 4096
MAX_PER_KIND = 50
"""Problems kept per kind (same field, same message but for numbers and quoted values); the rest are counted."""
EXTENSIONS = (".json", ".jsonl", ".parquet", ".csv")
COLUMNAR = {".parquet": iter_parquet, ".csv": iter_csv}
SAVED = "save_to_disk"
"""The pseudo-extension of a save_to_disk folder."""

ALPACA_FIELDS = {"instruction", "input", "output", "system", "history"}
MESSAGES_FIELDS = {"messages"}
SHAREGPT_FIELDS = {"conversations", "system"}
MESSAGES_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
# Roles of tool-calling formats (OpenAI, ShareGPT/LLaMA-Factory, Llama 3): not trained here, so such records are
# left out and counted apart from other errors.
TOOL_ROLES = {"tool", "function", "function_call", "observation", "ipython", "tool_call", "tool_response"}
TOOL_CALL_MESSAGE = "tool-call turns are not trained"


@dataclass
class RowError:
    """One problem with one record. ``row`` is 1-based: the record's position in a .json array or in a
    Parquet/CSV/save_to_disk table (a CSV header is not counted), or its line number in a .jsonl file.
    ``field`` names the offending field ("" for the record as a whole)."""

    row: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"

    @property
    def kind(self) -> str:
        """The problem without its particulars: "history[3]" and "history[7]" or "row 12" and "row 40" match."""
        field = re.sub(r"\[\d+\]", "[]", re.sub(r"^turn \d+$", "turn", self.field))
        return field + "|" + _PARTICULARS.sub("#", self.message)


_PARTICULARS = re.compile(r"'[^']*'|\"[^\"]*\"|\d[\d,.]*")


class Problems(list):
    """RowErrors as a list that keeps the first ``per_kind`` of each kind and counts every one, so a file with a
    million bad rows reports precisely without holding a million messages."""

    def __init__(self, items=(), per_kind: int = MAX_PER_KIND):
        super().__init__()
        self.per_kind = per_kind
        self.counts: dict[str, int] = {}
        self.total = 0
        self.extend(items)

    def append(self, problem: RowError) -> None:
        n = self.counts.get(problem.kind, 0) + 1
        self.counts[problem.kind] = n
        self.total += 1
        if n <= self.per_kind:
            super().append(problem)

    def extend(self, problems) -> None:
        for p in problems:
            self.append(p)

    @property
    def n_hidden(self) -> int:
        """Problems counted but not kept."""
        return self.total - len(self)


@dataclass
class DataReport:
    path: str
    """The file that was read (for uploads, the name it was uploaded under)."""
    format: str
    """"alpaca", "messages", "sharegpt", "mixed" when records use several, "unknown" when none was recognised."""
    n_rows: int
    """Records in the file, usable or not (for .jsonl: non-blank lines)."""
    conversations: list[list[dict]] = field(default_factory=list)
    """Usable records as ``[{"role", "content"}, ...]``, ending with an assistant turn."""
    row_ids: list[int] = field(default_factory=list)
    """1-based row number of each entry in ``conversations``."""
    errors: Problems = field(default_factory=Problems)
    """Problems that make a record unusable (the first MAX_PER_KIND of each kind); such records are not in
    ``conversations``."""
    warnings: Problems = field(default_factory=Problems)
    """Things worth knowing that do not stop a record from being used (unknown fields, duplicates)."""
    usable_count: int | None = None
    """Usable records when they were counted but not kept (``keep=False``); None when ``conversations`` holds them."""

    @property
    def n_usable(self) -> int:
        return len(self.conversations) if self.usable_count is None else self.usable_count

    @property
    def n_errors(self) -> int:
        return getattr(self.errors, "total", len(self.errors))

    @property
    def n_warnings(self) -> int:
        return getattr(self.warnings, "total", len(self.warnings))

    @property
    def n_tool_call_rows(self) -> int:
        """Records left out because they hold tool-call turns, a format this trainer does not train."""
        return len({e.row for e in self.errors if e.message.startswith(TOOL_CALL_MESSAGE)})

    def to_dict(self, max_errors: int = MAX_REPORTED_ERRORS) -> dict:
        """JSON-able summary; errors and warnings are cut to ``max_errors`` each, with the full counts alongside."""
        return {
            "path": self.path,
            "format": self.format,
            "n_rows": self.n_rows,
            "n_usable": self.n_usable,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "n_tool_call_rows": self.n_tool_call_rows,
            "errors": [asdict(e) for e in self.errors[:max_errors]],
            "warnings": [asdict(w) for w in self.warnings[:max_errors]],
        }


def load_dataset(path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_chars: int = DEFAULT_MAX_CHARS,
                 keep: bool = True, on_usable: Callable[[int, list[dict]], None] | None = None,
                 progress: Callable[[float], None] | None = None) -> DataReport:
    """Read and validate a dataset file (or save_to_disk folder). The size is checked before anything is read.

    ``keep=False`` counts usable records without keeping them, for one pass over a file too large to hold as
    Python objects; ``on_usable(row, conversation)`` sees each usable record as it is read; ``progress(fraction)``
    hears how much of the file has been read, every few thousand records."""
    path = Path(path)
    if path.is_dir():
        _check_size(str(path), sum(f.stat().st_size for f in saved_dataset_files(path)[1:]), max_bytes)
        return _load(path, str(path), SAVED, max_chars=max_chars, keep=keep, on_usable=on_usable, progress=progress)
    ext = _check_extension(path.name)
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; give the path of a {_KINDS}")
    _check_size(str(path), path.stat().st_size, max_bytes)
    if ext in COLUMNAR:
        return _load(path, str(path), ext, max_chars=max_chars, keep=keep, on_usable=on_usable, progress=progress)
    with open(path, "rb") as f:
        return _load(f, str(path), ext, max_chars=max_chars, keep=keep, on_usable=on_usable, progress=progress)


def load_dataset_bytes(
    data: bytes, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_chars: int = DEFAULT_MAX_CHARS
) -> DataReport:
    """Same as ``load_dataset`` for bytes already in memory (an upload); ``name`` picks the format by extension."""
    ext = _check_extension(name)
    _check_size(name, len(data), max_bytes)
    return _load(data if ext in COLUMNAR else io.BytesIO(data), name, ext, max_chars=max_chars)


def source_files(path) -> list[Path]:
    """The files whose bytes are the dataset at ``path``: the file itself, or a save_to_disk folder's state.json
    and data files (for cache keys and change detection)."""
    path = Path(path)
    return saved_dataset_files(path) if path.is_dir() else [path]


def modified_time(path) -> float:
    """When the dataset at ``path`` last changed (0.0 when it cannot be read)."""
    try:
        return max(f.stat().st_mtime for f in source_files(path))
    except (OSError, UserError):
        return 0.0


def _check_extension(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError(f"{name}: unsupported file type {ext or '(none)'!r}; use a {_KINDS}")
    return ext


_KINDS = ".json array, .jsonl, .parquet or .csv file, or a folder written by datasets' save_to_disk"


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UserError(
            f"{name}: file is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} limit; "
            "split it into smaller files or remove records"
        )
    if size == 0:
        raise UserError(f"{name}: file is empty (0 bytes); it needs at least one record")


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _load(stream, name: str, ext: str, *, max_chars: int, keep: bool = True, on_usable=None,
          progress=None) -> DataReport:
    report = DataReport(path=name, format="unknown", n_rows=0)
    if ext in COLUMNAR or ext == SAVED:
        cursor = [0.0]
        rows = iter_saved_dataset(stream, name, cursor) if ext == SAVED else COLUMNAR[ext](stream, name, cursor)
        where = lambda: cursor[0]  # noqa: E731
    elif ext == ".jsonl":
        rows = iter_jsonl(stream, name)
        size = max(1, stream.seek(0, os.SEEK_END))
        stream.seek(0)
        where = lambda: stream.tell() / size  # noqa: E731
    else:
        text = _decode(stream.read(), name)
        if not text.strip():
            raise UserError(f"{name}: file has only whitespace; it needs at least one record")
        cursor = [0]
        rows = iter_json_array(text, name, cursor)
        where = lambda: cursor[0] / len(text)  # noqa: E731
    formats = set()
    # Conversation hash -> first row. A 64-bit hash instead of the text keeps a million records in tens of MB.
    seen: dict[int, int] = {}
    n_usable = 0
    for row, record, repeated, json_error in rows:
        report.n_rows += 1
        if progress is not None and report.n_rows % PROGRESS_EVERY == 0:
            progress(where())
        if json_error:
            report.errors.append(RowError(row, "", json_error))
            continue
        for key in dict.fromkeys(repeated):
            report.warnings.append(RowError(row, key, "key appears more than once; only its last value is used"))
        fmt, conversation = _validate(record, row, report, max_chars)
        if fmt:
            formats.add(fmt)
        if conversation is None:
            continue
        key = hash(tuple((t["role"], t["content"]) for t in conversation))
        if key in seen:
            # Reported but kept: datasets repeat persona lines on purpose to weight them (huanhuan.json has
            # "你是谁？" 50 times), and dropping them would change what the user chose to train on.
            report.warnings.append(RowError(row, "", f"duplicate of row {seen[key]} (kept; remove it to train on it once)"))
        else:
            seen[key] = row
        n_usable += 1
        if on_usable is not None:
            on_usable(row, conversation)
        if keep:
            report.conversations.append(conversation)
            report.row_ids.append(row)
    if not keep:
        report.usable_count = n_usable
    if report.n_rows == 0:
        if ext == ".jsonl":
            raise UserError(f"{name}: file has only whitespace; it needs at least one record")
        raise UserError(f"{name}: contains no records; add at least one")
    if len(formats) == 1:
        report.format = formats.pop()
    elif formats:
        report.format = "mixed"
    return report


def _decode(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{name}: file is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{name}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
            "save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


_json_type = json_type


def _validate(record, row: int, report: DataReport, max_chars: int) -> tuple[str | None, list[dict] | None]:
    """Return (format, conversation); conversation is None when the record has errors (added to ``report``)."""
    errors: list[RowError] = []
    if not isinstance(record, dict):
        report.errors.append(RowError(row, "", f"record is {_json_type(record)}; expected an object"))
        return None, None
    if "messages" in record:
        fmt, known = "messages", MESSAGES_FIELDS
        conversation = _turns(record["messages"], "messages", "role", "content", MESSAGES_ROLES, row, errors)
    elif "conversations" in record:
        fmt, known = "sharegpt", SHAREGPT_FIELDS
        conversation = _from_sharegpt(record, row, errors)
    elif "instruction" in record or "output" in record:
        fmt, known = "alpaca", ALPACA_FIELDS
        conversation = _from_alpaca(record, row, errors)
    else:
        report.errors.append(
            RowError(row, "", 'unrecognised record; expected "instruction"/"output", "messages" or "conversations"')
        )
        return None, None
    for key in record:
        if key not in known:
            report.warnings.append(RowError(row, key, f"unknown field ignored (a {fmt} record uses {sorted(known)})"))
    if conversation is not None:
        _check_conversation(conversation, row, errors, max_chars)
        report.warnings.extend(placeholder_warnings(conversation, row))
    report.errors.extend(errors)
    return fmt, (conversation if not errors else None)


def _string(record: dict, key: str, row: int, errors: list, *, required: bool, where: str = "") -> str | None:
    """Fetch a string field, recording a missing or non-string value as an error. ``where`` prefixes the name."""
    name = where + key
    if key not in record:
        if required:
            errors.append(RowError(row, name, "required field is missing"))
        return None
    value = record[key]
    if not isinstance(value, str):
        errors.append(RowError(row, name, f"must be a string, got {_json_type(value)}"))
        return None
    return value


def _from_alpaca(record: dict, row: int, errors: list) -> list[dict] | None:
    instruction = _string(record, "instruction", row, errors, required=True)
    extra_input = _string(record, "input", row, errors, required=False)
    output = _string(record, "output", row, errors, required=True)
    system = _string(record, "system", row, errors, required=False)
    if instruction is not None and not instruction.strip():
        errors.append(RowError(row, "instruction", "is empty; it is what the user says"))
    if output is not None and not output.strip():
        errors.append(RowError(row, "output", "is empty; it is the reply the model learns"))
    history = record.get("history", [])
    turns: list[dict] = []
    if not isinstance(history, list):
        message = f"must be an array of [question, answer] pairs, got {_json_type(history)}"
        errors.append(RowError(row, "history", message))
        history = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            errors.append(RowError(row, f"history[{i}]", "must be a [question, answer] pair of strings"))
            continue
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    if errors:
        return None
    user = instruction + ("\n" + extra_input if extra_input else "")
    head = [{"role": "system", "content": system}] if system else []
    return head + turns + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _from_sharegpt(record: dict, row: int, errors: list) -> list[dict] | None:
    system = _string(record, "system", row, errors, required=False)
    turns = _turns(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, row, errors)
    if errors:
        return None
    return ([{"role": "system", "content": system}] if system else []) + turns


def _turns(items, name: str, role_key: str, text_key: str, roles: dict, row: int, errors: list) -> list[dict] | None:
    """Turn a list of turn objects into ``[{"role", "content"}]``, mapping role names through ``roles``."""
    if not isinstance(items, list):
        errors.append(RowError(row, name, f"must be an array of turns, got {_json_type(items)}"))
        return None
    if not items:
        errors.append(RowError(row, name, "is empty; it needs a user turn and an assistant turn"))
        return None
    turns = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]."
        if not isinstance(item, dict):
            errors.append(RowError(row, f"{name}[{i}]", f"turn is {_json_type(item)}; expected an object"))
            continue
        tool_role = isinstance(item.get(role_key), str) and item[role_key] in TOOL_ROLES
        if tool_role or "tool_calls" in item:
            what = f"role {item[role_key]!r}" if tool_role else '"tool_calls"'
            errors.append(RowError(row, f"{name}[{i}]", f"{TOOL_CALL_MESSAGE} ({what}); the record is left out"))
            continue
        role = _string(item, role_key, row, errors, required=True, where=where)
        content = _string(item, text_key, row, errors, required=True, where=where)
        if role is not None and role not in roles:
            errors.append(RowError(row, where + role_key, f"unknown role {role!r}; use one of {sorted(roles)}"))
        elif role is not None and content is not None:
            turns.append({"role": roles[role], "content": content})
    return None if errors else turns


def _check_conversation(conversation: list[dict], row: int, errors: list, max_chars: int) -> None:
    """Checks shared by all formats, on the normalised conversation."""
    roles = [t["role"] for t in conversation]
    if "system" in roles[1:]:
        errors.append(RowError(row, "", "a system turn may only come first"))
    if "user" not in roles:
        errors.append(RowError(row, "", "has no user turn"))
    if roles[-1] != "assistant":
        errors.append(RowError(row, "", f"must end with an assistant turn, ends with {roles[-1]}"))
    for i, turn in enumerate(conversation):
        if turn["role"] != "system" and not turn["content"].strip():
            errors.append(RowError(row, f"turn {i + 1}", f"empty {turn['role']} turn"))
        bad = _CONTROL.search(turn["content"])
        if bad:
            where = f"{turn['role']} text has control character U+{ord(bad.group()):04X} at position {bad.start()}"
            errors.append(RowError(row, f"turn {i + 1}", f"{where}; remove it"))
    total = sum(len(t["content"]) for t in conversation)
    if total > max_chars:
        errors.append(RowError(row, "", f"is {total:,} characters, over the {max_chars:,} limit (max_chars)"))


# Unicode control characters (category Cc) except tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Unfilled template slots: {{name}} / {{ user }} (Jinja, SillyTavern), ${name}, {name} alone is too common in code.
_PLACEHOLDER = re.compile(r"\{\{\s*[\w.\-]{1,40}\s*\}\}|\$\{\w{1,40}\}")


def placeholder_warnings(conversation: list[dict], row: int) -> list[RowError]:
    """Answers that still hold a template slot such as {{name}}: the model would learn to say it literally."""
    out = []
    for i, turn in enumerate(conversation):
        found = _PLACEHOLDER.findall(turn["content"]) if turn["role"] == "assistant" else []
        if found:
            slots = ", ".join(dict.fromkeys(found))
            out.append(RowError(row, f"turn {i + 1}", f"answer holds unfilled template placeholder {slots}; fill it "
                                                      "in, or the model learns to say it literally"))
    return out


def special_token_warnings(report: DataReport, tokenizer) -> list[RowError]:
    """Turns whose text holds one of the tokenizer's special-token strings (`<|im_end|>`, `</s>`, ...).

    Training reads such strings as plain characters (they cannot forge turns), but they are almost always a
    mistake in the data: a pasted transcript, a wrongly exported chat log."""
    out = []
    for row, conversation in zip(report.row_ids, report.conversations):
        out += special_warnings(row, conversation, tokenizer)
    return out


def special_warnings(row: int, conversation: list[dict], tokenizer) -> list[RowError]:
    """special_token_warnings for one record, for a single pass that does not keep the records."""
    from trainer_core.data.chat_format import specials_in

    out = []
    for i, turn in enumerate(conversation):
        found = specials_in(tokenizer, turn["content"])
        if found:
            out.append(RowError(row, f"turn {i + 1}", f"{turn['role']} text holds special token "
                                                      f"{', '.join(found)}; it is trained as plain text, not "
                                                      "as a turn marker; remove it unless that is meant"))
    return out


# ---------------------------------------------------------------------------------------------------- uploads

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def safe_upload_name(name: str) -> str:
    """A file name safe to create under the uploads folder: the basename only, letters/digits/CJK/._- kept,
    everything else replaced by "_", no "..", no leading dot. Raises UserError unless it ends in one of EXTENSIONS."""
    if _CONTROL.search(name) or "\t" in name or "\n" in name or "\r" in name:
        bad = next(c for c in name if c in "\t\n\r" or _CONTROL.match(c))
        raise UserError(f"{name!r}: the file name holds the control character U+{ord(bad):04X}; rename the file")
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    ext = "." + ext.lower() if dot else ""
    if ext not in EXTENSIONS:
        raise UserError(f"{base or name!r}: uploads must be .json, .jsonl, .parquet or .csv files")
    stem = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem))
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")[:100] or "upload"
    return stem + ext


def store_upload(data: bytes, name: str) -> Path:
    """Write uploaded bytes under ``paths.UPLOADS_DIR`` as ``<safe stem>-<content hash><ext>``, atomically.
    The same bytes under the same name land on the same file; different bytes never overwrite each other."""
    safe = safe_upload_name(name)
    stem, ext = os.path.splitext(safe)
    target = Path(paths.UPLOADS_DIR) / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{ext}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


# ---------------------------------------------------------------------------------------------------- token stats


@dataclass
class TokenStats:
    n: int
    """Conversations measured."""
    p50: int
    p95: int
    max: int
    mean: float
    """Sequence lengths in tokens, before truncation."""
    max_length: int
    """The training max_length the truncation counts refer to."""
    n_truncated: int
    """Conversations longer than max_length."""
    n_answer_lost: int
    """Conversations whose prompt alone fills max_length, so truncation leaves no answer token to learn from."""
    n_label_tokens: int
    """Tokens trained on (labels) after truncation to max_length, summed over all conversations."""
    lengths: list[int]
    """Each conversation's full length, in input order (for a histogram)."""

    def to_dict(self) -> dict:
        return asdict(self)


STATS_BATCH = 2048
IGNORE_LABEL = -100  # chat_format.IGNORE_INDEX, PyTorch's cross-entropy ignore index
"""Conversations encoded per tokenizer call when measuring: large enough for the batch path, small in memory."""


class TokenCounter:
    """Token lengths and truncation figures, fed one conversation at a time and encoded in batches, so measuring
    a million records holds one batch of them plus 4 bytes per record."""

    def __init__(self, tokenizer, *, persona: str, max_length: int, batch: int = STATS_BATCH,
                 progress: Callable[[int], None] | None = None):
        self.tokenizer, self.persona, self.max_length, self.batch = tokenizer, persona, max_length, batch
        self.progress = progress  # called after each batch with the number of conversations measured so far
        self._pending: list[list[dict]] = []
        self._lengths = array("i")
        self.n_truncated = self.n_answer_lost = self.n_label_tokens = 0

    def add(self, conversation: list[dict]) -> None:
        self._pending.append(conversation)
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        from trainer_core.data.chat_format import encode_conversations

        full = encode_conversations(self.tokenizer, self._pending, persona=self.persona, max_length=2**31 - 1)
        self._pending = []
        for e in full:
            self._lengths.append(len(e.input_ids))
            # Training keeps the first max_length tokens (chat_format's cut); counting the labels in that prefix
            # of the full encoding gives its figures without tokenizing everything a second time.
            n_labels = sum(1 for label in e.labels[:self.max_length] if label != IGNORE_LABEL)
            self.n_truncated += len(e.input_ids) > self.max_length
            self.n_answer_lost += n_labels == 0
            self.n_label_tokens += n_labels
        if self.progress is not None:
            self.progress(len(self._lengths))

    def result(self) -> TokenStats:
        if self._pending:
            self._flush()
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if len(self._lengths) else np.zeros(0, np.int32)
        ordered = np.sort(lengths)
        return TokenStats(
            n=len(lengths),
            p50=_percentile(ordered, 0.50),
            p95=_percentile(ordered, 0.95),
            max=int(ordered[-1]) if len(ordered) else 0,
            mean=float(lengths.mean()) if len(lengths) else 0.0,
            max_length=self.max_length,
            n_truncated=self.n_truncated,
            n_answer_lost=self.n_answer_lost,
            n_label_tokens=self.n_label_tokens,
            lengths=lengths.tolist(),
        )


def token_stats(report_or_conversations, tokenizer, *, persona: str, max_length: int,
                progress: Callable[[int], None] | None = None) -> TokenStats:
    """Tokenise every conversation the way training will and measure lengths and truncation at ``max_length``."""
    counter = TokenCounter(tokenizer, persona=persona, max_length=max_length, progress=progress)
    conversations = report_or_conversations.conversations if isinstance(report_or_conversations, DataReport) \
        else report_or_conversations
    for conversation in conversations:
        counter.add(conversation)
    return counter.result()


def _percentile(ordered, q: float) -> int:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if len(ordered) == 0:
        return 0
    return int(ordered[max(0, math.ceil(q * len(ordered)) - 1)])
