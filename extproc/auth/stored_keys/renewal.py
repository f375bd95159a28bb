"""Renewing a stored key: a new expiry under the same id, identity and secret.

An expired key could not be given a new life under its id: a rotation keeps the key's
expiry (so it refuses an expired key), and a revoke retires the id, so the operator had
to create a key under another id, and every usage report split its holder in two. A
renewal writes the new ``expires_at`` into the record the id names, and into the old
record of a rotation still in its grace (whose secret then stops at the earlier of its
grace's end and the key's new expiry), then makes every process forget what it cached
of both, with the revocation notice: a renewed key works at once everywhere, as a
revoked one is refused at once. An old secret that has already stopped (with its key's
expiry, or at an earlier renewal's) is left stopped: before, renewing again brought back
for the rest of its grace a secret the operator had replaced, a leaked one say.

The record is only written while it is still the key's current record
(``stored_key_expiry.lua``): a revoke that deleted it meanwhile is not undone by a hash
of one field, and a rotation that rotated it out meanwhile has read (or reads again
once it has marked the record) the new expiry, which its new record carries on.
"""

from __future__ import annotations

import dataclasses

from redis.exceptions import ResponseError

from extproc.auth.stored_keys.errors import (
    KeyCreateConflictError,
    UnknownKeyIdError,
    UnreadableRecordError,
)
from extproc.auth.stored_keys.key_ids import named_digest
from extproc.auth.stored_keys.key_store import CURRENT, PREVIOUS, KeyStore
from extproc.auth.stored_keys.records import (
    ANOTHER_TYPE,
    WRITTEN,
    StoredKey,
    from_fields,
    previous,
    shown_name,
)
from extproc.store.connection import of_another_type


async def renew(store: KeyStore, key_id: str, expires_at: float) -> tuple[StoredKey, float]:
    """Give a stored key the expiry ``expires_at`` (unix seconds), its secret unchanged;
    the key as renewed, and the expiry it had (0: none). A revoked key's id names no key
    (``UnknownKeyIdError``): its retirement is not undone."""
    _, digest_hex, expires_in_ms = await named_digest(store, key_id, "renewed")
    record_key = store.record_key(digest_hex)
    try:
        record = await store.client.hgetall(record_key)
    except ResponseError as exc:
        if of_another_type(exc):
            shown = shown_name(record_key)
            raise UnreadableRecordError(
                f"API key {key_id!r} cannot be renewed: its record {shown} {ANOTHER_TYPE}{WRITTEN}"
            ) from None
        raise
    try:
        stored = from_fields(record)
    except UnreadableRecordError as exc:
        raise UnreadableRecordError(f"API key {key_id!r} cannot be renewed: {exc}") from None
    if stored is None or expires_in_ms != -1:
        # No record: a create in flight, or one that failed half-way.
        raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
    if not await store.set_expiry(digest_hex, key_id, expires_at, CURRENT):
        raise KeyCreateConflictError(
            f"API key {key_id!r} was revoked or rotated while it was being renewed; its"
            " expiry was not changed: list the keys, then renew again"
        )
    await _forget(store, key_id, digest_hex)
    older = previous(record)
    old_secret_until = 0.0
    if older is not None and await store.set_expiry(older, key_id, expires_at, PREVIOUS):
        # The old secret of a rotation in its grace: never past the key's new expiry.
        await _forget(store, key_id, older)
        grace_ends = await store.client.hget(store.record_key(older), "secret_expires_at")
        old_secret_until = min(float(grace_ends or 0.0), expires_at)
    renewed = StoredKey(
        dataclasses.replace(stored.key, expires_at=expires_at),
        created_at=stored.created_at,
        previous_expires_at=old_secret_until,
    )
    return renewed, stored.key.expires_at or 0.0


async def _forget(store: KeyStore, key_id: str, digest_hex: str) -> None:
    """Every process reads the record again on its next request with the secret: an
    expired key cached as expired would be refused for up to 30 s more."""
    store.cache.forget(bytes.fromhex(digest_hex))
    await store.announce(key_id, digest_hex, "renewed")
