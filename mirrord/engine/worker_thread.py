"""A thread of its own for one kind of blocking work that the event loop waits for, in order.

Why not `asyncio.to_thread`: each call copies the context, wraps a work item in
a concurrent future, queues it for a pool and chains that future to an asyncio
one, all under the GIL the event loop needs. The mirror hardens (appends and
fsyncs) once per frame it receives: measured on uvloop, a trivial call took
40-56 us of CPU through `to_thread` and 26-28 us through a thread of its own
and a `SimpleQueue`, and the pool's machinery was 8.5 % of the mirror's
interpreter time at 1 client (py-spy --gil). One thread also runs the calls in
the order they were made, and `close` can wait for the one under way.

The calls do not see the caller's contextvars (nothing they do logs with them).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

_STOP = object()


class WorkerThread:
    """Runs fn(*args) on one thread, in call order; `run` returns an awaitable for its result or its exception."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue fn(*args); the future is done once it returned or raised (cancelling it does not stop the call)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._jobs.put((loop, done, fn, args))
        return done

    def close(self) -> None:
        """Let the calls queued so far finish, then end the thread; returns once it ended."""
        self._jobs.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            loop, done, fn, args = job
            try:
                outcome, failed = fn(*args), False
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who decides
                outcome, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, done, outcome, failed)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for the outcome
                pass


def _settle(done: asyncio.Future, outcome: Any, failed: bool) -> None:
    if done.done():  # its waiter was cancelled
        return
    if failed:
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
