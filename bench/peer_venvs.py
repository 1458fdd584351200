"""Bench-only virtual environments for the peer trainers of bench/peer_bench.py (TRL, LLaMA-Factory).

Each peer gets its own venv under .cache/peer-venvs/<peer>/ (git-ignored), so its pins never touch the product's
.venv or requirements.txt. torch is installed first from the machine's local CPU wheel (where pip's own find-links
configuration, PIP_FIND_LINKS or pip.conf, points), so pip sees torch==2.13.0 satisfied and never downloads a CUDA
build; then the peer at an exact version, with the same transformers and DeepSpeed as ours wherever the peer allows
it, so the engines underneath are the same.

    .venv/bin/python bench/peer_venvs.py trl llamafactory     # create or complete them (a few minutes each)

PEER_PYTHON=/path/to/python uses that interpreter instead, with the peer already installed in it (no network needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

VENVS = PROJECT_ROOT / ".cache" / "peer-venvs"
TORCH = os.environ.get("PEER_TORCH", "torch==2.13.0")  # the local wheel's version
DEEPSPEED = "deepspeed==0.19.8"  # ours: the same ZeRO-2 offload engine and CPU Adam for every recipe
PEFT = "peft==0.21.2"  # ours (requirements.txt): the same LoRA layers for TRL's LoRA recipe (peer_bench --methods)
TORCHAUDIO = "torchaudio==2.11.1"  # LLaMA-Factory only imports it (below)

# LLaMA-Factory 0.9.5 declares torchvision, torchaudio, av, gradio and modelscope for its multimodal paths, web UI and
# hub downloads. It is installed with --no-deps, then every other requirement of its METADATA as declared, because
# PyPI's torchaudio/torchvision would replace the local CPU torch. Its data/mm_plugin.py imports torchaudio
# unconditionally (for audio inputs, which a text SFT never has), and PyPI's torchaudio is built against CUDA torch:
# its compiled ops need libc10_cuda.so, which the CPU torch lacks, and the CPU build's index (download.pytorch.org)
# is not reachable here. So torchaudio goes in with --no-deps and without its compiled ops (strip_torchaudio_ops):
# torchaudio then imports as it does when built without extensions, and every text path of LLaMA-Factory is untouched.
# Where the ops do load (a matching CUDA torch set by PEER_TORCH on a GPU machine), they stay.
LLAMAFACTORY_DEPS = [
    "accelerate<=1.11.0,>=1.3.0", "datasets<=4.0.0,>=2.16.0", "einops", "fire", "numpy", "omegaconf", "packaging",
    "pandas", "peft<=0.18.1,>=0.18.0", "protobuf", "pydantic", "pyyaml", "safetensors", "scipy", "sentencepiece",
    "tiktoken", "torchdata<=0.11.0,>=0.10.0", "transformers==4.57.6", "trl<=0.24.0,>=0.18.0", "tyro<0.9.0",
    "matplotlib>=3.7.0",
]

PEERS: dict[str, dict] = {
    "trl": {"pins": ["trl==0.24.0", "transformers==4.57.6", "accelerate==1.11.0", "datasets==4.0.0", PEFT, DEEPSPEED,
                     "ninja"],
            "no_deps": [], "check": "import trl, peft, deepspeed; print(trl.__version__, peft.__version__)"},
    "llamafactory": {"pins": [*LLAMAFACTORY_DEPS, DEEPSPEED, "ninja"], "no_deps": ["llamafactory==0.9.5", TORCHAUDIO],
                     "check": "import llamafactory.data.mm_plugin, llamafactory; print(llamafactory.__version__)"},
}


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure(peer: str, log=sys.stdout) -> Path:
    """Create the peer's venv if its check import fails; returns its python. Raises CalledProcessError on failure."""
    spec = PEERS[peer]
    given = os.environ.get("PEER_PYTHON")
    if given:
        # An interpreter that has the peer installed already: the GPU check's venv (bench/gpu_check.sh), installed
        # from its wheelhouse where no package index can be reached.
        subprocess.run([given, "-c", spec["check"]], check=True, stdout=log, stderr=subprocess.STDOUT)
        return Path(given)
    py = python(peer)
    if py.is_file() and subprocess.run([str(py), "-c", spec["check"]], capture_output=True).returncode == 0:
        return py
    VENVS.mkdir(parents=True, exist_ok=True)
    # A venv that exists but fails its check is completed in place (a pin added since it was made, e.g. TRL's peft),
    # not rebuilt: pip installs only what is missing or at another version.
    steps = [] if py.is_file() else [[_system_python(), "-m", "venv", "--clear", str(VENVS / peer)],
                                     [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"]]
    steps.append([str(py), "-m", "pip", "install", "-q", TORCH])
    if spec["no_deps"]:
        steps.append([str(py), "-m", "pip", "install", "-q", "--no-deps", *spec["no_deps"]])
    steps.append([str(py), "-m", "pip", "install", "-q", TORCH, *spec["pins"]])
    for argv in steps:
        print("+", " ".join(argv), file=log, flush=True)
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT)
    if TORCHAUDIO in spec["no_deps"]:
        strip_torchaudio_ops(py, log)
    return py


def strip_torchaudio_ops(py: Path, log=sys.stdout) -> None:
    """Remove torchaudio's compiled ops from the venv of `py` when they cannot load there (built for CUDA torch, they
    fail beside a CPU torch or another torch release, and with them `import torchaudio`); without them torchaudio
    loads its Python API only. Where they load (a matching CUDA torch on a GPU machine), they stay."""
    if subprocess.run([str(py), "-c", "import torchaudio"], capture_output=True).returncode == 0:
        return
    lib = subprocess.run([str(py), "-c", "import importlib.util as u, pathlib; "
                          "print(pathlib.Path(u.find_spec('torchaudio').origin).parent / 'lib')"],
                         check=True, capture_output=True, text=True).stdout.strip()
    for so in Path(lib).glob("*.so"):
        print("- torchaudio op removed:", so.name, file=log, flush=True)
        so.unlink()


def _system_python() -> str:
    """The interpreter our .venv was made from (venv's `home`), so peers run the same Python."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "executable":
            return value.strip()
    return sys.executable


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PEERS):
        print(name, "->", ensure(name), flush=True)
