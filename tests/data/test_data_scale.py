# .venv/bin/python -m pytest tests/data/test_data_scale.py -q
"""Datasets far larger than huanhuan.json in bounded memory: a million generated records (written to a temporary
folder, never committed) through `check-data` as a real process, with its peak RSS asserted. Memory is
deterministic enough to assert; time is only printed (bench/data_bench.py --scale measures both, with tokens)."""

import json
import subprocess
import sys

import pytest

from trainer_core.common.paths import PROJECT_ROOT

PEAK_LIMIT_MIB = 1536

# A fresh wrapper whose only child is the command, so RUSAGE_CHILDREN is that child's peak and nothing else's.
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "s": time.perf_counter() - t, "stdout": proc.stdout, "stderr": proc.stderr,
                  "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_records(path, n: int) -> None:
    """n distinct short records; every 10th has an empty answer and every 1000th repeats the one before it."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = i - 1 if i % 1000 == 999 else i
            answer = "" if i % 10 == 5 else f"臣妾遵旨{k % 97}"
            f.write(json.dumps({"instruction": f"皇上问第{k}句", "output": answer}, ensure_ascii=False) + "\n")


def measure(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, timeout=900)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_a_million_records_are_checked_in_bounded_memory(tmp_path):
    data = tmp_path / "million.jsonl"
    write_records(data, 1_000_000)
    r = measure(sys.executable, "-m", "trainer_core", "check-data", str(data), "--no-tokens", "--json")
    print(f"check-data of 1,000,000 records: {r['s']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB")
    assert r["rc"] == 0, r["stderr"][-2000:]
    report = json.loads(r["stdout"])
    assert (report["n_rows"], report["n_usable"], report["n_errors"]) == (1_000_000, 900_000, 100_000)
    # Precise where listed (row, field, fix), capped per kind, every problem counted.
    assert len(report["errors"]) == 50 and report["errors"][0] == {
        "row": 6, "field": "output", "message": "is empty; it is the reply the model learns",
        "code": "data.empty_output"}
    assert report["n_warnings"] == 1000 and report["warnings"][0]["message"] == \
        "duplicate of row 999 (kept; remove it to train on it once)"
    assert r["peak_mib"] < PEAK_LIMIT_MIB, f"peak RSS {r['peak_mib']:.0f} MiB"


@pytest.mark.slow
def test_token_statistics_do_not_grow_memory_with_the_record_count(tmp_path):
    """Token statistics keep 4 bytes a record: ten times the records adds only a few MiB to the peak."""
    peaks = {}
    for n in (2_000, 20_000):
        data = tmp_path / f"r{n}.jsonl"
        write_records(data, n)
        r = measure(sys.executable, "-m", "trainer_core", "check-data", str(data), "--json")
        assert r["rc"] == 0, r["stderr"][-2000:]
        assert json.loads(r["stdout"])["tokens"]["n"] == n * 9 // 10
        peaks[n] = r["peak_mib"]
        print(f"check-data with tokens, {n:,} records: {r['s']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB")
    assert peaks[20_000] - peaks[2_000] < 40, peaks
