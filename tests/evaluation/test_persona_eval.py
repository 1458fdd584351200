"""Persona evaluation on a real run: the starter trained until it speaks in character, then evaluated against its
base model through the CLI and the Python API (pytest tests/evaluation/test_persona_eval.py)."""

import json
import threading

import pytest

from tests.helpers import cli
from trainer_core.evaluation import persona_eval as pe
from trainer_core.common.paths import PROJECT_ROOT

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
    settings = pe.EvalSettings(max_records=2, max_new_tokens=8, batch_size=2)
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


def test_the_runs_page_estimates_runs_stops_and_shows_the_stored_figures(trained_run, monkeypatch):
    """The Evaluate view of the Runs page, in a real Streamlit script run (AppTest): cost estimate before the start,
    a stop that ends the evaluation and writes nothing, then a full evaluation whose table shows the stored figures."""
    import time

    from streamlit.testing.v1 import AppTest

    from app import eval_view
    from app.i18n import ZH
    from helpers import warm_pages_manager

    _, run = trained_run
    warm_pages_manager(monkeypatch)
    at = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    # Checkpoint 20 only, 2 records, 4 tokens each: 1 model x (2 records + 10 probes) replies.
    at.selectbox(key="eval.models").set_value("20").run()
    at.number_input(key="eval.max_records").set_value(2).run()
    at.number_input(key="eval.max_new_tokens").set_value(4).run()
    at.checkbox(key="eval.base").set_value(False).run()
    assert any("12" in c.value and "48" in c.value for c in at.caption), [c.value for c in at.caption]
    target = run / "eval" / "checkpoint-20.json"
    target.unlink(missing_ok=True)
    at.button(key="eval.start").click().run()
    job = eval_view.job_for(run)
    assert job is not None
    at.button(key="eval.stop").click().run()
    assert job.finished.wait(60) and job.stopped and not target.exists()
    at.run()
    assert ZH["eval.stopped"] in [i.value for i in at.info]
    at.button(key="eval.start").click().run()
    assert eval_view.job_for(run).finished.wait(300)
    deadline = time.time() + 10
    while time.time() < deadline and not target.exists():
        time.sleep(0.2)
    at.run()
    table = next(d.value for d in at.dataframe if "rouge_l" in d.value.columns)
    shown = table.set_index("model").loc["checkpoint-20"]
    stored = pe.read_results(run)["checkpoint-20"]["metrics"]
    assert shown["rouge_l"].split()[0] == f"{stored['rouge_l']:.3f}"
    assert shown["answer_nll"].split()[0] == f"{stored['answer_nll']:.3f}"
