"""safetensors files read as headers and written by streaming byte ranges, never loading a tensor.

Import (Qwen-1 → Qwen2) and export (back) both rename tensors and cut or join them along their first dimension;
in row-major storage that is a byte range, so each output file is written by copying ranges of the input files,
and memory stays flat however large the shards are.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer_core.common.errors import UserError
from trainer_core.common.user_files import not_readable, read_text, stat_user_path

ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
COPY_CHUNK = 16 * 1024 * 1024
INDEX = "model.safetensors.index.json"

Progress = Callable[[int, int, str], None]
"""progress(bytes_done, bytes_total, what): called as each tensor is written."""


@dataclass
class Tensor:
    """One tensor of a safetensors file, located but not read."""

    file: Path
    """The file it lies in."""
    dtype: str
    """safetensors dtype name, e.g. "BF16"."""
    shape: list[int]
    """Its shape."""
    start: int
    """Absolute byte offset of its data in the file."""
    nbytes: int
    """Length of its data."""


@dataclass
class Piece:
    """An output tensor: the concatenation (along the first dimension) of byte ranges of source tensors."""

    name: str
    """Its name in the output file."""
    dtype: str
    """Its safetensors dtype."""
    shape: list[int]
    """Its shape."""
    parts: list[tuple[Path, int, int]]
    """(file, absolute offset, length) in order."""
    cast: Callable[[], bytes] | None = None
    """Set when the dtype changes: produces the converted bytes (one tensor in memory), replacing `parts`."""

    @property
    def nbytes(self) -> int:
        if self.cast:
            return ELEMENT_BYTES[self.dtype] * math.prod(self.shape)
        return sum(length for _, _, length in self.parts)


def read_header(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (header only), checked against the file's length: every tensor's bytes
    lie inside the file's data and no two tensors share a byte (a copy would otherwise read outside the tensor,
    or write the same bytes as two weights)."""
    st = stat_user_path(path)
    problem = not_readable(path, st)
    if problem:  # opening a FIFO would block, reading a device never end
        raise UserError("models.weights_not_regular", "{file}: {problem}, not a weights file", file=path.name,
                        problem=problem)
    size = st.st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError
            header = json.loads(fh.read(n))
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise ValueError
            tensor = Tensor(path, info["dtype"], list(info["shape"]), 8 + n + begin, end - begin)
            if tensor.dtype in ELEMENT_BYTES and tensor.nbytes != ELEMENT_BYTES[tensor.dtype] * math.prod(tensor.shape):
                raise ValueError
            out[name] = tensor
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise UserError("models.not_safetensors", "{file} is not a valid safetensors file; re-download it",
                        file=path.name) from None
    need = max((t.start + t.nbytes for t in out.values()), default=8 + n)
    if need > size:
        raise UserError("models.truncated_weights", "{file} is truncated ({size} of {need} bytes); re-download it",
                        file=path.name, size=size, need=need)
    ranges = sorted((t.start, t.start + t.nbytes, name) for name, t in out.items() if t.nbytes)
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise UserError("models.overlapping_tensors", "{file}: tensors {first} and {second} share bytes; a "
                            "safetensors file gives each tensor its own range. Re-download it", file=path.name,
                            first=first, second=second)
    return out


TRAINER_PICKLES = re.compile(r"training_args\.bin|rng_state(_\d+)?\.pth|scheduler\.pt|optimizer\.pt")
"""What the Trainer writes into every checkpoint beside the model: its state, not weights."""


def has_pickle_weights(folder: Path) -> bool:
    """Whether the folder holds .bin/.pt/.pth weights, which we never load: unpickling can run code. A
    checkpoint's own Trainer files are not weights (a checkpoint without its safetensors has no weights)."""
    return any(not TRAINER_PICKLES.fullmatch(f.name) for suffix in (".bin", ".pt", ".pth")
               for f in folder.glob(f"*{suffix}"))


