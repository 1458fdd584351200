"""Qwen-1 (Qwen-7B-Chat) checkpoints brought in as native Qwen2 folders (the way back is qwen1_export.py).

The weights are never loaded as tensors: each output tensor is a byte range of a source tensor, streamed from file
to file (safetensors_io), so memory stays flat however large the shards are and the dtype (bf16) is kept bit for
bit. The folder's own Python files are never imported: the config is read as JSON (qwen1_config) and the tokenizer
is rebuilt from its `qwen.tiktoken` with the same code as the starter's (tokenizer.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainer_core.common.errors import Text, UserError, text
from trainer_core.models.qwen1_config import (DTYPE_NAMES, EXTRA_TOKENS, FIRST_EXTRA_ID, QWEN1_LAYER_NAMES,
                                              QWEN1_NAMES, Qwen1Shape, layer_shapes, load_qwen1_config,
                                              qwen2_config, top_shapes)
from trainer_core.models.safetensors_io import (Piece, Progress, Tensor, inside, read_header, source_shards,
                                               write_shards)
from trainer_core.common.user_files import not_readable, read_text, stat_user_path

MARKER = "qwen1_import.json"  # written into every imported folder: where it came from, what was not carried
QWEN1_CLASS = "QWenLMHeadModel"
# Buffers some Qwen-1 exports carry; Qwen2 computes them itself.
SKIPPED = re.compile(r".*rotary_emb\.inv_freq$")
QWEN2_LAYER_NAMES = {qwen1: qwen2 for qwen2, qwen1 in QWEN1_LAYER_NAMES.items()}


def is_qwen1_dir(path: str | Path) -> bool:
    """Whether a folder holds a Qwen-1 checkpoint: model_type `qwen`, or an auto_map naming QWenLMHeadModel."""
    try:
        config = json.loads(read_text(Path(path).expanduser() / "config.json"))
    except (OSError, ValueError, UserError):
        return False
    if not isinstance(config, dict):
        return False
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    return config.get("model_type") == "qwen" or QWEN1_CLASS in str(auto_map.get("AutoModelForCausalLM", ""))



def imported_from(model_dir: str | Path) -> Path:
    """The original Qwen-1 folder an imported model came from (its marker file), or a UserError saying why not."""
    try:
        marker = json.loads((Path(model_dir) / MARKER).read_text(encoding="utf-8"))
        source = Path(marker["source"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError("models.not_imported", "model {model} was not imported from a Qwen-1 checkpoint (no "
                        "{marker}); --format qwen1 is for runs of models brought in with import-model",
                        model=str(model_dir), marker=MARKER) from None
    if not source.is_dir():
        raise UserError("models.import_source_gone", "{source}, the Qwen-1 folder model {model} was imported from, "
                        "is gone; --format qwen1 copies its code and tokenizer files",
                        source=str(source), model=str(model_dir))
    return source



def lint_imported_length(model_path: str | Path, max_length: int) -> list:
    """A warning when data.max_length goes past an imported Qwen-1's seq_length: Qwen-1 stretched its context past
    that length with dynamic NTK and logn scaling, which the Qwen2 folder does not carry."""
    from trainer_core.common.lint import Lint

    try:
        marker = json.loads((Path(model_path) / MARKER).read_text(encoding="utf-8"))
        seq_length = int(marker["seq_length"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        return []
    if max_length <= seq_length:
        return []
    return [Lint("warning", "qwen1-seq-length",
                 text("models.qwen1_seq_length", "data.max_length {max_length} is past this imported Qwen-1 "
                      "model's seq_length {seq_length}; its long-context scaling (dynamic NTK, logn) was not "
                      "carried, so positions beyond it are untrained territory: keep data.max_length at or below "
                      "{seq_length}", max_length=max_length, seq_length=seq_length))]


def _rows(t: Tensor, k: int, n: int) -> tuple[Path, int, int]:
    """Byte range of the k-th of n equal row blocks of a row-major tensor."""
    step = t.nbytes // n
    return (t.file, t.start + k * step, step)


def _check(name: str, t: Tensor, shape: list[int], dtype: str) -> None:
    if t.shape != shape:
        raise UserError("models.qwen1_shape_mismatch", "tensor {name} has shape {shape}, but config.json implies "
                        "{expected}; the weights do not match the config", name=name, shape=t.shape, expected=shape)
    if t.dtype != dtype:
        raise UserError("models.qwen1_mixed_dtypes", "tensor {name} is {dtype} while the embedding is {expected}; "
                        "mixed dtypes are not supported", name=name, dtype=t.dtype, expected=dtype)


def qwen2_pieces(name: str, t: Tensor, shape: Qwen1Shape, dtype: str) -> list[Piece]:
    """The Qwen2 tensor(s) one Qwen-1 tensor becomes."""
    h = shape.hidden
    whole = [(t.file, t.start, t.nbytes)]
    top = {QWEN1_NAMES[qwen2]: (qwen2, want) for qwen2, want in top_shapes(shape, with_head=True).items()}
    if name in top:
        target, want = top[name]
        _check(name, t, want, dtype)
        return [Piece(target, dtype, want, whole)]
    match = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if not match or int(match.group(1)) >= shape.layers:
        raise UserError("models.qwen1_unknown_tensor", "tensor {name} is not part of a Qwen-1 model with {layers} "
                        "layers", name=name, layers=shape.layers)
    layer, rest = f"model.layers.{match.group(1)}.", match.group(2)
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        full = [3 * h, h] if kind == "weight" else [3 * h]
        _check(name, t, full, dtype)
        # c_attn's output is [query | key | value], each hidden wide (Qwen-1 splits it the same way).
        return [Piece(f"{layer}self_attn.{p}_proj.{kind}", dtype, [h, *full[1:]], [_rows(t, k, 3)])
                for k, p in enumerate("qkv")]
    if rest not in QWEN2_LAYER_NAMES:
        raise UserError("models.qwen1_no_counterpart", "tensor {name} has no Qwen2 counterpart (a bias where Qwen2 "
                        "has none?)", name=name)
    target = QWEN2_LAYER_NAMES[rest]
    want = layer_shapes(shape)[target]
    _check(name, t, want, dtype)
    return [Piece(layer + target, dtype, want, whole)]


def generation_config(source: Path):
    """The folder's sampling settings, stopping on <|im_end|> as well as <|endoftext|> (Qwen-1 stops only on the
    latter and relies on its chat() to cut at <|im_end|>)."""
    from transformers import GenerationConfig

    from trainer_core.models.tokenizer import SPECIAL_TOKENS

    kept = {}
    try:
        original = json.loads(read_text(source / "generation_config.json"))
        for key in ("do_sample", "top_p", "top_k", "temperature", "repetition_penalty", "max_new_tokens"):
            if isinstance(original.get(key), (int, float)):
                kept[key] = original[key]
    except (OSError, ValueError, AttributeError, UserError):
        pass
    return GenerationConfig(eos_token_id=[SPECIAL_TOKENS["<|im_end|>"], SPECIAL_TOKENS["<|endoftext|>"]],
                            pad_token_id=SPECIAL_TOKENS["<|endoftext|>"], **kept)


@dataclass
class ImportResult:
    """What `import_qwen1` produced."""

    dest: Path
    """The finished Qwen2 folder."""
    n_tensors: int
    """Tensors written (c_attn counts three times)."""
    nbytes: int
    """Weight bytes written."""
    notes: list[Text]
    """What was not carried (long-context scaling), for the user."""
    seq_length: int
    """The source's training length: data.max_length should stay at or below it."""


