"""Concurrent store calls coalesced into one round trip while another is in flight.

Under load, many requests reserve quota at once, and each reservation sent on its
own costs the event loop a full redis-py command cycle (a connection from the
pool, a write, a read, a future). ``CoalescingCaller`` sends the first call at once
(so an idle gateway adds no wait) and, while that round trip is in flight, queues
the calls that arrive; when it returns, everything queued goes out together as one
pipeline. The batch grows with the load by itself, and no call waits longer than
the round trip in flight plus its own.

The round trip is a list-in, list-out function (one result per item, in order):
each caller gets back the slice of results for its own items. The round trips run
in a task of their own, never in a caller's, so a caller that gives up (its
timeout, its client gone) cannot cut a round trip short and lose its answer:

- a caller that gives up before its batch is sent is dropped from it, so nothing
  is done for a request that no longer waits;
- one that gives up after its items were sent has its results handed to
  ``on_abandoned`` when they arrive, so what the store did for it (a quota
  reservation) can be undone;
- a round trip that shutdown gives up on (still unanswered after ``close``'s grace)
  may have run on the server all the same: its items go to ``on_cut_short``, so what
  the store may have done for them is undone too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)

_Queued = list[tuple[list[Item], asyncio.Future[list[Result]]]]


class StoreClosingError(ConnectionError):
    """The store was closed with calls still queued."""


class CoalescingCaller(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        on_abandoned: Callable[[list[Item], list[Result]], None] | None = None,
        on_cut_short: Callable[[list[Item]], None] | None = None,
    ) -> None:
        self._send = send
        self._on_abandoned = on_abandoned
        self._on_cut_short = on_cut_short
        self._queued: _Queued[Item, Result] = []
        # The task sending round trips while calls keep coming (None: idle).
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        # How many round trips carried how many calls (for tests and the bench).
        self.round_trips = 0
        self.calls = 0

    async def call(self, items: list[Item]) -> list[Result]:
        """The results of ``items``, sent alone or with the calls queued beside them."""
        if self._closing:
            raise StoreClosingError("the store is closing")
        waiter: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._queued.append((items, waiter))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_batches())
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled in the very loop turn its answer landed: still undone.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._abandon(items, waiter.result())
            raise

    async def _send_batches(self) -> None:
        try:
            while not self._closing:
                batch = [(items, waiter) for items, waiter in self._queued if not waiter.done()]
                self._queued = []
                if not batch:
                    return
                await self._round_trip(batch)
        finally:
            self._sender = None

    async def _round_trip(self, batch: _Queued[Item, Result]) -> None:
        self.round_trips += 1
        self.calls += len(batch)
        try:
            results = await self._send([item for items, _ in batch for item in items])
        except asyncio.CancelledError:
            _fail(batch, StoreClosingError("the store is closing"))
            # Sent without an answer, as a cut connection: the server may still run it.
            # Every item counts, those whose callers had given up too.
            self._cut_short([item for items, _ in batch for item in items])
            raise
        except Exception as error:
            _fail(batch, error)
            return
        start = 0
        for items, waiter in batch:
            end = start + len(items)
            if not waiter.done():
                waiter.set_result(results[start:end])
            else:
                self._abandon(items, results[start:end])
            start = end

    def _abandon(self, items: list[Item], results: list[Result]) -> None:
        if self._on_abandoned is None:
            return
        try:
            self._on_abandoned(items, results)
        except Exception:
            log.exception("undoing an abandoned store call failed")

    def _cut_short(self, items: list[Item]) -> None:
        if self._on_cut_short is None:
            return
        try:
            self._on_cut_short(items)
        except Exception:
            log.exception("undoing a store call cut short by shutdown failed")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop sending: queued callers get ``StoreClosingError``; the round trip in
        flight finishes (within ``timeout_s``), so its callers get their answers. One
        still unanswered then is given up: its callers get ``StoreClosingError``, and
        its items go to ``on_cut_short`` before this returns."""
        self._closing = True
        _fail(self._queued, StoreClosingError("the store is closing"))
        self._queued = []
        sender = self._sender
        if sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(sender), timeout_s)
            except TimeoutError:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)


def _fail(batch: _Queued[Item, Result], error: Exception) -> None:
    for _, waiter in batch:
        if not waiter.done():
            waiter.set_exception(error)
