"""Long data work (validating a file, measuring its tokens) in a background thread, so a large dataset never holds
up a page: the page shows the job's progress bar, refreshes it, and uses the result once it is there.

A job is shared by every session of the dashboard process that asks for the same key (file, modification time,
settings); the last few finished jobs are kept as a cache. Small files finish within the first wait and look
exactly like a synchronous call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_KEPT = 8
"""Finished jobs kept (each holds a validation report or token statistics)."""


@dataclass
class Job:
    fraction: float = 0.0
    """Progress, 0 to 1."""
    result: Any = None
    error: BaseException | None = None
    """What the work raised (a UserError for a file the user can fix)."""
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


_jobs: OrderedDict[tuple, Job] = OrderedDict()
_lock = threading.Lock()


def submit(key: tuple, work: Callable[[Callable[[float], None]], Any]) -> Job:
    """The job for ``key``, started now unless one is running or finished: ``work(report_progress)`` runs in its
    own thread and its return value becomes ``job.result``."""
    with _lock:
        job = _jobs.get(key)
        if job is not None:
            _jobs.move_to_end(key)
            return job
        job = _jobs[key] = Job()
        finished = [k for k, j in _jobs.items() if j.done]
        for k in finished[:max(0, len(_jobs) - MAX_KEPT)]:
            del _jobs[k]

    def run() -> None:
        def report(fraction: float) -> None:
            job.fraction = min(1.0, max(0.0, fraction))

        try:
            job.result = work(report)
        except BaseException as e:  # handed to the page, which shows a UserError and re-raises anything else
            job.error = e
        finally:
            job.fraction = 1.0
            job.finished.set()

    threading.Thread(target=run, name=f"data-job-{len(_jobs)}", daemon=True).start()
    return job


def forget(key: tuple) -> None:
    """Drop a finished job so the next request starts afresh (after an unexpected error)."""
    with _lock:
        if key in _jobs and _jobs[key].done:
            del _jobs[key]
