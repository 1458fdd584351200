# .venv/bin/python -m pytest tests/test_hostile_input.py -q
"""Hostile and absurd input through every door (data files, YAML, --set, DeepSpeed JSON, CLI arguments, upload
names): each ends in one specific line and exit 2, or a warning where the input is still usable.

Most cases call the CLI's `main()` in this process (the same code a terminal runs, minus 2 s of interpreter start
per case); `test_real_process_*` runs the worst case as a real process to show no traceback reaches the user.
"""

import json

import pytest
import yaml

from conftest import ROOT, cli
from trainer_core.data import safe_json
from trainer_core.cli import main
from trainer_core.data.dataset import load_dataset
from trainer_core.data.uploads import safe_upload_name
from trainer_core.errors import UserError
from trainer_core.config.hardware import detect

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
DEEP = 100_000


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str) -> str:
    """Exit 2 with exactly one line on stderr, starting with 'error: '; returns that line."""
    code, _, err = run(capsys, *argv)
    err = err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


RECORD = '{"instruction": "你是谁？", "output": "我是甄嬛。"}'


# ---------------------------------------------------------------------------------------------------- data files


def test_deep_nesting_in_a_json_data_file_is_refused_by_name(tmp_path, capsys):
    path = write(tmp_path, "deep.json", "[" * DEEP + "]" * DEEP)
    err = refused(capsys, "check-data", path)
    assert f"nested {DEEP:,}".replace(",", "") in err and "more than the 64" in err


def test_deep_nesting_inside_history_is_a_row_error(tmp_path, capsys, starter_model):
    deep = '{"instruction": "a", "output": "b", "history": ' + "[" * DEEP + "]" * DEEP + "}"
    path = write(tmp_path, "deep.jsonl", deep + "\n" + RECORD + "\n")
    code, out, _ = run(capsys, "check-data", path)
    assert code == 0 and "2 rows, 1 usable, 1 errors" in out  # the good record is still usable
    assert f"row 1: nested {DEEP + 1} levels deep, more than the 64 allowed" in out
    code, out, _ = run(capsys, "check-data", write(tmp_path, "only.jsonl", deep + "\n"))
    assert code == 2 and "row 1: nested" in out


def test_nan_and_infinity_in_a_record_are_row_errors(tmp_path):
    text = '{"instruction": "a", "output": NaN}\n[' + RECORD + ', {"instruction": Infinity, "output": "b"}]'
    report = load_dataset(write(tmp_path, "d.jsonl", text.split("\n")[0] + "\n" + RECORD + "\n"))
    assert [str(e) for e in report.errors] == ["row 1: NaN is not valid JSON (use null or a number)"]
    report = load_dataset(write(tmp_path, "d.json", text.split("\n")[1]))
    assert report.n_usable == 1 and [str(e) for e in report.errors] == \
        ["row 2: Infinity is not valid JSON (use null or a number)"]


def test_duplicate_keys_are_a_warning_naming_row_and_key(tmp_path, capsys, starter_model):
    dup = '{"instruction": "a", "instruction": "b", "output": "c"}'
    path = write(tmp_path, "dup.jsonl", RECORD + "\n" + dup + "\n")
    code, out, _ = run(capsys, "check-data", path)
    assert code == 0 and "warning: row 2 instruction: key appears more than once; only its last value is used" in out
    report = load_dataset(write(tmp_path, "dup.json", f"[{RECORD}, {dup}]"))
    assert [(w.row, w.field) for w in report.warnings] == [(2, "instruction")]
    assert report.conversations[1][0]["content"] == "b"  # what json does, now said out loud


@pytest.mark.parametrize("value", ["0", "15", "131073", str(10**12), "-5"])
def test_check_data_max_length_has_the_config_bounds(capsys, value):
    err = refused(capsys, "check-data", "data/sample_zhenhuan.jsonl", "--max-length", value)
    assert f"--max-length must be between 16 and 131,072 (the range data.max_length allows) (got {value})" in err


def test_nesting_depth_ignores_brackets_inside_strings():
    assert safe_json.nesting_depth('[{"a": "[[[[{{{{"}, ["\\"[[["]]') == 2
    with pytest.raises(safe_json.JsonProblem, match="nested 65 levels"):
        safe_json.loads("[" * 65 + "]" * 65)
    assert safe_json.loads("[" * 64 + "]" * 64)[0] is not None


# ---------------------------------------------------------------------------------------------------- run config


