"""Read a whole dataset file: its records one at a time, each validated (validate.py), duplicates noted, and a
report of the file as a whole (rows, usable records, problems, format).

Files are ``.json`` (a top-level array of records), ``.jsonl`` (one record per line), ``.parquet`` or ``.csv``
(one record per row, columns named as the fields), or a folder written by ``datasets``' ``save_to_disk``. Problems
with the file as a whole raise ``UserError``; problems with single records become ``RowError``s and the record is
left out. ``scan_dataset`` hands out the usable records as they are read (for one pass over a large file);
``load_dataset`` keeps them in a ``DataReport``.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from trainer_core.data.records import iter_json_array, iter_jsonl, not_utf8
from trainer_core.data.tables import iter_csv, iter_parquet, iter_saved_dataset, saved_dataset_files
from trainer_core.data.validate import TOOL_CALL, Problems, RowError, special_warnings, validate_record
from trainer_core.common.errors import UserError, text
from trainer_core.common.user_files import not_readable, stat_user_path

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_CHARS = 20_000
MAX_REPORTED_ERRORS = 200
PROGRESS_EVERY = 4096
EXTENSIONS = (".json", ".jsonl", ".parquet", ".csv")
COLUMNAR = {".parquet": iter_parquet, ".csv": iter_csv}
SAVED = "save_to_disk"
"""The pseudo-extension of a save_to_disk folder."""


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
    ``conversations``. A record may have several."""
    warnings: Problems = field(default_factory=Problems)
    """Things worth knowing that do not stop a record from being used (unknown fields, duplicates)."""
    usable_count: int | None = None
    """Usable records when they were counted but not kept (``keep=False``); None when ``conversations`` holds them."""
    n_duplicates: int = 0
    """Usable records whose conversation repeats an earlier one exactly (each is also a warning)."""
    n_tool_call_rows: int = 0
    """Records left out because they hold tool-call turns, a format this trainer does not train. Counted as the
    file is read: ``errors`` keeps only the first few problems of each kind."""

    @property
    def n_usable(self) -> int:
        return len(self.conversations) if self.usable_count is None else self.usable_count

    @property
    def n_bad_rows(self) -> int:
        """Records left out for at least one problem (every record is either usable or has one)."""
        return self.n_rows - self.n_usable

    @property
    def n_errors(self) -> int:
        """Problems found, several per record possible (``n_bad_rows`` counts the records)."""
        return getattr(self.errors, "total", len(self.errors))

    @property
    def n_warnings(self) -> int:
        return getattr(self.warnings, "total", len(self.warnings))

    def to_dict(self, max_errors: int = MAX_REPORTED_ERRORS) -> dict:
        """JSON-able summary; errors and warnings are cut to ``max_errors`` each, with the full counts alongside."""
        return {
            "path": self.path,
            "format": self.format,
            "n_rows": self.n_rows,
            "n_usable": self.n_usable,
            "n_bad_rows": self.n_bad_rows,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "n_duplicates": self.n_duplicates,
            "n_tool_call_rows": self.n_tool_call_rows,
            "errors": [e.to_dict() for e in self.errors[:max_errors]],
            "warnings": [w.to_dict() for w in self.warnings[:max_errors]],
        }


@dataclass
class Usable:
    """One usable record as ``scan_dataset`` reads it."""

    row: int
    """1-based row, as in RowError."""
    record: dict
    """The record as the file holds it (columnar nulls left out)."""
    conversation: list[dict]
    """The record as ``[{"role", "content"}, ...]``."""
    duplicate_of: int | None
    """The row of an earlier record with exactly the same conversation, None for the first of its kind."""


def load_dataset(path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_chars: int = DEFAULT_MAX_CHARS,
                 keep: bool = True, on_usable: Callable[[int, list[dict]], None] | None = None,
                 progress: Callable[[float], None] | None = None) -> DataReport:
    """Read and validate a dataset file (or save_to_disk folder). The size is checked before anything is read.

    ``keep=False`` counts usable records without keeping them, for one pass over a file too large to hold as
    Python objects; ``on_usable(row, conversation)`` sees each usable record as it is read; ``progress(fraction)``
    hears how much of the file has been read, every few thousand records."""
    report = DataReport(path=str(path), format="unknown", n_rows=0)
    _collect(scan_dataset(path, report, max_bytes=max_bytes, max_chars=max_chars, progress=progress), report,
             keep, on_usable)
    return report


