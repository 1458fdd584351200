# .venv/bin/python -m pytest tests/data/test_tables.py -q
"""Parquet, CSV and save_to_disk folders as datasets: the same records give the same report as a .jsonl file
(rows, errors, warnings, conversations), and a bad file is one line naming it, exit 2. Fixtures are written here
with pyarrow; the save_to_disk layout (Arrow IPC stream files + state.json + dataset_info.json) by hand, since
`datasets` is not installed."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer_core.common import paths
from trainer_core.cli import main
from trainer_core.data.dataset import load_dataset, load_dataset_bytes
from trainer_core.data.uploads import safe_upload_name
from trainer_core.common.errors import UserError

from table_files import ALPACA, MESSAGES, as_csv, as_jsonl, as_parquet, as_saved


def same_as_jsonl(report, jsonl_report):
    got, want = report.to_dict(), jsonl_report.to_dict()
    got.pop("path"), want.pop("path")
    assert got == want
    assert report.conversations == jsonl_report.conversations and report.row_ids == jsonl_report.row_ids


WRITERS = {"parquet": as_parquet, "csv": as_csv, "save_to_disk": as_saved}


@pytest.mark.parametrize("kind", WRITERS)
def test_alpaca_records_read_as_from_jsonl(tmp_path, kind):
    report = load_dataset(WRITERS[kind](tmp_path, ALPACA))
    same_as_jsonl(report, load_dataset(as_jsonl(tmp_path, ALPACA)))
    # Not vacuous: the fixture has usable records, errors of several kinds and warnings.
    assert (report.n_rows, report.n_usable, report.n_errors) == (8, 5, 3)
    assert {e.row for e in report.errors} == {2, 5, 8} and report.n_warnings == 2
    assert report.conversations[2][-1]["content"] == "好\n换行也在" and len(report.conversations[2]) == 6


@pytest.mark.parametrize("kind", WRITERS)
def test_messages_records_read_as_from_jsonl(tmp_path, kind):
    report = load_dataset(WRITERS[kind](tmp_path, MESSAGES))
    same_as_jsonl(report, load_dataset(as_jsonl(tmp_path, MESSAGES)))
    assert (report.format, report.n_usable, report.n_tool_call_rows) == ("messages", 2, 1)


def test_row_numbers_stay_exact_across_batches_and_files(tmp_path):
    """3,000 records over three data files in batches of 700 (and Parquet row groups of 1,000): the bad rows keep
    their 1-based index."""
    records = [{"instruction": f"问{i}", "input": "", "output": "" if i % 997 == 0 else f"答{i}"} for i in range(3000)]
    want = load_dataset(as_jsonl(tmp_path, records))
    assert [e.row for e in want.errors] == [1, 998, 1995, 2992]
    same_as_jsonl(load_dataset(as_saved(tmp_path, records, shards=3, batch=700)), want)
    same_as_jsonl(load_dataset(as_parquet(tmp_path, records, row_group_size=1000)), want)
    same_as_jsonl(load_dataset(as_csv(tmp_path, records)), want)


def test_csv_cells_stay_text_and_json_columns_are_parsed_safely(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output,history\n'
                    '几岁,42,\n'
                    '真吗,true,"[[""a"", ""b""]]"\n'
                    'x,y,"[[""a"", NaN]]"\n'
                    'x,y,"[[""a"""\n'
                    'x,y,"{""k"": 1, ""k"": 2}"\n', encoding="utf-8")
    report = load_dataset(path)
    assert [c[-1]["content"] for c in report.conversations] == ["42", "true"]
    assert [str(e) for e in report.errors] == [
        "row 3: history: NaN is not valid JSON (use null or a number)",
        "row 4: history: invalid JSON at column 6: Expecting ',' delimiter",
        "row 5, history: must be an array of [question, answer] pairs, got an object"]
    assert [str(w) for w in report.warnings] == ["row 5, k: key appears more than once; only its last value is used"]


