"""Persona evaluation on a real run: the starter trained until it speaks in character, then evaluated against its
base model through the CLI and the Python API (pytest tests/test_persona_eval.py)."""

import json
import threading

import pytest

from tests.helpers import cli
from trainer_core.evaluation import persona_eval as pe

pytestmark = pytest.mark.slow

QUESTIONS = ["今天天气如何", "你在做什么", "晚膳用了吗", "御花园的花开了吗", "你想家吗", "皇后可好", "近来睡得好吗",
             "宫里热闹吗", "你喜欢读书吗", "要去请安吗", "听说有新人入宫", "你会弹琴吗", "你累了吗", "今日可有赏赐",
             "你怕冷吗", "要出宫走走吗", "点心好吃吗", "谁来看过你", "你会下棋吗", "明日做什么", "槿汐在哪",
             "皇上来过吗", "你在想什么", "要不要喝茶", "你会写诗吗", "月色好吗", "碎玉轩冷吗", "你笑什么", "可有心事",
             "要歇息吗"]
TAILS = ["本宫知道了", "臣妾遵旨", "一切都好", "不敢劳烦"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The starter trained on 24 short in-character answers (6 held out) until it repeats their pattern."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "persona.jsonl"
    data.write_text("".join(json.dumps({"instruction": q + "？", "input": "",
                                        "output": f"回皇上，臣妾甄嬛{TAILS[i % 4]}。"}, ensure_ascii=False) + "\n"
                            for i, q in enumerate(QUESTIONS)), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_RUNS_ROOT", str(root / "runs"))
        mp.setenv("TRAINER_LOCK_DIR", str(root / "locks"))
        proc = cli("train", "configs/quickstart.yaml", "--set", f"data.path={data}", "--set", "train.max_steps=40",
                   "--set", "train.save_steps=20", "--set", "data.eval_ratio=0.2", "--set", "data.max_length=64",
                   "--set", "train.learning_rate=0.01", "--set", "name=persona", check=True)
        yield mp, root / "runs" / "persona"
        assert proc.returncode == 0


def test_base_and_final_evaluated_and_the_cli_shows_the_stored_figures(trained_run):
    mp, run = trained_run
    proc = cli("evaluate", str(run), "--base", "--max-new-tokens", "24", "--json", check=True)
    shown = json.loads(proc.stdout)
    stored = pe.read_results(run)
    assert list(stored) == ["base", "final"]
    base, final = stored["base"]["metrics"], stored["final"]["metrics"]
    # What training on in-character answers must change, judged without any judge model.
    assert final["answer_nll"] < base["answer_nll"] - 3
    assert final["rouge_l"] > base["rouge_l"] + 0.2
    assert final["lexicon_rate"] > base["lexicon_rate"] + 0.5
    assert final["identity_in_persona"] > base["identity_in_persona"]
    assert stored["final"]["n_records"] == 6 and stored["final"]["n_probes"] == 10
    # The CLI prints exactly the stored figures.
    for label in stored:
        assert shown[label]["metrics"] == stored[label]["metrics"]
    assert "甄嬛" in stored["final"]["names"]
    assert (run / "eval" / "probes.json").is_file() and (run / "eval" / "lexicon.json").is_file()
    # The table view: one row per model, changes against base on the final row.
    table = cli("evaluate", str(run), "--checkpoint", "20", "--max-new-tokens", "8", check=True).stdout
    rows = [line.split()[0] for line in table.strip().splitlines()[1:]]
    assert rows == ["base", "checkpoint-20", "final"]
    assert "(-" in table.splitlines()[-1]


def test_same_model_and_settings_give_the_same_figures(trained_run):
    _, run = trained_run
    settings = pe.EvalSettings(max_records=3, max_new_tokens=12, batch_size=2)
    a = pe.evaluate_run(run, settings=settings)["final"]
    b = pe.evaluate_run(run, settings=settings)["final"]
    assert a["metrics"] == b["metrics"] and a["replies"] == b["replies"]


def test_a_stopped_evaluation_writes_nothing(trained_run):
    _, run = trained_run
    target = run / "eval" / "checkpoint-40.json"
    target.unlink(missing_ok=True)
    cancel = threading.Event()
    seen = []

    def progress(label, done, total):
        seen.append(done)
        cancel.set()  # stop right after the first batch

    with pytest.raises(pe.Cancelled):
        pe.evaluate_run(run, checkpoint="40", settings=pe.EvalSettings(batch_size=1, max_new_tokens=64),
                        cancel=cancel, progress=progress)
    assert seen == [1]  # one batch, then the stop was honoured before the next
    assert not target.exists()


def test_bad_arguments_are_one_line(trained_run):
    _, run = trained_run
    for args, needle in ((["--checkpoint", "x"], "--checkpoint takes a step number"),
                         (["--max-records", "0"], "max_records must be"),
                         (["--probes", str(run / "config.yaml")], "probe file")):
        proc = cli("evaluate", str(run), *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
