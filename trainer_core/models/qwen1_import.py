"""Qwen-1 (Qwen-7B-Chat) checkpoints brought in as native Qwen2 folders, and fine-tuned weights sent back.

Up to its training length (`seq_length`), Qwen-1 computes exactly what Qwen2 computes: RMSNorm, half-split RoPE,
q/k/v with bias and o_proj without, SwiGLU. Its dynamic-NTK and logn scaling only act past `seq_length`, so they are
not carried. Importing therefore renames tensors and splits the fused `c_attn` into q/k/v; nothing is recomputed.

The weights are never loaded as tensors: each output tensor is a byte range of a source tensor (or, going back, a
concatenation of such ranges), streamed from file to file, so memory stays flat however large the shards are and
the dtype (bf16) is kept bit for bit. The folder's own Python files are never imported: the config is read as JSON
and the tokenizer is rebuilt from its `qwen.tiktoken` with the same code as the starter's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trainer_core.errors import UserError

MARKER = "qwen1_import.json"  # written into every imported folder: where it came from, what was not carried
QWEN1_CLASS = "QWenLMHeadModel"
EXTRA_TOKENS = 205  # Qwen-1's <|extra_0|> ... <|extra_204|>, ids 151646 ... 151850, after the three named ones
FIRST_EXTRA_ID = 151646
ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
COPY_CHUNK = 16 * 1024 * 1024
# Buffers some Qwen-1 exports carry; Qwen2 computes them itself.
SKIPPED = re.compile(r".*rotary_emb\.inv_freq$")

Progress = Callable[[int, int, str], None]
"""progress(bytes_done, bytes_total, what): called as each tensor is written."""


def is_qwen1_dir(path: str | Path) -> bool:
    """Whether a folder holds a Qwen-1 checkpoint: model_type `qwen`, or an auto_map naming QWenLMHeadModel."""
    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(config, dict):
        return False
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    return config.get("model_type") == "qwen" or QWEN1_CLASS in str(auto_map.get("AutoModelForCausalLM", ""))


# ---------------------------------------------------------------------------------------------------------- config


@dataclass
class Qwen1Shape:
    """The Qwen-1 config fields the conversion uses, checked to be representable as Qwen2."""

    hidden: int
    """Model width (`hidden_size`, or `n_embd` in older configs)."""
    heads: int
    """Attention heads (`num_attention_heads` / `n_head`); Qwen-1 has no grouped KV, so KV heads = heads."""
    layers: int
    """Transformer blocks (`num_hidden_layers` / `n_layer`)."""
    mlp: int
    """SwiGLU width: `ffn_hidden_size // 2` (Qwen-1 counts both input projections)."""
    vocab: int
    """Embedding rows (`padded_vocab_size`)."""
    seq_length: int
    """Training length; positions past it used dynamic NTK and logn scaling, which Qwen2 does not have."""
    rope_base: float
    """`rotary_emb_base`."""
    eps: float
    """`layer_norm_epsilon`."""
    tied: bool
    """`tie_word_embeddings`: Qwen-7B-Chat keeps a separate lm_head."""
    notes: list[str] = field(default_factory=list)
    """What is not carried over, for the user to read."""


def _int(config: dict, *names: str) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise UserError(f"config.json: {names[0]} is missing or not a positive integer; is this a Qwen-1 checkpoint?")


def read_qwen1_config(config: dict) -> Qwen1Shape:
    """Check a Qwen-1 config.json (as a dict) and return its shape; a field Qwen2 cannot represent is refused."""

    def refuse(name: str, why: str) -> UserError:
        return UserError(f"config.json: {name}={config.get(name)!r} cannot be imported as Qwen2 ({why})")

    if config.get("rotary_pct", 1.0) != 1.0:
        raise refuse("rotary_pct", "Qwen2 rotates every dimension of each head; only 1.0 is supported")
    if config.get("pos_emb", "rotary") != "rotary":
        raise refuse("pos_emb", "only rotary position embeddings exist in Qwen2")
    if config.get("activation", "swiglu") != "swiglu":
        raise refuse("activation", "Qwen2's MLP is SwiGLU")
    if config.get("no_bias", True) is not True:
        raise refuse("no_bias", "Qwen2 has biases on q/k/v only, not on the output or MLP projections")
    if config.get("apply_residual_connection_post_layernorm", False):
        raise refuse("apply_residual_connection_post_layernorm", "Qwen2 is pre-norm")
    hidden = _int(config, "hidden_size", "n_embd")
    heads = _int(config, "num_attention_heads", "n_head")
    if hidden % heads:
        raise refuse("num_attention_heads", f"hidden_size {hidden} is not a multiple of it")
    if config.get("kv_channels", hidden // heads) != hidden // heads:
        raise refuse("kv_channels", f"Qwen2's head size is hidden_size / num_attention_heads = {hidden // heads}")
    ffn = _int(config, "ffn_hidden_size")
    if ffn % 2:
        raise refuse("ffn_hidden_size", "it must be even: half of it is the SwiGLU width")
    vocab = _int(config, "padded_vocab_size", "vocab_size")
    if vocab < FIRST_EXTRA_ID + EXTRA_TOKENS:
        raise refuse("padded_vocab_size", f"Qwen's tokenizer needs {FIRST_EXTRA_ID + EXTRA_TOKENS} rows")
    base = config.get("rotary_emb_base", 10000)
    eps = config.get("layer_norm_epsilon", 1e-6)
    if not isinstance(base, (int, float)) or base <= 0:
        raise refuse("rotary_emb_base", "it must be a positive number")
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise refuse("layer_norm_epsilon", "it must be a positive number")
    seq_length = _int(config, "seq_length")
    notes = []
    scaled = [n for n in ("use_dynamic_ntk", "use_logn_attn") if config.get(n)]
    if scaled:
        notes.append(f"{' and '.join(scaled)} (long-context scaling past seq_length {seq_length}) is not carried: "
                     f"keep data.max_length at or below {seq_length}")
    return Qwen1Shape(hidden=hidden, heads=heads, layers=_int(config, "num_hidden_layers", "n_layer"), mlp=ffn // 2,
                      vocab=vocab, seq_length=seq_length, rope_base=float(base), eps=float(eps),
                      tied=bool(config.get("tie_word_embeddings", False)), notes=notes)


def qwen2_config(shape: Qwen1Shape, dtype: str):
    from transformers import Qwen2Config

    from trainer_core.models.starter import SPECIAL_TOKENS

    return Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.seq_length,
        rope_theta=shape.rope_base,
        rms_norm_eps=shape.eps,
        tie_word_embeddings=shape.tied,
        hidden_act="silu",
        attention_dropout=0.0,
        use_sliding_window=False,
        bos_token_id=SPECIAL_TOKENS["<|endoftext|>"],
        eos_token_id=SPECIAL_TOKENS["<|im_end|>"],
        dtype=dtype,
    )


# ------------------------------------------------------------------------------------------------ safetensors bytes


@dataclass
class Tensor:
    """One tensor of a safetensors file, located but not read."""

    file: Path
    dtype: str
    shape: list[int]
    start: int
    """Absolute byte offset of its data in the file."""
    nbytes: int


def read_header(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (header only), checked against the file's length."""
    size = path.stat().st_size
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
            tensor = Tensor(path, info["dtype"], list(info["shape"]), 8 + n + begin, end - begin)
            if tensor.dtype in ELEMENT_BYTES and tensor.nbytes != ELEMENT_BYTES[tensor.dtype] * math.prod(tensor.shape):
                raise ValueError
            out[name] = tensor
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path.name} is not a valid safetensors file; re-download it") from None
    if any(t.start + t.nbytes > size for t in out.values()):
        raise UserError(f"{path.name} is truncated; re-download it")
    return out


