"""A local, append-only spool for writes the store could not take, replayed later.

When the store is down, usage rollups and quota settlements are not dropped:
each failed batch is appended as one JSON line to a file under
``store.spool_dir`` (flushed to disk), and replayed in order once the store
answers again. Every batch carries an id that the store-side scripts record,
so a batch replayed twice (say, after a timeout that had in fact succeeded)
is counted once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: str | Path, kind: str) -> None:
        self.path = Path(directory) / f"{kind}.jsonl"
        self.kind = kind
        self._lock = asyncio.Lock()

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as spool:
            spool.write(orjson.dumps(record) + b"\n")
            spool.flush()
            os.fsync(spool.fileno())

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
            try:
                lines = [line for line in self.path.read_bytes().splitlines() if line.strip()]
            except FileNotFoundError:
                return 0
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
                    log.warning("%s spool replay paused: %s", self.kind, type(exc).__name__)
                    break
                applied += 1
            rest = lines[applied:]
            if rest:
                temporary = self.path.with_suffix(".tmp")
                temporary.write_bytes(b"".join(line + b"\n" for line in rest))
                temporary.replace(self.path)
            else:
                self.path.unlink(missing_ok=True)
            return applied
