"""Rotating a stored key: a new secret under the same id, the old one kept for a grace.

The id stays, so the key's usage, quotas and rate limits carry on (a revoke and a create
could not: the id is retired). The new record names the old digest as ``previous``; the
old record gets ``secret_expires_at`` (the grace's end) and expires then; the id is
pointed at the new digest only while it still names the old one. A rotation cut short
by the store leaves the id naming the old record, whose ``expires_at`` is still the
key's own: running it again finishes it, never lengthening the old secret's grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

from extproc.auth.api_keys import key_digest
from extproc.auth.stored_keys.errors import KeyCreateConflictError, KeyExpiredError
from extproc.auth.stored_keys.key_ids import named_record
from extproc.auth.stored_keys.key_store import CLAIM_TTL_MS, SWAP, KeyStore
from extproc.auth.stored_keys.records import StoredKey, new_secret, previous, to_fields
from extproc.utc_moments import utc_moment

# The longest grace a rotation gives the old secret: a rotation is for a secret that
# must stop working; one meant to last is a second key.
MAX_GRACE_S = 30 * 86400.0


async def rotate(store: KeyStore, key_id: str, grace_s: float) -> tuple[str, StoredKey, float]:
    """A new secret for a stored key, same id and identity; the old secret works
    ``grace_s`` more. The new secret (returned here only), the key, and when the
    old secret stops working."""
    secret, stored, until, _ = await rotate_with_expiry(store, key_id, grace_s, None)
    return secret, stored, until


async def rotate_with_expiry(
    store: KeyStore, key_id: str, grace_s: float, expires_at: float | None
) -> tuple[str, StoredKey, float, float]:
    """``rotate``, the new secret given ``expires_at`` (a renewal, 0 removing the key's
    expiry; None: the key's own expiry), so that an expired key is rotated too; the old
    secret keeps its own expiry. Also the expiry the key had (0: none)."""
    named = await named_record(store, key_id, "rotated")
    id_key, old_hex, stored = named.id_key, named.digest_hex, named.stored
    old_key = store.record_key(old_hex)
    now = store.clock()
    ended = stored.key.expires_at
    if ended is not None and ended <= now and expires_at is None:
        # The new secret keeps the key's expiry: before, it was handed out expired, and
        # its holder met 401 "has expired" on the first request.
        raise KeyExpiredError(
            f"API key {key_id!r} expired at {utc_moment(ended)}: a rotation keeps the key's"
            " expiry, so a new secret would not work either; renew the key instead, with a"
            " new secret if it needs one (`extproc keys renew --id ... --expires ..."
            " --rotate`)"
        )
    old_terms = stored
    if expires_at is not None:
        stored = dataclasses.replace(
            stored, key=dataclasses.replace(stored.key, expires_at=expires_at or None)
        )
    secret = new_secret()
    new_hex = key_digest(secret).hex()
    new_key = store.record_key(new_hex)
    # Never longer than a rotation cut short (the id still names its old record) gave.
    until = min(now + grace_s, stored.secret_expires_at or math.inf)
    if expires_at:
        # A renewal bringing the key's end forward (a key that leaked) ends the old
        # secret by then too: its grace is a time to move over, never past the key's end.
        until = min(until, expires_at)
    older = previous(named.record)
    try:
        async with store.client.pipeline(transaction=True) as pipe:
            pipe.hset(new_key, mapping={**to_fields(stored), "previous": old_hex})
            pipe.pexpire(new_key, CLAIM_TTL_MS)
            await pipe.execute()
        if older is not None:
            # One old secret at a time: the one before, still in its grace, stops now.
            await store.end_secret(key_id, older)
        # A revoke that deleted the old record meanwhile: nothing to cut, the key is gone.
        if await _shorten(store, key_id, old_hex, now, until):
            stored = await _changed_meanwhile(store, old_key, new_key, stored, expires_at is None)
            swapped = await store.id_named(id_key, old_hex, SWAP, new_hex)
            if swapped and await store.client.persist(new_key):
                if until <= now:
                    await store.end_secret(key_id, old_hex)
                ends = min(until, old_terms.key.expires_at or until)
                return secret, stored, ends, old_terms.key.expires_at or 0.0
    except BaseException:
        # Never a record nobody will get the secret of, nor one its id does not name.
        await asyncio.shield(store.client.delete(new_key))
        raise
    await asyncio.shield(store.client.delete(new_key))
    raise KeyCreateConflictError(
        f"API key {key_id!r} was revoked or rotated while it was being rotated; no new"
        " secret was made (none was handed out): list the keys, then rotate again"
    )


async def _shorten(store: KeyStore, key_id: str, old_hex: str, now: float, until: float) -> bool:
    """Cut the old secret's life to the grace (or end it now), on every process; False
    when its record is no longer the key's (a revoke deleted it meanwhile)."""
    # With no grace the record stays a minute, refused: a rotation cut short before
    # the id names the new key can then be run again, reading the key from it.
    forgotten_ms = math.ceil(until * 1000) if until > now else math.ceil(now * 1000) + CLAIM_TTL_MS
    # The field refuses the secret ("has expired") where a cached record is read
    # again; the store forgets the record itself at the grace's end.
    if not await store.shorten(old_hex, key_id, until, now, forgotten_ms):
        return False
    store.cache.forget(bytes.fromhex(old_hex))
    await store.announce(key_id, old_hex)
    return True


async def _changed_meanwhile(
    store: KeyStore, old_key: str, new_key: str, stored: StoredKey, expiry: bool
) -> StoredKey:
    """The key with what a renewal (its expiry, when ``expiry``: a renewal's own rotation
    sets one) or a disable or enable gave the old record after this rotation read it.

    Those write only a record not rotated out (``stored_key_expiry.lua``,
    ``stored_key_enabled.lua``), and ``_shorten`` has just marked the old one so: what it
    holds now is final. Without this, the new record carried what was read before, and
    the change was lost (a key disabled during its rotation worked again)."""
    found_expiry, found_enabled = await store.client.hmget(old_key, ["expires_at", "enabled"])
    key = stored.key
    changed: dict[str, str] = {}
    if expiry and (float(found_expiry or 0.0) or None) != key.expires_at:
        key = dataclasses.replace(key, expires_at=float(found_expiry or 0.0) or None)
        changed["expires_at"] = repr(key.expires_at or 0.0)
    enabled = found_enabled in (None, b"1", "1")
    if enabled != key.enabled:
        key = dataclasses.replace(key, enabled=enabled)
        changed["enabled"] = "1" if enabled else "0"
    if not changed:
        return stored
    await store.client.hset(new_key, mapping=changed)
    return dataclasses.replace(stored, key=key)
