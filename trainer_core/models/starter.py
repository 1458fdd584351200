"""The starter model: a tiny, randomly initialised Qwen2 with Qwen's real tokenizer, built on this machine.

No model hub is involved. The one outside file, Qwen's BPE vocabulary `qwen.tiktoken`, ships inside the `dashscope`
wheel on PyPI, so `pip download` fetches it and nothing needs installing. The model is random: it exists so that the
whole pipeline (tokenize, train, save, chat) runs in seconds on a CPU with the same ids as real Qwen2 checkpoints.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from tiktoken.load import load_tiktoken_bpe
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from trainer_core import paths
from trainer_core.errors import UserError

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
SEED = 1234


def _log(message: str) -> None:
    print(f"[starter] {message}", file=sys.stderr, flush=True)


def _check_vocab(data: bytes, source: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise UserError(f"{source} is not Qwen's qwen.tiktoken (sha256 {digest}, expected {VOCAB_SHA256}).")
    return data


def _vocab_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return _check_vocab(z.read(VOCAB_IN_WHEEL), f"{VOCAB_IN_WHEEL} in {wheel.name}")


def ensure_qwen_vocab() -> Path:
    """Path of qwen.tiktoken: $QWEN_TIKTOKEN_FILE if set, else the cached copy, fetched from PyPI the first time."""
    override = os.environ.get("QWEN_TIKTOKEN_FILE")
    if override:
        path = Path(override)
        if not path.is_file():
            raise UserError(f"QWEN_TIKTOKEN_FILE={override} does not exist; unset it or point it at qwen.tiktoken.")
        _check_vocab(path.read_bytes(), f"QWEN_TIKTOKEN_FILE={override}")
        return path
    target = paths.CACHE_DIR / "qwen.tiktoken"
    if target.exists():
        return target
    _log(f"fetching qwen.tiktoken from the {VOCAB_WHEEL} wheel on PyPI")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += [VOCAB_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError(
                f"Could not download {VOCAB_WHEEL} to get qwen.tiktoken ({result.stderr.strip()[-300:]}). "
                "Without network, set QWEN_TIKTOKEN_FILE to a copy of qwen.tiktoken."
            )
        data = _vocab_from_wheel(wheels[0])
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


def build_qwen_tokenizer(vocab_path: Path) -> PreTrainedTokenizerFast:
    """Qwen2's fast tokenizer rebuilt from qwen.tiktoken: same ids as tiktoken on NFC text, ChatML template."""
    ranks = load_tiktoken_bpe(str(vocab_path))
    vocab, merges = _vocab_and_merges(ranks)
    # ignore_merges: a pre-token that is itself in the vocabulary is kept whole, as tiktoken does.
    core = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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


def cached_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen tokenizer, built once and then loaded from the cache."""
    cached = paths.CACHE_DIR / TOKENIZER_CACHE_NAME
    if (cached / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(cached)
    _log("building the Qwen tokenizer from qwen.tiktoken (once; cached afterwards)")
    tokenizer = build_qwen_tokenizer(ensure_qwen_vocab())
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    tokenizer.save_pretrained(partial, save_jinja_files=False)
    try:
        os.rename(partial, cached)
    except OSError:  # another process cached it first
        shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def _starter_config() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=151936,  # Qwen2 pads its 151,646 tokens to a multiple of 128 for the GPU
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=1e6,
        bos_token_id=SPECIAL_TOKENS["<|endoftext|>"],
        eos_token_id=SPECIAL_TOKENS["<|im_end|>"],
        dtype="float32",
    )


def _starter_generation_config() -> GenerationConfig:
    return GenerationConfig(
        eos_token_id=[SPECIAL_TOKENS["<|im_end|>"], SPECIAL_TOKENS["<|endoftext|>"]],
        pad_token_id=SPECIAL_TOKENS["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.05,
        max_new_tokens=256,
    )


def _move_into_place(built: Path, target: Path, force: bool) -> None:
    if target.exists():
        if (target / "READY").exists() and not force:
            shutil.rmtree(built)  # another process finished first; keep its copy
            return
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, target)


def prepare_models(force: bool = False) -> Path:
    """Build the starter model into paths.STARTER_MODEL_DIR unless it is already there; returns that directory.

    The model is written to a temporary directory beside the target and renamed into place with READY inside it,
    so the directory either does not exist or is complete.
    """
    target = paths.STARTER_MODEL_DIR
    if (target / "READY").exists() and not force:
        return target
    tokenizer = cached_qwen_tokenizer()
    target.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _log(f"initialising a random Qwen2 (seed {SEED})")
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(SEED)
            model = Qwen2ForCausalLM(_starter_config())
        model.generation_config = _starter_generation_config()
        _log(f"writing {target}")
        model.save_pretrained(built, safe_serialization=True)
        tokenizer.save_pretrained(built, save_jinja_files=False)  # template inside tokenizer_config.json
        (built / "READY").write_text("starter model complete\n")
        built.chmod(0o755)  # mkdtemp makes it private
        _move_into_place(built, target, force)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    _log("starter model ready")
    return target


REMOTE_CODE_SOURCES = Path(__file__).parent / "fixtures" / "remote_code"
REMOTE_CODE_FILES = ("configuration_tinyqwen.py", "modeling_tinyqwen.py", "tokenization_tinyqwen.py")


def build_remote_code_fixture(dest: Path) -> Path:
    """Write TinyQwen to dest: a tiny model in Qwen-7B-Chat's layout that loads only with trust_remote_code=True.

    Its tokenizer is tiktoken-backed and has no chat template, which is the case chat_format's ChatML path serves.
    """
    # Imported here: the classes are only needed to create the weights.
    from trainer_core.models.fixtures.remote_code.configuration_tinyqwen import TinyQwenConfig
    from trainer_core.models.fixtures.remote_code.modeling_tinyqwen import TinyQwenForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_SOURCES / name, dest / name)
    shutil.copyfile(ensure_qwen_vocab(), dest / "qwen.tiktoken")
    tokenizer_map = ["tokenization_tinyqwen.TinyQwenTokenizer", None]
    config = TinyQwenConfig()
    config.auto_map = {
        "AutoConfig": "configuration_tinyqwen.TinyQwenConfig",
        "AutoModelForCausalLM": "modeling_tinyqwen.TinyQwenForCausalLM",
        "AutoTokenizer": tokenizer_map,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = TinyQwenForCausalLM(config)
    # Like Qwen-7B-Chat: generation stops only at <|endoftext|>; chat code must add <|im_end|> itself.
    model.generation_config = GenerationConfig(eos_token_id=151643, pad_token_id=151643, max_new_tokens=64)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer_config = {
        "tokenizer_class": "TinyQwenTokenizer",
        "auto_map": {"AutoTokenizer": tokenizer_map},
        "model_max_length": 2048,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return dest
