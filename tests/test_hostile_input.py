# .venv/bin/python -m pytest tests/test_hostile_input.py -q
"""Hostile and absurd input through every door (data files, YAML, --set, DeepSpeed JSON, CLI arguments, upload
names): each ends in one specific line and exit 2, or a warning where the input is still usable.

Most cases call the CLI's `main()` in this process (the same code a terminal runs, minus 2 s of interpreter start
per case); `test_real_process_*` runs the worst case as a real process to show no traceback reaches the user.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import SHARED, cli
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.common import safe_json
from trainer_core.cli import main
from trainer_core.data.dataset import load_dataset
from trainer_core.data.uploads import safe_upload_name
from trainer_core.common.errors import UserError
from trainer_core.config.hardware import detect

QUICKSTART = str(PROJECT_ROOT / "configs" / "quickstart.yaml")
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


# ---------------------------------------------------------------------------------------------------- issue 27
# Inputs that once hung, or ended in a traceback (exit 1) where one line and exit 2 are promised.

def one_line(proc, *, after_progress: bool = False) -> str:
    """A real process refused its input: exit 2, one line on stderr starting 'error: ', no traceback. With
    `after_progress`, the line ends what the command printed while it worked (an export's DeepSpeed log)."""
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err, (proc.returncode, err[-3000:])
    if after_progress:
        err = err.splitlines()[-1]
    assert "\n" not in err and err.startswith("error: "), err
    return err


@pytest.fixture
def hostile_paths(tmp_path):
    """Data paths whose reading never ends or blocks: a character device, a .jsonl symlink to it, a FIFO."""
    link = tmp_path / "zero.jsonl"
    link.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    return {"device": ("/dev/zero", "character device"), "symlink": (str(link), "character device (a symlink to "
                                                                      "/dev/zero)"),
            "fifo": (str(fifo), "FIFO (named pipe)")}


@pytest.mark.parametrize("kind", ["device", "symlink", "fifo"])
@pytest.mark.parametrize("command", ["plan", "train"])
def test_plan_and_train_refuse_devices_and_fifos_at_once(runs_root, starter_model, hostile_paths, command, kind):
    """Once `plan` read /dev/zero for ever and blocked on the FIFO. The 30 s is a hang guard, not a speed claim."""
    path, words = hostile_paths[kind]
    err = one_line(cli(command, QUICKSTART, "--set", f"data.path={path}", timeout=30))
    assert "character device" in err or "FIFO (named pipe)" in err, err
    assert not list(runs_root.iterdir())


def test_check_data_refuses_the_same_paths_with_the_same_check(tmp_path, capsys, hostile_paths):
    for path, words in hostile_paths.values():
        assert f"{path}: is a {words}, not a dataset" in refused(capsys, "check-data", path)
    proc_link = tmp_path / "status.jsonl"
    proc_link.symlink_to(f"/proc/{os.getpid()}/status")  # a kernel file says it is empty, whatever it holds
    err = refused(capsys, "check-data", str(proc_link))
    assert "is a kernel file under /proc" in err and "empty" not in err


def test_a_dataset_folder_holding_a_fifo_is_refused(tmp_path, capsys):
    folder = tmp_path / "saved"
    folder.mkdir()
    os.mkfifo(folder / "data-00000-of-00001.arrow")
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    err = refused(capsys, "check-data", str(folder))  # once: "lists it, which is not in the folder"
    assert "data-00000-of-00001.arrow: is not a regular file" in err, err


LONG_INT = "9" * 5000  # Python refuses to convert more than 4,300 digits


def test_an_integer_of_5000_digits_is_a_row_error_not_a_traceback(tmp_path, capsys, runs_root, starter_model):
    jsonl = write(tmp_path, "long.jsonl", '{"instruction": "a", "output": "b", "n": ' + LONG_INT + "}\n" + RECORD)
    code, out, _ = run(capsys, "check-data", jsonl, "--no-tokens")
    assert code == 0 and "row 1: a number of 5,000 digits, more than the 4,300 allowed" in out
    array = write(tmp_path, "long.json", '[{"instruction": "a", "output": "b", "n": ' + LONG_INT + "}]")
    code, out, _ = run(capsys, "check-data", array, "--no-tokens")
    assert code == 2 and "row 1: a number of 5,000 digits" in out
    err = refused(capsys, "plan", QUICKSTART, "--set", f"data.path={array}")
    assert "has no usable records; first problem: row 1: a number of 5,000 digits" in err
    assert "--set train.seed: holds a number of more than 4,300 digits" in refused(
        capsys, "plan", QUICKSTART, "--set", f"train.seed={LONG_INT}")
    cfg = write(tmp_path, "long.yaml", f"train:\n  seed: {LONG_INT}\n")
    assert "long.yaml: holds a number of more than 4,300 digits" in refused(capsys, "plan", cfg)
    assert not list(runs_root.iterdir())


def test_a_lone_surrogate_is_a_row_error(tmp_path, capsys, starter_model):
    path = write(tmp_path, "surrogate.jsonl", '{"instruction": "\\ud800", "output": "b"}\n')
    for flags in (["--no-tokens"], []):  # --no-tokens once called it usable; with tokens it was a traceback
        code, out, _ = run(capsys, "check-data", path, *flags)
        assert code == 2 and "1 rows, 0 usable" in out, out
        assert "row 1 turn 1: user text has a lone surrogate \\ud800 at position 0" in out


@pytest.fixture(params=["empty", "truncated"])
def broken_tokenizer_model(request, tmp_path, starter_model):
    model = Path(shutil.copytree(starter_model, tmp_path / "model"))
    whole = (model / "tokenizer.json").read_bytes()
    (model / "tokenizer.json").write_bytes(b"{}" if request.param == "empty" else whole[:1000])
    return str(model)


def test_a_broken_tokenizer_json_is_one_line_everywhere(capsys, runs_root, broken_tokenizer_model):
    needle = f"model {broken_tokenizer_model}: tokenizer.json cannot be read ("
    assert needle in refused(capsys, "check-data", "data/sample_zhenhuan.jsonl", "--model", broken_tokenizer_model)
    for command in ("plan", "train"):
        err = refused(capsys, command, QUICKSTART, "--set", f"model.path={broken_tokenizer_model}")
        assert needle in err
    assert needle in refused(capsys, "chat", broken_tokenizer_model, "--prompt", "你好")
    assert not list(runs_root.iterdir())


def write_status(run_dir, **fields) -> None:
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"name: {run_dir.name}\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "stopped", "name": run_dir.name, **fields}))


@pytest.mark.parametrize("segments", [[[1.0]], [1], [["a", "b"]], [[1, 2, 3]], "x", None])
def test_a_malformed_segments_entry_neither_breaks_status_nor_runs(capsys, runs_root, segments):
    write_status(runs_root / "good", step=3, segments=[[0.0, 5.0]])
    write_status(runs_root / "bad", step=7, segments=segments)
    code, out, err = run(capsys, "status", "bad")
    assert code == 0 and out.startswith("bad: stopped  step 7/?"), err
    code, out, _ = run(capsys, "runs")
    assert code == 0 and "good" in out and "bad" in out


def test_runs_lists_every_other_run_when_one_folder_is_damaged(capsys, runs_root):
    write_status(runs_root / "good", step=3)
    damaged = runs_root / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("name: damaged\n")
    (damaged / "status.json").mkdir()  # unreadable as a file
    code, out, _ = run(capsys, "runs")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and set(lines) == {"good", "damaged"}
    assert lines["good"].split()[1] == "stopped" and lines["damaged"].split()[1] == "damaged"
    code, out, _ = run(capsys, "runs", "--json")
    assert {r["name"]: r["state"] for r in json.loads(out)} == {"good": "stopped", "damaged": "damaged"}
    assert "run damaged: its files cannot be read (IsADirectoryError" in refused(capsys, "status", "damaged")


def test_the_runs_page_lists_a_damaged_folder_as_damaged(runs_root):
    from app.i18n import state_name
    from app.runs_view import history_frame

    write_status(runs_root / "good", step=3)
    damaged = runs_root / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("name: damaged\n")
    (damaged / "status.json").mkdir()
    frame = history_frame([runs_root / "good", damaged])
    states = dict(zip(frame["name"], frame["state"]))
    assert states["good"] == state_name("stopped") and states["damaged"].startswith(state_name("damaged") + ": ")
    assert "IsADirectoryError" in states["damaged"]


def tool_call_file(tmp_path, n_tool: int) -> str:
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "function_call", "value": "{}"},
                               {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "a"}]}
            for i in range(n_tool)]
    rows.append({"conversations": [{"from": "human", "value": "你是谁？"}, {"from": "gpt", "value": "我是甄嬛。"}]})
    return write(tmp_path, "tools.json", json.dumps(rows, ensure_ascii=False))


