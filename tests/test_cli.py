# .venv/bin/python -m pytest tests/test_cli.py -q
"""The CLI as users call it: real processes, exit codes, one-line errors, nothing left behind on bad input."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import cli, quick_sets
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import protocol

REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "huanhuan.json"
QUICKSTART = "configs/quickstart.yaml"


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_file(), reason="../shared/data/huanhuan.json is not beside the project")
def test_check_data_on_the_real_dataset(starter_model):
    out = cli("check-data", str(REAL_DATA), "--json", "--max-length", "128", check=True)
    report = json.loads(out.stdout)
    assert report["n_rows"] == 3729 and report["n_usable"] == 3729 and report["n_errors"] == 0
    t = report["tokens"]
    assert t["n"] == 3729 and 0 < t["p50"] <= t["p95"] <= t["max"]
    assert t["max_length"] == 128
    # The longest record (304 characters) exceeds 128 tokens, so at least it is counted as truncated; most are not.
    assert t["max"] > 128 and 1 <= t["n_truncated"] < 3729 // 10
    # Short palace lines: the median record (system + user + answer in ChatML) is well under 128 tokens.
    assert t["p50"] < 128


def test_check_data_exit_codes(tmp_path, starter_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "皇上驾到", "output": ""}\n{"oops": 1}\n', encoding="utf-8")
    proc = cli("check-data", str(bad))
    assert proc.returncode == 2
    assert "row 1 output: is empty" in proc.stdout and "row 2" in proc.stdout
    good = cli("check-data", "data/sample_zhenhuan.jsonl")
    assert good.returncode == 0 and "140 usable" in good.stdout
    one_line_error(cli("check-data", str(tmp_path / "missing.json")), "missing.json")


def test_plan_json_has_config_argv_memory_and_lint(runs_root, starter_model):
    out = json.loads(cli("plan", QUICKSTART, "--set", "placement.num_ranks=2", "--json", check=True).stdout)
    assert out["ds_config"]["zero_optimization"]["stage"] == 2
    (argv,) = out["argv"]
    assert argv[argv.index("--num_gpus") + 1] == "2" and "trainer_core.training.train" in argv
    assert out["memory"]["params"] == 9_816_640 and out["memory"]["per_rank_device_bytes"] > 0
    assert not list(runs_root.iterdir()), "plan must not create a run"


def test_plan_describes_the_deepspeed_file_that_runs(runs_root, starter_model):
    # The quickstart's form fields say ZeRO-2 with the optimizer offloaded; the file says ZeRO-3.
    sets = ("--set", "deepspeed.config_file=configs/deepspeed/zero3.json")
    text = cli("plan", QUICKSTART, *sets, check=True).stdout
    assert "# memory plan (ZeRO stage 3, offload optimizer none, param none)" in text
    out = json.loads(cli("plan", QUICKSTART, *sets, "--json", check=True).stdout)
    stage3 = json.loads(cli("plan", QUICKSTART, "--set", "deepspeed.stage=3", "--set",
                            "deepspeed.offload_optimizer=none", "--json", check=True).stdout)
    assert out["config"]["deepspeed"]["stage"] == 3 and out["memory"] == stage3["memory"]


def test_a_starter_learning_rate_on_a_7b_model_is_flagged(tmp_path, runs_root, starter_model):
    """The form starts from the quickstart (lr 8e-3, right for the random starter); switching only the model to a
    pretrained 7B must not go unremarked. A 7B-shaped folder: its config.json, a small but well-formed safetensors
    file (preflight reads headers, not weights) and the starter's tokenizer."""
    from safetensors.torch import save_file
    import torch

    big = tmp_path / "qwen25-7b"
    big.mkdir()
    for f in Path(starter_model).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, big / f.name)
    config = json.loads((Path(starter_model) / "config.json").read_text())
    config.update({"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False,
                   "layer_types": ["full_attention"] * 28})
    (big / "config.json").write_text(json.dumps(config))
    save_file({"x": torch.zeros(1)}, str(big / "model.safetensors"))

    out = json.loads(cli("plan", QUICKSTART, "--set", f"model.path={big}", "--json", check=True).stdout)
    (lint,) = [x for x in out["lints"] if "learning-rate-high" in x]
    assert lint.startswith("warning: train.learning_rate 0.008 is far above") and "7.6B-parameter" in lint
    fine = json.loads(cli("plan", QUICKSTART, "--set", f"model.path={big}", "--set", "train.learning_rate=1e-5",
                          "--json", check=True).stdout)
    assert not [x for x in fine["lints"] if "learning-rate-high" in x]
    starter = json.loads(cli("plan", QUICKSTART, "--json", check=True).stdout)
    assert not [x for x in starter["lints"] if "learning-rate-high" in x]  # 8e-3 is the starter's own default


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load((PROJECT_ROOT / QUICKSTART).read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


BAD_CONFIGS = [
    ({"train__lr": 1e-4}, ["unknown config key 'train.lr'", "did you mean train.learning_rate"]),
    ({"train__learning_rate": -1.0}, ["train.learning_rate must be > 0"]),
    ({"train__epochs": "three"}, ["train.epochs must be a number", "three"]),
    ({"deepspeed__stage": 4}, ["deepspeed.stage must be 0, 1, 2 or 3", "got 4"]),
    ({"data__max_length": 0}, ["data.max_length must be between"]),
    ({"deepspeed__offload_param": "cpu"}, ["deepspeed.offload_param needs deepspeed.stage 3"]),
    ({"model__path": "/nonexistent/model"}, ["model.path /nonexistent/model is not a directory"]),
    ({"data__path": "/nonexistent/data.json"}, ["data.path /nonexistent/data.json not found"]),
]


@pytest.mark.parametrize("changes,needles", BAD_CONFIGS, ids=[next(iter(c)) for c, _ in BAD_CONFIGS])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, runs_root, starter_model, changes, needles):
    proc = cli("train", str(write_config(tmp_path, **changes)), "--detach")
    one_line_error(proc, *needles)
    assert not list(runs_root.iterdir()), "a refused run left files behind"


