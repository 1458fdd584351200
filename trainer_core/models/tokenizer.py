"""Qwen's tokenizer rebuilt from its BPE vocabulary `qwen.tiktoken`, for the starter model and for Qwen-1 imports.

The vocabulary ships inside the `dashscope` wheel on PyPI, so `pip download` fetches it and nothing needs
installing. The rebuilt tokenizer gives the same ids as tiktoken (and as real Qwen2 checkpoints) and is built once
per machine, then loaded from the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from trainer_core.common import paths
from trainer_core.common.errors import UserError

VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
VOCAB_WHEEL = "dashscope==2.0.2"
VOCAB_IN_WHEEL = "dashscope/resources/qwen.tiktoken"
# Qwen's pre-tokenizer regex. Unlike GPT-4's it splits numbers into single digits (\p{N}, not \p{N}{1,3}).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# ChatML as Qwen2 writes it, minus Qwen2's default system prompt: the persona decides the system turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Bump when build_qwen_tokenizer changes, so a stale cached tokenizer is not reused.
TOKENIZER_CACHE_NAME = "qwen-tokenizer-v1"


def log(message: str) -> None:
    print(f"[starter] {message}", file=sys.stderr, flush=True)


def _check_vocab(data: bytes, source: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise UserError("models.vocab_not_qwen", "{source} is not Qwen's qwen.tiktoken (sha256 {digest}, expected "
                        "{expected}).", source=source, digest=digest, expected=VOCAB_SHA256)
    return data


def _vocab_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return _check_vocab(z.read(VOCAB_IN_WHEEL), f"{VOCAB_IN_WHEEL} in {wheel.name}")


def _download_vocab() -> bytes:
    log(f"fetching qwen.tiktoken from the {VOCAB_WHEEL} wheel on PyPI")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += [VOCAB_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError("models.vocab_download_failed", "Could not download {wheel} to get qwen.tiktoken "
                            "({reason}). Without network, set QWEN_TIKTOKEN_FILE to a copy of qwen.tiktoken.",
                            wheel=VOCAB_WHEEL, reason=result.stderr.strip()[-300:])
        return _vocab_from_wheel(wheels[0])


def ensure_qwen_vocab() -> Path:
    """Path of qwen.tiktoken: $QWEN_TIKTOKEN_FILE if set, else the cached copy, fetched from PyPI the first time."""
    override = os.environ.get("QWEN_TIKTOKEN_FILE")
    if override:
        path = Path(override)
        if not path.is_file():
            raise UserError("models.vocab_override_missing", "QWEN_TIKTOKEN_FILE={path} does not exist; unset it or "
                            "point it at qwen.tiktoken.", path=override)
        _check_vocab(path.read_bytes(), f"QWEN_TIKTOKEN_FILE={override}")
        return path
    target = paths.CACHE_DIR / "qwen.tiktoken"
    if target.exists():
        return target
    data = _download_vocab()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def _byte_to_char() -> dict[int, str]:
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map to code points from 256 up,
    # so every token is a printable string in tokenizer.json.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    table = _byte_to_char()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    # tiktoken merges whichever adjacent pair forms the lowest-ranked token. Listing every split of every token
    # whose halves are tokens, ordered by the rank of the result, makes HF's BPE choose the same pairs.
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {text(t): r for t, r in ranks.items()}, [(text(m[3]), text(m[4])) for m in merges]


def load_ranks(vocab_path: Path) -> dict[bytes, int]:
    """The BPE ranks of a qwen.tiktoken file, or a one-line refusal of a broken one."""
    from tiktoken.load import load_tiktoken_bpe

    try:
        return load_tiktoken_bpe(str(vocab_path))
    except ValueError as e:  # a line that is not "<base64> <rank>" (binascii.Error is a ValueError too)
        raise UserError("models.vocab_broken", "{vocab} is not a readable qwen.tiktoken ({detail}); re-download it",
                        vocab=str(vocab_path), detail=str(e).splitlines()[0][:200]) from None


def build_qwen_tokenizer(vocab_path: Path):
    """Qwen2's fast tokenizer rebuilt from qwen.tiktoken: same ids as tiktoken on NFC text, ChatML template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _vocab_and_merges(load_ranks(vocab_path))
    # ignore_merges: a pre-token that is itself in the vocabulary is kept whole, as tiktoken does.
    core = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    for token, expected in SPECIAL_TOKENS.items():
        assert tokenizer.convert_tokens_to_ids(token) == expected, token
    return tokenizer


def cached_qwen_tokenizer(vocab: Path | None = None):
    """The Qwen tokenizer of `vocab` (default: Qwen's own, fetched once), loaded from the cache when `vocab` is
    Qwen's own file and built (and cached) otherwise. A Qwen-1 folder's qwen.tiktoken is normally that same file."""
    from transformers import PreTrainedTokenizerFast

    cached = paths.CACHE_DIR / TOKENIZER_CACHE_NAME
    canonical = vocab is None or hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256
    if canonical and (cached / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(cached)
    if not canonical:
        return build_qwen_tokenizer(vocab)
    log("building the Qwen tokenizer from qwen.tiktoken (once; cached afterwards)")
    tokenizer = build_qwen_tokenizer(vocab or ensure_qwen_vocab())
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    tokenizer.save_pretrained(partial, save_jinja_files=False)
    try:
        os.rename(partial, cached)
    except OSError:  # another process cached it first
        shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def qwen1_tokenizer(vocab: Path, seq_length: int, extra_tokens: int, first_extra_id: int):
    """The Qwen tokenizer plus Qwen-1's `<|extra_N|>` special tokens at their ids, for an imported Qwen-1 model."""
    tok = cached_qwen_tokenizer(vocab)
    extras = [f"<|extra_{i}|>" for i in range(extra_tokens)]
    tok.add_special_tokens({"additional_special_tokens": extras}, replace_additional_special_tokens=False)
    if tok.convert_tokens_to_ids(extras[0]) != first_extra_id or len(tok) != first_extra_id + extra_tokens:
        raise UserError("models.qwen1_vocab_ranks", "{vocab} does not have Qwen-1's 151,643 ranks; is it Qwen's "
                        "qwen.tiktoken?", vocab=str(vocab))
    tok.model_max_length = seq_length
    return tok
