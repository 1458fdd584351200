# .venv/bin/python -m pytest bench/tests/test_peer_bench.py -q    (fast: writes the peers' configs, installs and runs nothing)
"""bench/peer_bench.py gives TRL and LLaMA-Factory the job our trainer runs: the same DeepSpeed JSON, learning
rate, schedule, batch, max length, epochs and seed, read back from the files the peers themselves read."""

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from trainer_core.common.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))

from bench.peer_bench import (job_config, job_line, job_settings, lora_sets, main, matched_sets,  # noqa: E402
                              ratio_lines, recipe_names, sweep_summary, write_peer_inputs)
from trainer_core.config.ds_config import build_ds_config  # noqa: E402

RECORDS = [{"instruction": f"问题{i}", "input": "", "output": f"回答{i}。"} for i in range(6)]


@pytest.fixture
def peer_inputs(tmp_path):
    train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
    train.write_text(json.dumps(RECORDS[:4], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(RECORDS[4:], ensure_ascii=False), encoding="utf-8")
    cfg = job_config(2)
    write_peer_inputs(cfg, tmp_path, train, heldout)
    return cfg, tmp_path


def test_every_peer_gets_our_job(peer_inputs):
    cfg, work = peer_inputs
    t = cfg.train
    assert t.epochs == 2 and t.micro_batch_size == 4 and cfg.data.packing  # quickstart, at the bench's epochs
    trl = json.loads((work / "trl-job.json").read_text(encoding="utf-8"))
    lf = yaml.safe_load((work / "llamafactory.yaml").read_text(encoding="utf-8"))
    s = trl["sft_config"]
    for peer, lr, micro, accum, max_len, epochs, sched, warm, seed in [
            ("trl", s["learning_rate"], s["per_device_train_batch_size"], s["gradient_accumulation_steps"],
             s["max_length"], s["num_train_epochs"], s["lr_scheduler_type"], s["warmup_ratio"], s["seed"]),
            ("llamafactory", lf["learning_rate"], lf["per_device_train_batch_size"], lf["gradient_accumulation_steps"],
             lf["cutoff_len"], lf["num_train_epochs"], lf["lr_scheduler_type"], lf["warmup_ratio"], lf["seed"])]:
        assert (lr, micro, accum, max_len, epochs, sched, warm, seed) == (
            t.learning_rate, t.micro_batch_size, t.gradient_accumulation, cfg.data.max_length, t.epochs,
            t.lr_scheduler, t.warmup_ratio, t.seed), peer
    # Packing on and the prompt never trained, in each peer's own terms; full fine-tuning; fp32 on a CPU.
    assert s["packing"] is True and s["completion_only_loss"] is True
    assert lf["packing"] is True and lf["train_on_prompt"] is False and lf["finetuning_type"] == "full"
    # LLaMA-Factory's plain packing lets packed records attend to each other; ours and TRL's do not.
    assert lf["neat_packing"] is True
    assert lf["bf16"] is False and lf["stage"] == "sft" and lf["trust_remote_code"] is False
    # The same model folder, absolute: the peers run in the work directory, where a relative path is a Hub id.
    assert trl["model"] == lf["model_name_or_path"] == str(PROJECT_ROOT / cfg.model.path) and Path(trl["model"]).is_dir()
    # One DeepSpeed JSON for all, and it is the one our trainer resolves: ZeRO-2 with the optimizer on the CPU.
    assert s["deepspeed"] == lf["deepspeed"]
    ds = json.loads(Path(s["deepspeed"]).read_text(encoding="utf-8"))
    assert ds == json.loads(json.dumps(build_ds_config(cfg)))
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_peers_see_the_same_records_and_persona(peer_inputs):
    cfg, work = peer_inputs
    trl = json.loads((work / "trl-job.json").read_text(encoding="utf-8"))
    assert json.loads(Path(trl["data"]).read_text(encoding="utf-8")) == RECORDS[:4]
    assert trl["persona"] == cfg.data.persona
    info = json.loads((work / "llamafactory-data" / "dataset_info.json").read_text(encoding="utf-8"))
    lf_rows = json.loads(Path(info["huanhuan"]["file_name"]).read_text(encoding="utf-8"))
    assert lf_rows == [{**r, "system": cfg.data.persona} for r in RECORDS[:4]]
    assert info["huanhuan"]["columns"]["system"] == "system"
    # The probe scores the same held-out records, encoded once by bench/common.py: answer tokens are labelled.
    held = json.loads((work / "probe" / "heldout.json").read_text(encoding="utf-8"))
    assert len(held) == 2 and all(any(x != -100 for x in e["labels"]) for e in held)


@pytest.mark.parametrize("args, message", [
    (["--only", "ours,axolotl"], "--only: unknown recipe axolotl"),
    (["--repeat", "0"], "--repeat and --epochs must be at least 1"),
    (["--records", "10", "--heldout", "10"], "--heldout must be between 1 and --records - 1"),
    (["--seeds", "42,x"], "--seeds: expected comma-separated integers, got '42,x'"),
    (["--seeds", "1,2,1"], "--seeds: each seed once (got 1,2,1)"),
    (["--only", "ours,ours-newline", "--dump", "d"], "--dump cannot record ours-newline"),
    (["--methods", "full,qlora"], "--methods: expected full and/or lora, each once (got full,qlora)"),
    (["--methods", "lora", "--only", "llamafactory"], "--methods lora: none of --only has a LoRA form"),
    (["--methods", "full,lora", "--lora-lr", "2"], "--lora-lr must be > 0 and < 1 (got 2)"),
    (["--shape", "starter", "--model", "m"], "--shape and --model: give one"),
    (["--shape", "llama-70b"], "argument --shape: invalid choice: 'llama-70b'"),
    (["--matched", "sometimes"], "argument --matched: invalid choice: 'sometimes'"),
    (["--peak", "0"], "--peak must be a positive GFLOP/s figure"),
])
def test_bad_arguments_are_refused_before_anything_runs(args, message, capsys, monkeypatch):
    made = []
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(kw))  # no work directory may be created
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err and not made


