"""Dataset files the dashboard keeps under ``data/uploads``: uploaded bytes under a safe name, and datasets derived
from another (subset.py), always as new files written atomically, never over the user's own file."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path

from trainer_core.common import paths
from trainer_core.data.dataset import EXTENSIONS
from trainer_core.data.validate import CONTROL
from trainer_core.common.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def safe_upload_name(name: str) -> str:
    """A file name safe to create under the uploads folder: the basename only, letters/digits/CJK/._- kept,
    everything else replaced by "_", no "..", no leading dot. Raises UserError unless it ends in one of EXTENSIONS."""
    if CONTROL.search(name) or "\t" in name or "\n" in name or "\r" in name:
        bad = next(c for c in name if c in "\t\n\r" or CONTROL.match(c))
        raise UserError("data.name_control_character", "{name}: the file name holds the control character "
                        "U+{codepoint:04X}; rename the file", name=repr(name), codepoint=ord(bad))
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    ext = "." + ext.lower() if dot else ""
    if ext not in EXTENSIONS:
        raise UserError("data.upload_type", "{name}: uploads must be .json, .jsonl, .parquet or .csv files",
                        name=repr(base or name))
    return safe_stem(stem) + ext


def safe_stem(stem: str) -> str:
    """A file-name stem with only letters, digits, CJK and ._- ("upload" when nothing is left)."""
    stem = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem))
    return re.sub(r"\.{2,}", ".", stem).strip("._-")[:100] or "upload"


def store_upload(data: bytes, name: str) -> Path:
    """Write uploaded bytes under ``paths.UPLOADS_DIR`` as ``<safe stem>-<content hash><ext>``, atomically.
    The same bytes under the same name land on the same file; different bytes never overwrite each other."""
    safe = safe_upload_name(name)
    stem, ext = os.path.splitext(safe)
    target = Path(paths.UPLOADS_DIR) / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{ext}"
    with atomic_file(target) as f:
        f.write(data)
    return target


@contextmanager
def atomic_file(target: Path):
    """A binary file to write that appears at ``target`` whole when the block ends, or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
