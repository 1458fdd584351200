# .venv/bin/python -m pytest tests/data/test_data.py -q
"""Dataset loading and validation: the real huanhuan.json, the shipped sample, and bad input of every kind."""

import json
import sys
import types
from pathlib import Path

import pytest

from trainer_core.common import paths

from trainer_core.data import token_stats as data
from trainer_core.data.dataset import DataReport, load_dataset, load_dataset_bytes
from trainer_core.data.uploads import safe_upload_name, store_upload
from trainer_core.data.validate import RowError
from trainer_core.common.errors import UserError

REAL_DATA = paths.PROJECT_ROOT.parent / "shared" / "data" / "huanhuan.json"
needs_real_data = pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real dataset not present at {REAL_DATA}")


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def load_jsonl(tmp_path, *records, **kwargs) -> DataReport:
    return load_dataset(write(tmp_path, "d.jsonl", jsonl(*records)), **kwargs)


def messages(report: DataReport) -> list[str]:
    return [str(e) for e in report.errors]


def chat(*roles_and_contents) -> list[dict]:
    """chat("user", "a", "assistant", "b") -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]"""
    pairs = zip(roles_and_contents[::2], roles_and_contents[1::2])
    return [{"role": role, "content": content} for role, content in pairs]


def alpaca(i=0, **fields):
    return {"instruction": f"问题{i}", "input": "", "output": f"回答{i}", **fields}


# ---------------------------------------------------------------------------------------------------- real files


@needs_real_data
def test_real_huanhuan_json():
    report = load_dataset(REAL_DATA)
    assert report.format == "alpaca"
    assert report.n_rows == 3729
    # The file repeats some records on purpose (two persona answers 50 times each) and a few stock lines
    # ("皇上万福金安。"): 112 later copies, each counted as a warning and kept; the first 50 are listed.
    assert report.n_usable == 3729
    assert report.errors == []
    assert report.n_warnings == 112 and len(report.warnings) == 50
    assert all(w.message.code == "data.duplicate" for w in report.warnings) and report.n_duplicates == 112
    assert report.conversations[0] == [
        {"role": "user", "content": "娘娘。"},
        {"role": "assistant", "content": "你放心，本宫到任何时候都不会自轻自贱委屈了这孩子。"},
    ]


def test_sample_dataset_loads_clean():
    report = load_dataset(paths.SAMPLE_DATA)
    assert report.format == "alpaca"
    assert report.errors == [] and report.warnings == []
    assert 120 <= report.n_usable == report.n_rows <= 150
    assert report.row_ids == list(range(1, report.n_rows + 1))
    identity = [c for c in report.conversations if "甄嬛" in c[-1]["content"] or "甄远道" in c[-1]["content"]]
    assert len(identity) >= 6
    with_input = [c for c in report.conversations if "\n" in c[0]["content"]]
    assert len(with_input) >= 3


@needs_real_data
def test_sample_dataset_is_original():
    real_outputs = {r["output"] for r in json.loads(REAL_DATA.read_text(encoding="utf-8"))}
    sample_outputs = [c[-1]["content"] for c in load_dataset(paths.SAMPLE_DATA).conversations]
    copied = [output for output in sample_outputs if output in real_outputs]
    assert copied == []


# ---------------------------------------------------------------------------------------------------- formats


def test_alpaca_input_system_and_history_build_the_conversation(tmp_path):
    record = {
        "instruction": "给这首诗起个题目",
        "input": "春来庭院深",
        "output": "就叫《春庭》",
        "system": "你是甄嬛",
        "history": [["你是谁？", "我是甄嬛。"]],
    }
    report = load_jsonl(tmp_path, record, {"instruction": "在吗", "output": "在。"})
    assert report.errors == []
    assert report.conversations[0] == [
        {"role": "system", "content": "你是甄嬛"},
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是甄嬛。"},
        {"role": "user", "content": "给这首诗起个题目\n春来庭院深"},
        {"role": "assistant", "content": "就叫《春庭》"},
    ]
    # "input" may be absent altogether
    assert report.conversations[1] == chat("user", "在吗", "assistant", "在。")


def test_messages_format(tmp_path):
    conv = [
        {"role": "system", "content": "你是甄嬛"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "免礼。"},
    ]
    report = load_jsonl(tmp_path, {"messages": conv})
    assert report.format == "messages"
    assert report.conversations == [conv]


