"""Who opened each MCP session and created each A2A task, so that only they use it.

Every caller reaches an agent server with the gateway's one credential: to the server,
a session id or a task id is all it takes to act in a session or on a task. So the
gateway records the caller who opened each one, with ``<prefix>`` the config's
``store.key_prefix``::

    <prefix>agent_owner:<sha256 of server, kind and id>   the owner (``owner_of``),
                                                          expiring binding_ttl_s after
                                                          it was written, not refreshed

The key holds a digest, never the id: whoever can list the store's keys must not find
ids that let them act in others' sessions. One key per id, read and claimed with one
command (``SET ... NX GET``: Redis 7.0 or later, any Valkey), so a request pays at most
one round trip for it (every id it names in one pipeline, or in its request limits'
own round trip: ``claim_of``), and none once this process knows the binding: bindings
never change while they last, so each process keeps those it has seen (a bounded LRU,
each entry no longer than its record lives). A session its server ended (a ``DELETE``
it answered 2xx) has its record deleted then (``forget``): the store keeps no records
of ended sessions until they expire.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from extproc.quota.store import RecordClaim

# What an id names: MCP's session, A2A's task.
Kind = Literal["session", "task"]
# Bindings this process keeps: enough for every live session of a busy replica; the
# least recently used go first, and are asked of the store again when they come back.
CACHE_ENTRIES = 65_536


def binding_digest(server: str, kind: Kind, object_id: str) -> str:
    """The record's name for an id: the id itself never reaches the store."""
    named = f"{server}\0{kind}\0{object_id}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(named).hexdigest()


class AgentOwners:
    """The records of sessions' and tasks' owners (the module docstring)."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._cache_entries = cache_entries
        self._clock = clock

    def _key(self, digest: str) -> str:
        return f"{self._prefix}agent_owner:{digest}"

    def known(self, digest: str) -> str | None:
        """The owner this process has seen for a binding; None when it must ask the store."""
        found = self._cache.get(digest)
        if found is None:
            return None
        owner, expires = found
        if self._clock() >= expires:
            # Its record has expired in the store: whoever comes next claims it anew.
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return owner

    def remember(self, digest: str, owner: str, ttl_s: int) -> None:
        """Keep a binding for at most as long as its record lives."""
        self._cache[digest] = (owner, self._clock() + ttl_s)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    async def claim(self, digests: list[str], owner: str, ttl_s: int) -> list[str]:
        """Each binding's owner: the recorded one, or ``owner`` when there was none, which
        is now recorded. One command per binding, all in one round trip: two callers
        claiming at once get one answer."""
        pipeline = self._client.pipeline(transaction=False)
        for digest in digests:
            pipeline.set(self._key(digest), owner, ex=ttl_s, nx=True, get=True)
        previous = await pipeline.execute()
        return [
            self.claimed(digest, owner if found is None else _text(found), ttl_s)
            for digest, found in zip(digests, previous, strict=True)
        ]

    def claim_of(self, digest: str, owner: str, ttl_s: int) -> RecordClaim:
        """The claim of a binding, for a round trip the request makes anyway (its request
        limits'): ``QuotaStore.reserve_unless_claimed``; its answer goes to ``claimed``."""
        return RecordClaim(self._key(digest), owner, ttl_s)

    def claimed(self, digest: str, found: str, ttl_s: int) -> str:
        """Keep the owner a claim found; the owner."""
        # Remembered for the full TTL even when the record is older: at worst this process
        # holds the owner a little longer than the store does, never a wrong owner.
        self.remember(digest, found, ttl_s)
        return found

    async def forget(self, digest: str) -> None:
        """Drop a binding whose session ended, here and in the store."""
        self._cache.pop(digest, None)
        await self._client.delete(self._key(digest))


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
