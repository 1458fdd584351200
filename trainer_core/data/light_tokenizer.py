"""A model folder's tokenizer read with the `tokenizers` library and jinja2 alone, without transformers or torch.

`check-data` measures token lengths with the model's tokenizer. Through `AutoTokenizer` that first imports
transformers, which imports torch: ~5 s of a ~6 s check of a 100-record file. This loader reads the same files
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja) the way transformers 4.57
does for the folders it accepts, and offers the part of the tokenizer interface that `chat_format` uses to encode
and label conversations. tests/test_light_tokenizer.py checks ids, labels and markers against AutoTokenizer.

It accepts only folders whose tokenizer transformers would load without rewriting the Rust tokenizer: a tokenizer
class that is a thin wrapper (below), no remote code, one chat template, every named special token already in
tokenizer.json. Anything else returns None and the caller loads the tokenizer through transformers.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from trainer_core.common.errors import UserError

# Classes whose __init__ leaves tokenizer.json as it is. Llama/GPT-2/Gemma wrappers are left out on purpose: they
# can rebuild the pre-tokenizer or post-processor (legacy, add_prefix_space, from_slow) at load time.
_PLAIN_CLASSES = {"PreTrainedTokenizerFast", "Qwen2Tokenizer", "Qwen2TokenizerFast"}
# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
_NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def load_light_tokenizer(path: str | Path) -> "LightTokenizer | None":
    """The folder's tokenizer without transformers, or None when only transformers can load it faithfully."""
    p = Path(path).expanduser()
    try:
        config = json.loads((p / "tokenizer_config.json").read_text(encoding="utf-8"))
        specials_file = p / "special_tokens_map.json"
        specials_map = json.loads(specials_file.read_text(encoding="utf-8")) if specials_file.is_file() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # transformers gives the clear error, or copes
    if not isinstance(config, dict) or not isinstance(specials_map, dict) or not (p / "tokenizer.json").is_file():
        return None
    if config.get("tokenizer_class") not in _PLAIN_CLASSES or config.get("auto_map") \
            or config.get("extra_special_tokens") or (p / "additional_chat_templates").exists():
        return None
    template_file = p / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if not isinstance(template, str) or not template or _GENERATION_TAG.search(template):
        # No template (ChatML built from ids), several named ones, or {% generation %} spans (found through
        # transformers' renderer): the transformers path.
        return None
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(p / "tokenizer.json"))
    except Exception as e:
        if type(e) is not Exception:  # the tokenizers library's parse errors are bare Exceptions; others are bugs
            raise
        raise broken_tokenizer(p, e) from None
    named = {k: _content(config.get(k)) for k in _NAMED}
    named.update({k: _content(v) for k, v in specials_map.items() if k in _NAMED})  # the map wins, as there
    extra = [_content(t) for t in config.get("additional_special_tokens") or []]
    extra += [t for t in map(_content, specials_map.get("additional_special_tokens") or []) if t not in extra]
    tok = LightTokenizer(backend, template, {k: v for k, v in named.items() if v}, extra)
    # transformers adds a named special token that tokenizer.json lacks to the vocabulary; we would not.
    if any(backend.token_to_id(t) is None for t in tok.all_special_tokens):
        return None
    return tok


def broken_tokenizer(path: str | Path, e: Exception) -> UserError:
    """A tokenizer.json the tokenizers library cannot read (truncated, `{}`), as one line naming the folder."""
    return UserError("models.tokenizer_broken", "model {path}: tokenizer.json cannot be read ({detail}); "
                     "re-download or re-export the model", path=str(path), detail=str(e).splitlines()[0][:200])


def _content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class LightTokenizer:
    """The slice of PreTrainedTokenizerFast that chat_format uses, over a `tokenizers.Tokenizer`."""

    is_fast = True

    def __init__(self, backend, chat_template: str, named: dict[str, str], additional: list[str]):
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special_tokens_map = {**named, **({"additional_special_tokens": additional} if additional else {})}
        self.all_special_tokens = list(dict.fromkeys([*named.values(), *additional]))
        self.added_tokens_decoder = backend.get_added_tokens_decoder()
        self.eos_token_id = self.convert_tokens_to_ids(named.get("eos_token"))
        self.unk_token_id = self.convert_tokens_to_ids(named.get("unk_token"))

    def convert_tokens_to_ids(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    def get_chat_template(self) -> str:
        return self.chat_template

    def apply_chat_template(self, conversations: list[list[dict]], *, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> list[str]:
        """Rendered texts, as transformers' apply_chat_template(..., tokenize=False) renders a batch."""
        if tokenize:
            raise ValueError("LightTokenizer renders text only; encode with backend_tokenizer")
        template = compile_template(self.chat_template)
        return [template.render(messages=c, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                                **self.special_tokens_map) for c in conversations]


@lru_cache(maxsize=8)
def compile_template(source: str):
    """The template in the Jinja environment transformers builds (chat_template_utils._compile_jinja_template):
    sandboxed, trim_blocks and lstrip_blocks, loop controls, its tojson, raise_exception and strftime_now.
    Templates with `{% generation %}` blocks never get here (load_light_tokenizer leaves them to transformers)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
