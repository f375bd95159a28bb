"""``StoredKeys``: the keys created at run time in one store, as the gateway uses them.

One object per store: the management API creates, rotates, renews, disables and enables,
lists and revokes keys
through it, the authentication stage looks keys up through it, and it listens for
revocations made by any process sharing the store. Each operation lives in a module
of its own; this class holds what they share.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from extproc.auth.api_keys import ApiKey
from extproc.auth.key_revocations import RevocationListener
from extproc.auth.stored_keys import creation, listing, renewal, revocation, rotation, switching
from extproc.auth.stored_keys.cache import CachedAnswer, KeyCache, StoredAnswer
from extproc.auth.stored_keys.errors import UnreadableRecordsError
from extproc.auth.stored_keys.key_ids import retired
from extproc.auth.stored_keys.key_store import RETIRED_FOR_S, KeyStore
from extproc.auth.stored_keys.listing import StoredKeyList
from extproc.auth.stored_keys.lookup import KeyLookup
from extproc.auth.stored_keys.records import StoredKey
from extproc.store.scan_pages import ScanBatch, ScanPosition


class StoredKeys:
    """The keys created at run time in one store, and this process's cache of lookups."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        cache: KeyCache | None = None,
        clock: Callable[[], float] = time.time,
        retire_ids_for_s: float = RETIRED_FOR_S,
    ) -> None:
        self.cache = cache if cache is not None else KeyCache()
        self._store = KeyStore(client, key_prefix, self.cache, clock, retire_ids_for_s)
        self._lookup = KeyLookup(self._store)
        self.listener = RevocationListener(client, key_prefix, self.cache)

    def start(self) -> None:
        """Listen for revocations made by any process sharing the store."""
        self.listener.start()

    async def close(self) -> None:
        await self.listener.close()

    def cached(self, digest: bytes) -> CachedAnswer:
        """The request path's answer without I/O, when a recent lookup gave one."""
        return self.cache.get(digest)

    async def lookup(self, digest: bytes) -> StoredAnswer:
        """The key with this digest, None when there is none, UNREADABLE when its record
        cannot be read (``KeyLookup.lookup``: one shared, cached read)."""
        return await self._lookup.lookup(digest)

    async def create(self, key: ApiKey, *, continue_usage: bool = False) -> tuple[str, StoredKey]:
        """Store a new key under a fresh secret; the secret is returned here and nowhere
        else. An id the usage rollups still bill is refused unless ``continue_usage``."""
        return await creation.create(self._store, key, continue_usage=continue_usage)

    async def rotate(self, key_id: str, grace_s: float) -> tuple[str, StoredKey, float]:
        """A new secret for a stored key, same id and identity; the old secret works
        ``grace_s`` more. The new secret (returned here only), the key, and when the
        old secret stops working."""
        return await rotation.rotate(self._store, key_id, grace_s)

    async def renew(
        self, key_id: str, expires_at: float, *, rotate: bool = False, grace_s: float = 0.0
    ) -> tuple[str | None, StoredKey, float, float]:
        """A new expiry for a stored key (0: none), expired or not (a revoked one has no
        key left): the new secret (only with ``rotate``: None keeps the secret), the key,
        when the old secret stops working (with ``rotate``) and the expiry the key had
        (0: none)."""
        if rotate:
            return await rotation.rotate_with_expiry(self._store, key_id, grace_s, expires_at)
        stored, before = await renewal.renew(self._store, key_id, expires_at)
        return None, stored, 0.0, before

    async def set_enabled(self, key_id: str, enabled: bool) -> tuple[StoredKey, bool]:
        """Disable a stored key (refused, its id kept) or enable it again: the key as it
        is now, and whether it was enabled before."""
        return await switching.set_enabled(self._store, key_id, enabled)

    async def revoke(self, key_id: str) -> StoredKey:
        """Delete a stored key; from now on this process refuses its secret."""
        return await revocation.revoke(self._store, key_id)

    async def list(self) -> builtins.list[StoredKey]:
        """The keys of ``listing``; ``UnreadableRecordsError`` when a record could not be read."""
        found = await self.listing()
        if found.unreadable:
            raise UnreadableRecordsError(found.unreadable)
        return found.keys

    async def listing(self) -> StoredKeyList:
        """Every stored key, by id, and the records under the prefix that could not be read."""
        return await listing.listing(self._store)

    async def listing_batch(self, at: ScanPosition) -> ScanBatch:
        """The names of stored keys' records one SCAN call gives from ``at``: a page of a
        paged listing reads them with ``read_records``."""
        return await listing.listing_batch(self._store, at)

    async def read_records(self, names: Sequence[str]) -> StoredKeyList:
        """The keys of the records named (from ``listing_batch``), and those of them that
        could not be read."""
        return await listing.read_records(self._store, names)

    async def retired(self, key_ids: Iterable[str]) -> dict[str, float]:
        """Of ``key_ids``, those retired by a revoke, with when (one pipelined read)."""
        return await retired(self._store, key_ids)
