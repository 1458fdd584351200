"""Fine-tuned weights of an imported Qwen-1 model sent back in Qwen-1's names, dtype and files (the inverse of
qwen1_import.py), so Qwen's own code and tools load the result.

Like the import, tensors are streamed as byte ranges (safetensors_io); q/k/v are joined back into `c_attn`. Only
a dtype change (fp32 from `export` → the original's bf16) holds one tensor in memory at a time.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from trainer_core.common.errors import UserError
from trainer_core.models.qwen1_config import (DTYPE_NAMES, QWEN1_LAYER_NAMES, QWEN1_NAMES, Qwen1Shape, layer_shapes,
                                              load_qwen1_config, top_shapes)
from trainer_core.models.qwen1_import import is_qwen1_dir
from trainer_core.models.safetensors_io import INDEX, Piece, Progress, Tensor, read_tensors, write_shards
from trainer_core.common.atomic import replace_dir


def _cast(parts: list[tuple[Path, int, int]], source_dtype: str, shape: list[int], dtype: str) -> Callable[[], bytes]:
    def run() -> bytes:
        import torch

        names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
        raw = bytearray()
        for file, start, length in parts:
            with open(file, "rb") as fh:
                fh.seek(start)
                raw += fh.read(length)
        tensor = torch.frombuffer(raw, dtype=names[source_dtype]).reshape(shape).to(names[dtype])
        return tensor.contiguous().view(torch.uint8).numpy().tobytes()

    return run


class _Source:
    """The Qwen2 folder's tensors, looked up by name with the shape the original Qwen-1 config implies."""

    def __init__(self, tensors: dict[str, Tensor], dtype: str):
        self.tensors, self.dtype = tensors, dtype

    def get(self, name: str, want: list[int]) -> Tensor:
        if name not in self.tensors:
            raise UserError("models.export_missing_tensor", "the fine-tuned weights lack {name}; they do not come "
                            "from this Qwen-1 model", name=name)
        if self.tensors[name].shape != want:
            raise UserError("models.export_shape_mismatch", "tensor {name} has shape {shape}, the original Qwen-1 "
                            "config implies {expected}; the run was not trained from this model", name=name,
                            shape=self.tensors[name].shape, expected=want)
        return self.tensors[name]

    def piece(self, name: str, sources: list[Tensor], out_shape: list[int]) -> Piece:
        parts = [(t.file, t.start, t.nbytes) for t in sources]
        kinds = {t.dtype for t in sources}
        if kinds == {self.dtype}:
            return Piece(name, self.dtype, out_shape, parts)
        if len(kinds) != 1 or not kinds <= set(DTYPE_NAMES):
            raise UserError("models.export_dtypes", "tensor {name}: unsupported dtypes {dtypes}", name=name,
                            dtypes=sorted(kinds))
        return Piece(name, self.dtype, out_shape, parts, cast=_cast(parts, kinds.pop(), out_shape, self.dtype))


def qwen1_pieces(tensors: dict[str, Tensor], shape: Qwen1Shape, dtype: str) -> list[Piece]:
    """The Qwen-1 tensors, in Qwen-1 names and the given dtype, built from a Qwen2 folder's tensors."""
    src = _Source(tensors, dtype)
    h = shape.hidden
    out = [src.piece(QWEN1_NAMES[n], [src.get(n, want)], want)
           for n, want in top_shapes(shape, with_head=False).items()]
    for i in range(shape.layers):
        layer = f"model.layers.{i}."
        for kind, row in (("weight", [h]), ("bias", [])):
            qkv = [src.get(f"{layer}self_attn.{p}_proj.{kind}", [h, *row]) for p in "qkv"]
            out.append(src.piece(f"transformer.h.{i}.attn.c_attn.{kind}", qkv, [3 * h, *row]))
        for name, want in layer_shapes(shape).items():
            out.append(src.piece(f"transformer.h.{i}.{QWEN1_LAYER_NAMES[name]}", [src.get(layer + name, want)], want))
    return out


def _copy_code_and_config(original: Path, tmp: Path) -> None:
    """The original folder's own files (config, Python, qwen.tiktoken), never its weights."""
    weights = {INDEX} | {f.name for f in original.glob("*.safetensors")}
    for f in original.iterdir():
        pickles = f.suffix in (".bin", ".pt", ".pth")
        if f.is_file() and f.name not in weights and not pickles:
            shutil.copy2(f, tmp / f.name)


def _replace_dir(tmp: Path, dest: Path) -> None:
    tmp.chmod(0o755)  # mkdtemp makes it private
    replace_dir(tmp, dest)


def export_qwen1(qwen2_dir: str | Path, original: str | Path, dest: str | Path,
                 progress: Progress | None = None) -> Path:
    """Write qwen2_dir's weights back in Qwen-1 names and the original's dtype into dest, next to copies of the
    original folder's own files (config, Python, qwen.tiktoken), so Qwen's own code loads the result.

    dest is replaced as a whole: written beside it and renamed into place.
    """
    qwen2_dir, original, dest = Path(qwen2_dir), Path(original), Path(dest)
    if not is_qwen1_dir(original):
        raise UserError("models.export_original_not_qwen1", "{original} is not a Qwen-1 checkpoint (any more); "
                        "export --format qwen1 needs the folder the model was imported from", original=str(original))
    shape = load_qwen1_config(original)
    originals = read_tensors(original)
    dtype = originals["transformer.wte.weight"].dtype if "transformer.wte.weight" in originals else "BF16"
    tensors = read_tensors(qwen2_dir)
    pieces = qwen1_pieces(tensors, shape, dtype)
    by_file: dict[Path, list[Piece]] = {t.file: [] for t in tensors.values()}
    for p in pieces:  # each tensor goes where (the first of) its sources lies: the sharding follows the input's
        by_file[p.parts[0][0]].append(p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _copy_code_and_config(original, tmp)
        write_shards(tmp, [ps for ps in by_file.values() if ps], progress)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
