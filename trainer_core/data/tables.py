"""Read the records of columnar datasets one Arrow batch at a time: Parquet, CSV and a Hugging Face ``datasets``
``save_to_disk`` folder (Arrow IPC stream files listed in its ``state.json``).

Items have the same form as ``records``: ``(row, record, repeated_keys, problem)``, ``row`` being the 1-based
record index. At most ``SLICE`` rows exist as Python objects at a time. A column value that is null is how a
columnar file says "this record has no such field", so nulls at the top level and inside structs are left out
of the record (a .jsonl record would simply not have the key). Problems with the file as a whole (not Parquet,
truncated, no column a record format uses, a column type that has no JSON form) raise UserError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from trainer_core.common import safe_json
from trainer_core.common.errors import Text, UserError, text
from trainer_core.data.records import Item, json_reason
from trainer_core.common.user_files import read_text

SLICE = 1024
"""Rows turned into Python objects at a time."""
RECORD_COLUMNS = ("instruction", "output", "messages", "conversations")
"""A file needs at least one of these for any record to be recognised (see data._validate)."""
JSON_TEXT_COLUMNS = ("history", "messages", "conversations")
"""CSV cells cannot nest, so these columns hold JSON text there."""
STATE_FILE = "state.json"
CSV_BLOCK = 16 << 20
"""Bytes of CSV parsed at a time; one row must fit in it (a record is at most 20,000 characters, data.max_chars)."""


def iter_parquet(source, name: str, cursor: list[float]) -> Iterator[Item]:
    """Records of a Parquet file (a path or bytes); ``cursor[0]`` follows the fraction read."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_open(source))
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise UserError("data.not_parquet", "{name}: not a readable Parquet file ({detail})", name=name,
                        detail=_first_line(e)) from None
    _check_schema(schema, name)
    total = max(1, pf.metadata.num_rows)
    batches = pf.iter_batches(batch_size=SLICE)
    yield from _rows(_guarded(batches, name, "Parquet"), schema, name, cursor, lambda done: done / total)


def iter_csv(source, name: str, cursor: list[float]) -> Iterator[Item]:
    """Records of a CSV file with a header line (a path or bytes). Every cell is read as text, as the
    file wrote it; history/messages/conversations cells are parsed as JSON (an empty cell: no such field)."""
    import pyarrow.csv as pcsv

    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            head = f.read(3)
        size = max(1, Path(source).stat().st_size)
    else:
        head, size = bytes(source[:3]), max(1, len(source))
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError("data.utf16", "{name}: file is UTF-16; save it as UTF-8", name=name)
    parse = pcsv.ParseOptions(newlines_in_values=True)  # answers span lines inside quoted cells
    read = pcsv.ReadOptions(block_size=CSV_BLOCK)
    try:
        # The first open only learns the column names, so that every column can then be read as a string: type
        # inference would turn an answer "42" into a number and a column of "true" into booleans.
        names = pcsv.open_csv(_open(source), read_options=read, parse_options=parse).schema.names
        convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names})
        reader = pcsv.open_csv(_open(source), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError) as e:
        if "straddling object" in str(e):
            raise _row_too_long(name) from None
        raise UserError("data.not_csv", "{name}: not a readable CSV file ({detail})", name=name,
                        detail=_first_line(e)) from None
    _check_schema(reader.schema, name)
    json_columns = [c for c in JSON_TEXT_COLUMNS if c in names]
    # The reader reads ahead of the rows handed out, so bytes per record so far estimate how far it has got.
    state = {"bytes": 0}

    def batches():
        for batch in _guarded(reader, name, "CSV"):
            state["bytes"] += batch.nbytes
            yield batch

    yield from _rows(batches(), reader.schema, name, cursor, lambda done: min(1.0, state["bytes"] / size),
                     json_columns=json_columns)


