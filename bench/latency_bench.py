"""Latency figures: CLI start-up, tailing a huge log, chat time-to-first-token, streaming overhead.

    .venv/bin/python bench/latency_bench.py [--model models/qwen2-starter] [--tokens 64] [--startup-only]

0. CLI start-up, each a fresh `python -m trainer_core` process, median of 5 (wall and CPU seconds; CPU time is the
   figure a loaded machine distorts least): `--help`; `check-data` on a 100-record file with token statistics on
   the starter tokenizer, now (tokenizers + jinja2 alone) and as before (`--trust-remote-code` forces the
   AutoTokenizer path: transformers and torch imported); `chat --max-new-tokens 8`, split into start-up and model
   load (until its "persona:" line on stderr) and the first reply byte on stdout.
1. `trainer_core.common.tailing.tail_lines` on a 1 GB log: a sparse file in /tmp (a 1 GB hole, then 2,000 real trainer
   log lines at the end), last 200 lines, median and worst of 20 calls.
2. Chat time-to-first-token: `trainer_core.models.inference.stream_reply` on the starter model, from the call to the first
   text piece (prompt building, generate in its worker thread, the streamer), median of 5 after a warm-up.
3. Streaming overhead: greedy decoding of the same prompt for the same number of tokens (eos disabled so both run
   the full count), through stream_reply and through a plain `model.generate`; tokens/s of each and the difference.
   Both run on the inference thread, where the product runs every generate, so the difference is what streaming
   costs. The same plain generate on a fresh thread, alternated with torch work on another, is printed too: that
   cross-thread cost (OpenMP teams competing on 2 cores) is why the product keeps all chat work on one thread.
The "metric line appears on the Monitor page within 2 s" figure is measured in the browser harness, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

import torch  # noqa: E402

from trainer_core.models.inference import (GenParams, load_chat_model, on_inference_thread,  # noqa: E402
                                    reply_stop_ids, stream_reply, trim_history)
from trainer_core.config.run_config import DEFAULT_PERSONA  # noqa: E402
from trainer_core.common.tailing import tail_lines  # noqa: E402

GB = 1 << 30
MESSAGES = [{"role": "user", "content": "皇上今日可曾来过？"}]


def _cli(*args: str) -> tuple[float, float]:
    """(wall s, CPU s) of one `python -m trainer_core ARGS` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainer_core", *args], cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _chat_first_byte(model: Path) -> tuple[float, float]:
    """(s to the "persona:" line, s to the first reply byte) of one CLI chat, from the process start."""
    t = time.perf_counter()
    argv = [sys.executable, "-m", "trainer_core", "chat", str(model), "--prompt", MESSAGES[0]["content"],
            "--max-new-tokens", "8", "--temperature", "0"]
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    loaded = first = None
    while first is None:
        events = sel.select(timeout=300)
        if not events:
            raise RuntimeError("chat printed nothing for 300 s")
        for key, _ in events:
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)  # that stream is closed; the other still reads
            elif key.data == "err" and loaded is None and b"persona:" in data:
                loaded = time.perf_counter() - t
            elif key.data == "out":  # the reply, or the newline that ends an empty one
                first = time.perf_counter() - t
    proc.communicate()
    return loaded, first