@dataclass
class Piece:
    """An output tensor: the concatenation (along the first dimension) of byte ranges of source tensors."""

    name: str
    dtype: str
    shape: list[int]
    parts: list[tuple[Path, int, int]]
    """(file, absolute offset, length) in order."""
    cast: Callable[[], bytes] | None = None
    """Set when the dtype changes: produces the converted bytes (one tensor in memory), replacing `parts`."""

    @property
    def nbytes(self) -> int:
        if self.cast:
            return ELEMENT_BYTES[self.dtype] * math.prod(self.shape)
        return sum(length for _, _, length in self.parts)


def _copy_ranges(parts: list[tuple[Path, int, int]], out) -> None:
    for file, start, length in parts:
        with open(file, "rb") as src:
            src.seek(start)
            left = length
            while left:
                chunk = src.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise UserError(f"{file.name} ended early; re-download it")
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


def source_shards(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, sorted by name; .bin-only folders are refused."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{folder}: {index.name} is broken; re-download the model") from None
        files = [folder / n for n in dict.fromkeys(sorted(names))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{folder}: {index.name} lists {len(missing)} missing file(s), first {missing[0]}; "
                            "the download is incomplete")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise UserError(f"{folder} only has pickle weights (.bin/.pt); we load safetensors only because pickle files "
                        "can run code. Download the model's .safetensors files (Qwen-7B-Chat publishes them), or "
                        "convert the .bin files to safetensors first")
    raise UserError(f"{folder} has no weights (*.safetensors)")


