"""``KeyStore``: one store's stored-key names and the few writes every operation shares.

It owns the store keys' names (a record by digest, an id, SCAN's pattern of every
record), the guarded change of an id (``stored_key_id.lua``), of a record's expiry
(``stored_key_expiry.lua``) and of its ``enabled`` (``stored_key_enabled.lua``), and
making every process forget what it cached of a secret that stops working or whose
terms changed (this process's cache, then the pub/sub notice). The operations (create,
rotate, renew, disable and enable, revoke, list) are functions of their own modules
that take one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from extproc.auth.key_revocations import announce
from extproc.auth.stored_keys.cache import KeyCache
from extproc.store.scripts import register

log = logging.getLogger(__name__)

# How long a create's claim on its id (and its record) lasts before the create makes them
# permanent: a create takes milliseconds; one whose process died leaves nothing behind.
CLAIM_TTL_MS = 60_000
# How long a revoked key's id stays retired when the caller does not say: as long as
# the usage rollups are kept by default (store.usage_retention_days, 400 days).
RETIRED_FOR_S = 400 * 86400.0
# Keys are scanned in batches of about this many per SCAN call (a hint to Redis).
SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
# What stored_key_id.lua does with an id that still names the caller's key.
KEEP = "keep"
FREE = "free"
RETIRE = "retire"
SWAP = "swap"
# Which record stored_key_expiry.lua changes: the one the id names, or a rotated-out one.
CURRENT = "current"
PREVIOUS = "previous"


class KeyStore:
    """The store's client, the key prefix, this process's cache and clock."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        cache: KeyCache,
        clock: Callable[[], float] = time.time,
        retire_ids_for_s: float = RETIRED_FOR_S,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.cache = cache
        self.clock = clock
        self.retire_ids_for_ms = max(1, round(retire_ids_for_s * 1000))
        self._id_script = register(client, "stored_key_id")
        self._expiry_script = register(client, "stored_key_expiry")
        self._enabled_script = register(client, "stored_key_enabled")
        self._shorten_script = register(client, "stored_key_shorten")

    def record_key(self, digest_hex: str) -> str:
        return f"{self.prefix}key:{{{digest_hex}}}"

    def id_key(self, key_id: str) -> str:
        return f"{self.prefix}keyid:{key_id}"

    def records_pattern(self) -> str:
        """SCAN's pattern of every record under the prefix (its glob characters escaped)."""
        return _GLOB_SPECIAL.sub(r"\\\1", f"{self.prefix}key:{{") + "*"

    async def id_named(self, id_key: str, digest_hex: str, action: str, *more: str) -> bool:
        """Keep (make permanent), free (delete) or retire the id only while it names the
        key with ``digest_hex`` (stored_key_id.lua); whether it did."""
        args = [digest_hex, action, *more]
        named = await self._id_script(keys=[id_key], args=args, client=self.client)
        return bool(named)

    async def set_expiry(
        self, digest_hex: str, key_id: str, expires_at: float, which: str = CURRENT
    ) -> bool:
        """Write a record's ``expires_at`` only while it is still ``key_id``'s record, the
        one its id names (``CURRENT``) or one rotated out (``PREVIOUS``) whose secret has
        not stopped by now (stored_key_expiry.lua); whether it did."""
        args = [key_id, repr(expires_at), which, repr(self.clock())]
        record_key = self.record_key(digest_hex)
        changed = await self._expiry_script(keys=[record_key], args=args, client=self.client)
        return bool(changed)

    async def set_enabled(
        self, digest_hex: str, key_id: str, enabled: bool, which: str = CURRENT
    ) -> bool:
        """Write a record's ``enabled`` only while it is still ``key_id``'s record, the one
        its id names (``CURRENT``) or one rotated out (``PREVIOUS``)
        (stored_key_enabled.lua); whether it did."""
        args = [key_id, "1" if enabled else "0", which]
        record_key = self.record_key(digest_hex)
        changed = await self._enabled_script(keys=[record_key], args=args, client=self.client)
        return bool(changed)

    async def shorten(
        self, digest_hex: str, key_id: str, until: float, now: float, forgotten_ms: int
    ) -> bool:
        """Mark a rotated-out record (its secret works until ``until``, the store forgets
        it at ``forgotten_ms``) only while it is still ``key_id``'s record
        (stored_key_shorten.lua); whether it did."""
        args = [key_id, repr(until), repr(now), str(forgotten_ms)]
        record_key = self.record_key(digest_hex)
        changed = await self._shorten_script(keys=[record_key], args=args, client=self.client)
        return bool(changed)

    async def end_secret(self, key_id: str, digest_hex: str) -> None:
        """Stop a key's old secret now, on every process."""
        await self.client.delete(self.record_key(digest_hex))
        self.cache.forget(bytes.fromhex(digest_hex))
        await self.announce(key_id, digest_hex)

    async def announce(self, key_id: str, digest_hex: str, done: str = "revoked") -> None:
        """Make the other processes forget what they cached of the key; the store already
        holds its new state (``done`` to it: revoked, renewed)."""
        try:
            await announce(self.client, self.prefix, digest_hex)
        except Exception as exc:
            # Failing the change here would only hide that the store already holds it.
            log.warning(
                "API key %r %s, but the notice to other gateway processes failed (%s): "
                "they apply it within %g s",
                key_id, done, type(exc).__name__, self.cache.found_ttl_s,
            )  # fmt: skip
