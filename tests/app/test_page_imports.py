"""Dashboard page scripts never import training code: what a page imports at its top runs on every rerun of every
visitor's session, and trainer_core.training / DeepSpeed belong to the rank processes only.

    .venv/bin/python -m pytest tests/app/test_page_imports.py -q
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "streamlit_app.py"]
FORBIDDEN = ("trainer_core.training", "deepspeed")


def top_level_imports(script: Path) -> list[str]:
    """The import statements at a script's top level, as source lines (imports inside functions run on demand;
    those under a top-level `if` count: streamlit_app.py's page run imports there)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    nodes = [n for top in tree.body for n in ([*top.body, *top.orelse] if isinstance(top, ast.If) else [top])]
    return [ast.unparse(node) for node in nodes if isinstance(node, (ast.Import, ast.ImportFrom))]


def new_modules(steps: dict[str, list[str]]) -> dict[str, list[str]]:
    """For each named list of import lines, run in order in one fresh interpreter (as one server process runs
    its pages), the modules that list loaded first. One interpreter: torch and Streamlit are imported once."""
    code = ["import json, sys", "seen, out = set(sys.modules), {}"]
    for name, imports in steps.items():
        code += [*imports, f"out[{name!r}] = sorted(set(sys.modules) - seen)", "seen |= set(sys.modules)"]
    code.append("print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] == "deepspeed" or m.startswith(FORBIDDEN)]


def test_page_imports_no_training_code():
    loaded = new_modules({p.name: top_level_imports(p) for p in SCRIPTS})
    assert "streamlit" in loaded[SCRIPTS[0].name]  # the imports did run
    bad = {name: training_modules(modules)[:5] for name, modules in loaded.items() if training_modules(modules)}
    assert not bad, f"page scripts import training code at their top: {bad}"


def test_every_page_is_checked():
    assert {p.name for p in SCRIPTS} >= {"chat.py", "data.py", "monitor.py", "runs.py", "train.py",
                                         "streamlit_app.py"}
    assert all(top_level_imports(p) for p in SCRIPTS)


def test_the_check_sees_training_code():
    """The same check flags a page that imports the trainer (so a passing page test means something)."""
    loaded = new_modules({"page": ["import streamlit", "from trainer_core.config.memory import plan_memory"],
                          "bad": ["from trainer_core.training.linear_ce import linear_cross_entropy"]})
    assert not training_modules(loaded["page"]) and training_modules(loaded["bad"])
