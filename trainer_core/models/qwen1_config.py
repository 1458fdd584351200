"""What a Qwen-1 (Qwen-7B-Chat) checkpoint is, in Qwen2's terms: its config checked to be representable, and the
tensor names on both sides.

Up to its training length (`seq_length`), Qwen-1 computes exactly what Qwen2 computes: RMSNorm, half-split RoPE,
q/k/v with bias and o_proj without, SwiGLU. Its dynamic-NTK and logn scaling only act past `seq_length`, so they are
not carried. Converting therefore renames tensors and splits (or joins) the fused `c_attn`; nothing is recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trainer_core.common.errors import Text, UserError, text
from trainer_core.common.user_files import read_text

EXTRA_TOKENS = 205  # Qwen-1's <|extra_0|> ... <|extra_204|>, ids 151646 ... 151850, after the three named ones
FIRST_EXTRA_ID = 151646
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}

# Qwen2 name → Qwen-1 name, outside the layers and inside each (`model.layers.N.` / `transformer.h.N.`).
QWEN1_NAMES = {
    "model.embed_tokens.weight": "transformer.wte.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "lm_head.weight": "lm_head.weight",
}
QWEN1_LAYER_NAMES = {
    "input_layernorm.weight": "ln_1.weight",
    "post_attention_layernorm.weight": "ln_2.weight",
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    # Qwen-1's MLP is c_proj(w1(x) * silu(w2(x))); Qwen2's is down(silu(gate(x)) * up(x)).
    "mlp.up_proj.weight": "mlp.w1.weight",
    "mlp.gate_proj.weight": "mlp.w2.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
}


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
    notes: list[Text] = field(default_factory=list)
    """What is not carried over, for the user to read."""


def _int(config: dict, *names: str) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise UserError("models.qwen1_field_missing", "config.json: {field} is missing or not a positive integer; is "
                    "this a Qwen-1 checkpoint?", field=names[0])


def _refuse(config: dict, name: str, why: Text) -> UserError:
    return UserError("models.qwen1_unrepresentable", "config.json: {field}={value} cannot be imported as Qwen2 "
                     "({why})", field=name, value=repr(config.get(name)), why=why)


# Fields with one value Qwen2 can represent: (name, default when absent, accepted value, why).
_FIXED = (
    ("rotary_pct", 1.0, 1.0, text("models.qwen1_why_rotary_pct", "Qwen2 rotates every dimension of each head; only "
                                  "1.0 is supported")),
    ("pos_emb", "rotary", "rotary", text("models.qwen1_why_pos_emb", "only rotary position embeddings exist in Qwen2")),
    ("activation", "swiglu", "swiglu", text("models.qwen1_why_activation", "Qwen2's MLP is SwiGLU")),
    ("no_bias", True, True, text("models.qwen1_why_no_bias", "Qwen2 has biases on q/k/v only, not on the output or "
                                 "MLP projections")),
    ("apply_residual_connection_post_layernorm", False, False, text("models.qwen1_why_post_norm", "Qwen2 is "
                                                                    "pre-norm")),
)


def _positive(config: dict, name: str, default: float) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _refuse(config, name, text("models.qwen1_why_positive", "it must be a positive number"))
    return float(value)


def read_qwen1_config(config: dict) -> Qwen1Shape:
    """Check a Qwen-1 config.json (as a dict) and return its shape; a field Qwen2 cannot represent is refused."""
    for name, default, accepted, why in _FIXED:
        if config.get(name, default) != accepted:
            raise _refuse(config, name, why)
    hidden = _int(config, "hidden_size", "n_embd")
    heads = _int(config, "num_attention_heads", "n_head")
    if hidden % heads:
        raise _refuse(config, "num_attention_heads", text("models.qwen1_why_heads", "hidden_size {hidden} is not a "
                                                          "multiple of it", hidden=hidden))
    if config.get("kv_channels", hidden // heads) != hidden // heads:
        raise _refuse(config, "kv_channels", text("models.qwen1_why_kv_channels", "Qwen2's head size is hidden_size "
                                                  "/ num_attention_heads = {size}", size=hidden // heads))
    ffn = _int(config, "ffn_hidden_size")
    if ffn % 2:
        raise _refuse(config, "ffn_hidden_size", text("models.qwen1_why_ffn", "it must be even: half of it is the "
                                                      "SwiGLU width"))
    vocab = _int(config, "padded_vocab_size", "vocab_size")
    if vocab < FIRST_EXTRA_ID + EXTRA_TOKENS:
        raise _refuse(config, "padded_vocab_size", text("models.qwen1_why_vocab", "Qwen's tokenizer needs {rows} "
                                                        "rows", rows=FIRST_EXTRA_ID + EXTRA_TOKENS))
    base = _positive(config, "rotary_emb_base", 10000)
    eps = _positive(config, "layer_norm_epsilon", 1e-6)
    seq_length = _int(config, "seq_length")
    notes = []
    scaled = [n for n in ("use_dynamic_ntk", "use_logn_attn") if config.get(n)]
    if scaled:
        notes.append(text("models.qwen1_scaling_not_carried", "{fields} (long-context scaling past seq_length "
                          "{seq_length}) is not carried: keep data.max_length at or below {seq_length}",
                          fields=" and ".join(scaled), seq_length=seq_length))
    return Qwen1Shape(hidden=hidden, heads=heads, layers=_int(config, "num_hidden_layers", "n_layer"), mlp=ffn // 2,
                      vocab=vocab, seq_length=seq_length, rope_base=base, eps=eps,
                      tied=bool(config.get("tie_word_embeddings", False)), notes=notes)


def load_qwen1_config(folder: Path) -> Qwen1Shape:
    """read_qwen1_config of a folder's config.json, with a clear error when the file is unreadable."""
    try:
        config = json.loads(read_text(folder / "config.json"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError("models.qwen1_config_broken", "{folder}: config.json is broken ({reason})",
                        folder=str(folder), reason=str(e)) from None
    if not isinstance(config, dict):
        raise UserError("models.qwen1_config_broken", "{folder}: config.json is broken ({reason})",
                        folder=str(folder), reason="not an object")
    return read_qwen1_config(config)


def qwen2_config(shape: Qwen1Shape, dtype: str):
    """The Qwen2Config that computes what the Qwen-1 model computes up to its seq_length."""
    from transformers import Qwen2Config

    from trainer_core.models.tokenizer import SPECIAL_TOKENS

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


def top_shapes(shape: Qwen1Shape, with_head: bool) -> dict[str, list[int]]:
    """The shape of each tensor outside the layers, by its Qwen2 name (lm_head only if untied or `with_head`)."""
    out = {"model.embed_tokens.weight": [shape.vocab, shape.hidden], "model.norm.weight": [shape.hidden]}
    if with_head or not shape.tied:
        out["lm_head.weight"] = [shape.vocab, shape.hidden]
    return out


def layer_shapes(shape: Qwen1Shape) -> dict[str, list[int]]:
    """The shape of each renamed (not split) tensor of a layer, by its Qwen2 name."""
    h, m = shape.hidden, shape.mlp
    return {"input_layernorm.weight": [h], "post_attention_layernorm.weight": [h], "self_attn.o_proj.weight": [h, h],
            "mlp.up_proj.weight": [m, h], "mlp.gate_proj.weight": [m, h], "mlp.down_proj.weight": [h, m]}