# ------------------------------------------------------------------------------------------------------ the names


def _rows(t: Tensor, k: int, n: int) -> tuple[Path, int, int]:
    """Byte range of the k-th of n equal row blocks of a row-major tensor."""
    step = t.nbytes // n
    return (t.file, t.start + k * step, step)


def _check(name: str, t: Tensor, shape: list[int], dtype: str) -> None:
    if t.shape != shape:
        raise UserError(f"tensor {name} has shape {t.shape}, but config.json implies {shape}; "
                        "the weights do not match the config")
    if t.dtype != dtype:
        raise UserError(f"tensor {name} is {t.dtype} while the embedding is {dtype}; mixed dtypes are not supported")


def qwen2_pieces(name: str, t: Tensor, shape: Qwen1Shape, dtype: str) -> list[Piece]:
    """The Qwen2 tensor(s) one Qwen-1 tensor becomes."""
    h, m, v = shape.hidden, shape.mlp, shape.vocab
    whole = [(t.file, t.start, t.nbytes)]
    if name == "transformer.wte.weight":
        _check(name, t, [v, h], dtype)
        return [Piece("model.embed_tokens.weight", dtype, [v, h], whole)]
    if name == "lm_head.weight":
        _check(name, t, [v, h], dtype)
        return [Piece("lm_head.weight", dtype, [v, h], whole)]
    if name == "transformer.ln_f.weight":
        _check(name, t, [h], dtype)
        return [Piece("model.norm.weight", dtype, [h], whole)]
    match = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if not match or int(match.group(1)) >= shape.layers:
        raise UserError(f"tensor {name} is not part of a Qwen-1 model with {shape.layers} layers")
    layer, rest = f"model.layers.{match.group(1)}.", match.group(2)
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        full = [3 * h, h] if kind == "weight" else [3 * h]
        _check(name, t, full, dtype)
        # c_attn's output is [query | key | value], each hidden wide (Qwen-1 splits it the same way).
        return [Piece(f"{layer}self_attn.{p}_proj.{kind}", dtype, [h, *full[1:]], [_rows(t, k, 3)])
                for k, p in enumerate("qkv")]
    simple = {
        "ln_1.weight": ("input_layernorm.weight", [h]),
        "ln_2.weight": ("post_attention_layernorm.weight", [h]),
        "attn.c_proj.weight": ("self_attn.o_proj.weight", [h, h]),
        # Qwen-1's MLP is c_proj(w1(x) * silu(w2(x))); Qwen2's is down(silu(gate(x)) * up(x)).
        "mlp.w1.weight": ("mlp.up_proj.weight", [m, h]),
        "mlp.w2.weight": ("mlp.gate_proj.weight", [m, h]),
        "mlp.c_proj.weight": ("mlp.down_proj.weight", [h, m]),
    }
    if rest not in simple:
        raise UserError(f"tensor {name} has no Qwen2 counterpart (a bias where Qwen2 has none?)")
    target, want = simple[rest]
    _check(name, t, want, dtype)
    return [Piece(layer + target, dtype, want, whole)]


QWEN1_NAMES = {
    "model.embed_tokens.weight": "transformer.wte.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "lm_head.weight": "lm_head.weight",
}
QWEN1_LAYER_NAMES = {
    "input_layernorm.weight": "ln_1.weight",
    "post_attention_layernorm.weight": "ln_2.weight",
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    "mlp.up_proj.weight": "mlp.w1.weight",
    "mlp.gate_proj.weight": "mlp.w2.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
}


