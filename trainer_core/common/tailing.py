"""Cheap reads of growing files: the last N lines of a log, and new JSONL rows since an offset.

Cost is proportional to what is read, never to the file size: a 1 GB train.log tails in milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BLOCK = 64 * 1024


def read_tail_bytes(path: Path, n_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_bytes))
            return f.read(n_bytes)
    except FileNotFoundError:
        return b""


def tail_lines(path: Path, n: int = 200, max_bytes: int = 8 * 1024 * 1024) -> list[str]:
    """The last n complete-or-final lines, read backwards block by block."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos, chunks, newlines = end, [], 0
        while pos > 0 and newlines <= n and end - pos < max_bytes:
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    lines = data.decode("utf-8", "replace").splitlines()
    if pos > 0 and lines:
        lines = lines[1:]  # the first line may start mid-way
    return lines[-n:] if n else []


def read_new_rows(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """JSON rows appended since `offset`; an incomplete last line is left for the next call."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    rows = []
    for line in data[: end + 1].splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            # A damaged line (torn write, NUL bytes after a crash, bad UTF-8) never hides the ones after it;
            # json.loads raises UnicodeDecodeError, a ValueError, for undecodable bytes.
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, offset + end + 1


def read_all_rows(path: Path) -> list[dict[str, Any]]:
    return read_new_rows(path, 0)[0]
