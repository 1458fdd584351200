"""Import the heavy libraries once per dashboard process, before any page script needs them.

Streamlit runs each browser session's script in its own thread. transformers resolves `from transformers import X`
through a lazy module that is not thread-safe: two sessions (or a Data tab and a Train tab opened in quick
succession on a fresh server) importing at once get `ImportError: cannot import name 'AutoTokenizer'`. So one
background thread resolves every name the dashboard's code paths use, started as early as the server starts, and
the entry script waits for it before any page runs. After that each name is a plain module attribute and lookups
no longer go through the lazy path.
"""

from __future__ import annotations

import importlib
import threading

# Every `from transformers import NAME` that a dashboard page can reach (trainer_core.models.local, inference, memory,
# starter). tests/test_warmup.py fails when trainer_core or app import a name that is missing here.
TRANSFORMERS_NAMES = (
    "AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "GenerationConfig", "PreTrainedTokenizerFast",
    "Qwen2Config", "Qwen2ForCausalLM", "StoppingCriteria", "StoppingCriteriaList", "TextIteratorStreamer",
)
# Modules imported lazily by the memory planner and hardware detection (the Train page).
MODULES = (
    "torch",
    "deepspeed.accelerator",
    "deepspeed.runtime.zero.stage3",
    "deepspeed.runtime.zero.stage_1_and_2",
)

_lock = threading.Lock()
_done = threading.Event()
_thread: threading.Thread | None = None
_error: BaseException | None = None


def _import_all() -> None:
    global _error
    try:
        for name in MODULES:
            importlib.import_module(name)
        transformers = importlib.import_module("transformers")
        for name in TRANSFORMERS_NAMES:
            getattr(transformers, name)
    except BaseException as e:  # noqa: BLE001 - re-raised in every waiting page by wait()
        _error = e
    finally:
        _done.set()


def start() -> None:
    """Begin importing in the background (idempotent); the server calls this before it accepts connections."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_import_all, name="dashboard-warmup", daemon=True)
            _thread.start()


def ready() -> bool:
    return _done.is_set()


def wait() -> None:
    """Block until the imports are done (seconds on the first run of a process, nothing afterwards)."""
    start()
    _done.wait()
    if _error is not None:
        raise _error
