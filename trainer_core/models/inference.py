"""Chat with a model folder, in a persona the caller gives (runs/outputs.py says which folder and which persona).

The reply streams as it is generated (`TextIteratorStreamer` fed by `generate` on the inference thread); history is
trimmed from the oldest turn so prompt + answer fit the model's context.

All of a process's model work (loading and every `generate`) runs on one long-lived inference thread. Each thread
that runs torch ops gets its own OpenMP worker team, and idle teams spin-wait for a while: on a 2-core machine,
generating on a fresh thread right after torch work on another one was 35-39% slower (bench/latency_bench.py), and a
dashboard serving several chats would multiply the teams. One thread also serialises concurrent chats, which on a
CPU is faster than letting them fight over the cores.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from trainer_core.config.sections import MAX_SEED
from trainer_core.data.chat_format import prompt_ids
from trainer_core.data.chat_template import stop_token_ids, turn_format
from trainer_core.common.errors import UserError
from trainer_core.models.adapters import adapter_base, is_adapter_dir, load_with_adapter
from trainer_core.models.local import check_model_dir


# The limits of each generation setting, owned here: GenParams enforces them, and the CLI's flags and the Chat page's
# sliders take their bounds from these, so no front-end accepts a value the engine then refuses.
MAX_NEW_TOKENS_RANGE = (1, 8192)
TEMPERATURE_RANGE = (0.0, 5.0)
TOP_P_RANGE = (0.0, 1.0)
"""top_p lies in (0, 1]: 0 itself is excluded."""
REPETITION_PENALTY_RANGE = (0.5, 3.0)


@dataclass
class GenParams:
    max_new_tokens: int = 128
    """Longest reply in tokens."""

    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""

    top_p: float = 0.8
    """Nucleus sampling mass."""

    repetition_penalty: float = 1.05
    """Penalty for repeating tokens (1 = none)."""

    seed: int | None = None
    """Fix sampling for reproducible replies."""

    def __post_init__(self) -> None:
        lo, hi = MAX_NEW_TOKENS_RANGE
        if not lo <= self.max_new_tokens <= hi:
            raise UserError("models.max_new_tokens_range", "max_new_tokens must be between {lo} and {hi} (got "
                            "{value})", lo=lo, hi=hi, value=self.max_new_tokens)
        lo, hi = TEMPERATURE_RANGE
        if not lo <= self.temperature <= hi:
            raise UserError("models.temperature_range", "temperature must be between {lo:g} and {hi:g} (got {value})",
                            lo=lo, hi=hi, value=self.temperature)
        lo, hi = TOP_P_RANGE
        if not lo < self.top_p <= hi:
            raise UserError("models.top_p_range", "top_p must be in ({lo:g}, {hi:g}] (got {value})", lo=lo, hi=hi,
                            value=self.top_p)
        lo, hi = REPETITION_PENALTY_RANGE
        if not lo <= self.repetition_penalty <= hi:
            raise UserError("models.repetition_penalty_range", "repetition_penalty must be between {lo:g} and "
                            "{hi:g} (got {value})", lo=lo, hi=hi, value=self.repetition_penalty)
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError("models.seed_range", "seed must be between 0 and {hi} (got {value})", hi=MAX_SEED,
                            value=self.seed)


_worker: ThreadPoolExecutor | None = None


def on_inference_thread(fn, *args, **kwargs) -> Future:
    """Run fn on the process's single inference thread (created on first use)."""
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    return _worker.submit(fn, *args, **kwargs)


def load_chat_model(model_dir: str | Path, *, trust_remote_code: bool = False, device: str = "cpu"):
    """(model, tokenizer) on `device` ("cpu" or "cuda:<i>", which runs.chat_device chooses), safetensors only, in
    eval mode."""
    return on_inference_thread(_load_chat_model, Path(model_dir), trust_remote_code, device).result()


def _load_chat_model(model_dir: Path, trust_remote_code: bool, device: str):
    from transformers import AutoModelForCausalLM

    from trainer_core.config.hardware import native_bf16
    from trainer_core.models.local import load_tokenizer

    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu and native_bf16(torch.cuda.get_device_capability(device)) else torch.float32
    if is_adapter_dir(model_dir):  # a LoRA run's final/ or checkpoint: its base with the adapter, unmerged
        model, _ = load_with_adapter(model_dir, trust_remote_code=trust_remote_code, dtype=dtype)
        tok = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        model.to(device).eval()
        return model, tok
    check_model_dir(model_dir, trust_remote_code=trust_remote_code)
    tok = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=trust_remote_code, dtype=dtype,
                                                 use_safetensors=True)
    model.to(device).eval()
    return model, tok


