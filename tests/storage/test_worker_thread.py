"""The mirror's hardening thread (engine/worker_thread.py): calls in order, outcomes and errors to the caller,
a cancelled waiter harmless, close waiting for the call under way."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mirrord.engine.worker_thread import WorkerThread


async def test_calls_run_on_one_thread_in_the_order_made_and_each_caller_gets_its_own_result():
    worker = WorkerThread("test")
    seen: list[tuple[int, str]] = []

    def call(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * i

    try:
        results = await asyncio.gather(*(worker.run(call, i) for i in range(50)))
    finally:
        worker.close()
    assert results == [i * i for i in range(50)]
    assert [i for i, _ in seen] == list(range(50)) and {name for _, name in seen} == {"test"}


async def test_an_exception_reaches_its_caller_alone_and_the_thread_goes_on():
    worker = WorkerThread("test")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space"):
            await worker.run(fail)
        assert await worker.run(lambda: "next") == "next"
    finally:
        worker.close()


async def test_a_cancelled_waiter_does_not_stop_the_call_and_close_waits_for_it():
    worker = WorkerThread("test")
    started, release, finished = threading.Event(), threading.Event(), []

    def slow() -> str:
        started.set()
        release.wait(5)
        finished.append(True)
        return "done"

    waiter = asyncio.ensure_future(worker.run(slow))
    assert await asyncio.to_thread(started.wait, 5)
    waiter.cancel()
    release.set()
    worker.close()  # returns once the call under way finished
    assert finished == [True]
    await asyncio.sleep(0)  # the outcome's callback finds the waiter cancelled and leaves it so
    assert waiter.cancelled()
