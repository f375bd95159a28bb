"""A local, append-only spool for writes the store could not take, replayed later.

When the store is down, usage rollups and quota settlements are not dropped:
each failed batch is appended as one JSON line to a file under
``store.spool_dir`` (flushed to disk), and replayed in order once the store
answers again. Every batch carries an id that the store-side scripts record,
so a batch replayed twice (say, after a timeout that had in fact succeeded)
is counted once.

Appends may come (from a worker thread) while a replay is applying records: the
replay then keeps them, since it drops only the lines it read. A line torn by a
crash mid-append is closed before the next record is written, so the torn line
is the only one lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# What reading a record of the wrong shape raises (a store error never means that).
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class Spool:
    def __init__(self, directory: str | Path, kind: str) -> None:
        self.path = Path(directory) / f"{kind}.jsonl"
        self.kind = kind
        # One replay at a time (on the event loop).
        self._lock = asyncio.Lock()
        # Appends (in worker threads) and a replay's rewrite of the file, one at a time.
        self._file_lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it. Blocks on disk I/O: call it off the event loop."""
        with self._file_lock:
            append_lines(self.path, orjson.dumps(record) + b"\n")

    def pending(self) -> int:
        try:
            with self.path.open("rb") as spool:
                return sum(1 for line in spool if line.strip())
        except FileNotFoundError:
            return 0

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Apply spooled records in order; stop at the first failure. Returns how many
        were applied (and removed)."""
        async with self._lock:
            lines = await asyncio.to_thread(self._read_lines)
            applied = 0
            for line in lines:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.error("skipping an unreadable line in the %s spool", self.kind)
                    applied += 1
                    continue
                try:
                    await apply(record)
                except Exception as exc:
                    if not isinstance(exc, _MALFORMED) or isinstance(exc, RedisError):
                        # The store (or the disk) is not there yet, in whatever form
                        # the client reports it: the record waits.
                        log.warning("%s spool replay paused: %s", self.kind, type(exc).__name__)
                        break
                    # The record itself is wrong (hand-edited, another version's): set
                    # aside, so that it does not hold back every record after it.
                    log.exception("a %s spool record cannot be applied: set aside", self.kind)
                    await asyncio.to_thread(self._set_aside, line)
                applied += 1
            if applied:
                await asyncio.to_thread(self._drop_first, applied)
            return applied

    def _set_aside(self, line: bytes) -> None:
        append_lines(self.path.with_suffix(".rejected.jsonl"), line + b"\n")

    def _read_lines(self) -> list[bytes]:
        # Under the lock: never half of a record an append is writing.
        with self._file_lock:
            return self._lines()

    def _lines(self) -> list[bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [line for line in data.splitlines() if line.strip()]

    def _drop_first(self, count: int) -> None:
        """Remove the first ``count`` records; records appended meanwhile stay."""
        with self._file_lock:
            rest = self._lines()[count:]
            if not rest:
                self.path.unlink(missing_ok=True)
                return
            temporary = self.path.with_suffix(".tmp")
            with temporary.open("wb") as spool:
                spool.write(b"".join(line + b"\n" for line in rest))
                spool.flush()
                os.fsync(spool.fileno())
            temporary.replace(self.path)


def append_lines(path: Path, data: bytes) -> None:
    """Append whole lines to ``path`` and fsync them. When the file ends in a line torn
    by a crash mid-append, that line is closed first, so the new lines stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as spool:
        if spool.tell() > 0:
            spool.seek(-1, os.SEEK_END)
            if spool.read(1) != b"\n":
                data = b"\n" + data
        spool.write(data)
        spool.flush()
        os.fsync(spool.fileno())