def test_sharegpt_format(tmp_path):
    turns = [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "免礼。"}]
    record = {"conversations": turns, "system": "甄嬛"}
    report = load_jsonl(tmp_path, record)
    assert report.format == "sharegpt"
    assert report.conversations == [chat("system", "甄嬛", "user", "你好", "assistant", "免礼。")]


def test_mixed_formats_in_one_file(tmp_path):
    report = load_jsonl(
        tmp_path,
        alpaca(1),
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    )
    assert report.format == "mixed" and report.n_usable == 2


def test_json_array_with_bom_is_accepted(tmp_path):
    path = write(tmp_path, "d.json", b"\xef\xbb\xbf" + json.dumps([alpaca(1)]).encode())
    report = load_dataset(path)
    assert report.n_usable == 1 and report.errors == []


def test_script_tags_and_emoji_are_kept_verbatim(tmp_path):
    html = '<script>alert("x")</script><b>皇上</b>'
    report = load_jsonl(tmp_path, alpaca(1, output=html), alpaca(2, instruction="娘娘 👑🌸", output="好 😊"))
    assert report.errors == []
    assert report.conversations[0][-1]["content"] == html
    assert report.conversations[1] == chat("user", "娘娘 👑🌸", "assistant", "好 😊")


def test_jsonl_blank_lines_skipped_and_rows_are_line_numbers(tmp_path):
    text = "\n" + json.dumps(alpaca(1)) + "\n\n   \n" + json.dumps(alpaca(2)) + "\r\n"
    report = load_dataset(write(tmp_path, "d.jsonl", text))
    assert report.n_rows == 2 and report.row_ids == [2, 5]


def test_line_separator_inside_a_jsonl_string_is_not_a_line_break(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output="上一句\u2028下一句"))
    assert report.errors == [] and report.conversations[0][-1]["content"] == "上一句\u2028下一句"


def test_to_dict_is_json_and_caps_errors(tmp_path):
    report = load_jsonl(tmp_path, *[alpaca(i, output="") for i in range(250)], alpaca(999), alpaca(999, extra=1))
    summary = report.to_dict()
    json.dumps(summary)
    assert summary["n_rows"] == 252 and summary["n_usable"] == 2  # the duplicate is kept, with a warning
    assert summary["n_errors"] == 250 and len(summary["errors"]) == 50  # one kind: its first 50, all counted
    assert summary["errors"][0] == {
        "row": 1, "field": "output", "message": "is empty; it is the reply the model learns",
        "code": "data.empty_output"
    }
    assert summary["n_warnings"] == 2  # the unknown "extra" field and the duplicate


def test_problems_keep_the_first_of_each_kind_and_count_the_rest(tmp_path):
    rows = [alpaca(i, output="") for i in range(120)] + [{"instruction": "q", "history": [["a"]] * 3}] * 70
    report = load_jsonl(tmp_path, *rows)
    assert report.n_errors == 120 + 70 * 4  # empty outputs; per bad record: 3 history pairs + missing output
    kinds = {e.kind for e in report.errors}
    assert kinds == {"output|data.empty_output", "history[]|data.history_pair", "output|data.field_missing"}
    assert len(report.errors) == 3 * 50  # kept; n_errors above counts them all
    # Precise where kept: the first of each kind with its own row and field.
    assert [str(e) for e in report.errors if e.row == 121][:2] == [
        "row 121, output: required field is missing", "row 121, history[0]: must be a [question, answer] pair of strings"]


# ---------------------------------------------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.json: file not found"):
        load_dataset(tmp_path / "nope.json")


def test_wrong_extension(tmp_path):
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'; use a \.json array, \.jsonl, \.parquet or "
                                         r"\.csv file, or a folder written by datasets' save_to_disk"):
        load_dataset(write(tmp_path, "d.txt", "a,b\n"))


def test_empty_file(tmp_path):
    with pytest.raises(UserError, match=r"d\.json: file is empty \(0 bytes\)"):
        load_dataset(write(tmp_path, "d.json", b""))


def test_whitespace_only_file(tmp_path):
    with pytest.raises(UserError, match="file has only whitespace"):
        load_dataset(write(tmp_path, "d.jsonl", "\n \n"))


def test_empty_array_has_no_records(tmp_path):
    with pytest.raises(UserError, match=r"d\.json: contains no records"):
        load_dataset(write(tmp_path, "d.json", "[]"))