def load_dataset_bytes(
    data: bytes, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_chars: int = DEFAULT_MAX_CHARS
) -> DataReport:
    """Same as ``load_dataset`` for bytes already in memory (an upload); ``name`` picks the format by extension."""
    ext = _check_extension(name)
    _check_size(name, len(data), max_bytes)
    report = DataReport(path=name, format="unknown", n_rows=0)
    source = data if ext in COLUMNAR else io.BytesIO(data)
    _collect(_scan(source, name, ext, report, max_chars=max_chars), report, True, None)
    return report


def _collect(usable: Iterator[Usable], report: DataReport, keep: bool, on_usable) -> None:
    n_usable = 0
    for u in usable:
        n_usable += 1
        if on_usable is not None:
            on_usable(u.row, u.conversation)
        if keep:
            report.conversations.append(u.conversation)
            report.row_ids.append(u.row)
    if not keep:
        report.usable_count = n_usable


def scan_dataset(path, report: DataReport | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_chars: int = DEFAULT_MAX_CHARS, progress: Callable[[float], None] | None = None
                 ) -> Iterator[Usable]:
    """Every usable record of a dataset file or save_to_disk folder, in file order, as it is read; problems and
    counts go to ``report`` as the scan proceeds (complete once the iterator is exhausted)."""
    path = check_data_path(path, max_bytes=max_bytes)
    report = report if report is not None else DataReport(path=str(path), format="unknown", n_rows=0)
    if path.is_dir():
        yield from _scan(path, str(path), SAVED, report, max_chars=max_chars, progress=progress)
        return
    ext = _check_extension(path.name)
    if ext in COLUMNAR:
        yield from _scan(path, str(path), ext, report, max_chars=max_chars, progress=progress)
        return
    with open(path, "rb", buffering=0) as f:
        yield from _scan(bounded_reader(f, str(path), max_bytes), str(path), ext, report, max_chars=max_chars,
                         progress=progress)


def check_data_path(path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """The one check of a dataset path, made before a byte of it is read (check-data, plan, train, the Data page
    and the Train page's preflight all come here): a regular file with a dataset extension and a size within
    ``max_bytes``, or a save_to_disk folder whose files are regular. Devices, FIFOs, sockets and /proc or /sys
    files are refused by name, also behind a symlink (user_files.not_readable)."""
    path = Path(path)
    try:
        info = stat_user_path(path)
    except FileNotFoundError:
        raise UserError("data.file_not_found", "{path}: file not found; check the path", path=path) from None
    problem = not_readable(path, info)
    if problem:
        raise UserError("data.not_regular", "{path}: {problem}, not a dataset; give the path of a {kinds}",
                        path=path, problem=problem, kinds=KINDS)
    if stat.S_ISDIR(info.st_mode):
        files = saved_dataset_files(path)
        for f in files:
            if not_readable(f) or not f.is_file():
                raise UserError("data.folder_file_not_regular", "{path}: is not a regular file (a device, pipe or "
                                "kernel file, or a symlink to one); a dataset folder holds plain files", path=f)
        _check_size(str(path), sum(f.stat().st_size for f in files[1:]), max_bytes)
        return path
    if not stat.S_ISREG(info.st_mode):
        raise UserError("data.not_a_file", "{path}: is not a file; give the path of a {kinds}", path=path,
                        kinds=KINDS)
    _check_extension(path.name)
    _check_size(str(path), info.st_size, max_bytes)
    return path


def bounded_reader(f, name: str, limit: int) -> io.BufferedReader:
    """``f`` read no further than ``limit`` bytes: a file that grows while it is read fails as too large instead
    of being read for ever (its size was checked before it was opened)."""
    return io.BufferedReader(_Bounded(f, name, limit), buffer_size=1 << 20)


class _Bounded(io.RawIOBase):
    def __init__(self, f, name: str, limit: int):
        super().__init__()
        self._f, self._name, self._limit = f, name, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer) -> int:
        n = self._f.readinto(buffer)
        if self._f.tell() > self._limit:
            raise UserError("data.file_grew", "{name}: file grew past the {limit} limit while it was read; wait "
                            "until it is written, or split it", name=self._name, limit=_human_bytes(self._limit))
        return n


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