def test_a_repeated_column_warns_per_row_like_a_repeated_key(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output,output\n问,旧,新\n", encoding="utf-8")
    report = load_dataset(path)
    assert report.conversations[0][-1]["content"] == "新"
    assert [str(w) for w in report.warnings] == ["row 1, output: key appears more than once; only its last value "
                                                 "is used"]


def test_uploads_accept_parquet_and_csv(tmp_path):
    for path in (as_parquet(tmp_path, ALPACA), as_csv(tmp_path, ALPACA)):
        same_as_jsonl(load_dataset_bytes(path.read_bytes(), path.name), load_dataset(as_jsonl(tmp_path, ALPACA)))
        assert safe_upload_name("../" + path.name) == path.name
    with pytest.raises(UserError, match=r"^x\.parquet: not a readable Parquet file \("):
        load_dataset_bytes(b'{"instruction": 1}', "x.parquet")


def test_training_encodes_a_saved_folder_and_its_cache_follows_the_data(tmp_path, monkeypatch, starter_tokenizer):
    from trainer_core.common import paths
    from trainer_core.data import encoded_set

    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    folder = as_saved(tmp_path, ALPACA)
    enc = encoded_set.encode_file(folder, starter_tokenizer, persona="甄嬛", max_length=128)
    plain = encoded_set.encode_file(as_jsonl(tmp_path, ALPACA), starter_tokenizer, persona="甄嬛", max_length=128)
    assert len(enc) == 5 and (enc.ids == plain.ids).all() and (enc.labels == plain.labels).all()
    key = encoded_set._key(folder, starter_tokenizer, "甄嬛", 128)
    (folder / "data-00001-of-00002.arrow").unlink()
    as_saved(tmp_path, ALPACA[:4] + [ALPACA[0]] * 4, name="other")
    (tmp_path / "other" / "data-00001-of-00002.arrow").rename(folder / "data-00001-of-00002.arrow")
    assert encoded_set._key(folder, starter_tokenizer, "甄嬛", 128) != key


# ---------------------------------------------------------------------------------------------------- bad files


def refused(capsys, path) -> str:
    """check-data: exit 2, one line on stderr naming the file, no traceback."""
    code = main(["check-data", str(path), "--no-tokens"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (code, err)
    assert str(path) in err
    return err.strip()


def test_not_parquet_and_truncated_parquet(tmp_path, capsys):
    fake = tmp_path / "fake.parquet"
    fake.write_text(json.dumps(ALPACA), encoding="utf-8")
    assert "not a readable Parquet file" in refused(capsys, fake)
    good = as_parquet(tmp_path, ALPACA * 50)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "not a readable Parquet file" in refused(capsys, cut)
    # Footer intact, a data page damaged: found while reading, still one line.
    raw = bytearray(good.read_bytes())
    raw[8:400] = bytes(392)
    bad = tmp_path / "pages.parquet"
    bad.write_bytes(bytes(raw))
    assert "damaged or truncated Parquet file" in refused(capsys, bad)


def test_columns_no_record_format_uses(tmp_path, capsys):
    pq.write_table(pa.table({"question": ["a"], "answer": ["b"]}), tmp_path / "w.parquet")
    assert refused(capsys, tmp_path / "w.parquet").endswith(
        "no column instruction, output, messages, conversations (columns: question, answer); name the columns "
        "as the fields of a .jsonl record")
    (tmp_path / "w.csv").write_text("q,a\n1,2\n", encoding="utf-8")
    assert "no column instruction" in refused(capsys, tmp_path / "w.csv")


@pytest.mark.parametrize("column,why", [
    (pa.array([b"\x00"], pa.binary()), "has type binary, which has no JSON form"),
    (pa.array([0], pa.timestamp("ms")), "has type timestamp[ms], which has no JSON form"),
    (pa.array([[("k", "v")]], pa.map_(pa.string(), pa.string())), "which has no JSON form"),
    (pa.array([[{"t": b"x"}]], pa.list_(pa.struct([("t", pa.binary())]))), "which has no JSON form"),
])
def test_column_types_without_a_json_form(tmp_path, capsys, column, why):
    pq.write_table(pa.table({"instruction": ["a"], "output": ["b"], "extra": column}), tmp_path / "t.parquet")
    err = refused(capsys, tmp_path / "t.parquet")
    assert "column 'extra' has type " in err and why in err
    assert "use strings, lists of [question, answer] string pairs" in err


def test_nesting_deeper_than_parquet_allows(tmp_path, capsys):
    """Arrow refuses to write past 64 levels; Parquet's reader stops at 100 schema levels."""
    t = pa.string()
    for _ in range(70):
        t = pa.list_(t)
    pq.write_table(pa.table({"output": pa.nulls(1, t)}), tmp_path / "deep.parquet")
    assert "not a readable Parquet file (Parquet schema too deeply nested" in refused(capsys, tmp_path / "deep.parquet")


def test_bad_csv_files(tmp_path, capsys):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    assert "not a readable CSV file (CSV parse error: Expected 2 columns, got 3" in refused(capsys, ragged)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("instruction,output\na,caf\xe9\n".encode("latin-1"))
    assert "UTF8" in refused(capsys, latin)
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("instruction,output\na,b\n".encode("utf-16"))
    assert refused(capsys, utf16).endswith("u16.csv: file is UTF-16; save it as UTF-8")
    huge = tmp_path / "huge.csv"
    huge.write_text("instruction,output\na,b\nc," + "x" * 40_000_000 + "\n", encoding="utf-8")
    assert refused(capsys, huge).endswith("huge.csv: a row is longer than 16 MB; records are limited to 20,000 "
                                          "characters, so split or shorten it")
    header = tmp_path / "header.csv"
    header.write_text("instruction,output\n", encoding="utf-8")
    assert refused(capsys, header).endswith("contains no records; add at least one")


def test_bad_saved_folders(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "is a folder without state.json" in refused(capsys, plain)
    splits = tmp_path / "dict"
    splits.mkdir()
    (splits / "dataset_dict.json").write_text('{"splits": ["train"]}')
    as_saved(splits, ALPACA, name="train")
    assert f"holds a DatasetDict with splits train; give the folder of one split, e.g. {splits / 'train'}" \
        in refused(capsys, splits)
    assert load_dataset(splits / "train").n_rows == 8

    escape = as_saved(tmp_path, ALPACA, name="escape")
    (escape / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../d.parquet"}]}))
    assert "is not a file name in the folder" in refused(capsys, escape)
    (escape / "state.json").write_text(json.dumps({"_data_files": [{"filename": "gone.arrow"}]}))
    assert "lists gone.arrow, which is not in the folder" in refused(capsys, escape)
    (escape / "state.json").write_text("[" * 100 + "]" * 100)
    assert "state.json: not readable JSON" in refused(capsys, escape)

    cut = as_saved(tmp_path, ALPACA * 20, name="cut", shards=1)
    arrow = cut / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:-300])
    assert "data-00000-of-00001.arrow: damaged or truncated Arrow stream file" in refused(capsys, cut)
    arrow.write_bytes(b"PAR1 not arrow at all")
    assert "not an Arrow stream file as save_to_disk writes" in refused(capsys, cut)


# ---------------------------------------------------------------------------------------------------- scale

MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def check_data_peak(path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "trainer_core", "check-data",
                          str(path), "--no-tokens", "--json"], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_200k_parquet_rows_are_checked_in_bounded_memory(tmp_path):
    """One row group of 200,000 records of ~400 characters: read in slices, the peak grows by far less than the
    records would take as Python objects, measured against 2,000 records. Measured: +59 MiB (most of it the
    duplicate-detection hashes, 8 bytes and a dict slot a record); turning the whole table into Python objects
    at once (tables.SLICE = 10**9) gave +805 MiB."""
    peaks = {}
    for n in (2_000, 200_000):
        text = pa.array([f"第{i}句：" + "臣妾" * 200 for i in range(n)])
        output = pa.array(["" if i % 10 == 5 else f"答{i}" for i in range(n)])
        path = tmp_path / f"r{n}.parquet"
        pq.write_table(pa.table({"instruction": text, "output": output}), path, row_group_size=n)
        r = check_data_peak(path)
        assert r["rc"] == 0, r["stderr"][-2000:]
        report = json.loads(r["stdout"])
        assert (report["n_rows"], report["n_usable"], report["n_errors"]) == (n, n * 9 // 10, n // 10)
        assert report["errors"][0] == {"row": 6, "field": "output", "message": "is empty; it is the reply the model "
                                                                                 "learns", "code": "data.empty_output"}
        peaks[n] = r["peak_mib"]
        print(f"check-data --no-tokens, {n:,} Parquet rows: peak RSS {r['peak_mib']:.0f} MiB")
    assert peaks[200_000] - peaks[2_000] < 150, peaks


REAL_DATA = paths.PROJECT_ROOT.parent / "shared" / "data" / "huanhuan.json"


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real dataset not present at {REAL_DATA}")
@pytest.mark.parametrize("kind", WRITERS)
def test_huanhuan_in_each_format_reports_as_the_json_file(tmp_path, kind):
    records = json.loads(REAL_DATA.read_text(encoding="utf-8"))
    report = load_dataset(WRITERS[kind](tmp_path, records))
    same_as_jsonl(report, load_dataset(REAL_DATA))
    assert (report.n_rows, report.n_usable) == (3729, 3729) and report.n_warnings > 100
