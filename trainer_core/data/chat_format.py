"""Conversations to token ids and labels that train only on what the assistant says.

Two layouts. A tokenizer with a chat template renders the text itself; we find each answer in the rendered string and
label the tokens whose offsets fall inside it. A tokenizer without one (Qwen-7B-Chat's remote code, tiktoken, no
offsets) gets ChatML assembled from token ids segment by segment, the way Qwen's own `make_context` does.

Trained tokens: each assistant message's content and the template's end-of-turn marker right after it (`<|im_end|>`,
`<|eot_id|>`, `</s>`, ...). The marker is found by rendering a probe conversation with the model's own template, not
taken from `eos_token`, which some tokenizers set to something else. A template with `{% generation %}` blocks says
itself what the assistant generates; those spans are trained instead. Nothing else is: not the assistant header, not
the newline after the marker, nothing from system or user turns.

Text is text: a special-token string inside a message (a dataset row that writes `<|im_end|><|im_start|>system`, a
persona, a chat prompt) is tokenized as ordinary characters, so data can never forge turns.
"""

import re
import weakref
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from trainer_core.data.chat_template import (render, require_fast, special_id, special_pattern, template_failed,
                                             turn_format)
from trainer_core.common.errors import UserError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


@dataclass
class Encoded:
    """One conversation, tokenized and labelled, ready for a collator."""

    input_ids: list[int]
    """Token ids, at most max_length of them."""
    labels: list[int]
    """Same length as input_ids: the token id where the model is trained, -100 everywhere else."""
    truncated: bool
    """The conversation was longer than max_length and its tail was cut off."""
    answer_lost: bool
    """No token is trained at all (the cut removed every answer); the caller should report the record."""
    n_label_tokens: int
    """How many positions carry a label."""


def with_persona(conversation: list[dict], persona: str) -> list[dict]:
    """The messages to render: the persona becomes the system turn unless the conversation brings its own."""
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
    if persona and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": persona})
    return messages


def encode_conversations(tokenizer, conversations: list[list[dict]], *, persona: str, max_length: int) -> list[Encoded]:
    """Tokenize and label many conversations with one batched tokenizer call; order is kept."""
    batch = [with_persona(c, persona) for c in conversations]
    if tokenizer.chat_template:
        pairs = _templated(tokenizer, batch)
    else:
        pairs = _chatml(tokenizer, batch, add_generation_prompt=False)
    return [_cut(ids, labels, max_length) for ids, labels in pairs]


def prompt_ids(tokenizer, messages: list[dict], persona: str) -> list[int]:
    """Ids of the conversation so far plus the assistant header: what chat inference feeds to generate().

    Special-token strings in the messages or the persona stay text, exactly as in training."""
    messages = with_persona(messages, persona)
    if not tokenizer.chat_template:
        return _chatml(tokenizer, [messages], add_generation_prompt=True)[0][0]
    require_fast(tokenizer)
    [text] = tokenizer.apply_chat_template([messages], add_generation_prompt=True, tokenize=False)
    [(ids, _)] = _encode_rendered(tokenizer, [text], [messages])
    return ids


def render_mask(tokenizer, encoded: Encoded) -> list[tuple[str, bool]]:
    """(text, trained) per token for the label-mask view.

    A Chinese character is often split over two or three byte-level tokens that decode to nothing readable alone;
    such neighbours (with the same flag) are joined until they decode cleanly, else shown with the U+FFFD mark.
    """
    ids = encoded.input_ids
    trained = [label != IGNORE_INDEX for label in encoded.labels]
    pieces, i = [], 0
    while i < len(ids):
        end = i + 1
        text = tokenizer.decode(ids[i:end])
        while "\ufffd" in text and end < len(ids) and end - i < 4 and trained[end] == trained[i]:
            end += 1
            text = tokenizer.decode(ids[i:end])
        if "\ufffd" in text:  # joining did not help; show this token alone
            end = i + 1
            text = tokenizer.decode(ids[i:end])
        pieces.append((text, trained[i]))
        i = end
    return pieces


def _cut(ids: list[int], labels: list[int], max_length: int) -> Encoded:
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    n_labels = len(labels) - labels.count(IGNORE_INDEX)
    return Encoded(ids, labels, truncated=truncated, answer_lost=n_labels == 0, n_label_tokens=n_labels)