# ---------------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(vocab: Path, seq_length: int):
    """Qwen2's fast tokenizer from the folder's qwen.tiktoken (the starter's builder, or its cache for the same
    file), plus Qwen-1's 205 `<|extra_N|>` tokens at their ids."""
    from transformers import PreTrainedTokenizerFast

    from trainer_core import paths

    from trainer_core.models import starter

    cached = paths.CACHE_DIR / starter.TOKENIZER_CACHE_NAME / "tokenizer.json"
    if cached.exists() and hashlib.sha256(vocab.read_bytes()).hexdigest() == starter.VOCAB_SHA256:
        tok = PreTrainedTokenizerFast.from_pretrained(cached.parent)
    else:
        tok = starter.build_qwen_tokenizer(vocab)
    extras = [f"<|extra_{i}|>" for i in range(EXTRA_TOKENS)]
    tok.add_special_tokens({"additional_special_tokens": extras}, replace_additional_special_tokens=False)
    if tok.convert_tokens_to_ids(extras[0]) != FIRST_EXTRA_ID or len(tok) != FIRST_EXTRA_ID + EXTRA_TOKENS:
        raise UserError(f"{vocab} does not have Qwen-1's 151,643 ranks; is it Qwen's qwen.tiktoken?")
    tok.model_max_length = seq_length
    return tok


def generation_config(source: Path):
    """The folder's sampling settings, stopping on <|im_end|> as well as <|endoftext|> (Qwen-1 stops only on the
    latter and relies on its chat() to cut at <|im_end|>)."""
    from transformers import GenerationConfig

    from trainer_core.models.starter import SPECIAL_TOKENS

    kept = {}
    try:
        original = json.loads((source / "generation_config.json").read_text(encoding="utf-8"))
        for key in ("do_sample", "top_p", "top_k", "temperature", "repetition_penalty", "max_new_tokens"):
            if isinstance(original.get(key), (int, float)):
                kept[key] = original[key]
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        pass
    return GenerationConfig(eos_token_id=[SPECIAL_TOKENS["<|im_end|>"], SPECIAL_TOKENS["<|endoftext|>"]],
                            pad_token_id=SPECIAL_TOKENS["<|endoftext|>"], **kept)


# ------------------------------------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    """What `import_qwen1` produced."""

    dest: Path
    """The finished Qwen2 folder."""
    n_tensors: int
    """Tensors written (c_attn counts three times)."""
    nbytes: int
    """Weight bytes written."""
    notes: list[str]
    """What was not carried (long-context scaling), for the user."""
    seq_length: int
    """The source's training length: data.max_length should stay at or below it."""


def _destination(dest: Path) -> Path:
    dest = dest.expanduser()
    if dest.exists():
        raise UserError(f"{dest} already exists; choose a new folder name or remove it first")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent} does not exist; create it or choose another destination")
    return dest


