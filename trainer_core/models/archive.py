"""One zip file of a model folder (an export or final/: safetensors, tokenizer, chat template, persona.json), for
downloading it from the dashboard.

The archive is written next to the folder (`exports/checkpoint-N.zip`, `final.zip`) file by file in 1 MiB chunks,
so memory stays flat whatever the size of the weights; members are stored, not compressed (safetensors do not
shrink and deflating gigabytes would only cost minutes). It appears by rename once complete and is reused until the
folder is written again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.runs import protocol as rd

CHUNK = 1024 * 1024


def archive_path(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.zip")


def folder_bytes(folder: Path) -> int:
    """What the archive will hold: the size of every file in the folder (links followed), marker left out."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != rd.COMPLETE_MARKER)


def _fresh(zip_path: Path, folder: Path) -> bool:
    try:
        return zip_path.stat().st_mtime >= (folder / rd.COMPLETE_MARKER).stat().st_mtime
    except FileNotFoundError:
        return False


def archive_model(folder: Path, top: str) -> Path:
    """`<folder>.zip` holding every file of a complete model folder under `top/`; written now unless an archive
    newer than the folder's completion marker is there already."""
    folder = Path(folder)
    if not (folder / rd.COMPLETE_MARKER).is_file():
        raise UserError("models.archive_incomplete", "{folder} is not a complete model folder (no {marker}); export "
                        "it again", folder=str(folder), marker=rd.COMPLETE_MARKER)
    dest = archive_path(folder)
    if _fresh(dest, folder):
        return dest
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in sorted(folder.rglob("*")):
                if not path.is_file() or path.name == rd.COMPLETE_MARKER:
                    continue
                info = zipfile.ZipInfo.from_file(path, f"{top}/{path.relative_to(folder).as_posix()}")
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def model_folders(run: Path) -> list[Path]:
    """A run's complete model folders that can be downloaded: final/ first, then its exports, newest first."""
    exports = [p for p in (run / "exports").glob("*") if p.is_dir() and (p / rd.COMPLETE_MARKER).is_file()]
    exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return ([run / rd.FINAL] if rd.has_final(run) else []) + exports
