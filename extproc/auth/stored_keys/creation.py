"""Creating a stored key: claim its id, write its record, then make both permanent.

A create claims the id first (``SET NX``) and writes the record, both expiring in
``CLAIM_TTL_MS``, then makes them permanent, the id first: an id without an expiry is a
finished create. An id is only ever made permanent or freed while it still names this
create's key, so a create whose claim expired, or that a revoke took back, never keeps
or frees an id that another create holds by then.
"""

from __future__ import annotations

import asyncio

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.stored_keys.errors import (
    KeyCreateConflictError,
    KeyIdTakenError,
    KeyIdUsedError,
)
from extproc.auth.stored_keys.key_ids import id_used, taken, used_until
from extproc.auth.stored_keys.key_store import CLAIM_TTL_MS, FREE, KEEP, KeyStore
from extproc.auth.stored_keys.records import StoredKey, new_secret, to_fields


async def create(
    store: KeyStore, key: ApiKey, *, continue_usage: bool = False
) -> tuple[str, StoredKey]:
    """Store a new key under a fresh secret; the secret is returned here and nowhere else.

    ``KeyIdUsedError`` when no key has the id but the usage rollups still bill usage
    under it, unless ``continue_usage`` (the same holder's key, meant to carry it on)."""
    secret = new_secret()
    digest_hex = key_digest(secret).hex()
    stored = StoredKey(key, created_at=store.clock())
    id_key = store.id_key(key.id)
    record_key = store.record_key(digest_hex)
    try:
        if not await store.client.set(id_key, digest_hex, nx=True, px=CLAIM_TTL_MS):
            raise await taken(store, key.id, id_key)
        if not continue_usage:
            # Checked once the id is claimed: a key that has it, or had it until revoked,
            # is named as such above, not as usage.
            await _refuse_used(store, key.id, id_key, digest_hex)
        # One slot: the record and its expiry in one transaction.
        async with store.client.pipeline(transaction=True) as pipe:
            pipe.hset(record_key, mapping=to_fields(stored))
            pipe.pexpire(record_key, CLAIM_TTL_MS)
            await pipe.execute()
        # Only while the id is still this create's: a claim that expired (the store
        # stalled) may be another create's by now, or gone with a revoke.
        claimed = await store.id_named(id_key, digest_hex, KEEP)
        if claimed and not await store.client.persist(record_key):
            # A revoke took the record after the id was made permanent (or the store
            # stalled past its expiry): it is gone, and so goes its id (the revoke
            # frees it too, only while it names this key).
            await asyncio.shield(store.id_named(id_key, digest_hex, FREE))
            raise KeyCreateConflictError(_revoked_while_created(key.id))
    except (KeyIdTakenError, KeyCreateConflictError):
        raise
    except BaseException:
        # A key that was never stored must not keep its id taken, nor one whose
        # create was cancelled (the caller hung up: nobody will get its secret), nor
        # a claim whose answer was lost (it may have been taken all the same).
        # Shielded, so that a second cancellation cannot cut the clean-up short.
        await asyncio.shield(_undo_create(store, record_key, id_key, digest_hex))
        raise
    if not claimed:
        # The id is gone: revoked meanwhile (or its claim expired, the store stalled,
        # and the id may be another create's now): only the record is this one's,
        # and the id only if the revoke retired it for this very key.
        await asyncio.shield(store.client.delete(record_key))
        await asyncio.shield(store.id_named(id_key, digest_hex, FREE))
        raise KeyCreateConflictError(_revoked_while_created(key.id))
    return secret, stored


async def _refuse_used(store: KeyStore, key_id: str, id_key: str, digest_hex: str) -> None:
    used = await used_until(store, key_id)
    if used is not None:
        await asyncio.shield(store.id_named(id_key, digest_hex, FREE))
        raise KeyIdUsedError(id_used(key_id, used))


async def _undo_create(store: KeyStore, record_key: str, id_key: str, digest_hex: str) -> None:
    # The write may have gone through all the same (its answer lost): its record
    # goes first, so that no key is left that its id cannot revoke (nobody has its
    # secret anyway), and the id stays taken, pointing at it, if that delete fails.
    # The id only while it is this create's: another create may hold it by now.
    await store.client.delete(record_key)
    await store.id_named(id_key, digest_hex, FREE)


def _revoked_while_created(key_id: str) -> str:
    return (
        f"API key {key_id!r} was revoked while it was being created; no key was made "
        "(its secret was never handed out): create it again"
    )