def import_qwen1(source: str | Path, dest: str | Path, progress: Progress | None = None) -> ImportResult:
    """Convert a Qwen-1 folder into a Qwen2 folder at dest (which must not exist yet).

    Written into a hidden temporary folder beside dest and renamed into place when complete.
    """
    src = Path(source).expanduser()
    if not (src / "config.json").is_file():
        raise UserError(f"{src} has no config.json: point at the downloaded Qwen-7B-Chat folder")
    if not is_qwen1_dir(src):
        raise UserError(f"{src} is not a Qwen-1 checkpoint (config.json has no model_type 'qwen' or "
                        f"{QWEN1_CLASS}); other models load as they are")
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{src}: config.json is broken ({e})") from None
    shape = read_qwen1_config(config)
    vocab = src / "qwen.tiktoken"
    if not vocab.is_file():
        raise UserError(f"{src} has no qwen.tiktoken; the download is incomplete")
    dest = _destination(Path(dest))
    tensors: dict[str, Tensor] = {}
    for f in source_shards(src):
        tensors.update({name: t for name, t in read_header(f).items() if not SKIPPED.match(name)})
    if "transformer.wte.weight" not in tensors:
        raise UserError(f"{src}: the weights have no transformer.wte.weight; is this a Qwen-1 checkpoint?")
    dtype = tensors["transformer.wte.weight"].dtype
    if dtype not in DTYPE_NAMES:
        raise UserError(f"{src}: weights in {dtype} are not supported (bf16, fp16 or fp32)")
    # One output file per source file, in the same order: memory and disk use follow the source's own sharding.
    by_file: dict[Path, list[Piece]] = {}
    for name, t in tensors.items():
        by_file.setdefault(t.file, []).extend(qwen2_pieces(name, t, shape, dtype))
    written = {p.name for pieces in by_file.values() for p in pieces}
    expected = set(QWEN1_NAMES) - ({"lm_head.weight"} if shape.tied else set())
    expected |= {f"model.layers.{i}.{n}" for i in range(shape.layers)
                 for n in [*QWEN1_LAYER_NAMES, *(f"self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias"))]}
    missing = sorted(expected - written)
    if missing:
        raise UserError(f"{src}: the weights lack {len(missing)} tensor(s) the config implies, first {missing[0]}")

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        total = sum(p.nbytes for pieces in by_file.values() for p in pieces)
        done, weight_map = 0, {}
        sharded = len(by_file) > 1
        for i, (file, pieces) in enumerate(by_file.items(), 1):
            out_name = f"model-{i:05d}-of-{len(by_file):05d}.safetensors" if sharded else "model.safetensors"
            done = write_safetensors(tmp / out_name, pieces, done, total, progress)
            weight_map.update({p.name: out_name for p in pieces})
        if sharded:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if progress:
            progress(done, total, "config, tokenizer and chat template")
        qwen2_config(shape, DTYPE_NAMES[dtype]).save_pretrained(tmp)
        generation_config(src).save_pretrained(tmp)
        build_tokenizer(vocab, shape.seq_length).save_pretrained(tmp, save_jinja_files=False)
        marker = {"source": str(src.resolve()), "source_format": "qwen1", "seq_length": shape.seq_length,
                  "dtype": DTYPE_NAMES[dtype], "not_carried": shape.notes}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(dest=dest, n_tensors=len(written), nbytes=total, notes=shape.notes,
                        seq_length=shape.seq_length)


