"""The machine's limit: its measured dense matmul peak in each training dtype, and model-FLOPs utilisation against it.

    .venv/bin/python bench/peak_bench.py                 # every training dtype this machine has, GFLOP/s each
    .venv/bin/python bench/peak_bench.py --dtypes fp32   # a subset
    .venv/bin/python bench/peak_bench.py --size 1024 --repeats 3 --json peak.json

Peak: the median rate of `--repeats` timed products of two random n x n matrices (never zeros) after warm-ups,
2 n^3 FLOPs each, on every core torch uses by default (the machine's limit, not a rank's share). Dtypes: on a CPU,
fp32 always and bf16 only where /proc/cpuinfo lists AMX (amx_bf16) or AVX-512-BF16 (avx512_bf16), the instructions
that make bf16 matmuls native (elsewhere torch emulates bf16, slower than fp32); on a CUDA GPU bf16, fp16 and tf32 on
the tensor cores and fp32 as torch runs it by default (TF32 off), timed with CUDA events (bench/gpu_check.py; nothing
here has a GPU, so that path has run only on the GPU check machine's code path, never on this one).

MFU (`model_flops`, `mfu`): model FLOPs of the trained tokens per second over the peak of the dtype the recipe trains
in. Per trained (labelled) token: 6 x the parameters that multiply it (every weight except the input embedding,
whose lookup is no matmul; a tied head counted once, as the head) + attention 12 x layers x attention width x its
mean causal context. Only trained tokens count (prompt and padding positions are not credited), so MFU is a floor on
the work the machine did, the same floor for every recipe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path

EMBEDDING_NAMES = ("embed_tokens.weight", "lm_head.weight")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags that make bf16 matmuls native on a CPU
CUDA_DTYPES = ("bf16", "fp16", "tf32", "fp32")


# ---------------------------------------------------------------- MFU (no torch: bench/gpu_check.py's driver uses it)

def model_flops(*, params: int, label_tokens: int, layers: int, attn_width: int, mean_label_context: float) -> dict:
    """Training FLOPs (forward + backward) credited to `label_tokens` trained positions.

    Parameters: 6 x `params` per labelled token (2 forward, 4 backward per weight), `params` being the weights that
    multiply a token's activations: all but the input embedding (a tied head counted once). Attention: per labelled
    token and layer, QK^T and AV over its causal context c (the positions it attends to within its record): 2 products
    x 2 x c x attn_width forward, x3 with backward = 12 x c x attn_width, where attn_width = query heads x head dim.
    `mean_label_context` is c averaged over the labelled positions."""
    weights = 6 * params * label_tokens
    attention = 12 * layers * attn_width * mean_label_context * label_tokens
    return {"params": weights, "attention": attention, "total": weights + attention}


def mfu(flops: float, seconds: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the measured peak; None without a peak or a time."""
    if not peak_flops_per_s or seconds <= 0:
        return None
    return flops / seconds / peak_flops_per_s


def safetensors_counts(model_dir: Path) -> tuple[int, int, int]:
    """(all parameters, non-embedding parameters, input-embedding parameters of an untied model's separate head)
    from the safetensors headers alone (no torch, no weights read); a tied head is stored once, as the embedding."""
    total = non_embedding = head = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
            if not name.endswith(EMBEDDING_NAMES):
                non_embedding += count
            elif name.endswith("lm_head.weight"):
                head += count
    return total, non_embedding, head


def model_shape(model_dir: Path) -> dict:
    """What MFU needs of a model folder: `matmul_params` (non-embedding + the head: the tied embedding once, or an
    untied lm_head), layers, attention width; also the totals."""
    cfg = json.loads((model_dir / "config.json").read_text())
    total, non_embedding, untied_head = safetensors_counts(model_dir)
    head = untied_head or cfg["vocab_size"] * cfg["hidden_size"]  # tied: the embedding matrix is the head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"params": total, "non_embedding_params": non_embedding, "matmul_params": non_embedding + head,
            "layers": cfg["num_hidden_layers"], "attn_width": cfg["num_attention_heads"] * head_dim,
            "hidden": cfg["hidden_size"], "vocab": cfg["vocab_size"]}


