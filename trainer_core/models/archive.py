"""A model folder (an export or final/: safetensors, tokenizer, chat template, persona.json) as a zip stream, for
downloading it from the dashboard.

The zip is produced while it is sent: `zip_chunks` reads each file in 1 MiB blocks and yields the archive's bytes
as they are made, so memory stays flat and nothing is written to disk whatever the size of the weights (a zip file
written next to the folder first would double the model's footprint until deleted). Members are stored, not
compressed: safetensors do not shrink, and deflating gigabytes would only cost minutes. The output is not
seekable, so `zipfile` writes each member's CRC and sizes in a data descriptor after its bytes; every reader
(Python's zipfile, unzip, 7-Zip, the OS file managers) accepts that. ZIP64 headers are always written, so members
over 4 GiB need nothing special.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

from trainer_core.common.errors import UserError
from trainer_core.runs import protocol

CHUNK = 1024 * 1024


def model_files(folder: Path) -> list[Path]:
    """What the archive holds: every file in the folder (links followed), sorted, completion marker left out."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != protocol.COMPLETE_MARKER)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in model_files(folder))


class _Pipe(io.RawIOBase):
    """A write-only, unseekable file that keeps what `zipfile` wrote until `take` hands it on."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def require_complete(folder: Path) -> None:
    if not (Path(folder) / protocol.COMPLETE_MARKER).is_file():
        raise UserError("models.archive_incomplete", "{folder} is not a complete model folder (no {marker}); export "
                        "it again", folder=str(folder), marker=protocol.COMPLETE_MARKER)


def zip_chunks(folder: Path, top: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """The zip of a complete model folder, every file under `top/`, as a stream of byte blocks of about `chunk`
    bytes each (never more than one block plus a header is held)."""
    folder = Path(folder)
    require_complete(folder)
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in model_files(folder):
            info = zipfile.ZipInfo.from_file(path, f"{top}/{path.relative_to(folder).as_posix()}")
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as out:
                while block := src.read(chunk):
                    out.write(block)
                    yield pipe.take()
            if tail := pipe.take():
                yield tail
    yield pipe.take()  # the central directory, written when the ZipFile closed


def model_folders(run: Path) -> list[Path]:
    """A run's complete model folders that can be downloaded: final/ first, then its exports, newest first."""
    exports = [p for p in (run / "exports").glob("*") if p.is_dir() and (p / protocol.COMPLETE_MARKER).is_file()]
    exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return ([run / protocol.FINAL] if protocol.has_final(run) else []) + exports