@pytest.mark.parametrize(("setting", "needle"), [
    ("train.seed=-5", "train.seed must be between 0 and 4294967295 (got -5)"),
    (f"train.seed={2**32}", f"train.seed must be between 0 and 4294967295 (got {2**32})"),
    ("train.learning_rate=.nan", "train.learning_rate must be a finite number (got nan)"),
    ("train.epochs=.inf", "train.epochs must be a finite number (got inf)"),
    ("train.epochs=1e30", "train.epochs must be at most 10,000"),
    (f"train.micro_batch_size={10**30}", "train.micro_batch_size must be between 1 and 65,536"),
    (f"train.gradient_accumulation={10**9}", "train.gradient_accumulation must be between 1 and 65,536"),
    (f"train.max_steps={10**30}", "train.max_steps must be -1 or a step count from 1 to 1,000,000,000"),
    (f"train.save_steps={10**30}", "train.save_steps must be between 0 and 1,000,000,000"),
    (f"placement.num_nodes={10**6}", "placement.num_nodes must be between 1 and 4096"),
    ("deepspeed.nvme_path=/etc", "deepspeed.nvme_path /etc is a system directory"),
    ("deepspeed.nvme_path=/usr/local/x", "deepspeed.nvme_path /usr/local/x is a system directory"),
    ("deepspeed.nvme_path=scratch", "deepspeed.nvme_path must be an absolute path (got 'scratch')"),
    ("train.seed=" + "[" * 3000 + "]" * 3000, "train.seed must be a whole number (got '[[[["),
])
def test_bad_numbers_and_paths_in_set_are_refused(capsys, runs_root, setting, needle):
    err = refused(capsys, "plan", QUICKSTART, "--set", setting)
    assert needle in err and len(err) < 300, err
    assert not list(runs_root.iterdir())


def test_nan_and_deep_nesting_in_a_yaml_config_are_refused(tmp_path, capsys):
    raw = yaml.safe_load(open(QUICKSTART, encoding="utf-8"))
    raw["train"]["learning_rate"] = float("nan")
    err = refused(capsys, "plan", write(tmp_path, "nan.yaml", yaml.safe_dump(raw)))
    assert "train.learning_rate must be a finite number (got nan)" in err
    deep = "train:\n" + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(3000))
    err = refused(capsys, "plan", write(tmp_path, "deep.yaml", deep))
    assert "deep.yaml is not valid YAML" in err or "nested too deeply" in err


@pytest.mark.skipif(detect().has_gpu, reason="the CPU-rank limit applies to machines without a GPU")
def test_more_cpu_ranks_than_cores_is_refused(capsys, runs_root, starter_model):
    cores = detect().cpu_cores
    err = refused(capsys, "plan", QUICKSTART, "--set", f"placement.num_ranks={min(cores + 1, 1024)}")
    assert f"more than this machine's {cores} CPU cores and it has no GPU; use at most {cores}" in err
    err = refused(capsys, "plan", QUICKSTART, "--set", "placement.num_ranks=1025")
    assert "placement.num_ranks must be between 1 and 1024" in err


# ---------------------------------------------------------------------------------------------------- DeepSpeed JSON


def ds_file(tmp_path, zero: dict | None = None, text: str | None = None, **top) -> str:
    if text is None:
        cfg = {"zero_optimization": {"stage": 2, **(zero or {})}, "train_micro_batch_size_per_gpu": "auto", **top}
        text = json.dumps(cfg)
    return write(tmp_path, "ds.json", text)


