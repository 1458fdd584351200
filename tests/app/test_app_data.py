# .venv/bin/python -m pytest tests/app/test_app_data.py -q
"""Issue 18 on the Data page, through Streamlit's AppTest: what a new user tripped over (item 3), the page fully in
Chinese for a broken file (item 4), uploading selects the file, and the subset / dedupe action.

Fixtures are tests/app/test_app_pages.py's; token figures come from the real starter model's tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from app.i18n import ZH
from pages_helpers import goto, texts

GOOD = {"instruction": "你是谁？", "output": "我是甄嬛。"}
HAN = re.compile(r"[\u4e00-\u9fff]")


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def upload(at, name: str, data: bytes):
    at.radio(key="p.data.source").set_value("upload").run()
    at.file_uploader(key="data.upload").set_value((name, data, "application/json")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def chart_rows(at) -> tuple[dict, list[dict]]:
    """The length histogram's bar layer spec and its data rows, as the browser receives them."""
    [chart] = at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    bars = spec["layer"][0]
    data = next(d for d in chart.proto.datasets if d.name == bars["data"]["name"])
    return bars, pa.ipc.open_stream(data.data.data).read_all().to_pylist()


def test_problems_are_counted_by_row(app):
    records = [GOOD, {"instruction": "", "output": "x"}, {"instruction": "q"},
               {"instruction": "", "output": " "},  # two problems in one row
               [1, 2], {"foo": 1}, {"instruction": "在吗", "output": "在。"}]
    upload(app, "seven.jsonl", jsonl(*records))
    m = metrics(app)
    assert (m[ZH["data.rows"]], m[ZH["data.usable"]], m[ZH["data.errors"]]) == ("7", "2", "5")
    assert ZH["data.errors_note"].format(n=5, problems=6) in texts(app, "error")
    assert list(app.dataframe[0].value["row"]) == [2, 3, 4, 4, 5, 6]


def test_a_failed_upload_leaves_nothing_of_the_previous_file(app, uploads):
    upload(app, "good.jsonl", jsonl(GOOD, {"instruction": "在吗", "output": "在。"}))
    assert metrics(app)[ZH["data.usable"]] == "2" and ZH["data.in_form"] in texts(app, "success")
    for name, data in (("notes.json", b"hello, not json"), ("cut.json", b'[{"instruction": "a", ')):
        upload(app, name, data)
        [error] = texts(app, "error")
        assert error.startswith(name) and "JSON 格式错误" in error
        assert not app.metric and not app.dataframe and not app.success and not app.get("vega_lite_chart")
        assert "data.use" not in [b.key for b in app.button]
    assert [p.name for p in uploads.iterdir()] == [next(uploads.iterdir()).name]  # only the good file was kept


def test_uploading_selects_the_file_for_training(app, uploads):
    upload(app, "mine.jsonl", jsonl(GOOD))
    [stored] = uploads.iterdir()
    assert ZH["data.in_form"] in texts(app, "success")  # no second click
    goto(app, "pages/train.py")
    assert Path(app.text_input(key="p.f.data.path").value) == stored


def test_length_histogram_of_two_records_has_whole_visible_bars(app):
    upload(app, "tiny.jsonl", jsonl(GOOD, {"instruction": "在吗", "output": "在。"}))
    bars, rows = chart_rows(app)
    assert bars["encoding"]["y"]["axis"] == {"format": "d", "tickMinStep": 1}  # whole records on the y-axis
    assert bars["encoding"]["x"]["axis"] == {"format": "d", "tickMinStep": 1}  # no repeated "302" labels
    assert sum(r["count"] for r in rows) == 2
    assert all(r["end"] - r["start"] >= 1 for r in rows)  # a bar is at least a token wide
    top = bars["encoding"]["x"]["scale"]["domain"][1]
    assert top > 256 and top / 50 <= rows[0]["end"] - rows[0]["start"]  # visible: 1/50 of the axis or wider


