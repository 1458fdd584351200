"""One batch encoded in a worker thread while the caller reads and validates the next.

The fast tokenizer releases the GIL while it encodes a batch (and spreads it over the cores), so its time can
overlap the reading, parsing and validation of the following records, which hold the GIL. With two batches in
flight at most, memory stays one batch of conversations and one of results above the serial path's.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Overlapped(Generic[In, Out]):
    """`submit(batch)` runs `work(batch)` in one worker thread; each result goes to `consume`, in submission order,
    on the caller's thread (so `consume` needs no lock). `finish()` waits for the last. An exception from `work`
    is raised on the caller's thread by the next `submit` or `finish`. Use as a context manager: leaving it, even
    by an exception, stops the worker."""

    def __init__(self, work: Callable[[In], Out], consume: Callable[[Out], None]):
        self.work, self.consume = work, consume
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, batch: In) -> None:
        self._collect()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._pending = self._pool.submit(self.work, batch)

    def finish(self) -> None:
        self._collect()

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.consume(pending.result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None

    def __enter__(self) -> "Overlapped[In, Out]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
