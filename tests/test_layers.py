"""The project's layers import one way, and nothing imports around a loop.

    .venv/bin/python -m pytest tests/test_layers.py -q

Layers, lowest first (a module may import its own layer and those below it, never one above):

    0  trainer_core.common                                  generic helpers: errors, paths, atomic writes, ...
    1  trainer_core.data, trainer_core.config
    2  trainer_core.models
    3  trainer_core.training, trainer_core.runs, trainer_core.evaluation
       (evaluation scores a run's models, so it sits beside runs and may read a run's protocol and chat device)
    4  trainer_core.cli
    5  trainer_core.__main__
    6  app/                                                 the dashboard's helpers; the only Streamlit code
    7  pages/ and the server entry (streamlit_app.py)       pages import `app` only

Every import counts: absolute and relative, at the top of a module or inside a function (an import inside a function
still ties the two modules together, it only runs later). Besides the order, two packages of one layer must not
import each other (data <-> config, training <-> runs), and the modules of one package (or of `app/`) must not import
each other around a loop. Each failure names the importing module, the imported one and the line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ("streamlit_app",)
"""Top-level scripts that sit with the pages: the server entry."""

LAYERS = {
    "trainer_core": 0,  # the package's __init__: a docstring, imported implicitly by everything below it
    "trainer_core.common": 0,
    "trainer_core.data": 1, "trainer_core.config": 1,
    "trainer_core.models": 2,
    "trainer_core.training": 3, "trainer_core.runs": 3, "trainer_core.evaluation": 3,
    "trainer_core.cli": 4,
    "trainer_core.__main__": 5,
    "app": 6,
    "pages": 7, **{name: 7 for name in ENTRY},
}

@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product (tests, bench and scripts are not in it)."""
    files = [*ROOT.glob("trainer_core/**/*.py"), *ROOT.glob("app/*.py"), *ROOT.glob("pages/*.py"),
             *(ROOT / f"{name}.py" for name in ENTRY)]
    modules = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def package_of(module: str) -> str:
    """The layer key a module belongs to: `trainer_core.data.split` -> `trainer_core.data`, `app.frame` -> `app`."""
    parts = module.split(".")
    if parts[0] == "trainer_core":
        return ".".join(parts[:2])
    return parts[0]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of a project module in this file, wherever it stands, resolved to the most specific module."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            if node.module:
                base = [*base, *node.module.split(".")]
            names = [".".join([*base, alias.name]) for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()  # `from pkg import function` names the package
            if parts and ".".join(parts) != module:
                found.append(Import(module, ".".join(parts), node.lineno))
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    return [imp for module, path in sorted(modules.items()) for imp in imports_of(module, path, modules)]


def on_a_loop(edges: list[Import], node) -> list[Import]:
    """The edges (node(importer) -> node(imported)) that lie on a cycle of the graph those edges make."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(node(e.importer), set()).add(node(e.imported))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph.get(current, ()))
        return False

    return [e for e in edges if node(e.importer) != node(e.imported) and reaches(node(e.imported), node(e.importer))]


def violations(imports: list[Import]) -> dict[str, list[Import]]:
    """Each rule's offending imports."""
    between = [i for i in imports if package_of(i.importer) != package_of(i.imported)]
    same_layer = [i for i in between if LAYERS[package_of(i.importer)] == LAYERS[package_of(i.imported)]]
    inside = [i for i in imports if package_of(i.importer) == package_of(i.imported)]
    return {
        "imports a higher layer": [i for i in between
                                   if LAYERS[package_of(i.importer)] < LAYERS[package_of(i.imported)]],
        "closes an import loop between packages": on_a_loop(same_layer, package_of),
        "closes an import loop between modules": on_a_loop(inside, lambda m: m),
        "is a page importing something other than app/": [i for i in imports if package_of(i.importer) == "pages"
                                                          and package_of(i.imported) != "app"],
    }


def report(found: dict[str, list[Import]]) -> list[str]:
    """One line per import that breaks a rule."""
    return [f"{imp} {rule}" for rule, imps in found.items() for imp in imps]


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in project_modules() if package_of(m) not in LAYERS)
    assert not unplaced, f"modules with no layer (add their package to LAYERS): {unplaced}"


def test_imports_go_down_and_never_around_a_loop():
    found = violations(all_imports())
    bad = report(found)
    assert not bad, "layer violations:\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------- the check itself can fail


def scan(tmp_path: Path, files: dict[str, str]) -> dict[str, list[Import]]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    modules = {}
    for path in tmp_path.rglob("*.py"):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return violations([imp for m, p in sorted(modules.items()) for imp in imports_of(m, p, modules)])


def test_the_check_sees_upward_imports_loops_and_pages(tmp_path):
    found = scan(tmp_path, {
        "trainer_core/__init__.py": "",
        "trainer_core/data/__init__.py": "",
        "trainer_core/data/rows.py": "def f():\n    from ..training import train\n",  # relative, in a function
        "trainer_core/data/a.py": "from trainer_core.data import b\n",
        "trainer_core/data/b.py": "import trainer_core.data.a\n",
        "trainer_core/config/__init__.py": "",
        "trainer_core/config/c.py": "from trainer_core.data.rows import f\n",
        "trainer_core/data/d.py": "from trainer_core.config import c\n",
        "trainer_core/training/__init__.py": "",
        "trainer_core/training/train.py": "",
        "app/__init__.py": "",
        "app/x.py": "from app.y import g\n",
        "app/y.py": "def g():\n    from app import x\n",
        "pages/p.py": "from app import x\nfrom trainer_core.data import rows\n",
    })
    lines = report(found)
    assert "trainer_core.data.rows imports trainer_core.training.train (line 2) imports a higher layer" in lines
    loops = {str(i) for i in found["closes an import loop between packages"]}
    assert loops == {"trainer_core.config.c imports trainer_core.data.rows (line 1)",
                     "trainer_core.data.d imports trainer_core.config.c (line 1)"}
    assert {str(i) for i in found["closes an import loop between modules"]} == {
        "trainer_core.data.a imports trainer_core.data.b (line 1)",
        "trainer_core.data.b imports trainer_core.data.a (line 1)",
        "app.x imports app.y (line 1)", "app.y imports app.x (line 2)"}
    assert [str(i) for i in found["is a page importing something other than app/"]] == [
        "pages.p imports trainer_core.data.rows (line 2)"]
