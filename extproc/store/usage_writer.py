"""Batches usage rollup writes: requests add in memory, a flush writes them in one call.

Per-request writes would cost every request a store round trip for numbers
that are only read by reports. Instead each finished request adds to in-memory
totals, and a background task flushes them every ``interval_s`` (or sooner
when many accumulate). A failed flush keeps its totals and retries, so a store
outage delays the rollup but loses nothing; shutdown flushes what is left.
The exposure is a crash (SIGKILL) between flushes: at most ``interval_s`` of
rollups, which the per-request log lines still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from extproc.store.usage import UsageEntry, UsageStore, UsageTotals, add_entry, merge_totals

log = logging.getLogger(__name__)


class UsageWriter:
    def __init__(
        self,
        store: UsageStore,
        on_error: Callable[[], None],
        interval_s: float = 0.5,
        max_pending: int = 2000,
        timeout_s: float = 2.0,
    ) -> None:
        self._store = store
        self._on_error = on_error
        self._interval = interval_s
        self._max_pending = max_pending
        self._timeout = timeout_s
        self._pending: UsageTotals = {}
        self._count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, entry: UsageEntry) -> None:
        add_entry(self._pending, entry)
        self._count += 1
        if self._count >= self._max_pending:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write what is pending; True when nothing is left pending."""
        if not self._pending:
            return True
        batch, self._pending, self._count = self._pending, {}, 0
        try:
            await asyncio.wait_for(self._store.record_totals(batch), self._timeout)
        except Exception as exc:
            # Keep the batch; it goes out with the next flush.
            merge_totals(self._pending, batch)
            self._on_error()
            log.warning("usage rollup flush failed, will retry: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not await self.flush():
            log.error("usage rollups not written at shutdown: the store did not answer")