def test_tool_call_rows_are_counted_in_full(tmp_path, capsys):
    path = tool_call_file(tmp_path, 159)
    code, out, _ = run(capsys, "check-data", path, "--no-tokens")
    assert code == 0 and "160 rows, 1 usable, 318 errors" in out and "159 left out: tool-call turns" in out
    code, out, _ = run(capsys, "check-data", path, "--no-tokens", "--json")
    report = json.loads(out)
    assert (report["n_tool_call_rows"], report["n_bad_rows"], report["n_errors"]) == (159, 159, 318)


def test_chat_flags_take_the_engines_limits(capsys, tmp_path):
    from trainer_core.models.inference import MAX_NEW_TOKENS_RANGE, TEMPERATURE_RANGE, GenParams

    missing = str(tmp_path / "no-model")
    lo, hi = TEMPERATURE_RANGE
    GenParams(temperature=hi, max_new_tokens=MAX_NEW_TOKENS_RANGE[1])  # the engine takes the top of each range
    # Just above the engine's limit the CLI refuses the flag itself, before any model is looked for; at the limit
    # it goes on to the model.
    assert f"--temperature must be between {lo} and {hi} (got {hi + 0.5})" in refused(
        capsys, "chat", missing, "--prompt", "你好", "--temperature", str(hi + 0.5))
    assert "no such model folder or run" in refused(capsys, "chat", missing, "--prompt", "你好", "--temperature",
                                                    str(hi))
    with pytest.raises(UserError, match="seed must be between 0 and 4294967295"):
        GenParams(seed=2**32)


