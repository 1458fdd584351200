"""Conversations to token ids and labels that train only on what the assistant says.

Two layouts. A tokenizer with a chat template renders the text itself; we find each answer in the rendered string and
label the tokens whose offsets fall inside it. A tokenizer without one (Qwen-7B-Chat's remote code, tiktoken, no
offsets) gets ChatML assembled from token ids segment by segment, the way Qwen's own `make_context` does.

Trained tokens: each assistant message's content and the end-of-turn token right after it. Not the
`<|im_start|>assistant\\n` header, not the newline after `<|im_end|>`, nothing from system or user turns.
"""

from bisect import bisect_left
from dataclasses import dataclass

from trainer_core.errors import UserError

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
    """Ids of the conversation so far plus the assistant header: what chat inference feeds to generate()."""
    messages = with_persona(messages, persona)
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return _chatml(tokenizer, [messages], add_generation_prompt=True)[0][0]


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
    ids, labels = ids[:max_length], labels[:max_length]
    n_labels = sum(label != IGNORE_INDEX for label in labels)
    return Encoded(ids, labels, truncated=truncated, answer_lost=n_labels == 0, n_label_tokens=n_labels)


def _templated(tokenizer, batch: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    if not tokenizer.is_fast:
        name = type(tokenizer).__name__
        raise UserError(f"{name} has a chat template but no character offsets; load its fast tokenizer instead.")
    texts = tokenizer.apply_chat_template(batch, tokenize=False)
    # Each answer's generation prompt (the turns before it plus the assistant header), rendered in one call.
    turns = [(k, i) for k, messages in enumerate(batch) for i, m in enumerate(messages) if m["role"] == "assistant"]
    history = [batch[k][:i] for k, i in turns]
    rendered = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False) if turns else []
    prompts = [{} for _ in batch]
    for (k, i), prompt in zip(turns, rendered):
        prompts[k][i] = prompt
    # End-of-turn candidates: the eos token first, then any other special token (looked up once: it is slow).
    end_marks = [tokenizer.eos_token] + [t for t in tokenizer.all_special_tokens if t != tokenizer.eos_token]
    end_marks = [t for t in end_marks if t]
    spans = [_answer_spans(*args, end_marks) for args in zip(texts, batch, prompts)]
    # The template writes its special tokens as text; add_special_tokens=False stops a second BOS, as
    # apply_chat_template(tokenize=True) does.
    # The Rust tokenizer directly: the same ids and offsets as tokenizer(...), without transformers converting
    # every encoding into Python dicts first (most of the time for thousands of short records).
    out = []
    for encoding, answer_spans in zip(tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False), spans):
        ids = encoding.ids
        starts = [start for start, _ in encoding.offsets]
        labels = [IGNORE_INDEX] * len(ids)
        for begin, end in answer_spans:
            # A token trains when it starts inside the span. One that starts in the header (a newline that merged
            # with the answer's leading newlines) stays untrained: at inference the header is given, not generated.
            lo, hi = bisect_left(starts, begin), bisect_left(starts, end)
            labels[lo:hi] = ids[lo:hi]
        out.append((ids, labels))
    return out


def _answer_spans(
    text: str, messages: list[dict], prompts: dict[int, str], end_marks: list[str]
) -> list[tuple[int, int]]:
    """Character spans of each assistant answer plus the end-of-turn token right after it, in the rendered text.

    prompts[i] is the rendered generation prompt for assistant message i.
    """
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
            raise UserError("The chat template changed an assistant message, so its tokens cannot be located.")
        cursor = start + len(content)
        mark = next((m for m in end_marks if text.startswith(m, cursor)), "")
        cursor += len(mark)
        spans.append((start, cursor))
    return spans


def _special_id(tokenizer, name: str, token: str) -> int:
    value = getattr(tokenizer, name, None)  # Qwen-7B-Chat's tokenizer exposes im_start_id / im_end_id
    if value is None:
        value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == tokenizer.unk_token_id:
        raise UserError(f"{type(tokenizer).__name__} has no chat template and no {token} token; cannot build ChatML.")
    return value


def _chatml(tokenizer, batch: list[list[dict]], *, add_generation_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """ChatML from ids: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, each piece tokenized alone."""
    im_start = _special_id(tokenizer, "im_start_id", "<|im_start|>")
    im_end = _special_id(tokenizer, "im_end_id", "<|im_end|>")
    roles = sorted({m["role"] for messages in batch for m in messages} | {"assistant"})
    contents = [m["content"] for messages in batch for m in messages]
    # One batched call for every text piece; role names and the newline are shared.
    pieces = tokenizer(["\n", *roles, *contents], add_special_tokens=False)["input_ids"]
    newline = pieces[0]
    header = {role: [im_start, *ids, *newline] for role, ids in zip(roles, pieces[1 : 1 + len(roles)])}
    content_ids = iter(pieces[1 + len(roles) :])
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