def index_shards(folder: Path) -> list[Path] | None:
    """The files `model.safetensors.index.json` names, each checked to exist; None without an index."""
    index = folder / INDEX
    if not index.is_file():
        return None
    try:
        names = json.loads(read_text(index))["weight_map"].values()
        names = dict.fromkeys(sorted(names))  # a name that is not a string fails the sort: TypeError
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise UserError("models.index_broken", "{index} is broken; re-download the model", index=INDEX) from None
    for name in names:
        # The index names shard files beside it, never a path elsewhere ("../../etc/passwd", "/etc/passwd").
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
            raise UserError("models.index_outside", "{index} names {name}, which is not a file in the model "
                            "folder; re-download the model", index=INDEX, name=repr(name)[:200])
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError("models.index_missing_files", "{index} lists {count} missing file(s), first {first}; the "
                        "download is incomplete", index=INDEX, count=len(missing), first=missing[0])
    return files


def source_shards(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, sorted by name, each inside the folder (a symlink pointing out of
    it is refused: a conversion reads only what the folder holds); .bin-only folders are refused."""
    try:
        files = index_shards(folder)
    except UserError as e:
        raise UserError("models.folder_problem", "{folder}: {problem}", folder=str(folder), problem=e.text) from None
    files = files or sorted(folder.glob("*.safetensors"))
    for f in files:
        inside(folder, f)
    if files:
        return files
    if has_pickle_weights(folder):
        raise UserError("models.qwen1_pickle_only", "{folder} only has pickle weights (.bin/.pt); we load "
                        "safetensors only because pickle files can run code. Download the model's .safetensors "
                        "files (Qwen-7B-Chat publishes them), or convert the .bin files to safetensors first",
                        folder=str(folder))
    raise UserError("models.no_weights", "{folder} has no weights (*.safetensors)", folder=str(folder))


def inside(folder: Path, path: Path) -> Path:
    """`path` resolved, refused unless it lies inside `folder` (resolved too): symlinks and `..` cannot lead out."""
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if real != root and root not in real.parents:
        raise UserError("models.outside_source", "{path} leads to {target}, outside the folder {folder}; copy the "
                        "file into the folder instead of linking it", path=str(path), target=str(real),
                        folder=str(folder))
    return real


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """Every tensor of a model folder's safetensors files (headers only)."""
    out: dict[str, Tensor] = {}
    for f in source_shards(folder):
        out.update(read_header(f))
    return out


def _copy_ranges(parts: list[tuple[Path, int, int]], out) -> None:
    for file, start, length in parts:
        with open(file, "rb") as src:
            src.seek(start)
            left = length
            while left:
                chunk = src.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise UserError("models.ended_early", "{file} ended early; re-download it", file=file.name)
                out.write(chunk)
                left -= len(chunk)


def write_safetensors(dest: Path, pieces: list[Piece], done: int, total: int, progress: Progress | None) -> int:
    """Write one safetensors file by streaming each piece's byte ranges; returns the updated byte count."""
    header, offset = {}, 0
    for p in pieces:
        header[p.name] = {"dtype": p.dtype, "shape": p.shape, "data_offsets": [offset, offset + p.nbytes]}
        offset += p.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors' own writer does
    with open(dest, "wb") as out:
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        for p in pieces:
            if p.cast:
                out.write(p.cast())
            else:
                _copy_ranges(p.parts, out)
            done += p.nbytes
            if progress:
                progress(done, total, p.name)
        out.flush()
        os.fsync(out.fileno())
    return done


def write_shards(folder: Path, shards: list[list[Piece]], progress: Progress | None) -> int:
    """Write each list of pieces as one safetensors file in folder (named as `save_pretrained` names them), plus the
    index when there is more than one; returns the bytes written."""
    total = sum(p.nbytes for pieces in shards for p in pieces)
    done, weight_map = 0, {}
    sharded = len(shards) > 1
    for i, pieces in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors" if sharded else "model.safetensors"
        done = write_safetensors(folder / name, pieces, done, total, progress)
        weight_map.update({p.name: name for p in pieces})
    if sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return total
