# .venv/bin/python -m pytest tests/app/test_warmup.py -q
"""The dashboard imports transformers once before any page runs: concurrent first imports from session threads fail
with `ImportError: cannot import name 'AutoTokenizer'` (transformers' lazy module is not thread-safe)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from app import warmup
from trainer_core.common.paths import PROJECT_ROOT


# Four "sessions" import at once, as a Data tab and a Train tab do on a fresh server. Prints the errors they got.
RACE = """
import threading, sys
{prelude}
errors = []
def session(name):
    try:
        {before}
        exec(f"from transformers import {{name}}")
    except Exception as e:
        errors.append(repr(e))
names = ["AutoTokenizer", "AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast"]
threads = [threading.Thread(target=session, args=(n,)) for n in names]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(errors)); print(errors)
"""


def _race(prelude: str = "", before: str = "pass") -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", RACE.format(prelude=prelude, before=before)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, detail = proc.stdout.strip().splitlines()[-2:]
    return int(count), detail


@pytest.mark.slow  # fresh interpreters importing torch and transformers, ~5 s each
def test_concurrent_first_imports_fail_without_the_warmup():
    """The hazard is real in the pinned transformers (otherwise the next test would prove nothing): of three fresh
    processes, at least one has a session thread that gets the ImportError."""
    results = [_race() for _ in range(3)]
    assert any(count > 0 and "cannot import name" in detail for count, detail in results), results


@pytest.mark.slow
def test_sessions_that_wait_for_the_warmup_all_import():
    for _ in range(3):
        count, detail = _race(prelude="from app import warmup\nwarmup.start()", before="warmup.wait()")
        assert count == 0, detail


def _transformers_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "transformers":
            names |= {alias.name for alias in node.names}
    return names


def test_warmup_covers_every_name_the_dashboard_imports():
    """A new `from transformers import X` in the library or the dashboard must be warmed too."""
    files = [p for d in ("trainer_core", "app", "pages") for p in (PROJECT_ROOT / d).rglob("*.py")
             if "fixtures" not in p.parts and "training" not in p.parts]  # training/ runs in the ranks, never a page
    used = set().union(*(_transformers_names(p) for p in files))
    assert used, "the scan found no transformers imports: the test would prove nothing"
    assert used <= set(warmup.TRANSFORMERS_NAMES), sorted(used - set(warmup.TRANSFORMERS_NAMES))
