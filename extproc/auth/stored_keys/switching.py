"""Disabling and enabling a stored key: refused for a while, then let back in, same id.

Before, the only way to stop a run-time key was a revoke, which retires its id for the
usage rollups' retention: a key suspended while its holder's traffic was looked into
could never come back, and its holder's next key (under another id) split every report
by ``api_key`` in two. A disabled key keeps its id, identity, secret, expiry, usage and
quotas; its requests get 401 ``API key '<id>' is disabled``, as a config key's with
``enabled: false``; enabling it lets the same secret in again.

The record the id names gets ``enabled``, and so does the old record of a rotation still
in its grace (a disabled key's old secret must not keep working), each only while it is
still that key's record in that state (``stored_key_enabled.lua``); then every process
forgets what it cached of both (the revocation notice), so the change is in force at
once everywhere. A rotation that read the key before reads ``enabled`` again once it has
marked the old record rotated out, and carries it into its new record, as it does a
renewal's expiry.
"""

from __future__ import annotations

import dataclasses

from extproc.auth.stored_keys.errors import KeyCreateConflictError, UnreadableRecordError
from extproc.auth.stored_keys.key_ids import named_record
from extproc.auth.stored_keys.key_store import CURRENT, PREVIOUS, KeyStore
from extproc.auth.stored_keys.listing import old_secret_ends
from extproc.auth.stored_keys.records import StoredKey, from_fields, previous


async def set_enabled(store: KeyStore, key_id: str, enabled: bool) -> tuple[StoredKey, bool]:
    """Turn a stored key on or off, its secret and terms unchanged; the key as it is
    now, and whether it was enabled before. A revoked key's id names no key
    (``UnknownKeyIdError``): its retirement is not undone."""
    doing = "enabled" if enabled else "disabled"
    named = await named_record(store, key_id, doing)
    digest_hex, stored = named.digest_hex, named.stored
    if not await store.set_enabled(digest_hex, key_id, enabled, CURRENT):
        raise KeyCreateConflictError(
            f"API key {key_id!r} was revoked or rotated while it was being {doing}; it was"
            f" not changed: list the keys, then run it again"
        )
    await _forget(store, key_id, digest_hex, doing)
    older = previous(named.record)
    if older is not None and await store.set_enabled(older, key_id, enabled, PREVIOUS):
        # The old secret of a rotation in its grace follows its key.
        await _forget(store, key_id, older, doing)
    changed = StoredKey(
        dataclasses.replace(stored.key, enabled=enabled),
        created_at=stored.created_at,
        previous_expires_at=await _old_secret_until(store, older),
    )
    return changed, stored.key.enabled


async def _old_secret_until(store: KeyStore, older: str | None) -> float:
    """When the old secret of a rotation stops (0: none works now), as a listing says."""
    if older is None:
        return 0.0
    try:
        old = from_fields(await store.client.hgetall(store.record_key(older)))
    except UnreadableRecordError:
        return 0.0
    return 0.0 if old is None else old_secret_ends(old, store.clock())


async def _forget(store: KeyStore, key_id: str, digest_hex: str, doing: str) -> None:
    """Every process reads the record again on its next request with the secret: a key
    cached as it was would be let in (or refused) for up to 30 s more."""
    store.cache.forget(bytes.fromhex(digest_hex))
    await store.announce(key_id, digest_hex, doing)