def test_over_size_limit(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([alpaca(i) for i in range(100)]))
    with pytest.raises(UserError, match=r"d\.json: file is \d+\.\d KB, over the 1\.0 KB limit; split it"):
        load_dataset(path, max_bytes=1024)


def test_over_size_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: takes no disk space

    def no_reading(self):
        raise AssertionError("file was read before its size was checked")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(UserError, match=r"huge\.jsonl: file is 300\.0 MB, over the 200\.0 MB limit"):
        load_dataset(path)


def test_upload_bytes_over_size_limit():
    with pytest.raises(UserError, match=r"up\.jsonl: file is 2\.0 KB, over the 1\.0 KB limit"):
        load_dataset_bytes(b"x" * 2048, "up.jsonl", max_bytes=1024)


def test_invalid_utf8_names_offset_and_line(tmp_path):
    content = jsonl(alpaca(1)).encode() + b'{"instruction": "\xff\xfe", "output": "x"}\n'
    offset = content.index(b"\xff")
    expected = rf"not valid UTF-8 \(byte 0xff at offset {offset}, line 2\); save the file as UTF-8"
    with pytest.raises(UserError, match=expected):
        load_dataset(write(tmp_path, "d.jsonl", content))


def test_utf16_file(tmp_path):
    with pytest.raises(UserError, match="file is UTF-16; save it as UTF-8"):
        load_dataset(write(tmp_path, "d.json", json.dumps([alpaca(1)]).encode("utf-16")))


def test_malformed_json_names_line_and_column(tmp_path):
    with pytest.raises(UserError, match=r"d\.json: malformed JSON at line 3, column 1: Expecting ',' delimiter"):
        load_dataset(write(tmp_path, "d.json", '[\n{"instruction": "a", "output": "b"}\n{"instruction": "c"}]'))


@pytest.mark.parametrize(
    ("content", "kind"), [('{"instruction": "a"}', "an object"), ("42", "a number"), ('"hi"', "a string")]
)
def test_top_level_must_be_an_array(tmp_path, content, kind):
    with pytest.raises(UserError, match=rf"d\.json: top level is {kind}; expected an array of records"):
        load_dataset(write(tmp_path, "d.json", content))


# ---------------------------------------------------------------------------------------------------- row-level errors


def test_jsonl_broken_line_is_a_row_error_and_the_rest_loads(tmp_path):
    text = jsonl(alpaca(1)) + '{"instruction": "a", "output": \n' + jsonl(alpaca(3))
    report = load_dataset(write(tmp_path, "d.jsonl", text))
    assert report.n_rows == 3 and report.n_usable == 2 and report.row_ids == [1, 3]
    assert messages(report) == ["row 2: invalid JSON at column 32: Expecting value"]


def test_record_not_an_object(tmp_path):
    report = load_dataset(write(tmp_path, "d.json", json.dumps([alpaca(1), ["a", "b"], "text"])))
    assert messages(report) == [
        "row 2: record is an array; expected an object",
        "row 3: record is a string; expected an object",
    ]
    assert report.row_ids == [1]


def test_unrecognised_record(tmp_path):
    report = load_jsonl(tmp_path, {"question": "a", "answer": "b"})
    assert report.format == "unknown"
    assert messages(report) == [
        'row 1: unrecognised record; expected "instruction"/"output", "messages" or "conversations"'
    ]


def test_missing_required_fields(tmp_path):
    report = load_jsonl(tmp_path, {"instruction": "a"}, {"output": "b"})
    assert messages(report) == [
        "row 1, output: required field is missing",
        "row 2, instruction: required field is missing",
    ]
    assert report.n_usable == 0


def test_non_string_fields(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output=42), alpaca(2, input=None), alpaca(3, instruction=["a"]))
    assert messages(report) == [
        "row 1, output: must be a string, got a number",
        "row 2, input: must be a string, got null",
        "row 3, instruction: must be a string, got an array",
    ]


def test_empty_output_and_instruction(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output="  \n"), alpaca(2, instruction=""))
    assert messages(report) == [
        "row 1, output: is empty; it is the reply the model learns",
        "row 2, instruction: is empty; it is what the user says",
    ]


def test_extra_fields_are_warnings_not_errors(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, id=7, source="剧本"))
    assert report.errors == [] and report.n_usable == 1
    assert [(w.row, w.field) for w in report.warnings] == [(1, "id"), (1, "source")]
    assert str(report.warnings[0].message).startswith("unknown field ignored")


