"""Revoking a stored key: delete its record (and a rotated-out secret's), retire its id.

The record goes first: once it is gone the secret no longer works anywhere (once the
caches forget it, which the revoke announces), even if retiring the id then fails. A
revoke that finds the id of a create in flight without its record leaves both alone;
one whose caller hangs up after the record's delete is sent still finishes. An id key
a person or another program wrote over is no dead end: the key is found by the ``id``
field of its record.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import ResponseError

from extproc.auth.stored_keys.errors import (
    DamagedIdKeyError,
    RevokedUnreadableRecordError,
    UnknownKeyIdError,
    UnreadableKeyIdError,
    UnreadableRecordError,
)
from extproc.auth.stored_keys.key_ids import named_digest, retired_marker
from extproc.auth.stored_keys.key_store import RETIRE, SCAN_COUNT, KeyStore
from extproc.auth.stored_keys.records import (
    ANOTHER_TYPE,
    BY_OTHERS,
    RECORD_DIGEST,
    WRITTEN,
    StoredKey,
    from_fields,
    previous,
    shown_name,
)
from extproc.store.connection import of_another_type

log = logging.getLogger(__name__)


async def revoke(store: KeyStore, key_id: str) -> StoredKey:
    """Delete a stored key; from now on this process refuses its secret."""
    try:
        id_key, digest_hex, expires_in_ms = await named_digest(store, key_id, "revoked")
    except DamagedIdKeyError as damaged:
        return await _revoke_found(store, key_id, damaged.id_key, damaged.reason)
    record_key = store.record_key(digest_hex)
    # Read after the expiry: a create makes its id permanent only once its record is
    # written, so a permanent id whose record is missing lost it for good.
    unreadable: str | None = None
    older: str | None = None
    try:
        record = await store.client.hgetall(record_key)
        stored = from_fields(record)
        older = previous(record)
    except (ResponseError, UnreadableRecordError) as exc:
        # A record a person or another program wrote over: the id names it, so it is
        # this key's, and revoked means refused. Deleted like a readable one: left,
        # it would be refused today, and the key working again once someone "mends"
        # the record. Before, a key of another type failed the revoke as UNAVAILABLE.
        unreadable = ANOTHER_TYPE if of_another_type(exc) else str(exc)
        stored = None
    if stored is None and unreadable is None and expires_in_ms != -1:
        # A create in flight that has not written its record yet: the key does not
        # exist yet, and deleting its id now would leave the key it is about to
        # write without one.
        raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
    # Shielded: a caller that hangs up once the record's delete is sent must not
    # leave the other processes accepting the key for their cache's lifetime, nor
    # the id taken by a key that no longer exists.
    await asyncio.shield(_delete_key(store, key_id, id_key, record_key, digest_hex, older))
    if unreadable is not None:
        raise RevokedUnreadableRecordError(
            f"the record of API key {key_id!r} ({shown_name(record_key)}) {unreadable}"
            f"{BY_OTHERS}: it was deleted and the key's id retired, so the key is refused"
            " everywhere, but what it held is not known"
        )
    if stored is None:
        # An id whose record was never written (a create that failed half-way).
        raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
    return stored


async def _revoke_found(store: KeyStore, key_id: str, id_key: str, reason: str) -> StoredKey:
    """Revoke a key whose id key a person or another program wrote over, found by
    the ``id`` field of its record.

    The id key names no record, but the record still names its id, and its secret
    still works: before, the revoke was refused and the operator left to search
    the records by hand. Rare, so a SCAN here costs nothing on any other path; SCAN
    and a pipelined HGET per batch, never KEYS, so the store serves requests
    meanwhile. Every record with the id is deleted (a copied one too: each is this
    key's), and then the id key, which held no key's digest, is retired as any revoked
    key's id is: left as it was, it would refuse every create of the id with no end.
    """
    found = await _records_with_id(store, key_id)
    if not found:
        raise UnreadableKeyIdError(
            f"no API key with id {key_id!r} was created at run time (no record has it),"
            f" but {id_key} {reason}{WRITTEN}: a key with this id cannot be created"
            " until then"
        )
    stored: StoredKey | None = None
    unreadable: list[str] = []
    for record_key, digest_hex in found:
        try:
            current = from_fields(await store.client.hgetall(record_key))
        except (ResponseError, UnreadableRecordError) as exc:
            unreadable.append(f"{shown_name(record_key)} {exc}")
            current = None
        stored = stored or current
        await asyncio.shield(_delete_record(store, key_id, record_key, digest_hex))
    # Retired as any revoked key's id is (``_delete_key``), written whole: it held no
    # key's digest, so no create can have claimed it meanwhile.
    marker = retired_marker(store, found[0][1])
    await store.client.set(id_key, marker, px=store.retire_ids_for_ms)
    log.warning(
        "API key %r revoked, found by its record: its id key %s %s%s; the id was"
        " retired with the key",
        key_id, id_key, reason, BY_OTHERS,
    )  # fmt: skip
    if unreadable or stored is None:
        raise RevokedUnreadableRecordError(
            f"API key {key_id!r} was found by its record ({id_key} {reason}{BY_OTHERS})"
            f" and deleted, so the key is refused everywhere, but what it held is not"
            f" known: {'; '.join(unreadable) or 'its record was gone'}"
        )
    return stored


async def _records_with_id(store: KeyStore, key_id: str) -> list[tuple[str, str]]:
    """The records (store key, digest) whose ``id`` field is ``key_id``, read a SCAN
    batch at a time."""
    found: list[tuple[str, str]] = []
    batch: list[Any] = []
    async for name in store.client.scan_iter(match=store.records_pattern(), count=SCAN_COUNT):
        batch.append(name)
        if len(batch) >= SCAN_COUNT:
            found += await _with_id(store, batch, key_id)
            batch = []
    if batch:
        found += await _with_id(store, batch, key_id)
    return found


async def _with_id(store: KeyStore, names: list[Any], key_id: str) -> list[tuple[str, str]]:
    async with store.client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(name, "id")
        # A record of another type answers WRONGTYPE: it names no id.
        ids = await pipe.execute(raise_on_error=False)
    found: list[tuple[str, str]] = []
    for name, found_id in zip(names, ids, strict=True):
        text = name.decode(errors="replace") if isinstance(name, bytes) else name
        digest = RECORD_DIGEST.search(text)
        if found_id == key_id.encode() and digest is not None:
            found.append((text, digest.group(1)))
    return found


async def _delete_record(store: KeyStore, key_id: str, record_key: str, digest_hex: str) -> None:
    await store.client.delete(record_key)
    store.cache.forget(bytes.fromhex(digest_hex))
    await store.announce(key_id, digest_hex)


async def _delete_key(
    store: KeyStore,
    key_id: str,
    id_key: str,
    record_key: str,
    digest_hex: str,
    older: str | None,
) -> None:
    # The record first: once it is gone the secret no longer works anywhere
    # (once the caches forget it), even if freeing the id then fails.
    await _delete_record(store, key_id, record_key, digest_hex)
    if older is not None:
        # The old secret of a rotation still in its grace: revoked with its key.
        await store.end_secret(key_id, older)
    # Retired, not freed (see key_ids), and only while it names the key revoked:
    # another revoke of the same key may have retired it already.
    marker = retired_marker(store, digest_hex)
    await store.id_named(id_key, digest_hex, RETIRE, marker, str(store.retire_ids_for_ms))
