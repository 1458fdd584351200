"""GPU check: our real CLI on one GPU of the GPU check machine, in one command of at most ~9 minutes.

Run through bench/gpu_check.sh (docs/gpu_check.md says how), which installs the wheelhouse into a venv and then runs

    python bench/gpu_check.py run --work DIR --out DIR --deadline EPOCH_S [--dry-run] [--steps 2]

Steps, each in its own process group with its own time limit; a step that fails or hangs is recorded with its error
and the next one runs:
  env        versions, the GPU's name and memory;
  peak       the measured dense matmul rate in bf16, fp16, tf32 and fp32 (bench/peak_bench.py: 8192^3, CUDA events,
             median of 10); bf16's is MFU's denominator (the runs train in bf16);
  numerics   the blockwise head loss (trainer_core.training.linear_ce) in bf16 and fp16 against fp64, beside the
             plain 16-bit product, at mean target probabilities up to 0.999;
  starter    the starter model rebuilt offline from qwen.tiktoken by our prepare-models code;
  shapes     random bf16 models of the benchmarks' --shape presets (bench/common.py SHAPES): qwen2.5-0.5b (hidden
             896, 24 layers, 14/2 heads, 4864, tied 151,936) and qwen2.5-0.5b-6l (its 6-layer cut), built on the GPU;
  train      `python -m trainer_core train configs/quickstart.yaml --set ...`, ZeRO-2 and ZeRO-3, bf16 (precision
             auto), each model, a few optimizer steps: tokens/s, MFU, max_memory_allocated vs the planner
             (trainer_core.config.memory, as `trainer_core plan` prints it), the supervisor's NVML samples (resources.jsonl);
  chat       `python -m trainer_core chat` on the starter's ZeRO-2 run;
  peers      TRL's SFTTrainer, and LLaMA-Factory where the wheelhouse has it, on the same matched job on the 0.5B
             shape (bench/peer_bench.py --matched checkpointing-off: records/s, label tokens/s, MFU) while time is left.
--dry-run skips what needs a GPU (peak, shapes, the 0.5B runs) and runs the rest on the CPU.

MFU = (6 x matmul parameters x labelled tokens + attention FLOPs) / time / measured bf16 peak, over the optimizer
steps after the first (the first holds compilation and allocator warm-up); see bench/peak_bench.py.
Writes $OUT/gpu_check.json, gpu_check.md, gpu_check.log and logs.tar.gz. This module imports no torch: the driver
must hold no GPU memory while the runs train; the steps that need torch run as `python bench/gpu_check.py step NAME`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python bench/gpu_check.py`: bench.peak_bench importable
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
DATA = ROOT / "data" / "sample_zhenhuan.jsonl"
MARK_ENV = "GPU_CHECK_WORK"  # every process the check starts inherits it: how leftovers are proven ours
RESERVE_S = 30.0  # kept back from the deadline for stopping runs, reaping and writing the report
# The --shape presets the GPU runs train (bench/common.py SHAPES), by the key their runs are named with.
GPU_SHAPES = {"0.5b": "qwen2.5-0.5b", "0.5b-6l": "qwen2.5-0.5b-6l"}


# MFU's formula, a model's shape from its safetensors headers and the peak measurement: bench/peak_bench.py (no torch
# at import, as this driver needs).
from bench.peak_bench import mfu, model_flops, model_shape  # noqa: E402


# ---------------------------------------------------------------- processes: every one we start, ended

def reap(work: str, grace_s: float = 5.0) -> list[str]:
    """End every process proven to be this check's: its environment carries MARK_ENV=work or its command line names
    the work folder (a fresh temporary folder: no other process names it). This process and its ancestors (the
    shell script that asked) are spared. Returns `pid cmd` of each process ended."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    ours = []
    for p in psutil.process_iter(["pid"]):
        if p.pid in spared:
            continue
        try:
            cmd = p.cmdline()
            mine = any(work in a for a in cmd)
            if not mine:
                mine = p.environ().get(MARK_ENV) == work
        except psutil.Error:
            continue
        if mine:
            ours.append(p)
    ended = []
    for p in ours:
        try:
            ended.append(f"{p.pid} {' '.join(p.cmdline()[:4])}")
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(ours, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return ended


def stop_runs(runs_root: Path, log) -> None:
    """Our own `trainer_core stop RUN --force` for every run under the check's runs root (all of them ours): it
    ends each run's supervisor session, which a process-group kill of the step cannot reach."""
    for run in sorted(p for p in runs_root.glob("*") if p.is_dir()):
        try:
            r = subprocess.run([sys.executable, "-m", "trainer_core", "stop", str(run), "--force"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and "no process left" not in r.stdout + r.stderr:
                print(f"  stopped {run.name}: {(r.stdout + r.stderr).strip()[-200:]}", file=log, flush=True)
        except subprocess.TimeoutExpired:
            print(f"  stop {run.name}: timed out", file=log, flush=True)


class Steps:
    """Runs each step as a subprocess in its own session, within its own limit and the check's deadline."""

    def __init__(self, work: Path, deadline: float, log, scale: float = 1.0):
        self.work, self.deadline, self.log = work, deadline, log
        self.scale = scale  # the dry run's CPU steps take longer than the GPU's
        self.current: subprocess.Popen | None = None

    def left(self) -> float:
        return self.deadline - RESERVE_S - time.time()

    def call(self, argv: list[str], limit_s: float, *, name: str, min_s: float = 10.0,
             env: dict | None = None) -> dict:
        """{"ok", "rc", "seconds", "stdout", "stderr_tail", "error"?} of one command; never raises."""
        limit = min(limit_s, self.left())
        if limit < min_s:
            return {"ok": False, "skipped": True, "error": f"skipped: {max(self.left(), 0):.0f}s left before the "
                    f"deadline, the step needs at least {min_s:.0f}s"}
        print(f"[{time.strftime('%H:%M:%S')}] {name} (limit {limit:.0f}s): {' '.join(argv[:6])} ...", file=self.log,
              flush=True)
        t0 = time.time()
        self.current = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = self.current.communicate(timeout=limit)
            rc = self.current.returncode
            error = None if rc == 0 else f"exit {rc}: {last_error(err or out)}"
        except subprocess.TimeoutExpired:
            self.end_current()
            try:
                out, err = self.current.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # a process outside the group still holds the pipes
                out, err = "", ""
            rc, error = None, f"timed out after {limit:.0f}s"
        finally:
            self.current = None
        seconds = time.time() - t0
        if error:
            print(f"  failed in {seconds:.0f}s: {error}", file=self.log, flush=True)
            self.cleanup()  # what the step left: its runs' supervisors, their ranks
        else:
            print(f"  ok in {seconds:.0f}s", file=self.log, flush=True)
        return {"ok": error is None, "rc": rc, "seconds": round(seconds, 1), "stdout": out,
                "stderr_tail": (err or "")[-4000:], **({"error": error} if error else {})}

    def end_current(self) -> None:
        p = self.current
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def cleanup(self) -> None:
        self.end_current()
        stop_runs(self.work / "runs", self.log)
        for line in reap(str(self.work)):
            print(f"  ended leftover {line}", file=self.log, flush=True)


def last_error(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1][:400]


# ---------------------------------------------------------------- the runs

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return rows


def nvml_summary(rows: list[dict]) -> dict:
    """What the supervisor's sampler recorded on the GPUs (resources.jsonl rows with a `gpus` list)."""
    with_gpus = [r for r in rows if r.get("gpus")]
    out: dict = {"rows": len(rows), "rows_with_gpus": len(with_gpus)}
    if not with_gpus:
        out["note"] = "no GPU samples (no NVIDIA driver, or NVML failed)" if rows else "no samples"
        return out
    used: dict[str, int] = {}
    busy: dict[str, list[int]] = {}
    for r in with_gpus:
        for g in r["gpus"]:
            key = str(g.get("index"))
            used[key] = max(used.get(key, 0), int(g.get("used_bytes") or 0))
            if g.get("util_pct"):
                busy.setdefault(key, []).append(int(g["util_pct"]))
    out["max_used_bytes"] = used
    out["mean_busy_util_pct"] = {k: round(sum(v) / len(v)) for k, v in busy.items()}
    out["gpu_fields"] = sorted({k for r in with_gpus for g in r["gpus"] for k in g})
    out["row_fields"] = sorted({k for r in with_gpus for k in r})
    return out


def run_figures(run: Path, shape: dict, ctx: float | None, peak: float | None) -> dict:
    """Throughput, MFU and memory of a finished run, from its run directory."""
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("loss") is not None]
    out: dict = {"state": status.get("state"), "error": status.get("error"), "steps": rows[-1]["step"] if rows else 0,
                 "nvml": nvml_summary(read_jsonl(run / "resources.jsonl"))}
    if not rows:
        return out
    first, last = rows[0], rows[-1]
    if len(rows) > 1:  # the steps after the first: compilation and allocator warm-up stay out
        seconds = last["elapsed_s"] - first["elapsed_s"]
        tokens, labels = last["tokens"] - first["tokens"], last["label_tokens"] - first["label_tokens"]
        measured = f"steps {first['step'] + 1}-{last['step']}"
    else:
        seconds, tokens, labels = last["elapsed_s"], last["tokens"], last["label_tokens"]
        measured = f"step {last['step']} (the only one: warm-up included)"
    out.update(measured=measured, seconds=round(seconds, 3), tokens=tokens, label_tokens=labels,
               loss_last=last["loss"], peak_mem_bytes=last.get("peak_mem_bytes"))
    if seconds > 0:
        out["tokens_per_s"] = round(tokens / seconds, 1)
        out["label_tokens_per_s"] = round(labels / seconds, 1)
    if ctx is not None:
        flops = model_flops(params=shape["matmul_params"], label_tokens=labels,
                            layers=shape["layers"], attn_width=shape["attn_width"], mean_label_context=ctx)
        out["flops"] = flops
        out["mfu"] = mfu(flops["total"], seconds, peak)
    return out


def train_sets(model_dir: Path, name: str, stage: int, steps: int, big: bool, method: str = "full") -> list[str]:
    sets = [f"name={name}", f"model.path={model_dir}", f"data.path={DATA}", "data.eval_ratio=0",
            f"train.max_steps={steps}", "train.epochs=1000", "train.save_steps=0", "train.logging_steps=1",
            f"deepspeed.stage={stage}",
            # DeepSpeed's CPU Adam would JIT-compile for 1-2 minutes first: the check keeps the optimizer on the GPU.
            "deepspeed.offload_optimizer=none"]
    if big:
        sets += ["data.max_length=1024", "train.micro_batch_size=8", "train.learning_rate=1e-4"]
    if method != "full":
        sets.append(f"train.method={method}")
    if method == "qlora":
        sets.append("train.gradient_checkpointing=true")  # as the QLoRA anchors run it
    return sets


def jobs_for(models: dict[str, Path], gpu: bool) -> list[tuple[str, Path, int, bool, str]]:
    """(run name, model folder, ZeRO stage, big, train.method) of each training run, in the order they run. On a
    GPU the 0.5B shape trains full at ZeRO-2, then as LoRA and QLoRA at ZeRO-2 (their planner figures are unverified
    until these run), then full at ZeRO-3, which the deadline may cut. The dry run trains the starter's LoRA on CPU
    (QLoRA needs CUDA)."""
    jobs = [(f"{key}-z{stage}", d, stage, key != "starter", "full") for key, d in models.items()
            for stage in ((2,) if key == "0.5b-6l" else (2, 3))]  # the 6-layer cut: ZeRO-2 only, time is short
    six = [j for j in jobs if j[0] == "0.5b-6l-z2"]
    if six:  # right after the 0.5B's own ZeRO-2 run, before the deadline can cut it
        jobs.remove(six[0])
        jobs.insert(next((i + 1 for i, j in enumerate(jobs) if j[0] == "0.5b-z2"), len(jobs)), six[0])
    extra = ([(f"0.5b-{m}-z2", models["0.5b"], 2, True, m) for m in ("lora", "qlora")] if gpu and "0.5b" in models
             else [("starter-lora-z2", models["starter"], 2, False, "lora")] if not gpu else [])
    at = next((i for i, j in enumerate(jobs) if j[0] == "0.5b-z3"), len(jobs))
    jobs[at:at] = extra
    return [j for j in jobs if (j[1] / "config.json").is_file()]


def check_run(steps: Steps, model_dir: Path, name: str, stage: int, n_steps: int, big: bool, ctx_by_len: dict,
              peak: float | None, plans: dict, method: str = "full") -> dict:
    sets = train_sets(model_dir, name, stage, n_steps, big, method)
    flags = [a for s in sets for a in ("--set", s)]
    planned = plans.get(name) or {}
    res = steps.call([sys.executable, "-m", "trainer_core", "train", str(QUICKSTART), *flags],
                     (240 if big else 150) * steps.scale, name=f"train {name}", min_s=30)
    out = {"name": name, "stage": stage, "method": method, "model": model_dir.name, "sets": sets,
           "seconds_wall": res.get("seconds"),
           "planned_per_rank_bytes": planned.get("per_rank_device_bytes"), "plan": planned}
    run = steps.work / "runs" / name
    if run.is_dir():
        shape = model_shape(model_dir)
        max_length = 1024 if big else 256
        # MFU's 6 x parameters assumes every weight gets a gradient; a frozen base skips those: no MFU for adapters.
        ctx = ctx_by_len.get(str(max_length)) if method == "full" else None
        out.update(run_figures(run, shape, ctx, peak))
        peaks = [b for b in (out.get("peak_mem_bytes") or []) if b]
        if peaks and out["planned_per_rank_bytes"]:
            out["peak_over_plan"] = round(max(peaks) / out["planned_per_rank_bytes"], 3)
    if not res["ok"]:
        out["error"] = res["error"] if not out.get("error") else f"{res['error']}; run: {out['error']}"
        log = run / "train.log"
        out["log_tail"] = log.read_text(errors="replace")[-3000:] if log.is_file() else res["stderr_tail"]
    return out


def step_json(steps: Steps, name: str, limit: float, *args: str, min_s: float = 10.0) -> dict:
    """A `step NAME` subcommand of this script; its JSON result (or the failure)."""
    dest = steps.work / f"{name}.json"
    res = steps.call([sys.executable, str(Path(__file__).resolve()), "step", name, "--work", str(steps.work),
                      "--json", str(dest), *args], limit * steps.scale, name=name, min_s=min_s)
    out = {"seconds": res.get("seconds")}
    if res["ok"] and dest.is_file():
        out.update(json.loads(dest.read_text()))
    else:
        out["error"] = res.get("error", "no result written")
        out["stderr_tail"] = res.get("stderr_tail", "")[-2000:]
    return out


def run_check(args) -> int:
    work, out_dir = Path(args.work).resolve(), Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Tee(out_dir / "gpu_check.log")
    steps = Steps(work, args.deadline, log, scale=3.0 if args.dry_run else 1.0)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    report: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps_per_run": args.steps}

    def on_term(signum, frame):
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        checks(steps, args, report)
    except BaseException as e:  # a signal (SystemExit above), Ctrl-C or a bug: the figures so far are still written
        report["interrupted"] = f"{type(e).__name__}: {e}"
        print(f"interrupted: {report['interrupted']}", file=log, flush=True)
    finally:
        steps.cleanup()
        report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
        md = summary_markdown(report)
        (out_dir / "gpu_check.md").write_text(md, encoding="utf-8")
        print(md, file=log, flush=True)
        pack_logs(work, out_dir / "logs.tar.gz")
    return 0


def checks(steps: Steps, args, report: dict) -> None:
    gpu = not args.dry_run
    report["env"] = step_json(steps, "env", 90)
    report["peak"] = step_json(steps, "peak", 90) if gpu else {"skipped": "dry run"}
    peak = report["peak"].get("flops_per_s")  # bf16's: the runs train in bf16
    report["numerics"] = step_json(steps, "numerics", 120)
    report["starter"] = step_json(steps, "starter", 180, min_s=30)
    models = {"starter": steps.work / "models" / "qwen2-starter"}
    if gpu:
        report["shapes"] = step_json(steps, "shapes", 150, min_s=30)
        models.update({key: steps.work / "models" / name for key, name in GPU_SHAPES.items()})
    report["context"] = step_json(steps, "context", 90, "--model", str(models["starter"]))
    ctx = {k: v["mean_label_context"] for k, v in report["context"].get("by_max_length", {}).items()}
    jobs = jobs_for(models, gpu)
    report["plans"] = step_json(steps, "plans", 90, "--runs", json.dumps(
        {name: train_sets(model_dir, name, stage, args.steps, big, method)
         for name, model_dir, stage, big, method in jobs}))
    report["runs"] = [{"name": key, "error": f"skipped: {model_dir.name} was not built"}
                      for key, model_dir in models.items() if not (model_dir / "config.json").is_file()]
    plans = report["plans"].get("by_run", {})
    for name, model_dir, stage, big, method in jobs:
        report["runs"].append(guarded(name, lambda: check_run(steps, model_dir, name, stage, args.steps, big, ctx,
                                                                peak, plans, method)))
        if name == "starter-z2":  # chat as soon as there is a model to chat with: the 0.5B runs may use the time up
            report["chat"] = guarded("chat", lambda: chat(steps))
    report.setdefault("chat", {"error": "skipped: no starter run"})
    # The dry run proves the offline TRL path on the starter with a handful of records; the GPU run is the real job.
    report["peers"] = guarded("peers", lambda: peers(steps, models.get("0.5b")) if gpu
                              else peers(steps, models["starter"], records=12, heldout=2))


def guarded(name: str, fn) -> dict:
    """fn()'s result, or its error: a bug in one check must not cost the figures of the others."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the report, the next check runs
        import traceback

        return {"name": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}


def chat(steps: Steps) -> dict:
    run = steps.work / "runs" / "starter-z2"
    if not (run / "final").is_dir():
        return {"error": "skipped: the starter's ZeRO-2 run left no final model"}
    res = steps.call([sys.executable, "-m", "trainer_core", "chat", str(run), "--prompt", "你好", "--max-new-tokens",
                      "16", "--seed", "0"], 120, name="chat")
    return {"ok": res["ok"], "seconds": res.get("seconds"), "reply": (res.get("stdout") or "")[:300],
            "notes": (res.get("stderr_tail") or "")[-1500:], **({"error": res["error"]} if "error" in res else {})}


def peers(steps: Steps, model_dir: Path | None, records: int = 60, heldout: int = 10) -> dict:
    """bench/peer_bench.py, ours against TRL's SFTTrainer (and LLaMA-Factory where the wheelhouse installed it) on
    the same matched job (the 0.5B model, the shipped sample's records, the quickstart settings without CPU offload,
    checkpointing off for every recipe), the peers from the wheelhouse through PEER_PYTHON."""
    import importlib.util

    if model_dir is None or not (model_dir / "config.json").is_file():
        return {"error": "skipped: no 0.5B model"}
    data = steps.work / "sample.json"  # peer_bench reads a JSON array
    data.write_text(json.dumps([json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()],
                               ensure_ascii=False), encoding="utf-8")
    dest = steps.work / "peers.json"
    only = "ours,trl" + (",llamafactory" if importlib.util.find_spec("llamafactory") else "")
    res = steps.call([sys.executable, "bench/peer_bench.py", "--only", only, "--model", str(model_dir),
                      "--data", str(data), "--records", str(records), "--heldout", str(heldout),
                      "--matched", "checkpointing-off", "--set", "deepspeed.offload_optimizer=none",
                      "--json", str(dest)], 400, name="peers",
                     min_s=150, env={"PEER_PYTHON": sys.executable})
    out = {"recipes": only, "seconds": res.get("seconds"), "stdout_tail": (res.get("stdout") or "")[-3000:]}
    if dest.is_file():
        out["figures"] = json.loads(dest.read_text())
    if not res["ok"]:
        out["error"] = res["error"]
        out["stderr_tail"] = res.get("stderr_tail", "")[-2000:]
    return out


# ---------------------------------------------------------------- the report

def _gib(b) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def summary_markdown(r: dict) -> str:
    env = r.get("env", {})
    peak = r.get("peak", {})
    lines = [f"# GPU check{' (dry run: GPU steps skipped)' if r.get('dry_run') else ''}", "",
             f"{r.get('started')} - {r.get('finished')}; {env.get('device', '?')}; torch {env.get('torch', '?')}, "
             f"transformers {env.get('transformers', '?')}, deepspeed {env.get('deepspeed', '?')}, "
             f"trl {env.get('trl', '?')}; python {env.get('python', '?')}", ""]
    if r.get("interrupted"):
        lines += [f"**Interrupted**: {r['interrupted']}", ""]
    if peak.get("flops_per_s"):
        lines.append(f"Measured bf16 matmul peak: {peak['flops_per_s'] / 1e12:.0f} TFLOP/s ({peak.get('what')}); "
                     + ", ".join(f"{d} {x['flops_per_s'] / 1e12:.0f}" for d, x in peak.get("by_dtype", {}).items())
                     + " TFLOP/s.")
    else:
        lines.append(f"Measured bf16 matmul peak: {peak.get('error') or peak.get('skipped') or '-'}")
    lines += ["", "## Training runs (our CLI, precision auto)", "",
              "| run | state | measured | label tok/s | tok/s | MFU | max_memory_allocated GiB | planner GiB | "
              "peak/plan | NVML max used GiB | error |", "|" + "---|" * 11]
    for x in r.get("runs", []):
        nv = (x.get("nvml") or {}).get("max_used_bytes") or {}
        mfu_ = x.get("mfu")
        peaks = [b for b in (x.get("peak_mem_bytes") or []) if b]
        lines.append("| " + " | ".join(str(c) for c in [
            x.get("name"), x.get("state", "-"), x.get("measured", "-"), x.get("label_tokens_per_s", "-"),
            x.get("tokens_per_s", "-"), "-" if mfu_ is None else f"{mfu_:.1%}", _gib(max(peaks) if peaks else None),
            _gib(x.get("planned_per_rank_bytes")), x.get("peak_over_plan", "-"),
            ", ".join(f"{k}: {_gib(v)}" for k, v in nv.items()) or "-",
            (x.get("error") or "").replace("|", "/")[:200]]) + " |")
    lines += ["", "MFU = (6 x non-embedding parameters x labelled tokens + 12 x layers x attention width x mean "
              "causal context of a labelled token x labelled tokens) / seconds / measured peak, over the steps after "
              "the first.", ""]
    num = r.get("numerics", {})
    lines += ["## Head loss numerics (relative error against fp64)", ""]
    if num.get("rows"):
        lines += ["| dtype | mean p(target) | path | loss | grad_hidden | grad_W |", "|---|---|---|---|---|---|"]
        for row in num["rows"]:
            lines.append(f"| {row['dtype']} | {row['p_target']:.4f} | {row['path']} | {row['loss']:.2e} | "
                         f"{row['grad_hidden']:.2e} | {row['grad_weight']:.2e} |")
        lines.append(f"\ndevice {num.get('device')}; n={num.get('n')}, V={num.get('vocab')}, H={num.get('hidden')}")
    else:
        lines.append(f"failed: {num.get('error')}")
    chat = r.get("chat", {})
    took = f" in {chat['seconds']}s" if chat.get("seconds") else ""
    lines += ["", "## Chat", "", f"{'ok' if chat.get('ok') else 'failed: ' + str(chat.get('error'))}{took}; reply: "
              f"{chat.get('reply', '').strip()[:120]!r}"]
    peers_ = r.get("peers", {})
    tail = peers_.get("stdout_tail") or ""
    table_ = "machine:" + tail.split("machine:", 1)[1] if "machine:" in tail else ""  # peer_bench's printed table
    lines += ["", f"## Peers ({peers_.get('recipes', 'ours,trl')})", "",
              peers_.get("skipped") or peers_.get("error") or "ran: see gpu_check.json", "", table_.strip()]
    steps = {k: v for k, v in r.items() if isinstance(v, dict) and "seconds" in v}
    lines += ["", "## Steps", "", *(f"- {k}: {v.get('seconds')}s{' - ' + v['error'] if v.get('error') else ''}"
                                     for k, v in steps.items()), ""]
    return "\n".join(lines)


def pack_logs(work: Path, dest: Path) -> None:
    """Every run's logs, metrics and samples, and the steps' results (not the models)."""
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(work.glob("runs/*/*")):
            if p.is_file() and p.stat().st_size < 8 * 2**20:
                tar.add(p, arcname=str(p.relative_to(work)))
        for p in sorted(work.glob("*.json")) + sorted(work.glob("peer-work/*.log")):
            tar.add(p, arcname=str(p.relative_to(work)))


class Tee:
    """The driver's log: to stdout (the run tool's output tail) and to a file under $OUT."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, s: str) -> None:
        sys.stdout.write(s)
        self.f.write(s)

    def flush(self) -> None:
        sys.stdout.flush()
        self.f.flush()


# ---------------------------------------------------------------- steps that need torch (own processes)

def step_env(work: Path) -> dict:
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    for mod in ("transformers", "deepspeed", "accelerate", "tokenizers", "trl", "pydantic", "peft", "bitsandbytes"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out[mod] = f"missing ({type(e).__name__}: {e})"[:200]
    import trainer_core  # noqa: F401 - the product imports on this interpreter

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, capability=f"{p.major}.{p.minor}", total_memory_bytes=int(p.total_memory),
                   device_count=torch.cuda.device_count())
    else:
        out["device"] = "no CUDA device (CPU)"
    return out


def step_peak(work: Path) -> dict:
    """The GPU's dense matmul rate in every training dtype (bench/peak_bench.py: random data, median of 10 timed
    products after 3 warm-ups, CUDA events); bf16's is the runs' MFU denominator."""
    from bench.peak_bench import peaks

    by_dtype = peaks(device="cuda", n=8192, repeats=10, warmup=3)
    return {"flops_per_s": by_dtype["bf16"]["flops_per_s"], "what": by_dtype["bf16"]["what"], "by_dtype": by_dtype}


def step_numerics(work: Path) -> dict:
    """The blockwise head loss in 16-bit against fp64, beside the plain 16-bit product, at sharpened targets
    (n=512, V=8192, H=256, the issue's setting)."""
    import torch
    import torch.nn.functional as F

    from trainer_core.training.linear_ce import block_sizes, linear_cross_entropy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, vocab, hidden = 512, 8192, 256
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.05  # logits of std ~0.8, as a trained head
    target = torch.randint(0, vocab, (n,), generator=g)
    # h = base + b * w[t] / |w[t]|^2 raises the target's logit by b and leaves the others about where they were.
    push = w[target] / w[target].pow(2).sum(1, keepdim=True)
    logits0, dlogits = base @ w.T, push @ w.T

    def mean_p(b: float) -> float:
        return float(torch.softmax(logits0 + b * dlogits, dim=1).gather(1, target[:, None]).mean())

    def rel(a, ref) -> float:
        return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-300))

    rows = []
    for want in (0.5, 0.9, 0.997, 0.999):
        lo, hi = 0.0, 64.0
        for _ in range(40):  # bisection on the push
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean_p(mid) < want else (lo, mid)
        h = (base + hi * push).to(device)
        wd, td = w.to(device), target.to(device)
        ref_h, ref_w = h.clone().requires_grad_(), wd.clone().requires_grad_()
        ref = F.cross_entropy(ref_h @ ref_w.T, td, reduction="sum")
        ref.backward()
        dtypes = [torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
        for dtype in dtypes:
            for path in ("blockwise", "plain"):
                hx = h.to(dtype).requires_grad_()
                wx = wd.to(dtype).requires_grad_()
                if path == "blockwise":
                    loss = linear_cross_entropy(hx, wx, td, block_sizes(n, vocab, device == "cuda"))
                else:
                    loss = F.cross_entropy((hx @ wx.T).float(), td, reduction="sum")
                loss.backward()
                rows.append({"dtype": str(dtype).removeprefix("torch."), "p_target": mean_p(hi), "path": path,
                             "loss": abs(float(loss.detach()) - float(ref.detach())) / abs(float(ref.detach())),
                             "grad_hidden": rel(hx.grad, ref_h.grad), "grad_weight": rel(wx.grad, ref_w.grad)})
    return {"device": device, "n": n, "vocab": vocab, "hidden": hidden, "rows": rows}


def step_starter(work: Path) -> dict:
    """The starter, offline: TRAINER_MODELS_DIR and QWEN_TIKTOKEN_FILE (set by gpu_check.sh) point our own
    prepare-models code at the check's folder and the carried vocabulary."""
    from trainer_core.models.starter import prepare_models

    t0 = time.time()
    path = prepare_models()
    return {"path": str(path), "build_s": round(time.time() - t0, 1), **model_shape(path)}


def step_shapes(work: Path) -> dict:
    """The GPU runs' --shape presets as random bf16 models, initialised on the GPU (seconds, not a minute on the
    host), by bench/common.py's one builder, with the starter's tokenizer (TRAINER_MODELS_DIR: the check's own)."""
    import torch

    from bench.common import shape_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for key, name in GPU_SHAPES.items():
        path = shape_model(name, root=work / "models", dtype=torch.bfloat16, device=device)
        out[key] = {"path": str(path), **model_shape(path)}
    return out


def step_context(work: Path, model: Path) -> dict:
    """Mean causal context of a labelled position (the keys its query attends to: every earlier position of its
    record) in the training file as our trainer encodes it, per max_length the runs use; packing keeps records
    apart, so a record's positions are what each attends to."""
    from transformers import AutoTokenizer

    from trainer_core.config.sections import DataArgs
    from trainer_core.config.run_config import load_config
    from trainer_core.data.chat_format import encode_conversations
    from trainer_core.data.dataset import load_dataset

    persona = load_config(QUICKSTART).data.persona or DataArgs().persona
    tok = AutoTokenizer.from_pretrained(model)
    conversations = load_dataset(DATA).conversations
    out = {}
    for max_length in (256, 1024):
        total = count = 0
        for e in encode_conversations(tok, conversations, persona=persona, max_length=max_length):
            for i, label in enumerate(e.labels):
                if label != -100:
                    total, count = total + i, count + 1  # the label at i is predicted at i - 1 from i keys
        out[str(max_length)] = {"mean_label_context": total / max(count, 1), "label_tokens": count,
                                "records": len(conversations)}
    return {"by_max_length": out}


def step_plans(work: Path, runs: str) -> dict:
    """The planner's per-rank estimate (trainer_core.config.memory, what `trainer_core plan` prints) for each run's
    config, in one process."""
    from trainer_core.config.memory import plan_memory
    from trainer_core.config.run_config import load_config

    out = {}
    for name, sets in json.loads(runs).items():
        plan = plan_memory(load_config(QUICKSTART, sets))
        out[name] = {"per_rank_device_bytes": plan.per_rank_device_bytes, "breakdown": plan.breakdown,
                     "on_gpu": plan.on_gpu, "notes": [str(x) for x in plan.notes]}
    return {"by_run": out}


STEP_FNS = {"env": step_env, "plans": step_plans, "peak": step_peak, "numerics": step_numerics, "starter": step_starter,
            "shapes": step_shapes, "context": step_context}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="all the checks (what gpu_check.sh runs)")
    r.add_argument("--work", required=True, help="a fresh folder for runs and models (its path marks our processes)")
    r.add_argument("--out", required=True, help="where the figures go ($OUT on the GPU machine)")
    r.add_argument("--deadline", type=float, required=True, help="epoch seconds by which everything has ended")
    r.add_argument("--dry-run", action="store_true", help="skip what needs a GPU")
    r.add_argument("--steps", type=int, default=2, help="optimizer steps per training run (default 2)")
    s = sub.add_parser("step", help="one step that needs torch, in its own process")
    s.add_argument("name", choices=sorted(STEP_FNS))
    s.add_argument("--work", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--model", type=Path)
    s.add_argument("--runs", help="plans: {run name: [--set values]} as JSON")
    k = sub.add_parser("reap", help="end every process left that carries the work folder's mark")
    k.add_argument("--work", required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.cmd == "run":
        return run_check(args)
    if args.cmd == "reap":
        for line in reap(str(Path(args.work).resolve())):
            print(f"gpu_check: ended leftover {line}", file=sys.stderr)
        return 0
    work = Path(args.work).resolve()
    extra = {"context": (args.model,), "plans": (args.runs,)}.get(args.name, ())
    result = STEP_FNS[args.name](work, *extra)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