def test_bad_history(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, history=[["q"]]), alpaca(2, history="q"))
    assert messages(report) == [
        "row 1, history[0]: must be a [question, answer] pair of strings",
        "row 2, history: must be an array of [question, answer] pairs, got a string",
    ]


def test_exact_duplicates_report_the_later_row(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1), alpaca(2), alpaca(1), alpaca(1))
    assert [str(w) for w in report.warnings] == [
        "row 3: duplicate of row 1 (kept; remove it to train on it once)",
        "row 4: duplicate of row 1 (kept; remove it to train on it once)",
    ]
    assert report.errors == []
    assert report.row_ids == [1, 2, 3, 4]


def test_over_long_record_rejected_by_max_chars(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output="嬛" * 100_000), alpaca(2))
    assert messages(report) == ["row 1: is 100,003 characters, over the 20,000 limit (max_chars)"]
    assert report.row_ids == [2]


def test_max_chars_is_adjustable(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output="嬛" * 50), max_chars=40)
    assert messages(report) == ["row 1: is 53 characters, over the 40 limit (max_chars)"]


def test_control_characters(tmp_path):
    report = load_jsonl(tmp_path, alpaca(1, output="皇上\x07万福"), alpaca(2, output="行一\n行二\t\r"))
    assert messages(report) == ["row 1, turn 2: assistant text has control character U+0007 at position 2; remove it"]
    assert report.row_ids == [2]