def startup_figures(model: Path, n: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "100.jsonl"
        rows = [{"instruction": f"第{i}个问题：今日天气如何？", "output": f"回皇上，今日天气晴好，是第{i}个好日子。"}
                for i in range(100)]
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        cases = {"--help": ["--help"],
                 "check-data 100 records (tokenizers)": ["check-data", str(data), "--model", str(model)],
                 "check-data 100 records (before: transformers)": ["check-data", str(data), "--model", str(model),
                                                                    "--trust-remote-code"]}
        for name, args in cases.items():
            runs = [_cli(*args) for _ in range(n)]
            print(f"{name}: median {statistics.median(w for w, _ in runs):.2f} s wall, "
                  f"{statistics.median(c for _, c in runs):.2f} s CPU (goal <= 2 s)", flush=True)
    runs = [_chat_first_byte(model) for _ in range(3)]
    print(f"CLI chat ({model.name}): model loaded at {statistics.median(a for a, _ in runs):.2f} s, first reply "
          f"byte at {statistics.median(b for _, b in runs):.2f} s (median of 3, from process start)", flush=True)


def tail_figures(n_calls: int = 20) -> dict:
    fd, name = tempfile.mkstemp(prefix="latency-1g-", suffix=".log")
    path = Path(name)
    try:
        lines = "".join(f"[trainer] step {i}/2000 loss {10 - i / 500:.4f} lr 1.0e-03 tokens/s 950.2\n"
                        for i in range(2000)).encode()
        with os.fdopen(fd, "wb") as f:
            f.truncate(GB - len(lines))  # a hole: no disk blocks, reads as zeros
            f.seek(GB - len(lines))
            f.write(lines)
        assert path.stat().st_size == GB
        times = []
        for _ in range(n_calls):
            t = time.perf_counter()
            got = tail_lines(path, 200)
            times.append(time.perf_counter() - t)
        assert got[-1].startswith("[trainer] step 1999/2000") and len(got) == 200
        return {"median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}
    finally:
        path.unlink(missing_ok=True)


def ttft_figures(model, tok, n: int = 5) -> dict:
    params = GenParams(max_new_tokens=16, temperature=0.0, seed=0)
    "".join(stream_reply(model, tok, MESSAGES, persona=DEFAULT_PERSONA, params=params))  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        stream = stream_reply(model, tok, MESSAGES, persona=DEFAULT_PERSONA, params=params)
        next(stream)
        times.append(time.perf_counter() - t)
        for _ in stream:  # let the worker thread finish before the next call
            pass
    return {"median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


def streaming_figures(model, tok, n_tokens: int, repeats: int = 3) -> dict:
    """Same prompt, greedy, n_tokens each way; min_new_tokens keeps either from stopping at an eos token."""
    params = GenParams(max_new_tokens=n_tokens, temperature=0.0, seed=0, repetition_penalty=1.0)
    ctx = model.config.max_position_embeddings
    _, ids = trim_history(tok, MESSAGES, DEFAULT_PERSONA, ctx - n_tokens)
    input_ids = torch.tensor([ids])
    plain_kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n_tokens,
                        min_new_tokens=n_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                        pad_token_id=reply_stop_ids(model, tok)[0])

    def generate() -> None:
        with torch.inference_mode():
            out = model.generate(**plain_kwargs)
        assert out.shape[1] - input_ids.shape[1] == n_tokens

    def plain() -> float:
        t = time.perf_counter()
        on_inference_thread(generate).result()
        return time.perf_counter() - t

    def fresh_thread() -> float:
        t = time.perf_counter()
        worker = threading.Thread(target=generate)
        worker.start()
        worker.join()
        return time.perf_counter() - t

    def streamed() -> float:
        t = time.perf_counter()
        "".join(stream_reply(model, tok, MESSAGES, persona=DEFAULT_PERSONA, params=params))
        return time.perf_counter() - t

    # stream_reply passes eos ids explicitly; min_new_tokens through the generation config keeps it going.
    model.generation_config.min_new_tokens = n_tokens
    try:
        plain(), streamed()  # warm-up
        p, s, f = [], [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            p.append(plain())
            s.append(streamed())
        for _ in range(repeats):
            f.append(fresh_thread())
            plain()  # torch work on the inference thread in between, as a dashboard would have
    finally:
        model.generation_config.min_new_tokens = None
    plain_tps, stream_tps = n_tokens / statistics.median(p), n_tokens / statistics.median(s)
    return {"tokens": n_tokens, "plain_tok_s": plain_tps, "stream_tok_s": stream_tps,
            "overhead": 1 - stream_tps / plain_tps, "fresh_thread_tok_s": n_tokens / statistics.median(f)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=PROJECT_ROOT / "models" / "qwen2-starter")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--startup-only", action="store_true", help="only the CLI start-up figures (section 0)")
    args = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    startup_figures(args.model)
    if args.startup_only:
        return 0
    tail = tail_figures()
    print(f"tail_lines(200) of a 1 GB log: median {tail['median_ms']:.2f} ms, worst {tail['max_ms']:.2f} ms "
          "(goal <= 50 ms)", flush=True)
    model, tok = load_chat_model(args.model)
    ttft = ttft_figures(model, tok)
    print(f"chat time to first token ({args.model.name}, CPU): median {ttft['median_ms']:.0f} ms, "
          f"worst {ttft['max_ms']:.0f} ms (goal <= 300 ms)", flush=True)
    st = streaming_figures(model, tok, args.tokens)
    print(f"greedy {st['tokens']} tokens: plain generate {st['plain_tok_s']:.1f} tok/s, stream_reply "
          f"{st['stream_tok_s']:.1f} tok/s, streaming overhead {st['overhead']:+.1%} (goal <= 10%)", flush=True)
    print(f"the same plain generate on a fresh thread between calls on the inference thread: "
          f"{st['fresh_thread_tok_s']:.1f} tok/s ({st['fresh_thread_tok_s'] / st['plain_tok_s'] - 1:+.1%})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
