"""``KeyCache``: what the store answered for recent digests, per process.

A key is remembered for 30 s, "no such key" for 5 s, at most 10,000 digests (least
recently used go first). A revocation makes the cache forget the key at once and bumps
its generation, so that a read started before it does not put the key back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import Final, Literal, TypeAlias

from extproc.auth.api_keys import ApiKey

FOUND_TTL_S = 30.0
MISSING_TTL_S = 5.0
CACHE_ENTRIES = 10_000


class _NotCached(Enum):
    NOT_CACHED = "not cached"


class _Unreadable(Enum):
    UNREADABLE = "unreadable"


# What the cache says about a digest it has no live answer for: ask the store.
NOT_CACHED: Final = _NotCached.NOT_CACHED
# A digest whose record the gateway cannot read (a key of another type, fields it never
# writes so): the key cannot be used, which is neither "no such key" nor a store outage.
UNREADABLE: Final = _Unreadable.UNREADABLE
# What the store answered for a digest: the key, None for "no such key", or UNREADABLE.
StoredAnswer: TypeAlias = ApiKey | Literal[_Unreadable.UNREADABLE] | None
# A cached answer: a StoredAnswer, or NOT_CACHED.
CachedAnswer: TypeAlias = StoredAnswer | Literal[_NotCached.NOT_CACHED]


class KeyCache:
    """What the store answered for recent digests: found for 30 s, not found for 5 s.

    An LRU of bounded size, so a flood of made-up keys evicts entries instead
    of growing memory. The clock is injected so that tests can move time.
    """

    def __init__(
        self,
        *,
        found_ttl_s: float = FOUND_TTL_S,
        missing_ttl_s: float = MISSING_TTL_S,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._missing_ttl_s = missing_ttl_s
        self.found_ttl_s = found_ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, StoredAnswer]] = OrderedDict()
        # Bumped by every revocation: a lookup that started before one must not
        # cache what it read, or a revoked key could come back for 30 s.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> CachedAnswer:
        """The key, None for a key known not to exist, UNREADABLE, or NOT_CACHED."""
        entry = self._entries.get(digest)
        if entry is None:
            return NOT_CACHED
        expires_at, key = entry
        if expires_at <= self._clock():
            del self._entries[digest]
            return NOT_CACHED
        self._entries.move_to_end(digest)
        return key

    def put(self, digest: bytes, key: StoredAnswer, generation: int) -> None:
        """Remember an answer read when the cache was at ``generation``; an unreadable
        record as briefly as a missing key, so that one moved away or mended counts soon."""
        if generation != self.generation:
            return
        ttl = self.found_ttl_s if isinstance(key, ApiKey) else self._missing_ttl_s
        self._entries[digest] = (self._clock() + ttl, key)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, digest: bytes) -> None:
        self._entries.pop(digest, None)
        self.generation += 1

    def clear(self) -> None:
        """Forget every answer: revocations may have been missed."""
        self._entries.clear()
        self.generation += 1
