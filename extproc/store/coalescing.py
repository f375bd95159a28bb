"""Concurrent store calls coalesced into one round trip while another is in flight.

Under load, many requests reserve quota at once, and each reservation sent on its
own costs the event loop a full redis-py command cycle (a connection from the
pool, a write, a read, a future). ``CoalescingCaller`` sends the first call at once
(so an idle gateway adds no wait) and, while that round trip is in flight, queues
the calls that arrive; when it returns, everything queued goes out together as one
pipeline. The batch grows with the load by itself, and no call waits longer than
the round trip in flight plus its own.

The round trip is a list-in, list-out function (one result per item, in order):
each caller gets back the slice of results for its own items. A caller that gives
up (its timeout, its client gone) before its batch is sent is dropped from it, so
nothing is reserved for a request that no longer waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class StoreClosingError(ConnectionError):
    """The store was closed with calls still queued."""


class CoalescingCaller(Generic[Item, Result]):
    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._send = send
        self._in_flight = False
        self._queued: list[tuple[list[Item], asyncio.Future[list[Result]]]] = []
        self._batch: asyncio.Task[None] | None = None
        # How many round trips carried how many calls (for tests and the bench).
        self.round_trips = 0
        self.calls = 0

    async def call(self, items: list[Item]) -> list[Result]:
        """The results of ``items``, sent alone or with the calls queued beside them."""
        if self._in_flight:
            waiter: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
            self._queued.append((items, waiter))
            return await waiter
        # Nothing in flight: this call goes at once, in this task (no extra task
        # or future on an idle gateway's path).
        self._in_flight = True
        self.round_trips += 1
        self.calls += 1
        try:
            return await self._send(items)
        finally:
            self._send_queued()

    def _send_queued(self) -> None:
        batch = [(items, waiter) for items, waiter in self._queued if not waiter.done()]
        self._queued = []
        if not batch:
            self._in_flight = False
            return
        self._batch = asyncio.get_running_loop().create_task(self._send_batch(batch))

    async def _send_batch(
        self, batch: list[tuple[list[Item], asyncio.Future[list[Result]]]]
    ) -> None:
        self.round_trips += 1
        self.calls += len(batch)
        try:
            results = await self._send([item for items, _ in batch for item in items])
        except asyncio.CancelledError:
            _fail(batch, StoreClosingError("the store is closing"))
            raise
        except Exception as error:
            _fail(batch, error)
        else:
            start = 0
            for items, waiter in batch:
                end = start + len(items)
                if not waiter.done():
                    waiter.set_result(results[start:end])
                start = end
        finally:
            self._send_queued()

    async def close(self) -> None:
        """Stop sending: queued callers get ``StoreClosingError``."""
        _fail(self._queued, StoreClosingError("the store is closing"))
        self._queued = []
        if self._batch is not None and not self._batch.done():
            self._batch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batch


def _fail(batch: list[tuple[list[Item], asyncio.Future[list[Result]]]], error: Exception) -> None:
    for _, waiter in batch:
        if not waiter.done():
            waiter.set_exception(error)