# The chat models this process holds, by (folder, trust_remote_code, device, folder stamp), least recently used
# first. Held here rather than in Streamlit's cache so that a page can say which ones it still shows and the rest
# give their GPU memory back at once (a training run may need it), before another loads.
_models: "OrderedDict[tuple, tuple]" = OrderedDict()
_models_lock = threading.Lock()
MAX_CHAT_MODELS = 2
"""Models held at most (compare mode shows two)."""


def chat_model(model_dir: str | Path, *, trust_remote_code: bool = False, device: str = "cpu", stamp: float = 0.0):
    """(model, tokenizer), loaded once per (folder, device, stamp): a re-written folder (new stamp) loads again.
    Never mutate what it returns. Loading one more than MAX_CHAT_MODELS first releases the least recently used."""
    key = (str(model_dir), trust_remote_code, device, stamp)
    with _models_lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        extra = max(0, len(_models) + 1 - MAX_CHAT_MODELS)
        dropped = [_models.pop(k) for k in list(_models)[:extra]]
    if dropped:
        del dropped
        _free_memory()
    pair = load_chat_model(model_dir, trust_remote_code=trust_remote_code, device=device)
    with _models_lock:
        _models[key] = pair
    return pair


def release_chat_models(keep: set[tuple[str, bool, str]] | None = None) -> int:
    """Release every held model except those in `keep` ((folder, trust_remote_code, device) triples): compare mode
    turned off, or another model picked. Returns how many went."""
    with _models_lock:
        gone = [k for k in _models if keep is None or k[:3] not in keep]
        dropped = [_models.pop(k) for k in gone]
    if dropped:
        del dropped
        _free_memory()
    return len(gone)


def held_adapter_over(base_dir: str | Path, *, trust_remote_code: bool = False, device: str = "cpu"):
    """(model, tokenizer) of a held LoRA model whose base is `base_dir`, or None. Compare mode answers as the base
    from it with the adapter switched off (`stream_reply(..., adapter_off=True)`), instead of loading the base a
    second time beside it."""
    want = Path(base_dir).resolve()
    with _models_lock:
        held = list(_models.items())
    for (folder, trust, dev, _), pair in reversed(held):  # the most recently used first
        if trust != trust_remote_code or dev != device or not is_adapter_dir(folder):
            continue
        try:
            if adapter_base(folder).resolve() == want:
                return pair
        except UserError:
            continue  # a broken adapter folder: not this base's
    return None


def held_chat_models() -> list[tuple]:
    """The keys of the models held now, least recently used first."""
    with _models_lock:
        return list(_models)


def _free_memory() -> None:
    """Collect what the released models held and return the freed GPU memory to the driver (PyTorch's caching
    allocator keeps it otherwise, and nvidia-smi and other processes still see it as used)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def context_length(model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "seq_length", None)
    tl = getattr(tokenizer, "model_max_length", None)
    if tl and tl < 10**9:
        n = min(n, tl) if n else tl
    return int(n or 2048)


def trim_history(tokenizer, messages: list[dict], persona: str, budget: int) -> tuple[list[dict], list[int]]:
    """Drop the oldest turns until the prompt fits in `budget` tokens; the newest user turn always stays."""
    msgs = list(messages)
    while True:
        ids = prompt_ids(tokenizer, msgs, persona)
        if len(ids) <= budget or len([m for m in msgs if m["role"] != "system"]) <= 1:
            return msgs, ids[-budget:]
        drop = next(i for i, m in enumerate(msgs) if m["role"] != "system")
        msgs.pop(drop)
        # Keep turns paired: a history starting with an assistant turn confuses the template.
        while drop < len(msgs) - 1 and msgs[drop]["role"] == "assistant":
            msgs.pop(drop)


def reply_stop_ids(model, tokenizer) -> list[int]:
    """Ids that end a reply: the model's own generation_config eos ids plus the template's end-of-turn marker."""
    ids = set(stop_token_ids(tokenizer))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for x in (eos if isinstance(eos, list) else [eos]):
        if x is not None:
            ids.add(int(x))
    return sorted(ids)


class ReplyHandle:
    """One reply being generated: stopped from any thread (the Chat page's stop button), and what it cost.

    `tokens` counts every token the model generated for the reply (a final end-of-turn marker included: it is what
    `max_new_tokens` counts); `seconds` runs from the call to `generate` to the last token, prompt processing
    included, so `tokens_per_s` is the speed a reader sees. `text` is the reply as the streamer hands it out, kept
    here as well so that once `finished` is set it is the whole reply, however much of it a reader took.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.stopped = False
        """True when stop() ended the reply before the model did."""
        self.finished = threading.Event()
        self.tokens = 0
        self.text = ""
        self._started: float | None = None
        self._last: float | None = None

    def stop(self) -> None:
        """Ask the generation to end after the token being computed; what was generated so far stays."""
        if not self.finished.is_set():
            self.stopped = True
        self._stop.set()

    def cancel(self) -> None:
        """End the generation without calling the reply stopped: nobody reads it any more."""
        self._stop.set()

    @property
    def seconds(self) -> float:
        return (self._last - self._started) if self._started is not None and self._last is not None else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds > 0 else None

    def _begin(self) -> None:
        self._started = self._last = time.monotonic()

    def _count(self, n: int) -> None:
        self.tokens += n
        self._last = time.monotonic()


def _reply_streamer(tokenizer, stop_ids: list[int], handle: ReplyHandle | None = None):
    """A TextIteratorStreamer that leaves out stop tokens (a marker that is not a special token would otherwise show
    as text) and drops a character cut in half by max_new_tokens instead of ending the reply in U+FFFD. Counts the
    reply's tokens into `handle`."""
    from transformers import TextIteratorStreamer

    stops = set(stop_ids)
    eager = _prefix_stable(tokenizer)

    class ReplyStreamer(TextIteratorStreamer):
        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                if handle is not None:
                    handle._count(value.numel())
                kept = [t for t in value.reshape(-1).tolist() if t not in stops]
                if not kept:
                    return
                if eager:
                    return self._show_now(kept)
                value = torch.tensor(kept, dtype=torch.long)
            super().put(value)

        def _show_now(self, tokens: list[int]) -> None:
            # Every token shows as it arrives (the base class holds a word back until the next space), except a
            # character still missing its other bytes.
            self.token_cache.extend(tokens)
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            shown = text.rstrip("\ufffd")
            if len(shown) > self.print_len:
                self.on_finalized_text(shown[self.print_len:])
            self.print_len = len(shown)
            if text.endswith("\n"):  # as the base class does, so that decoding stays short
                self.token_cache, self.print_len = [], 0

        def on_finalized_text(self, text: str, stream_end: bool = False):
            # Mid-stream the streamer already holds back an unfinished character (it waits for a space or a whole
            # CJK character); only the final flush can end on one.
            text = text.rstrip("\ufffd") if stream_end else text
            if handle is not None:
                handle.text += text  # before the reader can see it: the handle's text is never behind the reader
            super().on_finalized_text(text, stream_end)

    return ReplyStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)