@pytest.mark.parametrize("phases", [False, True])
def test_the_probe_loads_the_phase_timer_into_a_peer_when_asked(tmp_path, phases):
    """--phases: a peer's process imports only bench/hooks/peer_probe's sitecustomize, which then loads the phase timer,
    so both hook the peer's Trainer (here the product's transformers stands in for a peer venv's)."""
    import os
    import subprocess

    (tmp_path / "probe.json").write_text(json.dumps({"eval_steps": 1, "root": str(PROJECT_ROOT)}))
    (tmp_path / "heldout.json").write_text("[]")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "bench" / "hooks" / "peer_probe"), "BENCH_PEER_PROBE": str(tmp_path),
           "RANK": "0"}
    env.pop("BENCH_PHASES", None)
    if phases:
        env["BENCH_PHASES"] = str(tmp_path / "phases")
    code = ("from transformers.trainer import Trainer; "
            "print(Trainer.__init__.__name__, Trainer.training_step.__name__)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["init_with_probe", "wrapper" if phases else "training_step"]


@pytest.mark.parametrize("ops_load", [False, True])
def test_torchaudio_ops_are_removed_only_when_they_cannot_load(tmp_path, monkeypatch, ops_load):
    """A stand-in torchaudio whose import fails while its lib/ holds an op that cannot load (as PyPI's CUDA-built ops
    beside the CPU torch), run by a real interpreter: the ops go and the import then works; ops that load stay."""
    from bench.peer_venvs import strip_torchaudio_ops

    pkg = tmp_path / "torchaudio"
    (pkg / "lib").mkdir(parents=True)
    op = pkg / "lib" / "_torchaudio.so"
    op.write_bytes(b"not loadable")
    (pkg / "__init__.py").write_text(
        "import pathlib\n"
        f"if {not ops_load} and any((pathlib.Path(__file__).parent / 'lib').glob('*.so')):\n"
        "    raise OSError('libc10_cuda.so: cannot open shared object file')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with open(tmp_path / "log", "w") as log:
        strip_torchaudio_ops(Path(sys.executable), log=log)
    assert op.exists() is ops_load
    import subprocess
    assert subprocess.run([sys.executable, "-c", "import torchaudio"]).returncode == 0


def _result(recipe, loss_curve, seconds, final):
    """One recipe's figures as run_all returns them: held-out loss after each step at the given seconds."""
    return {"recipe": recipe, "records": 100, "train_time_s": seconds[-1], "heldout_loss": final,
            "eval_curve": [[i + 1, loss, t] for i, (loss, t) in enumerate(zip(loss_curve, seconds))]}


def test_the_seed_sweep_counts_each_seed_against_its_own_target():
    # seed 1: ours reaches TRL's final 9.30 at its second evaluation (4 s); seed 2: ours ends above TRL's 9.20.
    reports = [
        {"seed": 1, "target": 9.30, "target_recipe": "trl",
         "results": [_result("ours", [9.5, 9.29, 9.25], [2, 4, 6], 9.25),
                     _result("trl", [9.6, 9.4, 9.30], [10, 20, 30], 9.30)]},
        {"seed": 2, "target": 9.20, "target_recipe": "trl",
         "results": [_result("ours", [9.5, 9.35, 9.31], [2, 4, 5], 9.31),
                     _result("trl", [9.6, 9.4, 9.20], [10, 20, 25], 9.20)]},
        {"seed": 3, "target": None, "target_recipe": None,  # a seed where a recipe failed is left out
         "results": [_result("ours", [9.0], [1], 9.0), {"recipe": "trl", "error": "boom"}]},
    ]
    text = sweep_summary(reports)
    assert "| 1 | 9.300 (trl) | 9.250 / 4.0 | 9.300 / 30.0 | 5.00x |" in text
    assert "| 2 | 9.200 (trl) | 9.310 / never | 9.200 / 25.0 | 5.00x |" in text
    assert "| 3 |" not in text
    assert ("ours: held-out loss mean 9.2800, sd 0.0424, range 9.250-9.310; reached its seed's target in 1 of 2 "
            "seeds (median 4.0 s)") in text
    assert "trl: held-out loss mean 9.2500, sd 0.0707" in text and "in 2 of 2 seeds (median 27.5 s)" in text
    assert "records/s ours / trl: median 5.00x, range 5.00-5.00x" in text


def test_a_sweep_without_ours_has_no_ratio_columns():
    reports = [{"seed": 1, "target": 9.30, "target_recipe": "trl",
                "results": [_result("trl", [9.4, 9.30], [10, 20], 9.30),
                            _result("llamafactory", [9.5, 9.2], [5, 9], 9.2)]}]
    table = [line for line in sweep_summary(reports).splitlines() if line.startswith("|")]
    assert table[0] == "| seed | target (recipe) | trl loss / s to target | llamafactory loss / s to target |"
    assert table[2] == "| 1 | 9.300 (trl) | 9.300 / 20.0 | 9.200 / 9.0 |"
    assert {line.count("|") for line in table} == {5}


def test_the_newline_ablation_trains_the_token_after_each_answer_and_keys_its_own_cache():
    """bench/hooks/newline_label (recipe ours-newline): the `\\n` after a trained <|im_end|> gets its label, nothing else
    changes, and the encoded-set cache key differs from an ordinary run's."""
    import os
    import subprocess

    code = """if True:
        import json
        from trainer_core.data import encoded_set
        from trainer_core.models.local import load_tokenizer
        tok = load_tokenizer("models/qwen2-starter")
        conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "臣妾在。"}]
        e, = encoded_set.encode_conversations(tok, [conv], persona="甄嬛", max_length=64)
        print(json.dumps({"ids": e.input_ids, "labels": e.labels, "n": e.n_label_tokens,
                          "version": str(encoded_set.CACHE_VERSION)}))
    """

    def encode(hooked: bool) -> dict:
        path = [str(PROJECT_ROOT / "bench" / "hooks" / "newline_label")] if hooked else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(PROJECT_ROOT)])}
        env.pop("BENCH_PHASES", None)
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.splitlines()[-1])

    plain, hooked = encode(False), encode(True)
    from trainer_core.models.local import load_tokenizer
    tok = load_tokenizer(PROJECT_ROOT / "models" / "qwen2-starter")
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), tok.encode("\n")[0]
    assert plain["ids"] == hooked["ids"] and plain["ids"][-1] == newline
    assert hooked["n"] == plain["n"] + 1 and hooked["version"] != plain["version"]
    changed = [i for i, (a, b) in enumerate(zip(plain["labels"], hooked["labels"])) if a != b]
    assert changed == [len(plain["ids"]) - 1] and plain["labels"][-2] == im_end
    assert plain["labels"][-1] == -100 and hooked["labels"][-1] == newline


