"""Stopping a link task ends it even when a cancel is swallowed (Python 3.11 asyncio.wait_for).

Found by the nemesis (seed 1, round 2): ALTER ENDPOINT … STATE = STOPPED never
returned because the witness link's loop took no notice of its cancel.
"""

from __future__ import annotations

import asyncio

from mirrord.node import _cancel


def test_cancel_ends_a_task_that_swallows_the_first_cancel():
    async def main():
        swallowed = 0

        async def stubborn():
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if swallowed == 0:  # as wait_for does when its inner wait completed at the same moment
                        swallowed += 1
                        continue
                    raise

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(_cancel(task), 5)
        return task, swallowed

    task, swallowed = asyncio.run(main())
    assert task.cancelled() and swallowed == 1


def test_cancel_collects_a_task_that_failed_and_ignores_none_and_itself():
    async def main():
        async def fails():
            raise ConnectionError("link lost")

        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await _cancel(task)
        await _cancel(None)
        await _cancel(asyncio.current_task())  # a role change stopping its own link: no wait on itself
        return task

    task = asyncio.run(main())
    assert isinstance(task.exception(), ConnectionError)
