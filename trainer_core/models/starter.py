"""The starter model: a tiny, randomly initialised Qwen2 with Qwen's real tokenizer, built on this machine.

No model hub is involved. The one outside file, Qwen's BPE vocabulary `qwen.tiktoken`, is fetched from PyPI
(tokenizer.py). The model is random: it exists so that the whole pipeline (tokenize, train, save, chat) runs in
seconds on a CPU with the same ids as real Qwen2 checkpoints.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from trainer_core.common import paths
from trainer_core.models.tokenizer import SPECIAL_TOKENS, cached_qwen_tokenizer, ensure_qwen_vocab, log
from trainer_core.common.atomic import replace_dir

SEED = 1234


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
    if (target / "READY").exists() and not force:
        shutil.rmtree(built)  # another process finished first; keep its copy
        return
    replace_dir(built, target)


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
        log(f"initialising a random Qwen2 (seed {SEED})")
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(SEED)
            model = Qwen2ForCausalLM(_starter_config())
        model.generation_config = _starter_generation_config()
        log(f"writing {target}")
        model.save_pretrained(built, safe_serialization=True)
        tokenizer.save_pretrained(built, save_jinja_files=False)  # template inside tokenizer_config.json
        (built / "READY").write_text("starter model complete\n")
        built.chmod(0o755)  # mkdtemp makes it private
        _move_into_place(built, target, force)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    log("starter model ready")
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