KINDS = text("data.kinds", ".json array, .jsonl, .parquet or .csv file, or a folder written by datasets' save_to_disk")
"""What a dataset can be, for messages that say what to give instead."""


def _check_extension(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError("data.unsupported_type", "{name}: unsupported file type {ext!r}; use a {kinds}", name=name,
                        ext=ext or "(none)", kinds=KINDS)
    return ext


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UserError("data.file_too_large", "{name}: file is {size}, over the {limit} limit; split it into "
                        "smaller files or remove records", name=name, size=_human_bytes(size),
                        limit=_human_bytes(max_bytes))
    if size == 0:
        raise UserError("data.file_empty", "{name}: file is empty (0 bytes); it needs at least one record", name=name)


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _rows(source, name: str, ext: str):
    """(the file's items as records.Item, a function telling the fraction read so far)."""
    if ext in COLUMNAR or ext == SAVED:
        cursor = [0.0]
        rows = iter_saved_dataset(source, name, cursor) if ext == SAVED else COLUMNAR[ext](source, name, cursor)
        return rows, lambda: cursor[0]
    if ext == ".jsonl":
        size = max(1, source.seek(0, os.SEEK_END))
        source.seek(0)
        return iter_jsonl(source, name), lambda: source.tell() / size
    whole = _decode(source.read(), name)
    if not whole.strip():
        raise _only_whitespace(name)
    cursor = [0]
    return iter_json_array(whole, name, cursor), lambda: cursor[0] / len(whole)


def _scan(source, name: str, ext: str, report: DataReport, *, max_chars: int, progress=None) -> Iterator[Usable]:
    rows, where = _rows(source, name, ext)
    formats = set()
    # Conversation hash -> first row. A 64-bit hash instead of the text keeps a million records in tens of MB.
    seen: dict[int, int] = {}
    for row, record, repeated, json_error in rows:
        report.n_rows += 1
        if progress is not None and report.n_rows % PROGRESS_EVERY == 0:
            progress(where())
        if json_error:
            report.errors.append(RowError(row, "", json_error))
            continue
        for key in dict.fromkeys(repeated):
            report.warnings.append(RowError(row, key, text("data.repeated_key", "key appears more than once; only "
                                                           "its last value is used")))
        found: list[RowError] = []
        fmt, conversation = validate_record(record, row, found, report.warnings, max_chars)
        report.errors.extend(found)
        report.n_tool_call_rows += any(e.message.code == TOOL_CALL for e in found)
        formats.add(fmt)
        if conversation is None:
            continue
        key = hash(tuple((t["role"], t["content"]) for t in conversation))
        first = seen.setdefault(key, row)
        if first != row:
            # Reported but kept: datasets repeat persona lines on purpose to weight them (huanhuan.json has
            # "你是谁？" 50 times), and dropping them would change what the user chose to train on.
            report.n_duplicates += 1
            report.warnings.append(RowError(row, "", text("data.duplicate", "duplicate of row {first} (kept; "
                                                          "remove it to train on it once)", first=first)))
        yield Usable(row, record, conversation, None if first == row else first)
    if report.n_rows == 0:
        raise _only_whitespace(name) if ext == ".jsonl" else \
            UserError("data.no_records", "{name}: contains no records; add at least one", name=name)
    formats.discard(None)
    report.format = formats.pop() if len(formats) == 1 else "mixed" if formats else "unknown"


def _only_whitespace(name: str) -> UserError:
    return UserError("data.only_whitespace", "{name}: file has only whitespace; it needs at least one record",
                     name=name)


def _decode(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError("data.utf16", "{name}: file is UTF-16; save it as UTF-8", name=name)
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(name, data[e.start], e.start, data.count(b"\n", 0, e.start) + 1) from None
    return whole.removeprefix("\ufeff")


def special_token_warnings(report: DataReport, tokenizer) -> list[RowError]:
    """``validate.special_warnings`` for every record a report keeps."""
    out = []
    for row, conversation in zip(report.row_ids, report.conversations):
        out += special_warnings(row, conversation, tokenizer)
    return out
