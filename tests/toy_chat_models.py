"""Small non-Qwen tokenizers and a tiny Llama model built locally with the `tokenizers` library (no downloads).

- `chatml_llama`: a Llama-style byte-level BPE with a ChatML template whose eos_token is `<|im_start|>` and whose
  `<|im_end|>` is special in the tokenizer but absent from the special-tokens map (the shape of a GGUF conversion).
- `llama3`: `<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>` turns, eos_token `<|end_of_text|>`.
- `zephyr_tags`: `<|user|>` / `<|assistant|>` turns ending in `</s>`, the answer inside `{% generation %}` blocks.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{- m['content'] | trim }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
ZEPHYR_TAGS_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ m['content'] }}</s>{%- endgeneration %}\n"
    "{%- else %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}"
)

CORPUS = [
    "你是谁？我是甄嬛，家父是大理寺少卿甄远道。",
    "皇上驾到！臣妾参见皇上，皇上万福金安。",
    "今日天气很好，我们去御花园走走吧。",
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "system user assistant role content",
] * 20


def _bpe(specials: list[str], vocab_size: int = 700) -> Tokenizer:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    raw.train_from_iterator(CORPUS, trainer)
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return raw


def chatml_llama() -> PreTrainedTokenizerFast:
    # <|im_end|> is a special token of the Rust tokenizer only; transformers' named special tokens never list it.
    raw = _bpe(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<|im_start|>", pad_token="</s>",
                                   chat_template=CHATML_TEMPLATE)


def llama3() -> PreTrainedTokenizerFast:
    raw = _bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   chat_template=LLAMA3_TEMPLATE)


def zephyr_tags() -> PreTrainedTokenizerFast:
    raw = _bpe(["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                   chat_template=ZEPHYR_TAGS_TEMPLATE)


def tiny_llama(dest: Path, tokenizer: PreTrainedTokenizerFast, eos_token: str | None = None) -> Path:
    """A random-initialised 2-layer Llama for `tokenizer`, saved as safetensors with the tokenizer beside it.

    `eos_token` gives the model's config an eos other than the tokenizer's, as converted chat models often have
    (config `<|im_end|>`, tokenizer `<|im_start|>`); the model then has no pad id either."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids(eos_token or tokenizer.eos_token),
                         pad_token_id=None if eos_token else tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
