# .venv/bin/python -m pytest bench/tests/test_gpu_check.py -q -p no:cacheprovider
"""The GPU check's parts that need no GPU: its MFU formula (hand-computed), the figures it reads from a run
directory, the wheelhouse's carry-size guard, and the reaper that ends only processes carrying the check's mark."""

import json
import os
import subprocess
import sys
import time

import psutil
import torch
from safetensors.torch import save_file

from bench.gpu_check import MARK_ENV, mfu, model_flops, model_shape, reap, run_figures
from bench.gpu_wheelhouse import CARRY_LIMIT, size_problem, tree_bytes


def test_model_flops_by_hand():
    # 6 x 1000 params x 10 labels = 60,000; attention 12 x 2 layers x width 4 x context 5 x 10 labels = 4,800
    f = model_flops(params=1000, label_tokens=10, layers=2, attn_width=4, mean_label_context=5.0)
    assert f == {"params": 60_000, "attention": 4_800, "total": 64_800}
    assert mfu(64_800, 2.0, 64_800) == 0.5
    assert mfu(64_800, 2.0, None) is None and mfu(64_800, 0.0, 1e12) is None


def test_shape_counts_without_embedding(tmp_path):
    """Parameters come from the safetensors header; the (tied) embedding is left out of the non-embedding count."""
    model = tmp_path / "m"
    model.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4), "model.layers.0.mlp.up_proj.weight": torch.zeros(6, 4),
               "model.norm.weight": torch.zeros(4)}, model / "model.safetensors")
    (model / "config.json").write_text(json.dumps({"hidden_size": 4, "num_attention_heads": 2, "num_hidden_layers": 1,
                                                   "vocab_size": 10}))
    shape = model_shape(model)
    assert (shape["params"], shape["non_embedding_params"]) == (40 + 24 + 4, 24 + 4)
    assert (shape["layers"], shape["attn_width"]) == (1, 4)


def test_run_figures_measure_the_steps_after_the_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "loss": 9.0, "elapsed_s": 5.0, "tokens": 100, "label_tokens": 40, "peak_mem_bytes": [7]},
            {"step": 2, "loss": 8.0, "elapsed_s": 7.0, "tokens": 300, "label_tokens": 100, "peak_mem_bytes": [9]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps({"state": "completed"}))
    shape = {"matmul_params": 1000, "layers": 2, "attn_width": 4}
    out = run_figures(run, shape, ctx=5.0, peak=96_000.0)
    # step 2 alone: 2 s, 200 positions, 60 labels -> 6*1000*60 + 12*2*4*5*60 = 388,800 FLOPs
    assert (out["seconds"], out["tokens_per_s"], out["label_tokens_per_s"]) == (2.0, 100.0, 30.0)
    assert out["flops"]["total"] == 388_800
    assert out["mfu"] == 388_800 / 2.0 / 96_000.0
    assert out["state"] == "completed" and out["peak_mem_bytes"] == [9]
    assert out["nvml"]["note"] == "no samples"


def test_size_guard():
    assert size_problem(2 * 2**20, 30 * 2**20) is None
    assert size_problem(10, CARRY_LIMIT - 10) is None
    problem = size_problem(2 * 2**20, 63 * 2**20)
    assert "2.0 MiB" in problem and "63.0 MiB" in problem and "65.0 MiB" in problem and "64 MiB" in problem