def _destination(dest: Path, src: Path) -> Path:
    dest = dest.expanduser()
    if os.path.lexists(dest):  # a dangling or looping symlink too: the rename would replace the link
        raise UserError("models.dest_exists", "{dest} already exists; choose a new folder name or remove it first",
                        dest=str(dest))
    if not dest.parent.is_dir():
        raise UserError("models.dest_parent_missing", "{parent} does not exist; create it or choose another "
                        "destination", parent=str(dest.parent))
    real, source = Path(os.path.realpath(dest.parent)) / dest.name, Path(os.path.realpath(src))
    if source in real.parents:
        raise UserError("models.dest_inside_source", "{dest} is inside the source folder {src}; write the imported "
                        "model somewhere else, e.g. models/<name>", dest=str(dest), src=str(src))
    return dest


def _check_source(src: Path) -> Qwen1Shape:
    try:
        st = stat_user_path(src)
    except FileNotFoundError:
        raise UserError("models.qwen1_src_missing", "{src} does not exist: point at the downloaded Qwen-7B-Chat "
                        "folder", src=str(src)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError("models.qwen1_src_not_folder", "{src} is not a folder: point at the downloaded "
                        "Qwen-7B-Chat folder", src=str(src))
    for name in ("config.json", "qwen.tiktoken"):
        file = src / name
        if os.path.lexists(file):
            inside(src, file)  # a symlink loop or a link out of the folder stops here
            problem = not_readable(file, stat_user_path(file))
            if problem:
                raise UserError("models.qwen1_file_not_regular", "{file}: {problem}, not a file of the model",
                                file=str(file), problem=problem)
    if not (src / "config.json").is_file():
        raise UserError("models.qwen1_no_config", "{src} has no config.json: point at the downloaded Qwen-7B-Chat "
                        "folder", src=str(src))
    if not is_qwen1_dir(src):
        raise UserError("models.not_qwen1", "{src} is not a Qwen-1 checkpoint (config.json has no model_type "
                        "'qwen' or {cls}); other models load as they are", src=str(src), cls=QWEN1_CLASS)
    shape = load_qwen1_config(src)
    if not (src / "qwen.tiktoken").is_file():
        raise UserError("models.qwen1_no_vocab", "{src} has no qwen.tiktoken; the download is incomplete",
                        src=str(src))
    return shape


def _plan_shards(src: Path, shape: Qwen1Shape) -> tuple[list[list[Piece]], str]:
    """The Qwen2 pieces, one list per source file in the same order (memory and disk use follow the source's own
    sharding), and the weights' dtype; every tensor the config implies must be there."""
    tensors: dict[str, Tensor] = {}
    for f in source_shards(src):
        tensors.update({name: t for name, t in read_header(f).items() if not SKIPPED.match(name)})
    if "transformer.wte.weight" not in tensors:
        raise UserError("models.qwen1_no_embedding", "{src}: the weights have no transformer.wte.weight; is this a "
                        "Qwen-1 checkpoint?", src=str(src))
    dtype = tensors["transformer.wte.weight"].dtype
    if dtype not in DTYPE_NAMES:
        raise UserError("models.qwen1_dtype", "{src}: weights in {dtype} are not supported (bf16, fp16 or fp32)",
                        src=str(src), dtype=dtype)
    by_file: dict[Path, list[Piece]] = {}
    for name, t in tensors.items():
        by_file.setdefault(t.file, []).extend(qwen2_pieces(name, t, shape, dtype))
    written = {p.name for pieces in by_file.values() for p in pieces}
    per_layer = [*layer_shapes(shape), *(f"self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias"))]
    expected = set(top_shapes(shape, with_head=False))
    expected |= {f"model.layers.{i}.{n}" for i in range(shape.layers) for n in per_layer}
    missing = sorted(expected - written)
    if missing:
        raise UserError("models.qwen1_missing_tensors", "{src}: the weights lack {count} tensor(s) the config "
                        "implies, first {first}", src=str(src), count=len(missing), first=missing[0])
    return list(by_file.values()), dtype


