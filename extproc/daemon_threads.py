"""Blocking calls that may never return, run where they cannot hold the process's exit.

``asyncio.to_thread`` runs a call in the loop's default executor, whose threads the loop
waits for when it closes (``asyncio.Runner`` shuts the executor down) and the interpreter
waits for again at exit. A call that can hang for minutes, such as botocore asking an STS
that takes connections and never answers (60 s per try, tried again), would then hold a
gateway's stop for those minutes after it has drained its streams. A daemon thread of its
own is not waited for: when its caller stops waiting (``asyncio.wait_for``) or the process
stops, the call is left to end, or to die with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
V = TypeVar("V")


def run_in_daemon_thread(function: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Start ``function`` in a new daemon thread named ``name``; the future (of the running
    loop) completes with its result or its exception. Cancelling the future does not stop
    the call: its result is dropped when it comes."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle_result(result: T) -> None:
        if not future.done():  # a cancelled wait (wait_for's timeout) drops the result
            future.set_result(result)

    def settle_error(error: Exception) -> None:
        if not future.done():
            future.set_exception(error)

    def deliver(settle: Callable[[V], None], outcome: V) -> None:
        # RuntimeError: the loop closed while the call ran, and nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    def run() -> None:
        try:
            result = function()
        except Exception as exc:
            deliver(settle_error, exc)
        else:
            deliver(settle_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