def mean_label_context(model_dir: Path, records: list[dict], persona: str, max_length: int) -> float:
    """Mean causal context of a labelled position (the keys its query attends to: every earlier position of its
    record) in `records` as our trainer encodes them at `max_length`; packing keeps records apart."""
    from bench.common import as_conversations
    from trainer_core.data.chat_format import IGNORE_INDEX, encode_conversations
    from trainer_core.models.local import load_tokenizer

    total = count = 0
    for e in encode_conversations(load_tokenizer(model_dir), as_conversations(records), persona=persona,
                                  max_length=max_length):
        for i, label in enumerate(e.labels):
            if label != IGNORE_INDEX:
                total, count = total + i, count + 1  # the label at i is predicted at i - 1 from i keys
    return total / max(count, 1)


def recipe_mfu(shape: dict, ctx: float, label_tokens: int, seconds: float, peak: float | None) -> dict:
    """A recipe row's model GFLOP/s and MFU (None without a peak)."""
    flops = model_flops(params=shape["matmul_params"], label_tokens=label_tokens, layers=shape["layers"],
                        attn_width=shape["attn_width"], mean_label_context=ctx)["total"]
    return {"model_gflops_per_s": flops / seconds / 1e9 if seconds > 0 else None, "mfu": mfu(flops, seconds, peak)}


# ---------------------------------------------------------------- the peak

def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def training_dtypes(device: str, flags: set[str] | None = None) -> list[str]:
    """The dtypes a recipe can train in here, whose peak the bench measures."""
    if device == "cuda":
        return list(CUDA_DTYPES)
    flags = cpu_flags() if flags is None else flags
    return ["fp32"] + (["bf16"] if any(f in flags for f in CPU_BF16_FLAGS) else [])


def measure_peak(dtype: str, device: str = "cpu", n: int | None = None, repeats: int = 5, warmup: int = 2) -> dict:
    """{"flops_per_s": median, "best_flops_per_s", "what", "times_ms"} of `repeats` n x n x n matmuls in `dtype`."""
    import torch

    n = n or (8192 if device == "cuda" else 2048)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32,
                   "fp32": torch.float32}[dtype]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch_dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch_dtype, generator=g)
    if device == "cuda":
        tf32_was = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        for _ in range(warmup):
            a @ b
        times = [_time_cuda(a, b) if device == "cuda" else _time_cpu(a, b) for _ in range(repeats)]
    finally:
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32_was
    flops = 2 * n**3
    clock = "CUDA events" if device == "cuda" else f"perf_counter, {torch.get_num_threads()} threads"
    return {"dtype": dtype, "device": device, "flops_per_s": flops / statistics.median(times),
            "best_flops_per_s": flops / min(times),
            "what": f"{n}x{n}x{n} {dtype} torch.matmul, median of {repeats}, {clock}",
            "times_ms": [round(t * 1e3, 3) for t in times]}


def _time_cpu(a, b) -> float:
    t = time.perf_counter()
    a @ b
    return time.perf_counter() - t


def _time_cuda(a, b) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    a @ b
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def peaks(dtypes: list[str] | None = None, device: str | None = None, **kw) -> dict[str, dict]:
    """{dtype: measure_peak(...)} for `dtypes` (default: every training dtype of the device)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {d: measure_peak(d, device, **kw) for d in (dtypes or training_dtypes(device))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", help="comma-separated, of fp32, bf16 (CPU with AMX/AVX-512-BF16), fp16, tf32 (CUDA); "
                   "default every training dtype of this machine")
    p.add_argument("--size", type=int, help="n of the n x n x n product (default 2048 on a CPU, 8192 on a GPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed products per dtype, median kept (default 5)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    available = training_dtypes(device)
    dtypes = [d for d in args.dtypes.split(",") if d] if args.dtypes else available
    unknown = [d for d in dtypes if d not in available]
    if unknown:
        p.error(f"--dtypes: {', '.join(unknown)} not a training dtype of this machine ({device}: "
                f"{', '.join(available)})")
    if args.repeats < 1 or (args.size is not None and args.size < 16):
        p.error("--repeats must be at least 1 and --size at least 16")
    out = peaks(dtypes, device, n=args.size, repeats=args.repeats)
    flags = sorted(cpu_flags() & {*CPU_BF16_FLAGS, "amx_tile", "avx512f", "avx2"}) if device == "cpu" else []
    print(f"{device}{' flags: ' + ' '.join(flags) if flags else ''}")
    print("| dtype | GFLOP/s (median) | GFLOP/s (best) | how |\n|---|---|---|---|")
    for d, r in out.items():
        print(f"| {d} | {r['flops_per_s'] / 1e9:.1f} | {r['best_flops_per_s'] / 1e9:.1f} | {r['what']} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
