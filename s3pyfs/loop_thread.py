"""An asyncio event loop in a dedicated thread, callable from trio.

Responsibility: run coroutines of asyncio-only libraries (aiobotocore's
aiohttp backend) from trio code.  `await loop.run(coro)` schedules `coro` as
an asyncio task and sleeps in trio until the task's done-callback wakes it
through the trio token.
Invariants:
  * Every coroutine handed over runs on the loop thread, start to finish;
    trio code never touches asyncio objects.
  * Cancellation is forwarded: a cancelled trio caller cancels the asyncio
    task and waits (shielded) until it has really finished, so no request
    outlives its caller and no connection is left half-used.
  * The thread is started after any fork (mount.py forks before trio).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import trio


class LoopThread:
    def __init__(self, name: str = "s3pyfs-asyncio"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[asyncio.Task] = []

        def wake(_task: asyncio.Task) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        def start() -> None:                       # on the loop thread
            task = self.loop.create_task(coro)
            box.append(task)
            task.add_done_callback(wake)

        self.loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except trio.Cancelled:
            self.loop.call_soon_threadsafe(lambda: box[0].cancel())
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        task = box[0]
        if task.cancelled():
            raise trio.TooSlowError("the S3 request was cancelled on the asyncio side")
        return task.result()

    def close(self) -> None:
        """Stop the loop and wait for the thread (call after every run() finished)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