def import_qwen1(source: str | Path, dest: str | Path, progress: Progress | None = None) -> ImportResult:
    """Convert a Qwen-1 folder into a Qwen2 folder at dest (which must not exist yet).

    Written into a hidden temporary folder beside dest and renamed into place when complete.
    """
    from trainer_core.models.tokenizer import load_ranks, qwen1_tokenizer

    src = Path(source).expanduser()
    shape = _check_source(src)
    dest = _destination(Path(dest), src)
    shards, dtype = _plan_shards(src, shape)
    # Before the weights are copied (minutes for a 7B model): a broken qwen.tiktoken is found at once. Only its
    # ranks are read here; the tokenizer (hundreds of MB while built) comes after the weights, so the two peaks
    # never add up.
    load_ranks(src / "qwen.tiktoken")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        total = write_shards(tmp, shards, progress)
        if progress:
            progress(total, total, "config, tokenizer and chat template")
        qwen2_config(shape, DTYPE_NAMES[dtype]).save_pretrained(tmp)
        generation_config(src).save_pretrained(tmp)
        tokenizer = qwen1_tokenizer(src / "qwen.tiktoken", shape.seq_length, EXTRA_TOKENS, FIRST_EXTRA_ID)
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
        marker = {"source": str(src.resolve()), "source_format": "qwen1", "seq_length": shape.seq_length,
                  "dtype": DTYPE_NAMES[dtype], "not_carried": [str(n) for n in shape.notes]}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(dest=dest, n_tensors=sum(len(s) for s in shards), nbytes=total, notes=shape.notes,
                        seq_length=shape.seq_length)
