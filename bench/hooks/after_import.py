"""Bench-only: run a function on a module right after it is first imported, without the importing code knowing.

The benchmark's sitecustomize files (bench/hooks/<name>/sitecustomize.py) use this to wrap or
adjust a class of transformers, DeepSpeed or our trainer in every rank. The repository root is on the ranks'
PYTHONPATH (runs/launch.py puts it there), so `bench.hooks.after_import` is importable from a sitecustomize; it imports
nothing but the standard library, so it is safe in a peer's own virtual environment too.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType
from typing import Callable


# module name -> hooks, shared by every sitecustomize in the process. One finder serves them all: two finders
# would each ask the other for the same module and recurse.
HOOKS: dict[str, list[Callable[[ModuleType], None]]] = {}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds the hooked modules with the other finders, then runs their hooks once the module has executed."""

    def find_spec(self, name, path, target=None):
        if name not in HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_then_hook(module, execute=execute):
                    execute(module)
                    for hook in HOOKS[name]:
                        hook(module)
                spec.loader.exec_module = exec_then_hook
                return spec
        return None


def after_import(hooks: dict[str, Callable[[ModuleType], None]]) -> None:
    """hooks: module name → function called with the module once it has been imported (not yet imported ones only)."""
    for name, hook in hooks.items():
        HOOKS.setdefault(name, []).append(hook)
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