def test_messages_bad_role(tmp_path):
    record = {"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]}
    report = load_jsonl(tmp_path, record)
    assert messages(report) == [
        "row 1, messages[0].role: unknown role 'human'; use one of ['assistant', 'system', 'user']"
    ]


def test_messages_must_end_with_assistant_and_have_a_user(tmp_path):
    ends_with_user = {"messages": chat("user", "a", "assistant", "b", "user", "c")}
    no_user = {"messages": chat("system", "s", "assistant", "b")}
    report = load_jsonl(tmp_path, ends_with_user, no_user)
    assert messages(report) == ["row 1: must end with an assistant turn, ends with user", "row 2: has no user turn"]


def test_messages_empty_assistant_turn_and_bad_shapes(tmp_path):
    report = load_jsonl(
        tmp_path,
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
        {"messages": []},
        {"messages": [{"role": "user", "content": "a"}, "b"]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": 1}]},
        {"messages": {"role": "user", "content": "a"}},
        {"messages": chat("user", "a", "system", "s", "assistant", "b")},
    )
    assert messages(report) == [
        "row 1, turn 2: empty assistant turn",
        "row 2, messages: is empty; it needs a user turn and an assistant turn",
        "row 3, messages[1]: turn is a string; expected an object",
        "row 4, messages[0].content: required field is missing",
        "row 4, messages[1].content: must be a string, got a number",
        "row 5, messages: must be an array of turns, got an object",
        "row 6: a system turn may only come first",
    ]


def test_sharegpt_bad_role_and_missing_value(tmp_path):
    report = load_jsonl(
        tmp_path,
        {"conversations": [{"from": "user", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]},
    )
    assert messages(report) == [
        "row 1, conversations[0].from: unknown role 'user'; use one of ['gpt', 'human', 'system']",
        "row 2, conversations[1].value: required field is missing",
    ]


def test_row_error_str_without_field():
    assert str(RowError(3, "", "x")) == "row 3: x"
    assert str(RowError(3, "output", "x")) == "row 3, output: x"


# ---------------------------------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd.json", "passwd.json"),
        ("/abs/x.json", "x.json"),
        ("C:\\Users\\me\\data.JSONL", "data.jsonl"),
        ("$(touch /tmp/pwned).json", "pwned.json"),
        ("a;rm -rf.json", "a_rm_-rf.json"),
        ("甄嬛 对白 v2.jsonl", "甄嬛_对白_v2.jsonl"),
        (".hidden.json", "hidden.json"),
        ("a..b.json", "a.b.json"),
        ("...json", "upload.json"),
        ("-rf.json", "rf.json"),
    ],
)
def test_safe_upload_name(name, safe):
    assert safe_upload_name(name) == safe


@pytest.mark.parametrize("name", ["x.exe", "data.json.exe", "noext", "x.arrow"])
def test_safe_upload_name_rejects_other_extensions(name):
    with pytest.raises(UserError, match="uploads must be .json, .jsonl, .parquet or .csv files"):
        safe_upload_name(name)


def test_store_upload_is_content_addressed(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "UPLOADS_DIR", tmp_path / "uploads")
    first = store_upload(b"[1]", "../d.json")
    second = store_upload(b"[2]", "../d.json")
    again = store_upload(b"[1]", "d.json")
    assert first.parent == tmp_path / "uploads" and first.name.startswith("d-") and first.suffix == ".json"
    assert first != second and first == again
    assert first.read_bytes() == b"[1]" and second.read_bytes() == b"[2]"
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted([first.name, second.name])


def test_load_dataset_bytes_matches_file_loading(tmp_path):
    content = jsonl(alpaca(1), alpaca(1, extra=1)).encode()
    from_bytes = load_dataset_bytes(content, "up.jsonl")
    from_file = load_dataset(write(tmp_path, "up.jsonl", content))
    assert from_bytes.path == "up.jsonl"
    assert from_bytes.conversations == from_file.conversations and from_bytes.errors == from_file.errors


# ---------------------------------------------------------------------------------------------------- token stats


class FakeEncoded:
    def __init__(self, n_prompt, n_answer, max_length):
        n = n_prompt + n_answer
        self.input_ids = list(range(min(n, max_length)))
        self.labels = ([-100] * n_prompt + list(range(n_answer)))[:max_length]
        self.truncated = n > max_length
        self.answer_lost = n_prompt >= max_length
        self.n_label_tokens = max(0, min(n, max_length) - n_prompt)


def test_token_stats_arithmetic(monkeypatch):
    """One token per character, prompt = every turn but the last, truncation keeps the start."""

    def encode_conversations(tokenizer, conversations, *, persona, max_length):
        assert persona == "甄嬛"
        return [FakeEncoded(len(c[0]["content"]), len(c[1]["content"]), max_length) for c in conversations]

    fake = types.SimpleNamespace(encode_conversations=encode_conversations)
    monkeypatch.setitem(sys.modules, "trainer_core.data.chat_format", fake)
    convs = [[{"role": "user", "content": "问" * p}, {"role": "assistant", "content": "答" * a}] for p, a in
             [(2, 2), (3, 3), (5, 5), (9, 1), (12, 8)]]  # lengths 4, 6, 10, 10, 20
    stats = data.token_stats(convs, tokenizer=None, persona="甄嬛", max_length=10)
    assert stats.lengths == [4, 6, 10, 10, 20]
    assert (stats.n, stats.p50, stats.p95, stats.max, stats.mean) == (5, 10, 20, 20, 10.0)
    assert stats.n_truncated == 1 and stats.n_answer_lost == 1
    assert stats.n_label_tokens == 2 + 3 + 5 + 1 + 0
    assert json.loads(json.dumps(stats.to_dict()))["max_length"] == 10
    report = DataReport(path="x", format="alpaca", n_rows=5, conversations=convs, row_ids=[1, 2, 3, 4, 5])
    assert data.token_stats(report, None, persona="甄嬛", max_length=10) == stats


def tiny_chatml_tokenizer():
    """A byte-level tokenizer (one token per UTF-8 byte) with ChatML special tokens and template, built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    template = (
        "{%- for m in messages %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template)
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                             "additional_special_tokens": ["<|im_start|>"]})
    return fast


def test_token_stats_with_real_chat_format():
    tokenizer = tiny_chatml_tokenizer()
    report = load_dataset(paths.SAMPLE_DATA)
    stats = data.token_stats(report, tokenizer, persona="你是甄嬛。", max_length=64)
    assert stats.n == report.n_usable and len(stats.lengths) == stats.n
    assert stats.p50 <= stats.p95 <= stats.max
    # byte-level: every conversation is longer than its UTF-8 text alone
    for conv, n in zip(report.conversations, stats.lengths):
        assert n > sum(len(t["content"].encode()) for t in conv)
    assert stats.n_truncated == sum(n > 64 for n in stats.lengths) > 0
    assert 0 < stats.n_label_tokens
    roomy = data.token_stats(report, tokenizer, persona="你是甄嬛。", max_length=stats.max)
    assert roomy.lengths == stats.lengths and roomy.n_truncated == 0 and roomy.n_answer_lost == 0
    assert roomy.n_label_tokens > stats.n_label_tokens


def test_tool_call_records_are_left_out_and_counted(tmp_path):
    report = load_jsonl(
        tmp_path,
        {"messages": [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                      {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "function_call", "value": "{}"},
                           {"from": "observation", "value": "4"}, {"from": "gpt", "value": "4"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "narrator", "content": "x"}]},
    )
    assert report.n_usable == 1 and report.n_tool_call_rows == 2  # the unknown role "narrator" is another error
    assert "row 1, messages[1]: tool-call turns are not trained (\"tool_calls\")" in messages(report)[0]
    assert report.to_dict()["n_tool_call_rows"] == 2


def test_unfilled_placeholders_in_answers_warn(tmp_path):
    report = load_jsonl(tmp_path, {"instruction": "你好", "output": "{{name}}，你好。见过{{ user }}和${char}。"},
                        {"instruction": "写个模板", "output": "用 {name} 和 {} 就行"},  # braces alone: not flagged
                        {"instruction": "{{name}} 你好", "output": "好。"})  # only answers are checked
    [warning] = report.warnings
    assert (warning.row, warning.field) == (1, "turn 2")
    assert "{{name}}, {{ user }}, ${char}" in str(warning.message) and report.n_usable == 3


# ---------------------------------------------------------------------------------------------------- subsets


def test_subsets_are_new_files_of_usable_records_and_leave_the_source_alone(tmp_path):
    from trainer_core.data.subset import write_subset

    records = [alpaca(i) for i in range(10)] + [alpaca(3), {"instruction": "坏"}, alpaca(5), alpaca(10)]
    source = write(tmp_path, "源.jsonl", jsonl(*records))
    before = source.read_bytes()
    out = tmp_path / "out"

    def written(cut) -> list[dict]:
        assert cut.path.parent == out and cut.path != source
        return [json.loads(line) for line in cut.path.read_text(encoding="utf-8").splitlines()]

    head = write_subset(source, first=3, out_dir=out)
    assert written(head) == records[:3] and (head.n_kept, head.n_of, head.n_duplicates) == (3, 13, 0)
    # Duplicates (rows 11 and 13 repeat rows 4 and 6) go; the bad row 12 was never usable.
    unique = write_subset(source, dedupe=True, out_dir=out)
    assert written(unique) == records[:10] + [alpaca(10)]
    assert (unique.n_kept, unique.n_of, unique.n_duplicates) == (11, 11, 2)
    drawn = write_subset(source, sample=4, seed=7, dedupe=True, out_dir=out)
    picked = written(drawn)
    assert len(picked) == 4 == drawn.n_kept and drawn.n_of == 11 and drawn.n_duplicates == 2
    assert len({r["instruction"] for r in picked}) == 4  # distinct records ...
    assert sorted(picked, key=records.index) == picked  # ... in file order
    assert write_subset(source, sample=4, seed=7, dedupe=True, out_dir=out) == drawn  # same seed, same file
    assert written(write_subset(source, sample=4, seed=8, dedupe=True, out_dir=out)) != picked
    assert written(write_subset(source, sample=99, out_dir=out)) == [records[i] for i in (*range(11), 12, 13)]
    assert source.read_bytes() == before
    assert len(list(out.iterdir())) == 5  # every cut its own file (a repeated cut: the same), nothing half-written
    # The written file is a dataset in its own right, in the source's format.
    assert load_dataset(unique.path).format == "alpaca" and load_dataset(unique.path).n_warnings == 0
    with pytest.raises(UserError, match="at least 1"):
        write_subset(source, first=0, out_dir=out)


def test_a_subset_of_a_parquet_file_is_jsonl(tmp_path):
    from table_files import ALPACA, as_parquet
    from trainer_core.data.subset import write_subset

    cut = write_subset(as_parquet(tmp_path, ALPACA), first=2, out_dir=tmp_path / "out")
    assert cut.path.suffix == ".jsonl" and load_dataset(cut.path).n_usable == 2


def test_a_subset_refuses_a_value_json_cannot_hold_and_leaves_nothing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer_core.data.subset import write_subset

    source = tmp_path / "f.parquet"
    pq.write_table(pa.table({"instruction": ["q", "r"], "output": ["a", "b"], "score": [1.0, float("nan")]}), source)
    with pytest.raises(UserError, match="row 2 holds NaN"):
        write_subset(source, dedupe=True, out_dir=tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