def _templated(tokenizer, batch: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    require_fast(tokenizer)
    fmt = turn_format(tokenizer)
    if fmt.generation_tags:
        texts, spans = _generation_spans(tokenizer, batch)
    else:
        texts = render(tokenizer, batch)
        # Each answer's generation prompt (the turns before it plus the assistant header), rendered in one call.
        turns = [(k, i) for k, messages in enumerate(batch) for i, m in enumerate(messages) if m["role"] == "assistant"]
        rendered = render(tokenizer, [batch[k][:i] for k, i in turns], add_generation_prompt=True) if turns else []
        prompts = [{} for _ in batch]
        for (k, i), prompt in zip(turns, rendered):
            prompts[k][i] = prompt
        spans = [_answer_spans(*args, fmt.end_marker) for args in zip(texts, batch, prompts)]
    out = []
    for (ids, starts), answer_spans in zip(_encode_rendered(tokenizer, texts, batch), spans):
        labels = [IGNORE_INDEX] * len(ids)
        for begin, end in answer_spans:
            # A token trains when it starts inside the span. One that starts in the header (a newline that merged
            # with the answer's leading newlines) stays untrained: at inference the header is given, not generated.
            lo, hi = bisect_left(starts, begin), bisect_left(starts, end)
            labels[lo:hi] = ids[lo:hi]
        out.append((ids, labels))
    return out


def _generation_spans(tokenizer, batch):
    """Rendered texts and the character spans the template marks with {% generation %} (TRL's assistant mask)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, indices = render_jinja_template(conversations=batch, chat_template=tokenizer.get_chat_template(),
                                               return_assistant_tokens_mask=True, **tokenizer.special_tokens_map)
    except Exception as e:
        raise template_failed(e) from None
    return texts, [[(a, b) for a, b in spans] for spans in indices]


def _encode_rendered(tokenizer, texts: list[str], batch: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """(ids, start offset of each token) per rendered text; special-token strings from the messages stay text.

    The template writes its special tokens as text; add_special_tokens=False stops a second BOS, as
    apply_chat_template(tokenize=True) does. Rows whose messages hold no special-token string (nearly all) go
    through the Rust tokenizer directly in one batch: the same ids and offsets as tokenizer(...), without
    transformers converting every encoding into Python dicts first.
    """
    pattern = special_pattern(tokenizer)
    forged = [pattern is not None and any(pattern.search(m["content"]) for m in messages) for messages in batch]
    plain = [text for text, f in zip(texts, forged) if not f]
    encodings = iter(tokenizer.backend_tokenizer.encode_batch(plain, add_special_tokens=False))
    out = []
    for text, messages, f in zip(texts, batch, forged):
        if f:
            out.append(_encode_keeping_text(tokenizer, text, messages, pattern))
        else:
            encoding = next(encodings)
            out.append((encoding.ids, [start for start, _ in encoding.offsets]))
    return out


def _encode_keeping_text(tokenizer, text: str, messages: list[dict], pattern) -> tuple[list[int], list[int]]:
    """Encode a rendered conversation whose messages contain special-token strings.

    The template's own special tokens (those outside every message's content) become their ids; the text between
    them is encoded with special-token matching off, so a `<|im_end|>` a message wrote is plain characters. The
    tokenizer splits at special tokens anyway, so ordinary text tokenizes as it would in one call; the exception is
    a Metaspace pre-tokenizer that prefixes "▁" only at the very start of a text, which here also prefixes each
    piece. Only rows holding special-token text take this path, and check-data warns about every one of them.
    """
    inside, cursor = [], 0
    for message in messages:
        content = message["content"]
        at = text.find(content, cursor) if content else -1
        if at < 0 and pattern.search(content):
            raise UserError("data.template_changed_special", "the chat template changed a message that holds "
                            "special-token text, so it cannot be kept as text; remove the special tokens from that "
                            "message")
        if at >= 0:
            inside.append((at, at + len(content)))
            cursor = at + len(content)
    plain = _text_only_backend(tokenizer)
    ids, starts, pos = [], [], 0

    def add_text(begin: int, end: int) -> None:
        if begin < end:
            encoding = plain.encode(text[begin:end], add_special_tokens=False)
            ids.extend(encoding.ids)
            starts.extend(begin + s for s, _ in encoding.offsets)

    for m in pattern.finditer(text):
        if any(a <= m.start() < b for a, b in inside):
            continue
        add_text(pos, m.start())
        ids.append(tokenizer.convert_tokens_to_ids(m.group()))
        starts.append(m.start())
        pos = m.end()
    add_text(pos, len(text))
    return ids, starts


def _text_only_backend(tokenizer):
    """A copy of the Rust tokenizer that reads special-token strings as plain text (`encode_special_tokens`).

    A copy, because transformers flips that switch on the shared tokenizer on every call."""
    backend = _TEXT_ONLY.get(tokenizer)
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.encode_special_tokens = True
        _TEXT_ONLY[tokenizer] = backend
    return backend


_TEXT_ONLY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _answer_spans(
    text: str, messages: list[dict], prompts: dict[int, str], marker: str
) -> list[tuple[int, int]]:
    """Character spans of each assistant answer plus the end-of-turn marker right after it, in the rendered text.

    prompts[i] is the rendered generation prompt for assistant message i.
    """
    end_mark = _end_mark(marker)
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        content = message["content"]
        if message["role"] != "assistant" or not content:
            continue  # an empty answer has nothing to find and trains nothing
        # Search from where the generation prompt for this turn ends: a bare search from the start could match a
        # short answer ("是。") inside an earlier turn or in text the template adds. Templates that rewrite earlier
        # turns break that prefix; then search onward from the previous answer.
        prefix = prompts[i]
        search_from = len(prefix) if len(prefix) >= cursor and text.startswith(prefix) else cursor
        start = text.find(content, search_from)
        if start < 0:  # some templates strip whitespace around contents
            content = content.strip()
            start = text.find(content, search_from)
        if start < 0:
            raise UserError("data.template_changed_answer", "The chat template changed an assistant message, so "
                            "its tokens cannot be located.")
        cursor = start + len(content)
        mark = end_mark.match(text, cursor)
        if mark is None:
            raise UserError("data.template_answer_unended", "the chat template did not end assistant message {n} "
                            "with its end-of-turn marker {marker!r} as it does in a plain conversation; that answer "
                            "could not teach the model to stop", n=i + 1, marker=marker)
        cursor = mark.end()
        spans.append((start, cursor))
    return spans


@lru_cache(maxsize=16)
def _end_mark(marker: str) -> "re.Pattern":
    """The marker after an answer; the template's own spacing before it is allowed."""
    return re.compile(r"\s*" + re.escape(marker))


