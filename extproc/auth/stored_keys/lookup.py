"""The request path's read of a stored key: one HGETALL per digest, shared and cached.

Concurrent lookups of one digest share one read, so a client that opens many streams
at once with a key not yet cached costs the store one read, not one per request.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import ResponseError

from extproc.auth.stored_keys.cache import UNREADABLE, StoredAnswer
from extproc.auth.stored_keys.errors import UnreadableRecordError
from extproc.auth.stored_keys.key_store import KeyStore
from extproc.auth.stored_keys.records import ANOTHER_TYPE, BY_OTHERS, from_fields, shown_name
from extproc.store.connection import of_another_type

log = logging.getLogger(__name__)


class _Read:
    """One HGETALL in flight and how many lookups wait on it."""

    __slots__ = ("generation", "task", "waiters")

    def __init__(self, task: asyncio.Task[StoredAnswer], generation: int) -> None:
        self.task = task
        # The cache's generation when the read began: lookups after a revocation
        # do not join it.
        self.generation = generation
        self.waiters = 0


class KeyLookup:
    """The reads in flight, by digest, of one store."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self.cache = store.cache
        self._reads: dict[bytes, _Read] = {}

    async def lookup(self, digest: bytes) -> StoredAnswer:
        """Ask the store for the key with this digest (one HGETALL) and cache the answer:
        the key, None when there is none, UNREADABLE when its record cannot be read.

        Concurrent lookups of one digest share one read: a client that opens many
        streams at once with a key not yet cached costs the store one HGETALL, not one
        per request. A read started before a revocation is not shared with lookups
        made after it (it may have found the revoked key). A failed read is not kept:
        the next lookup reads again.
        """
        generation = self.cache.generation
        flight = self._reads.get(digest)
        if flight is None or flight.generation != generation or flight.task.done():
            flight = _Read(asyncio.create_task(self._read(digest, generation)), generation)
            self._reads[digest] = flight
            flight.task.add_done_callback(lambda _: self._landed(digest, flight))
        flight.waiters += 1
        try:
            # Shielded: one caller giving up (its request's deadline, a client gone)
            # must not cancel the read the others wait on.
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody waits any more: the read is cancelled as an unshared one was,
                # and the next lookup starts a fresh one instead of joining it.
                flight.task.cancel()
                self._landed(digest, flight)

    async def _read(self, digest: bytes, generation: int) -> StoredAnswer:
        record_key = self._store.record_key(digest.hex())
        answer: StoredAnswer
        try:
            found = from_fields(await self._store.client.hgetall(record_key))
            answer = found.usable_key() if found is not None else None
        except (ResponseError, UnreadableRecordError) as exc:
            # of_another_type raises any other error answer: the store failed (a 503).
            reason = ANOTHER_TYPE if of_another_type(exc) else str(exc)
            # Before, a key of another type was a 503 on every request (clients retry),
            # and fields the gateway never writes so were one as well.
            log.warning(
                "an API key was presented whose record %s %s%s: the key is refused with 401"
                " until the record is moved away or the key is revoked",
                shown_name(record_key), reason, BY_OTHERS,
            )  # fmt: skip
            answer = UNREADABLE
        self.cache.put(digest, answer, generation)
        return answer

    def _landed(self, digest: bytes, flight: _Read) -> None:
        """The read is over (or abandoned): later lookups no longer join it."""
        if self._reads.get(digest) is flight:
            del self._reads[digest]
        if flight.task.done() and not flight.task.cancelled():
            # Every waiter has had the error already (or none was left to): not worth
            # asyncio's "exception was never retrieved" at exit.
            flight.task.exception()
