# .venv/bin/python -m pytest tests/common/test_tailing.py -q
"""Reading growing files: the last N lines of a log, and the JSONL rows appended since an offset, with partial
last lines, CRLF, multi-byte text, damaged lines and very large files."""

import json

import pytest

from trainer_core.common.tailing import BLOCK, read_all_rows, read_new_rows, read_tail_bytes, tail_lines


def write_lines(path, lines, end=""):
    path.write_text("".join(f"{x}\n" for x in lines) + end, encoding="utf-8", newline="")


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    """About 3 MB of numbered lines and a last line still being written."""
    path = tmp_path_factory.mktemp("log") / "train.log"
    lines = [f"step {i:06d} loss {i * 0.001:.4f} " + "x" * (i % 17) for i in range(100_000)]
    write_lines(path, lines, end="partial line")
    assert path.stat().st_size > 3 * 2**20
    return path, lines


def test_tail_last_n_with_a_partial_last_line(big_log):
    path, lines = big_log
    assert tail_lines(path, 5) == lines[-4:] + ["partial line"]
    assert tail_lines(path, 1) == ["partial line"]


def test_tail_across_many_blocks(big_log):
    path, lines = big_log
    n = 20_000  # far more than one 64 KiB block
    assert tail_lines(path, n) == lines[-(n - 1):] + ["partial line"]


def test_tail_byte_budget_returns_only_whole_lines(big_log):
    path, lines = big_log
    got = tail_lines(path, 1_000_000, max_bytes=BLOCK)
    assert 100 < len(got) < len(lines)
    assert got == lines[-(len(got) - 1):] + ["partial line"]  # the first line, cut by the budget, is dropped


def test_tail_small_files(tmp_path):
    f = tmp_path / "a.log"
    write_lines(f, ["a", "b", "c"])
    assert tail_lines(f, 10) == ["a", "b", "c"]
    assert tail_lines(f, 2) == ["b", "c"]
    assert tail_lines(f, 0) == []


def test_tail_crlf(tmp_path):
    f = tmp_path / "win.log"
    f.write_bytes(b"one\r\ntwo\r\nthree\r\n")
    assert tail_lines(f, 2) == ["two", "three"]


def test_tail_multibyte_text_split_across_blocks(tmp_path):
    f = tmp_path / "zh.log"
    # 3-byte characters with an odd line length put block boundaries in the middle of characters.
    lines = [f"{i:05d} 臣妾做不到啊" * 3 for i in range(20_000)]
    write_lines(f, lines)
    assert tail_lines(f, 5000) == lines[-5000:]


def test_tail_empty_and_missing(tmp_path):
    (tmp_path / "empty.log").write_bytes(b"")
    assert tail_lines(tmp_path / "empty.log", 10) == []
    assert tail_lines(tmp_path / "missing.log", 10) == []
    assert read_tail_bytes(tmp_path / "missing.log", 100) == b""


def test_tail_of_a_huge_file(tmp_path):
    # 200 MB without writing 200 MB: a sparse file whose only data is at the end.
    f = tmp_path / "huge.log"
    with open(f, "wb") as fh:
        fh.truncate(200 * 2**20)
        fh.seek(0, 2)
        fh.write(b"\n" + b"".join(b"line %d\n" % i for i in range(1000)))
    assert f.stat().st_size > 200 * 2**20
    assert tail_lines(f, 3) == ["line 997", "line 998", "line 999"]
    assert read_tail_bytes(f, 9) == b"line 999\n"
    rows, offset = read_new_rows(f, f.stat().st_size - 9)
    assert rows == [] and offset == f.stat().st_size  # not JSON, but consumed


def test_read_rows_waits_for_the_end_of_a_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    rows, offset = read_new_rows(f)
    assert rows == [{"step": 1}, {"step": 2}]
    assert offset == len('{"step": 1}\n{"step": 2}\n')
    assert read_new_rows(f, offset) == ([], offset)  # nothing new until the line is finished
    with open(f, "a", encoding="utf-8") as fh:
        fh.write('ss": 0.5}\n{"step": 4}\n')
    rows, offset2 = read_new_rows(f, offset)
    assert rows == [{"step": 3, "loss": 0.5}, {"step": 4}]
    assert offset2 == f.stat().st_size > offset
    assert read_all_rows(f) == [{"step": 1}, {"step": 2}, {"step": 3, "loss": 0.5}, {"step": 4}]


@pytest.mark.parametrize("bad", [
    b"not json",
    b'{"step": ',
    b"[1, 2]",
    b'"text"',
    b"\x00" * 101,  # NUL bytes left by a crash: json reads them as UTF-32 and fails to decode
    b'{"loss": "\xff"}',  # invalid UTF-8
    b"[" * 100_000,  # nested deeper than the recursion limit
])
def test_damaged_lines_are_skipped(tmp_path, bad):
    f = tmp_path / "metrics.jsonl"
    f.write_bytes(b'{"step": 1}\n' + bad + b'\n{"step": 2}\n')
    rows, offset = read_new_rows(f)
    assert rows == [{"step": 1}, {"step": 2}]
    assert offset == f.stat().st_size


def test_read_rows_of_a_missing_file_keeps_the_offset(tmp_path):
    assert read_new_rows(tmp_path / "none.jsonl", 42) == ([], 42)
    assert read_all_rows(tmp_path / "none.jsonl") == []


def test_read_rows_round_trips_what_the_trainer_writes(tmp_path):
    f = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "loss": 1 / (i + 1), "note": "甄嬛"} for i in range(500)]
    with open(f, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    got, offset = [], 0
    for _ in range(3):  # polling again finds nothing more
        new, offset = read_new_rows(f, offset)
        got += new
    assert got == rows