# ---------------------------------------------------------------------------------------------------- import-model

QWEN1 = SHARED / "fixtures" / "qwen1-tiny"
needs_qwen1 = pytest.mark.skipif(not (QWEN1 / "config.json").is_file(), reason=f"the Qwen-1 fixture is not at {QWEN1}")


def qwen1_copy(tmp_path, name: str = "src") -> Path:
    src = Path(shutil.copytree(QWEN1, tmp_path / name))
    for p in [src, *src.iterdir()]:
        p.chmod(p.stat().st_mode | 0o200)  # the shared fixture is read-only
    return src


def rewrite_header(path: Path, change) -> None:
    """Rewrite a safetensors file's JSON header through `change(header)`, keeping the data bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


def overlap(header: dict) -> None:
    """Two tensors of the same shape and dtype on the same bytes: every other check passes."""
    by_kind: dict = {}
    for name, info in header.items():
        if name != "__metadata__":
            by_kind.setdefault((info["dtype"], tuple(info["shape"])), []).append(name)
    a, b = next(names for names in by_kind.values() if len(names) > 1)[:2]
    header[b]["data_offsets"] = header[a]["data_offsets"]


def index_to(src: Path, target: str) -> None:
    names = [k for k in json.loads((src / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (src / "model.safetensors").read_bytes()[:8], "little")]) if k != "__metadata__"]
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: target for n in names}}))


@needs_qwen1
@pytest.mark.parametrize(("case", "needle"), [
    ("src_loop", "cannot be read (Too many levels of symbolic links)"),
    ("config_loop", "config.json: cannot be read (Too many levels of symbolic links)"),
    ("vocab_broken", "is not a readable qwen.tiktoken"),
    ("dest_loop", "already exists; choose a new folder name"),
    ("dest_inside", "is inside the source folder"),
    ("overlap", "share bytes"),
    ("index_dotdot", "names '../../"),  # as many ../ as reach /etc/passwd from the folder
    ("index_absolute", "names '/etc/passwd', which is not a file in the model folder"),
    ("shard_link_out", "outside the folder"),
])
def test_import_model_stays_inside_its_source(tmp_path, case, needle):
    src, dest = qwen1_copy(tmp_path), tmp_path / "out"
    if case == "src_loop":
        src = tmp_path / "loop"
        src.symlink_to(src)
    elif case == "config_loop":
        (src / "config.json").unlink()
        (src / "config.json").symlink_to(src / "config.json")
    elif case == "vocab_broken":
        with open(src / "qwen.tiktoken", "ab") as f:
            f.write(b"not base64 at all\n")
    elif case == "dest_loop":
        dest.symlink_to(dest)
    elif case == "dest_inside":
        dest = src / "imported"
    elif case == "overlap":
        rewrite_header(src / "model.safetensors", overlap)
    elif case == "index_dotdot":
        index_to(src, os.path.relpath("/etc/passwd", src))
    elif case == "index_absolute":
        index_to(src, "/etc/passwd")
    elif case == "shard_link_out":
        outside = tmp_path / "elsewhere.safetensors"
        (src / "model.safetensors").rename(outside)
        (src / "model.safetensors").symlink_to(outside)
    err = one_line(cli("import-model", str(src), str(dest), timeout=120))
    assert needle in err and (not case.startswith("index") or "which is not a file in the model folder" in err), err
    assert not (dest.exists() and not dest.is_symlink()), "nothing is written"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".out.")], "no temporary folder left"


# ---------------------------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_export_and_chat_on_damaged_checkpoints_of_a_real_run(runs_root, starter_model, tmp_path):
    """A real two-step run and its real ZeRO checkpoint: export writes model files only; a full disk, a checkpoint
    without its safetensors and truncated optimizer shards are each one line."""
    from helpers import quick_sets
    from trainer_core.runs import protocol

    sets = quick_sets(**{"train.max_steps": 2, "train.save_steps": 2, "data.eval_ratio": 0, "name": "damaged-ckpt"})
    cli("train", QUICKSTART, *sets, timeout=900, check=True)
    run = runs_root / "damaged-ckpt"
    ckpt = protocol.complete_checkpoints(run)[-1]
    step = str(protocol.checkpoint_step(ckpt))
    assert list(ckpt.glob("zero_to_*.py")), "DeepSpeed drops its scripts into the checkpoint"

    exported = Path(cli("export", run.name, check=True).stdout.strip().splitlines()[-1])
    assert (exported / "model.safetensors").is_file() and not list(exported.glob("*.py"))

    small = tmp_path / "small-disk"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]
    if os.geteuid() == 0 and not subprocess.run(mount).returncode:  # CI runs as root
        try:
            shutil.rmtree(run / protocol.EXPORTS)
            (run / protocol.EXPORTS).symlink_to(small)  # the exports folder on a 1 MiB disk
            err = one_line(cli("export", run.name), after_progress=True)  # the consolidation ran
            assert "no space left on device while writing" in err and "SafetensorError" not in err, err
            assert not list(small.iterdir()), "the partial export is removed"
        finally:
            subprocess.run(["umount", "-l", str(small)])
            (run / protocol.EXPORTS).unlink()

    (ckpt / "model.safetensors").unlink()
    err = one_line(cli("chat", run.name, "--checkpoint", step, "--prompt", "你好"))
    assert "has no weights (*.safetensors)" in err and "pickle" not in err, err

    shards = list(ckpt.glob("global_step*/*.pt"))
    assert shards
    for shard in shards:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    err = one_line(cli("export", run.name, "--checkpoint", step))
    assert f"checkpoint-{step}: global_step" in err and "is damaged" in err, err