def test_the_truncation_banner_counts_the_record_that_loses_its_whole_answer(app):
    long_answer = {"instruction": "说说你自己", "output": "臣妾" * 200}  # truncated, part of the answer stays
    long_question = {"instruction": "皇上" * 400, "output": "是。"}  # the prompt alone fills max_length
    upload(app, "long.jsonl", jsonl(GOOD, long_answer, long_question))
    m = metrics(app)
    assert (m[ZH["data.truncated"].format(max_length=256)], m[ZH["data.answer_lost"]]) == ("2", "1")
    assert ZH["data.answer_lost_note"].format(n=2, lost=1, max_length=256) in texts(app, "warning")


def test_subset_and_dedupe_write_a_new_file_and_select_it(app, uploads):
    records = [{"instruction": f"问{i}", "output": f"答{i}"} for i in range(6)]
    data = jsonl(*records, records[1], records[2])
    upload(app, "dups.jsonl", data)
    [original] = uploads.iterdir()
    app.radio(key="data.cut.mode").set_value("first")
    app.number_input(key="data.cut.n").set_value(4)
    app.checkbox(key="data.cut.dedupe").check()
    app.button(key="data.cut.go").click().run()
    assert not app.exception
    [made] = [p for p in uploads.iterdir() if p != original]
    assert original.read_bytes() == data and made.suffix == ".jsonl"
    assert [json.loads(line) for line in made.read_text(encoding="utf-8").splitlines()] == records[:4]
    assert ZH["data.cut.done"].format(path=made, kept=4, of=6, dups=2) in texts(app, "success")
    assert app.radio(key="p.data.source").value == "path"
    assert Path(app.text_input(key="p.data.server_path").value) == made
    assert metrics(app)[ZH["data.rows"]] == "4" and ZH["data.in_form"] in texts(app, "success")
    # A random draw from that: reproducible by its seed.
    app.radio(key="data.cut.mode").set_value("random").run()
    app.number_input(key="data.cut.n").set_value(2)
    app.number_input(key="data.cut.seed").set_value(3)
    app.button(key="data.cut.go").click().run()
    assert not app.exception and metrics(app)[ZH["data.rows"]] == "2"
    assert ZH["data.cut.done"].format(path=app.text_input(key="p.data.server_path").value, kept=2, of=4, dups=0) \
        in texts(app, "success")


def test_the_subset_count_starts_afresh_for_each_file(app, uploads):
    upload(app, "one.jsonl", jsonl(GOOD))
    assert app.number_input(key="data.cut.n").value == 1  # all a one-record file has
    upload(app, "sixty.jsonl", jsonl(*({"instruction": f"问{i}", "output": f"答{i}"} for i in range(60))))
    assert app.number_input(key="data.cut.n").value == 50  # not the previous file's 1


def test_a_broken_file_is_explained_in_chinese_only(app):
    records = [GOOD, GOOD, {"instruction": "", "output": "x", "extra": 1}, {"instruction": 3, "output": "y"},
               {"messages": [{"role": "narrator", "content": "x"}]}, {"messages": "no"}, [1],
               {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b\u0007"}]},
               {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "{}"}]},
               {"instruction": "q", "output": "{{name}} 好<|im_end|>", "history": [["a"]]},
               {"instruction": "q", "output": "好的<|im_end|>"}]
    lines = jsonl(*records) + b'{"instruction": "q", "instruction": "r", "output": "s"}\n{"instruction": NaN}\n{oops\n'
    upload(app, "broken.jsonl", lines)
    shown = [*texts(app, "error"), *texts(app, "warning"), *texts(app, "success"), *texts(app, "info")]
    for table in app.dataframe:
        if "message" in table.value:
            shown += list(table.value["message"])
    assert len(shown) > 14 and len(app.dataframe) >= 3  # errors, warnings, special-token warnings at least
    english = [s for s in shown if not HAN.search(s)]
    assert not english, english
    for name, data in (("cut.json", b'[{"instruction": "a", '), ("wide.json", b"\xff\xfe{}"), ("x.txt", b"{}"),
                       ("deep.json", b"[" * 100 + b"]" * 100), ("top.json", b'{"a": 1}')):
        upload(app, name, data)
        [error] = texts(app, "error")
        assert HAN.search(error), error