def iter_saved_dataset(folder: Path, name: str, cursor: list[float]) -> Iterator[Item]:
    """Records of a ``save_to_disk`` folder, its data files in the order ``state.json`` lists them."""
    files = saved_dataset_files(folder)[1:]
    sizes = [max(1, f.stat().st_size) for f in files]
    total, before, row = sum(sizes), 0, 0
    for path, size in zip(files, sizes):
        where = f"{name}: {path.name}"
        # Read, not memory-mapped: every page touched would count in the process's RSS until the end.
        with pa.OSFile(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except (pa.ArrowException, OSError) as e:
                raise UserError("data.not_arrow_stream", "{name}: not an Arrow stream file as save_to_disk writes "
                                "({detail})", name=where, detail=_first_line(e)) from None
            _check_schema(reader.schema, where)
            progress = lambda done, b=before, s=source: (b + s.tell()) / total  # noqa: E731
            n = 0
            for n, record, repeated, problem in _rows(_guarded(reader, where, "Arrow stream"), reader.schema,
                                                      where, cursor, progress):
                yield row + n, record, repeated, problem
        row += n
        before += size


def saved_dataset_files(folder: Path) -> list[Path]:
    """``state.json`` and the data files it lists, in order: the files whose bytes are the dataset."""
    name = str(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        splits = folder / "dataset_dict.json"
        if splits.is_file():
            subs = sorted(p.name for p in folder.iterdir() if (p / STATE_FILE).is_file())
            raise UserError("data.dataset_dict", "{name}: holds a DatasetDict with splits {splits}; give the "
                            "folder of one split, e.g. {example}", name=name, splits=", ".join(subs) or "-",
                            example=folder / (subs[0] if subs else "train"))
        raise UserError("data.folder_without_state", "{name}: is a folder without {state}; give a dataset file "
                        "(.json, .jsonl, .parquet, .csv) or a folder written by datasets' save_to_disk", name=name,
                        state=STATE_FILE)
    try:
        state, _ = safe_json.loads(read_text(state_path))
    except (json.JSONDecodeError, safe_json.JsonProblem, UnicodeDecodeError, OSError) as e:
        raise UserError("data.state_not_json", "{path}: not readable JSON ({detail})", path=state_path,
                        detail=_first_line(e)) from None
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError("data.state_without_files", "{path}: has no _data_files list; it is not a save_to_disk "
                        "state file", path=state_path)
    files = []
    for entry in entries:
        filename = entry.get("filename") if isinstance(entry, dict) else None
        # Names come from the file: only plain names inside the folder, never a path out of it.
        if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename \
                or filename in (".", ".."):
            raise UserError("data.state_bad_entry", "{path}: _data_files entry {entry} is not a file name in the "
                            "folder", path=state_path, entry=repr(entry)[:80])
        path = folder / filename
        if not path.exists():  # there but not a regular file (a FIFO): dataset.check_data_path words it
            raise UserError("data.state_missing_file", "{path}: lists {filename}, which is not in the folder",
                            path=state_path, filename=filename)
        files.append(path)
    return [state_path] + files


def _open(source):
    """A fresh stream over a path or bytes in memory (an upload); the CSV reader cannot rewind."""
    return str(source) if isinstance(source, (str, Path)) else pa.BufferReader(source)


def _guarded(batches, name: str, what: str) -> Iterator[pa.RecordBatch]:
    """Batches from a pyarrow reader; a damaged file (truncated, corrupt, invalid UTF-8) ends in a UserError."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
            # Offsets and UTF-8 are checked before Python reads them: a crafted file must not read out of bounds.
            batch.validate(full=True)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            if "straddling object" in str(e):  # pyarrow's words for a CSV row longer than a block
                raise _row_too_long(name) from None
            raise UserError("data.damaged_table", "{name}: damaged or truncated {what} file ({detail})", name=name,
                            what=what, detail=_first_line(e)) from None
        yield batch


def _rows(batches, schema: pa.Schema, name: str, cursor: list[float], fraction, *,
          json_columns: list[str] = ()) -> Iterator[Item]:
    names = schema.names
    repeated = sorted({n for n in names if names.count(n) > 1})
    row = 0
    for batch in batches:
        for start in range(0, batch.num_rows, SLICE):
            for record in batch.slice(start, SLICE).to_pylist():
                row += 1
                record = _without_nulls(record)
                problem, extra = None, []
                for column in json_columns:
                    problem = _parse_json_cell(record, column, extra)
                    if problem:
                        break
                yield row, (None if problem else record), repeated + extra, problem
        cursor[0] = fraction(row)


def _row_too_long(name: str) -> UserError:
    return UserError("data.csv_row_too_long", "{name}: a row is longer than {mb} MB; records are limited to 20,000 "
                     "characters, so split or shorten it", name=name, mb=CSV_BLOCK >> 20)


def _parse_json_cell(record: dict, column: str, repeated: list[str]) -> Text | None:
    cell = record.get(column)
    if cell is None:
        return None
    if not cell.strip():
        del record[column]  # an empty cell: the record has no such field
        return None
    try:
        record[column], keys = safe_json.loads(cell)
    except json.JSONDecodeError as e:
        return text("data.cell_invalid_json", "{cell}: invalid JSON at column {column}: {reason}", cell=column,
                    column=e.colno, reason=json_reason(e.msg))
    except safe_json.JsonProblem as e:
        return text("data.cell_problem", "{cell}: {problem}", cell=column, problem=e.text)
    repeated += keys
    return None


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _check_schema(schema: pa.Schema, name: str) -> None:
    """Refuse, before any row is read, a file no record of which could be used: no column a record format needs,
    or a column whose type has no JSON form (bytes, dates, maps, ...)."""
    if not any(c in schema.names for c in RECORD_COLUMNS):
        raise UserError("data.no_record_column", "{name}: no column {wanted} (columns: {columns}); name the "
                        "columns as the fields of a .jsonl record", name=name, wanted=", ".join(RECORD_COLUMNS),
                        columns=", ".join(schema.names)[:200])
    for f in schema:
        if _unsupported(f.type):
            raise UserError("data.column_type", "{name}: column {column!r} has type {type}, which has no JSON form; "
                            "use strings, lists of [question, answer] string pairs (history) or lists of "
                            "{{role, content}} structs", name=name, column=f.name, type=str(f.type))


def _unsupported(t: pa.DataType) -> bool:
    """False for a type whose values are JSON values (strings, numbers, booleans, null, lists, structs).
    Depth needs no check here: Parquet and Arrow IPC readers refuse schemas nested past 64 levels themselves."""
    if pa.types.is_dictionary(t):
        return _unsupported(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _unsupported(t.value_type)
    if pa.types.is_struct(t):
        return any(_unsupported(t.field(i).type) for i in range(t.num_fields))
    plain = (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
             or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t))
    return not plain


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
