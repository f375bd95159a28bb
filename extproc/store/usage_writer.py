"""Batches usage rollup writes: requests add in memory, a flush writes them in one call.

Per-request writes would cost every request a store round trip for numbers
that are only read by reports. Instead each finished request adds to in-memory
totals, and a background task flushes them every ``interval_s`` (or sooner
when many accumulate). A failed flush keeps its totals in the spool file and
replays them, once each, when the store is back, so a store outage delays the
rollup but loses nothing; shutdown lets a flush in progress finish, then
flushes what is left. A batch the spool's disk cannot take either waits in
memory under its id (the spool counts it, ``aigw_spool_write_errors_total``, not
as spooled) and is tried again with each flush. The exposure is a crash (SIGKILL)
between flushes: at most ``interval_s`` of rollups, which the per-request log
lines still hold, plus any batch waiting in memory for a disk that failed.

``on_error`` is called for each batch the store failed (``aigw_store_errors_total``);
whether the batch reached the disk is the spool's to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from extproc.store.outage_log import OutageLog
from extproc.store.spool import Spool
from extproc.store.usage import (
    UsageEntry,
    UsageStore,
    UsageTotals,
    add_entry,
    spool_rows,
    totals_from_spool,
)

log = logging.getLogger(__name__)


class UsageWriter:
    def __init__(
        self,
        store: UsageStore,
        on_error: Callable[[], None],
        interval_s: float = 0.5,
        max_pending: int = 2000,
        timeout_s: float = 2.0,
        spool: Spool | None = None,
    ) -> None:
        self._store = store
        self._on_error = on_error
        self._interval = interval_s
        self._max_pending = max_pending
        self._timeout = timeout_s
        self._pending: UsageTotals = {}
        self._count = 0
        # Batches neither written nor spooled (no spool, or its disk failed), kept
        # with their ids: sent again as they were, so each still counts once.
        self._unsent: list[tuple[UsageTotals, str]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._spool = spool
        # A flush fails every interval_s while the store is down: said once, not each time.
        self._failing = OutageLog(log, "usage rollup flush failed, batches to the spool")

    def add(self, entry: UsageEntry) -> None:
        add_entry(self._pending, entry)
        self._count += 1
        if self._count >= self._max_pending:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # Nothing is dropped (see flush); the next interval tries again.
                log.exception("usage rollup flush failed")

    async def flush(self) -> bool:
        """Write what is pending (then what the spool holds); True when all of it landed."""
        # Sent again, a batch kept in memory keeps its id in the store (``replayed``):
        # it may have landed in part at its first try, and its spool line may be on
        # the disk even though the disk reported an error (a failed fsync), to be
        # replayed after it landed here.
        batches = [(batch, batch_id, True) for batch, batch_id in self._unsent]
        self._unsent = []
        if self._pending:
            batches.append((self._pending, uuid.uuid4().hex, False))
            self._pending, self._count = {}, 0
        written = True
        for index, (batch, batch_id, kept) in enumerate(batches):
            if not await self._write(batch, batch_id, replayed=kept):
                # The store is not there: the rest wait for the next flush untried
                # (they go to the spool, or stay here, as this one did).
                for rest, rest_id, _ in batches[index + 1 :]:
                    await self._keep_or_hold(rest, rest_id)
                written = False
                break
        if written and self._spool is not None:
            try:
                await self._spool.replay(self._replay_one)
            except OSError:
                log.exception("usage rollup spool could not be read")
                return False
        return written

    async def _write(self, batch: UsageTotals, batch_id: str, *, replayed: bool) -> bool:
        try:
            await asyncio.wait_for(
                self._store.record_totals(batch, batch_id, replayed=replayed), self._timeout
            )
            self._failing.answered()
            return True
        except asyncio.CancelledError:
            # Cut short (it may have landed): kept under its id for the last flush.
            self._unsent.append((batch, batch_id))
            raise
        except Exception as exc:
            self._on_error()
            self._failing.failed(exc)
        await self._keep_or_hold(batch, batch_id)
        return False

    async def _keep_or_hold(self, batch: UsageTotals, batch_id: str) -> None:
        try:
            await self._keep(batch, batch_id)
        except OSError:
            log.exception("usage rollup spool not writable: the batch waits in memory")
            self._unsent.append((batch, batch_id))

    async def _keep(self, batch: UsageTotals, batch_id: str) -> None:
        if self._spool is None:
            # No spool: kept in memory for the next flush (lost only on a crash).
            self._unsent.append((batch, batch_id))
            return
        rows = spool_rows(batch)
        # fsync is disk I/O: off the event loop.
        await asyncio.to_thread(self._spool.append, {"id": batch_id, "totals": rows})

    async def _replay_one(self, record: dict[str, Any]) -> None:
        totals = totals_from_spool(record["totals"])
        await asyncio.wait_for(
            self._store.record_totals(totals, str(record["id"]), replayed=True), self._timeout
        )

    async def close(self) -> None:
        """Let a flush in progress finish (never cut it short: its batch would be in
        neither the store nor the spool), then write what is left."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if not await self.flush():
            log.error("usage rollups not written at shutdown: the store did not answer")