def test_a_set_override_reaches_every_peer(tmp_path):
    """--set changes the job for all recipes: without CPU offload the peers' DeepSpeed JSON has no optimizer block (the
    GPU check's job: DeepSpeed's CPU Adam would compile for minutes in each venv first)."""
    train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
    train.write_text(json.dumps(RECORDS[:4], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(RECORDS[4:], ensure_ascii=False), encoding="utf-8")
    cfg = job_config(1, sets=["deepspeed.offload_optimizer=none"])
    write_peer_inputs(cfg, tmp_path, train, heldout)
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert cfg.deepspeed.offload_optimizer == "none"
    assert "optimizer" not in ds and "offload_optimizer" not in ds["zero_optimization"]
    assert job_config(1).deepspeed.offload_optimizer == "cpu"  # the default job keeps the quickstart's offload


def test_peer_python_is_used_as_given(tmp_path, monkeypatch):
    """PEER_PYTHON (the GPU check's venv, which has TRL from the wheelhouse) is checked and returned; no venv is built,
    so nothing is fetched. An interpreter without the peer is refused, not replaced."""
    import subprocess

    from bench import peer_venvs

    monkeypatch.setattr(peer_venvs, "VENVS", tmp_path / "venvs")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PEER_PYTHON", str(fake))
    assert peer_venvs.ensure("trl") == fake
    fake.write_text("#!/bin/sh\nexit 1\n")  # the check import fails: no TRL there
    with pytest.raises(subprocess.CalledProcessError):
        peer_venvs.ensure("trl")
    assert not (tmp_path / "venvs").exists()


def test_the_lora_recipes_give_trl_our_adapter_and_rate(tmp_path):
    """--methods lora: TRL's job carries a peft LoraConfig equal to the one our trainer builds for the same run config
    and model (rank, alpha, dropout, every linear layer of the blocks), and both LoRA recipes train at one rate, 10x
    the full job's by default, with ours' gradient checkpointing setting (TRL's own default is on)."""
    from types import SimpleNamespace

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from trainer_core.models.adapters import lora_config

    train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
    train.write_text(json.dumps(RECORDS[:4], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(RECORDS[4:], ensure_ascii=False), encoding="utf-8")
    full = job_config(1)
    sets = lora_sets(SimpleNamespace(lora_lr=None), full)
    assert sets == ["train.method=lora", f"train.learning_rate={10 * full.train.learning_rate!r}"]
    cfg = job_config(1, sets=sets)
    write_peer_inputs(cfg, tmp_path, train, heldout)
    job = json.loads((tmp_path / "trl-job.json").read_text(encoding="utf-8"))
    s = job["sft_config"]
    assert "peft" not in s and s["learning_rate"] == cfg.train.learning_rate == 10 * full.train.learning_rate
    assert s["gradient_checkpointing"] is cfg.train.gradient_checkpointing is False
    theirs = LoraConfig(**job["peft"])
    ours = lora_config(cfg, AutoModelForCausalLM.from_pretrained(PROJECT_ROOT / cfg.model.path))
    for field in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "modules_to_save",
                  "bias", "task_type"):
        assert getattr(theirs, field) == getattr(ours, field), field
    assert theirs.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert lora_sets(SimpleNamespace(lora_lr=2e-4), full)[1] == "train.learning_rate=0.0002"
    # The full job's TRL file has no adapter.
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    write_peer_inputs(full, full_dir, train, heldout)
    assert "peft" not in json.loads((full_dir / "trl-job.json").read_text(encoding="utf-8"))


def test_lora_ratios_compare_each_recipe_with_its_full_form_and_ours_with_trl_per_method():
    def r(recipe, seconds, rss, loss):
        return {"recipe": recipe, "records": 100, "label_tokens": 1000, "train_time_s": seconds,
                "peak_rss_bytes": rss, "heldout_loss": loss}

    done = [r("ours", 10, 400, 7.0), r("trl", 40, 800, 7.5), r("ours-lora", 5, 200, 8.0), r("trl-lora", 20, 600, 8.5)]
    assert ratio_lines(done).splitlines() == [
        "ours / trl: records/s 4.00x, label tokens/s 4.00x, peak RSS 0.50x",
        "ours-lora / trl-lora: records/s 4.00x, label tokens/s 4.00x, peak RSS 0.33x",
        "ours-lora / ours (LoRA / full): records/s 2.00x, peak RSS 0.50x, held-out loss 8.0000 vs 7.0000",
        "trl-lora / trl (LoRA / full): records/s 2.00x, peak RSS 0.75x, held-out loss 8.5000 vs 7.5000",
    ]
    from types import SimpleNamespace

    only = ["ours", "trl", "llamafactory"]
    assert recipe_names(SimpleNamespace(only=only, methods=["full", "lora"])) == [*only, "ours-lora", "trl-lora"]
    assert recipe_names(SimpleNamespace(only=only, methods=["lora"])) == ["ours-lora", "trl-lora"]


def test_a_peer_venv_missing_a_new_pin_is_completed_in_place(tmp_path, monkeypatch):
    """A TRL venv made before peft was pinned fails its check (`import trl, peft, deepspeed`) and is completed with
    pip in place, not wiped and rebuilt. Its python here is a script that logs its arguments instead of installing."""
    from bench import peer_venvs

    assert "import trl, peft" in peer_venvs.PEERS["trl"]["check"]  # checked first: the old ensure would build a venv
    monkeypatch.setattr(peer_venvs, "VENVS", tmp_path / "venvs")
    monkeypatch.delenv("PEER_PYTHON", raising=False)
    py = peer_venvs.python("trl")
    py.parent.mkdir(parents=True)
    log = tmp_path / "calls"
    py.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exit 1\necho "$@" >> {log}\n')
    py.chmod(0o755)
    with open(tmp_path / "out", "w") as out:
        assert peer_venvs.ensure("trl", log=out) == py
    calls = log.read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [["-m", "pip", "install"]] * 2  # no `venv --clear`, no pip upgrade
    assert "peft==0.21.2" in calls[-1].split() and "trl==0.24.0" in calls[-1].split()


@pytest.mark.parametrize("matched, gc", [("checkpointing-on", True), ("checkpointing-off", False)])
def test_a_matched_job_sets_checkpointing_precision_and_attention_alike(tmp_path, matched, gc):
    """Each peer's own files carry the same gradient checkpointing (reentrant, as HF's default that ours uses),
    precision (ours resolved here: fp32 on a CPU) and attention kernel (SDPA) as our recipe's --set overrides."""
    train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
    train.write_text(json.dumps(RECORDS[:4], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(RECORDS[4:], ensure_ascii=False), encoding="utf-8")
    cfg = job_config(1)
    write_peer_inputs(cfg, tmp_path, train, heldout, matched)
    trl = json.loads((tmp_path / "trl-job.json").read_text(encoding="utf-8"))
    lf = yaml.safe_load((tmp_path / "llamafactory.yaml").read_text(encoding="utf-8"))
    s = trl["sft_config"]
    assert s["gradient_checkpointing"] is gc and s["gradient_checkpointing_kwargs"] == {"use_reentrant": True}
    assert (trl["precision"], trl["attn_implementation"]) == ("fp32", "sdpa")
    assert lf["disable_gradient_checkpointing"] is (not gc) and lf["use_reentrant_gc"] is True
    assert (lf["bf16"], lf["fp16"], lf["flash_attn"]) == (False, False, "sdpa")
    settings = job_settings(cfg, matched)
    same = {"gradient_checkpointing": gc, "precision": "fp32", "attention": None}
    assert all(v == same for r, v in settings.items() if r != "ours-bf16")
    assert settings["ours-bf16"] == {**same, "precision": "bf16"}  # the precision ablation, and only that differs
    assert matched_sets(settings["ours"]) == [f"train.gradient_checkpointing={str(gc).lower()}", "train.precision=fp32"]
    line = job_line(SimpleNamespace(matched=matched), [{"settings": settings["ours"]}])
    assert line.startswith(f"job: matched, gradient checkpointing {'on' if gc else 'off'} for every recipe")


def test_at_defaults_each_tool_keeps_its_own_settings(tmp_path):
    """--matched defaults: no checkpointing, precision or attention key in the peers' files, so TRL's SFTConfig and
    LLaMA-Factory apply their own defaults (both checkpoint); the table says so."""
    train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
    train.write_text(json.dumps(RECORDS[:4], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(RECORDS[4:], ensure_ascii=False), encoding="utf-8")
    cfg = job_config(1)
    write_peer_inputs(cfg, tmp_path, train, heldout, "defaults")
    trl = json.loads((tmp_path / "trl-job.json").read_text(encoding="utf-8"))
    lf = yaml.safe_load((tmp_path / "llamafactory.yaml").read_text(encoding="utf-8"))
    assert not {"gradient_checkpointing", "gradient_checkpointing_kwargs"} & set(trl["sft_config"])
    assert not {"precision", "attn_implementation"} & set(trl)
    assert not {"disable_gradient_checkpointing", "flash_attn", "fp16"} & set(lf)
    settings = job_settings(cfg, "defaults")
    assert settings["ours"]["gradient_checkpointing"] is False and settings["trl"]["gradient_checkpointing"] is True
    assert job_line(SimpleNamespace(matched="defaults"), []).startswith("job: each tool's own defaults (not matched)")