@pytest.mark.parametrize(("kind", "needle"), [
    ("deep", f"ds.json: nested {DEEP + 1} levels deep, more than the 64 allowed"),
    ("stage9", "zero_optimization.stage must be 0, 1, 2 or 3 (got 9)"),
    ("device", "zero_optimization.offload_optimizer.device must be one of none, cpu, nvme (got 'disk')"),
    ("nvme_etc", "zero_optimization.offload_optimizer.nvme_path /etc is a system directory"),
    ("nvme_missing", "is not an existing directory; create it first"),
    ("nvme_file", "is not an existing directory; create it first"),
    ("batch", "train_micro_batch_size_per_gpu must be an integer from 1 to 2,147,483,647 or \"auto\""),
    ("nan", "NaN is not valid JSON"),
    ("dup", "key 'stage' appears more than once; keep one"),
])
def test_hostile_deepspeed_config_files_are_refused(tmp_path, capsys, runs_root, starter_model, kind, needle):
    nvme = lambda p: {"offload_optimizer": {"device": "nvme", "nvme_path": p}}  # noqa: E731
    (tmp_path / "a_file").write_text("x")
    path = {
        "deep": lambda: ds_file(tmp_path, text='{"a": ' + "[" * DEEP + "]" * DEEP + "}"),
        "stage9": lambda: ds_file(tmp_path, {"stage": 9}),
        "device": lambda: ds_file(tmp_path, {"offload_optimizer": {"device": "disk"}}),
        "nvme_etc": lambda: ds_file(tmp_path, nvme("/etc")),
        "nvme_missing": lambda: ds_file(tmp_path, nvme(str(tmp_path / "nope"))),
        "nvme_file": lambda: ds_file(tmp_path, nvme(str(tmp_path / "a_file"))),
        "batch": lambda: ds_file(tmp_path, train_micro_batch_size_per_gpu=10**30),
        "nan": lambda: ds_file(tmp_path, text='{"zero_optimization": {"stage": 2}, "gradient_clipping": NaN}'),
        "dup": lambda: ds_file(tmp_path, text='{"zero_optimization": {"stage": 2, "stage": 3}}'),
    }[kind]()
    err = refused(capsys, "plan", QUICKSTART, "--set", f"deepspeed.config_file={path}")
    assert needle in err, err
    assert not list(runs_root.iterdir())


def test_nvme_offload_to_a_directory_of_ours_is_accepted(tmp_path, capsys, runs_root, starter_model):
    scratch = tmp_path / "nvme"
    scratch.mkdir()
    path = ds_file(tmp_path, {"offload_optimizer": {"device": "nvme", "nvme_path": str(scratch)}})
    code, out, err = run(capsys, "plan", QUICKSTART, "--set", f"deepspeed.config_file={path}", "--json")
    assert code == 0, err
    assert not [x for x in json.loads(out)["lints"] if "nvme" in x]


# ---------------------------------------------------------------------------------------------------- CLI arguments


def test_logs_n_is_validated(capsys, runs_root):
    assert "-n must be between 0 and 100,000 (got -5)" in refused(capsys, "logs", "any", "-n", "-5")
    assert "-n must be between 0 and 100,000" in refused(capsys, "logs", "any", "-n", str(10**9))


def test_chat_refuses_an_empty_prompt_and_a_checkpoint_that_does_not_apply(capsys, starter_model):
    assert "--prompt is empty" in refused(capsys, "chat", str(starter_model), "--prompt", "  \n ")
    err = refused(capsys, "chat", str(starter_model), "--prompt", "你好", "--checkpoint", "5")
    assert "--checkpoint 5 applies to runs only" in err and "is a model folder, not a run" in err
    assert "--max-new-tokens must be between 1 and 8,192" in refused(
        capsys, "chat", str(starter_model), "--prompt", "你好", "--max-new-tokens", "0")
    assert "--temperature must be between" in refused(
        capsys, "chat", str(starter_model), "--prompt", "你好", "--temperature", "nan")


def test_chat_takes_a_run_by_name_like_the_other_commands(capsys, runs_root):
    run_dir = runs_root / "my-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: my-run\n")
    # Accepted as a run (the message is about the run's model, not an unknown folder) by name and by path.
    for ref in ("my-run", str(run_dir)):
        err = refused(capsys, "chat", ref, "--prompt", "你好")
        assert "run my-run has no final model and no complete checkpoint yet" in err
    err = refused(capsys, "chat", "no-such-run", "--prompt", "你好")
    assert "no-such-run: no such model folder or run" in err


def test_export_checkpoint_is_validated(capsys, runs_root):
    assert "--checkpoint must be between 0 and 1,000,000,000 (got -1)" in refused(
        capsys, "export", "any", "--checkpoint", "-1")


# ---------------------------------------------------------------------------------------------------- upload names


def test_an_upload_name_with_a_nul_byte_is_refused():
    with pytest.raises(UserError, match=r"the file name holds the control character U\+0000; rename the file"):
        safe_upload_name("a\x00b.json")
    assert safe_upload_name("a b.json") == "a_b.json"


# ---------------------------------------------------------------------------------------------------- real process


def test_real_process_deep_data_file_exits_2_without_a_traceback(tmp_path):
    path = write(tmp_path, "deep.json", "{" * DEEP)
    proc = cli("check-data", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error: ") and "more than the 64" in proc.stderr