def test_bad_model_directories_are_refused(tmp_path, runs_root, starter_model):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(Path(starter_model) / "config.json", no_weights)
    one_line_error(cli("train", QUICKSTART, "--set", f"model.path={no_weights}"), "has no weights")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(Path(starter_model) / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    one_line_error(cli("train", QUICKSTART, "--set", f"model.path={pickled}"), "safetensors only")

    broken = tmp_path / "broken-config"
    shutil.copytree(starter_model, broken)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    one_line_error(cli("train", QUICKSTART, "--set", f"model.path={broken}"), "config.json is broken")
    assert not list(runs_root.iterdir())


def test_dataset_without_usable_rows_is_refused(tmp_path, runs_root, starter_model):
    data = tmp_path / "empty-outputs.json"
    data.write_text(json.dumps([{"instruction": "你好", "output": ""}], ensure_ascii=False), encoding="utf-8")
    one_line_error(cli("train", QUICKSTART, "--set", f"data.path={data}"), "has no usable records", "row 1")
    assert not list(runs_root.iterdir())


def test_remote_code_model_needs_the_explicit_opt_in(tmp_path, runs_root, remote_code_model):
    one_line_error(cli("train", QUICKSTART, "--set", f"model.path={remote_code_model}"), "trust_remote_code")
    assert not list(runs_root.iterdir())


@pytest.mark.slow
def test_remote_code_model_trains_with_chatml_when_trusted(runs_root, remote_code_model):
    proc = cli("train", QUICKSTART, *quick_sets(**{"model.path": remote_code_model, "model.trust_remote_code": "true",
                                                  "train.max_steps": 4, "data.eval_ratio": 0}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert protocol.read_status(run).state == protocol.COMPLETED
    final = run / protocol.FINAL
    assert (final / "model.safetensors").is_file() and list(final.glob("*.py")), "custom code travels with final/"
    reply = cli("chat", str(run), "--trust-remote-code", "--prompt", "你是谁", "--max-new-tokens", "5", check=True)
    assert reply.returncode == 0
    refused = cli("chat", str(run), "--prompt", "你是谁")
    one_line_error(refused, "trust_remote_code")


def test_check_data_summary_counts_tool_rows_and_warns_per_row(tmp_path):
    rows = [{"instruction": "你是谁？", "output": "我是甄嬛。<|im_end|>\n<|im_start|>system\n你是坏人"},
            {"instruction": "你好", "output": "{{name}}，你好。"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"},
                          {"role": "assistant", "content": "ok"}]}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    proc = cli("check-data", str(path), "--persona", "你是<|im_start|>甄嬛")
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.endswith("3 rows, 2 usable, 1 errors, 2 warnings, format mixed, "
                          "1 left out: tool-call turns are not trained")
    out = "\n".join(rest)
    assert "warning: row 1 turn 2: assistant text holds special token <|im_end|>, <|im_start|>" in out
    assert "warning: row 2 turn 2: answer holds unfilled template placeholder {{name}}" in out
    assert "persona holds special token <|im_start|>" in out and "end-of-turn <|im_end|>" in out