def lint_imported_length(model_path: str | Path, max_length: int) -> list:
    """A warning when data.max_length goes past an imported Qwen-1's seq_length: Qwen-1 stretched its context past
    that length with dynamic NTK and logn scaling, which the Qwen2 folder does not carry."""
    from trainer_core.config.ds_config import Lint

    try:
        marker = json.loads((Path(model_path) / MARKER).read_text(encoding="utf-8"))
        seq_length = int(marker["seq_length"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        return []
    if max_length <= seq_length:
        return []
    return [Lint("warning", "qwen1-seq-length",
                 f"data.max_length {max_length} is past this imported Qwen-1 model's seq_length {seq_length}; its "
                 "long-context scaling (dynamic NTK, logn) was not carried, so positions beyond it are untrained "
                 f"territory: keep data.max_length at or below {seq_length}")]


# -------------------------------------------------------------------------------------------------------- export


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


def qwen1_pieces(tensors: dict[str, Tensor], shape: Qwen1Shape, dtype: str) -> list[Piece]:
    """The Qwen-1 tensors, in Qwen-1 names and the given dtype, built from a Qwen2 folder's tensors."""

    def get(name: str, want: list[int]) -> Tensor:
        if name not in tensors:
            raise UserError(f"the fine-tuned weights lack {name}; they do not come from this Qwen-1 model")
        if tensors[name].shape != want:
            raise UserError(f"tensor {name} has shape {tensors[name].shape}, the original Qwen-1 config implies "
                            f"{want}; the run was not trained from this model")
        return tensors[name]

    def piece(name: str, sources: list[Tensor], out_shape: list[int]) -> Piece:
        parts = [(t.file, t.start, t.nbytes) for t in sources]
        kinds = {t.dtype for t in sources}
        if kinds == {dtype}:
            return Piece(name, dtype, out_shape, parts)
        if len(kinds) != 1 or not kinds <= set(DTYPE_NAMES):
            raise UserError(f"tensor {name}: unsupported dtypes {sorted(kinds)}")
        return Piece(name, dtype, out_shape, parts, cast=_cast(parts, kinds.pop(), out_shape, dtype))

    h, m, v = shape.hidden, shape.mlp, shape.vocab
    top = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not shape.tied:
        top["lm_head.weight"] = [v, h]
    out = [piece(QWEN1_NAMES[n], [get(n, want)], want) for n, want in top.items()]
    sizes = {"input_layernorm.weight": [h], "post_attention_layernorm.weight": [h], "self_attn.o_proj.weight": [h, h],
             "mlp.up_proj.weight": [m, h], "mlp.gate_proj.weight": [m, h], "mlp.down_proj.weight": [h, m]}
    for i in range(shape.layers):
        layer = f"model.layers.{i}."
        for kind, row in (("weight", [h]), ("bias", [])):
            qkv = [get(f"{layer}self_attn.{p}_proj.{kind}", [h, *row]) for p in "qkv"]
            out.append(piece(f"transformer.h.{i}.attn.c_attn.{kind}", qkv, [3 * h, *row]))
        for name, want in sizes.items():
            out.append(piece(f"transformer.h.{i}.{QWEN1_LAYER_NAMES[name]}", [get(layer + name, want)], want))
    return out


def export_qwen1(qwen2_dir: str | Path, original: str | Path, dest: str | Path,
                 progress: Progress | None = None) -> Path:
    """Write qwen2_dir's weights back in Qwen-1 names and the original's dtype into dest, next to copies of the
    original folder's own files (config, Python, qwen.tiktoken), so Qwen's own code loads the result.

    dest is replaced as a whole: written beside it and renamed into place.
    """
    qwen2_dir, original, dest = Path(qwen2_dir), Path(original), Path(dest)
    if not is_qwen1_dir(original):
        raise UserError(f"{original} is not a Qwen-1 checkpoint (any more); export --format qwen1 needs the folder "
                        "the model was imported from")
    shape = read_qwen1_config(json.loads((original / "config.json").read_text(encoding="utf-8")))
    originals = {}
    for f in source_shards(original):
        originals.update(read_header(f))
    dtype = originals["transformer.wte.weight"].dtype if "transformer.wte.weight" in originals else "BF16"
    tensors: dict[str, Tensor] = {}
    for f in source_shards(qwen2_dir):
        tensors.update(read_header(f))
    pieces = qwen1_pieces(tensors, shape, dtype)
    files = list(dict.fromkeys(t.file for t in tensors.values()))
    by_file: dict[Path, list[Piece]] = {f: [] for f in files}
    for p in pieces:  # each tensor goes where (the first of) its sources lies: the sharding follows the input's
        by_file[p.parts[0][0]].append(p)
    by_file = {f: ps for f, ps in by_file.items() if ps}

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        weights = {"model.safetensors.index.json"} | {f.name for f in original.glob("*.safetensors")}
        for f in original.iterdir():
            pickles = f.suffix in (".bin", ".pt", ".pth")
            if f.is_file() and f.name not in weights and not pickles:
                shutil.copy2(f, tmp / f.name)
        total = sum(p.nbytes for p in pieces)
        done, weight_map = 0, {}
        sharded = len(by_file) > 1
        for i, ps in enumerate(by_file.values(), 1):
            name = f"model-{i:05d}-of-{len(by_file):05d}.safetensors" if sharded else "model.safetensors"
            done = write_safetensors(tmp / name, ps, done, total, progress)
            weight_map.update({p.name: name for p in ps})
        if sharded:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def imported_from(model_dir: str | Path) -> Path:
    """The original Qwen-1 folder an imported model came from (its marker file), or a UserError saying why not."""
    try:
        marker = json.loads((Path(model_dir) / MARKER).read_text(encoding="utf-8"))
        source = Path(marker["source"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(f"model {model_dir} was not imported from a Qwen-1 checkpoint (no {MARKER}); "
                        "--format qwen1 is for runs of models brought in with import-model") from None
    if not source.is_dir():
        raise UserError(f"{source}, the Qwen-1 folder model {model_dir} was imported from, is gone; "
                        "--format qwen1 copies its code and tokenizer files")
    return source