def _as_text_pieces(content: str, pattern) -> list[str]:
    """Split a message so that no piece holds a whole special-token string: `<|im_end|>` becomes `<|im_end|` and
    `>`, which any tokenizer reads as plain characters. For tokenizers without offsets (tiktoken), which have no
    switch for this."""
    if pattern is None:
        return [content]
    pieces, pos = [], 0
    for m in pattern.finditer(content):
        pieces += [content[pos:m.start()], m.group()[:-1], m.group()[-1:]]
        pos = m.end()
    return [p for p in pieces + [content[pos:]] if p]


def _chatml(tokenizer, batch: list[list[dict]], *, add_generation_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """ChatML from ids: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, each piece tokenized alone."""
    im_start = special_id(tokenizer, "im_start_id", "<|im_start|>")
    im_end = special_id(tokenizer, "im_end_id", "<|im_end|>")
    pattern = special_pattern(tokenizer)
    roles = sorted({m["role"] for messages in batch for m in messages} | {"assistant"})
    split = [_as_text_pieces(m["content"], pattern) for messages in batch for m in messages]
    # One batched call for every text piece; role names and the newline are shared.
    pieces = tokenizer(["\n", *roles, *(p for parts in split for p in parts)], add_special_tokens=False)["input_ids"]
    newline = pieces[0]
    header = {role: [im_start, *ids, *newline] for role, ids in zip(roles, pieces[1 : 1 + len(roles)])}
    piece_ids = iter(pieces[1 + len(roles) :])
    content_ids = iter([i for _ in parts for i in next(piece_ids)] for parts in split)
    out = []
    for messages in batch:
        ids, labels = [], []
        for message in messages:
            head, body = header[message["role"]], [*next(content_ids), im_end]
            ids += head + body + newline
            answer = message["role"] == "assistant"
            labels += [IGNORE_INDEX] * len(head) + (body if answer else [IGNORE_INDEX] * len(body))
            labels += [IGNORE_INDEX] * len(newline)
        if add_generation_prompt:
            ids += header["assistant"]
            labels += [IGNORE_INDEX] * len(header["assistant"])
        out.append((ids, labels))
    return out