def _prefix_stable(tokenizer) -> bool:
    """Whether decoding more tokens never rewrites text already decoded (byte-level BPE without clean-up), so each
    token can be shown at once. Other decoders (SentencePiece's leading space, clean-up of " ,") may rewrite it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel" and not getattr(tokenizer, "clean_up_tokenization_spaces", True)


class _Cancelled:
    """A stopping criterion that ends generation once its event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate_kwargs(model, tokenizer, messages: list[dict], persona: str, params: GenParams) -> tuple[dict, list[int]]:
    """`generate`'s arguments for one reply (all but the streamer and stopping criteria), and the stop ids."""
    ctx = context_length(model, tokenizer)
    _, ids = trim_history(tokenizer, messages, persona, max(16, ctx - params.max_new_tokens))
    input_ids = torch.tensor([ids], device=model.device)
    eos_ids = reply_stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=params.max_new_tokens,
        do_sample=params.temperature > 0,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=eos_ids,
        pad_token_id=pad,
    )
    marker = turn_format(tokenizer).end_marker
    if tokenizer.chat_template and len(tokenizer.encode(marker, add_special_tokens=False)) > 1:
        # An end-of-turn marker of several tokens (a template ending turns in plain text) cannot be an eos id.
        kwargs.update(stop_strings=[marker], tokenizer=tokenizer)
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs, eos_ids


def stream_reply(model, tokenizer, messages: list[dict], *, persona: str, params: GenParams,
                 handle: ReplyHandle | None = None, adapter_off: bool = False) -> Iterator[str]:
    """Yield the reply text piece by piece while `generate` runs on the inference thread. `handle.stop()` (from
    any thread) ends it early; the pieces already yielded are the reply. `adapter_off`: a PEFT model answers as its
    base (peft's `disable_adapter()`, for this generation only: the one inference thread runs one at a time)."""
    from transformers import StoppingCriteriaList

    handle = handle or ReplyHandle()
    kwargs, eos_ids = _generate_kwargs(model, tokenizer, messages, persona, params)
    streamer = _reply_streamer(tokenizer, eos_ids, handle)
    # The stop button, or a reader that goes away (a closed browser tab, an abandoned generator), stops the
    # generation at the next token, so the one inference thread is free for the next chat.
    kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled(handle._stop)]))

    def work():
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            handle._begin()
            off = model.disable_adapter() if adapter_off else contextlib.nullcontext()
            with torch.inference_mode(), off:
                model.generate(**kwargs)
        except BaseException:
            streamer.end()  # unblock the reader; the error reaches the caller through the future
            raise
        finally:
            handle.finished.set()

    done = on_inference_thread(work)
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        handle.cancel()
    done.result()


def reply(model, tokenizer, messages: list[dict], *, persona: str, params: GenParams) -> str:
    return "".join(stream_reply(model, tokenizer, messages, persona=persona, params=params))
