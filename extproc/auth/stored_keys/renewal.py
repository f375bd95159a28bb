"""Renewing a stored key: a new expiry under the same id, identity and secret.

An expired key could not be given a new life under its id: a rotation keeps the key's
expiry (so it refuses an expired key), and a revoke retires the id, so the operator had
to create a key under another id, and every usage report split its holder in two. A
renewal writes the new ``expires_at`` into the record the id names, and into the old
record of a rotation still in its grace (whose secret then stops at the earlier of its
grace's end and the key's new expiry), then makes every process forget what it cached
of both, with the revocation notice: a renewed key works at once everywhere, as a
revoked one is refused at once. An expiry of 0 (the record's "never") removes the key's
expiry: the key then never expires again, and an old secret in its grace still stops at
its grace's end. An old secret that has already stopped (with its key's
expiry, or at an earlier renewal's) is left stopped: before, renewing again brought back
for the rest of its grace a secret the operator had replaced, a leaked one say.

The record is only written while it is still the key's current record
(``stored_key_expiry.lua``): a revoke that deleted it meanwhile is not undone by a hash
of one field, and a rotation that rotated it out meanwhile has read (or reads again
once it has marked the record) the new expiry, which its new record carries on.
"""

from __future__ import annotations

import dataclasses
import math

from extproc.auth.stored_keys.errors import KeyCreateConflictError
from extproc.auth.stored_keys.key_ids import named_record
from extproc.auth.stored_keys.key_store import CURRENT, PREVIOUS, KeyStore
from extproc.auth.stored_keys.records import StoredKey, previous


async def renew(store: KeyStore, key_id: str, expires_at: float) -> tuple[StoredKey, float]:
    """Give a stored key the expiry ``expires_at`` (unix seconds; 0: it never expires
    again), its secret unchanged; the key as renewed, and the expiry it had (0: none). A
    revoked key's id names no key (``UnknownKeyIdError``): its retirement is not undone."""
    named = await named_record(store, key_id, "renewed")
    digest_hex, stored = named.digest_hex, named.stored
    if not await store.set_expiry(digest_hex, key_id, expires_at, CURRENT):
        raise KeyCreateConflictError(
            f"API key {key_id!r} was revoked or rotated while it was being renewed; its"
            " expiry was not changed: list the keys, then renew again"
        )
    await _forget(store, key_id, digest_hex)
    older = previous(named.record)
    old_secret_until = 0.0
    if older is not None and await store.set_expiry(older, key_id, expires_at, PREVIOUS):
        # The old secret of a rotation in its grace: never past the key's new expiry.
        await _forget(store, key_id, older)
        grace_ends = await store.client.hget(store.record_key(older), "secret_expires_at")
        # A key that no longer expires leaves the old secret its grace's end alone.
        old_secret_until = min(float(grace_ends or 0.0), expires_at or math.inf)
    renewed = StoredKey(
        dataclasses.replace(stored.key, expires_at=expires_at or None),
        created_at=stored.created_at,
        previous_expires_at=old_secret_until,
    )
    return renewed, stored.key.expires_at or 0.0


async def _forget(store: KeyStore, key_id: str, digest_hex: str) -> None:
    """Every process reads the record again on its next request with the secret: an
    expired key cached as expired would be refused for up to 30 s more."""
    store.cache.forget(bytes.fromhex(digest_hex))
    await store.announce(key_id, digest_hex, "renewed")
