"""What a model's chat template writes around turns, found by asking it: the end-of-turn marker (rendering a probe
conversation), the ids that stop a reply, and the tokenizer's special-token strings.

chat_format.py uses these to label what the assistant says; inference uses the stop ids; validation warns about
data that holds a special-token string.
"""

import re
import weakref
from dataclasses import dataclass

from trainer_core.common.errors import UserError
from trainer_core.data.template_fill import FillRenderer, content_independent

# Probe messages: plain ASCII words no template rewrites and no tokenizer treats specially.
_PROBE = [
    {"role": "user", "content": "probeQuestionOne"},
    {"role": "assistant", "content": "probeAnswerOne"},
    {"role": "user", "content": "probeQuestionTwo"},
    {"role": "assistant", "content": "probeAnswerTwo"},
]
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class TurnFormat:
    """What a tokenizer's chat template writes around an assistant answer, found by rendering a probe."""

    end_marker: str
    """Text the template writes right after every answer, whitespace trimmed (`<|im_end|>`, `<|eot_id|>`, `</s>`):
    trained with the answer, and where generation stops."""
    generation_tags: bool
    """The template marks assistant output with `{% generation %}`; those spans are what is trained."""


def turn_format(tokenizer) -> TurnFormat:
    """The template's end-of-turn marker (and whether it has generation tags), probed once per tokenizer."""
    template = tokenizer.chat_template or ""
    cached = _FORMATS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    fmt = TurnFormat("<|im_end|>", False) if not template else _probe(tokenizer, template)
    _FORMATS[tokenizer] = (template, fmt)
    return fmt


_FORMATS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a reply: the template's end-of-turn marker when it is one token, and the tokenizer's eos."""
    ids = set()
    marker = turn_format(tokenizer).end_marker
    if tokenizer.chat_template:
        marker_ids = tokenizer.backend_tokenizer.encode(marker, add_special_tokens=False).ids if tokenizer.is_fast \
            else tokenizer.encode(marker, add_special_tokens=False)
    else:
        marker_ids = [special_id(tokenizer, "im_end_id", marker)]
    if len(marker_ids) == 1:
        ids.add(marker_ids[0])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def special_strings(tokenizer) -> list[str]:
    """The tokenizer's special-token strings (every added token marked special, not only the named ones)."""
    cached = _SPECIALS.get(tokenizer)
    if cached is None:
        found = set(tokenizer.all_special_tokens)
        found |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        found |= set(getattr(tokenizer, "special_tokens", {}) or {})  # Qwen-7B-Chat's tiktoken specials
        cached = sorted((s for s in found if s), key=len, reverse=True)
        _SPECIALS[tokenizer] = cached
    return cached


_SPECIALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def specials_in(tokenizer, text: str) -> list[str]:
    """Special-token strings that occur in `text`, in order of first appearance (each once)."""
    pattern = special_pattern(tokenizer)
    if pattern is None:
        return []
    return list(dict.fromkeys(m.group() for m in pattern.finditer(text)))


def require_fast(tokenizer) -> None:
    if not tokenizer.is_fast:
        raise UserError("data.slow_tokenizer", "{tokenizer} has a chat template but no character offsets; load its "
                        "fast tokenizer instead.", tokenizer=type(tokenizer).__name__)


def render(tokenizer, conversations: list[list[dict]], **kwargs) -> list[str]:
    """The tokenizer's template applied to each conversation, as apply_chat_template(tokenize=False) renders it;
    from cached skeletons where template_fill proves that the same text."""
    filler = _fill_renderer(tokenizer) if set(kwargs) <= {"add_generation_prompt"} else None
    try:
        if filler is not None:
            return filler.render(conversations, bool(kwargs.get("add_generation_prompt", False)))
        return tokenizer.apply_chat_template(conversations, tokenize=False, **kwargs)
    except Exception as e:  # a Jinja error or a template that raises on this shape of conversation
        raise template_failed(e) from None


def _fill_renderer(tokenizer) -> FillRenderer | None:
    """The tokenizer's skeleton renderer, or None where its template is not proven content-independent."""
    template = tokenizer.chat_template
    cached = _FILLERS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    source = template if isinstance(template, str) else tokenizer.get_chat_template()
    filler = None
    if content_independent(source):
        filler = FillRenderer(lambda conversations, agp: tokenizer.apply_chat_template(
            conversations, tokenize=False, add_generation_prompt=agp))
    _FILLERS[tokenizer] = (template, filler)
    return filler


_FILLERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _probe(tokenizer, template: str) -> TurnFormat:
    """Render a two-exchange probe and read off what follows the first answer before the next question begins.

    That gap holds the end-of-turn marker and the next user header; the conversation rendered up to the first
    answer holds the marker (and whatever a template adds only at the very end). Their common start is the marker.
    """
    full, upto_first = render(tokenizer, [_PROBE, _PROBE[:2]])
    answer = _PROBE[1]["content"]
    # Templates may render the last answer differently (Qwen3 adds an empty <think> block before it), so each
    # rendering is searched on its own rather than compared as prefixes.
    start, last = full.find(answer), upto_first.find(answer)
    question = full.find(_PROBE[2]["content"], max(start, 0))
    if start < 0 or last < 0 or question < 0:
        raise UserError("data.template_unprobed", "the model's chat template could not be probed (it rewrites or "
                        "drops the messages of a plain user/assistant conversation); give the model a standard chat "
                        "template")
    gap, tail = full[start + len(answer):question], upto_first[last + len(answer):]
    common = 0
    while common < min(len(gap), len(tail)) and gap[common] == tail[common]:
        common += 1
    marker = gap[:common].strip()
    if not marker:
        raise UserError("data.template_no_end_marker", "the model's chat template writes no end-of-turn marker "
                        "after an assistant message, so a fine-tuned model could never learn to stop; use a chat "
                        "template that ends each turn (e.g. with <|im_end|> or the eos token)")
    return TurnFormat(marker, bool(_GENERATION_TAG.search(template)))


def template_failed(e: Exception) -> UserError:
    """The template raised (a Jinja error, or a template that refuses this shape of conversation)."""
    return UserError("data.template_failed", "the model's chat template cannot render this conversation: {reason}",
                     reason=str(e))


def special_pattern(tokenizer):
    """One regex of every special-token string (longest first), or None; built once per tokenizer (it is asked
    for per message when a million records are encoded)."""
    cached = _PATTERNS.get(tokenizer)
    if cached is None:
        strings = special_strings(tokenizer)
        cached = (re.compile("|".join(map(re.escape, strings))) if strings else None,)
        _PATTERNS[tokenizer] = cached
    return cached[0]


_PATTERNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def special_id(tokenizer, name: str, token: str) -> int:
    value = getattr(tokenizer, name, None)  # Qwen-7B-Chat's tokenizer exposes im_start_id / im_end_id
    if value is None:
        value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == tokenizer.unk_token_id:
        raise UserError("data.no_chatml_token", "{tokenizer} has no chat template and no {token} token; cannot "
                        "build ChatML.", tokenizer=type(tokenizer).__name__, token=token)
    return value