def test_tree_bytes_counts_what_travels(tmp_path):
    """Tracked and untracked-but-not-ignored files travel; ignored ones (the wheelhouse itself) do not."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(".cache/\n")  # 8 bytes
    (tmp_path / "tracked.txt").write_text("x" * 100)
    subprocess.run([*git, "-C", str(tmp_path), "add", "."], check=True)
    (tmp_path / "new.txt").write_text("y" * 10)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "wheel.whl").write_bytes(b"z" * 1000)
    assert tree_bytes(tmp_path) == 8 + 100 + 10


def test_reap_ends_only_marked_processes(tmp_path):
    """Real processes: one carrying the mark in its environment, one naming the work folder on its command line, and
    one with neither, which must survive."""
    work = str(tmp_path / "gpu-check-work")
    sleep = [sys.executable, "-c", "import time, sys; time.sleep(60)"]
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    marked = subprocess.Popen(sleep, env={**env, MARK_ENV: work})
    named = subprocess.Popen([*sleep, work], env=env)
    other = subprocess.Popen(sleep, env={**env, MARK_ENV: work + "-another"})
    try:
        time.sleep(0.5)  # let the interpreters start, so their environments are readable
        ended = reap(work, grace_s=5)
        assert marked.wait(timeout=10) is not None and named.wait(timeout=10) is not None
        assert sorted(int(line.split()[0]) for line in ended) == sorted([marked.pid, named.pid])
        assert other.poll() is None and psutil.pid_exists(other.pid)
    finally:
        for p in (marked, named, other):
            p.kill()
            p.wait()


def _models(tmp_path, *keys):
    out = {}
    for key in keys:
        d = tmp_path / key
        d.mkdir()
        (d / "config.json").write_text("{}")
        out[key] = d
    return out


def test_a_gpu_check_trains_lora_and_qlora_on_the_05b_before_its_zero3_run(tmp_path):
    from bench.gpu_check import jobs_for, train_sets

    models = _models(tmp_path, "starter", "0.5b")
    jobs = jobs_for(models, gpu=True)
    assert [(j[0], j[4]) for j in jobs] == [
        ("starter-z2", "full"), ("starter-z3", "full"), ("0.5b-z2", "full"), ("0.5b-lora-z2", "lora"),
        ("0.5b-qlora-z2", "qlora"), ("0.5b-z3", "full")]
    qlora = train_sets(models["0.5b"], "0.5b-qlora-z2", 2, 2, True, "qlora")
    assert "train.method=qlora" in qlora and "train.gradient_checkpointing=true" in qlora
    assert not any(s.startswith("train.method") for s in train_sets(models["0.5b"], "0.5b-z2", 2, 2, True))


def test_the_six_layer_shape_trains_at_zero2_right_after_the_05bs(tmp_path):
    """The GPU check trains every --shape preset: the 6-layer cut once (ZeRO-2), before the adapters and ZeRO-3,
    which the deadline may cut; its models are built by bench/common.py's builder under the check's own names."""
    from bench.gpu_check import GPU_SHAPES, jobs_for
    from bench.common import SHAPES

    assert set(GPU_SHAPES.values()) <= set(SHAPES)
    jobs = jobs_for(_models(tmp_path, "starter", "0.5b", "0.5b-6l"), gpu=True)
    assert [j[0] for j in jobs] == ["starter-z2", "starter-z3", "0.5b-z2", "0.5b-6l-z2", "0.5b-lora-z2",
                                    "0.5b-qlora-z2", "0.5b-z3"]
    assert next(j for j in jobs if j[0] == "0.5b-6l-z2")[3] is True  # trained as a big model (1024 tokens, 8 rows)


def test_the_dry_run_trains_the_starters_lora_and_no_qlora(tmp_path):
    from bench.gpu_check import jobs_for

    jobs = jobs_for(_models(tmp_path, "starter"), gpu=False)
    assert [(j[0], j[4]) for j in jobs] == [("starter-z2", "full"), ("starter-z3", "full"),
                                            ("starter-lora-z2", "lora")]


def test_an_optional_wheel_that_would_not_travel_is_dropped(tmp_path, monkeypatch):
    """bitsandbytes' CUDA wheel is kept only while tree + wheelhouse fit the carry limit (no download here: pip's
    download is replaced by writing a wheel of the given size)."""
    from bench import gpu_wheelhouse as wh

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    size = {"n": 0}

    def fake_download(pins, dest, log):
        (dest / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl").write_bytes(b"x" * size["n"])

    monkeypatch.setattr(wh, "download", fake_download)
    monkeypatch.setattr(wh, "tree_bytes", lambda: 10 * 2**20)
    size["n"] = 20 * 2**20
    assert wh.add_optional(wheels, tmp_path, None) == (["bitsandbytes==0.50.2"], [])
    size["n"] = 60 * 2**20
    kept, dropped = wh.add_optional(wheels, tmp_path, None)
    assert kept == [] and dropped[0].startswith("bitsandbytes==0.50.2: the tree") and not list(wheels.glob("*.whl"))
