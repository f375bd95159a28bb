"""Listing the stored keys: every record under the prefix, read with SCAN, never KEYS.

A record the gateway cannot read (a key of another type, a hash with fields it never
writes so) is named and left out instead of failing the whole list. The old record of
a rotation still in its grace is no key of its own: it says how long the old secret of
the key that names it still works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extproc.auth.stored_keys.errors import UnreadableRecord, UnreadableRecordError
from extproc.auth.stored_keys.key_store import SCAN_COUNT, KeyStore
from extproc.auth.stored_keys.records import (
    ANOTHER_TYPE,
    DIGEST_HEX,
    WRITTEN,
    StoredKey,
    digest_in,
    field,
    from_fields,
    previous,
    shown_name,
)
from extproc.store.connection import of_another_type
from extproc.store.scan_pages import ScanBatch, ScanPosition, scan_batch


@dataclass(slots=True)
class StoredKeyList:
    keys: list[StoredKey]
    # Empty when every record under the prefix was read.
    unreadable: list[UnreadableRecord]


async def listing(store: KeyStore) -> StoredKeyList:
    """Every stored key, by id, and the records under the prefix that could not be read.

    SCAN, never KEYS: the store serves requests meanwhile. A key of another type (a
    person's SET, another program's) or a hash with fields the gateway never writes so
    is named and left out: before, it failed the whole list as a store outage
    ("the store did not answer"), or as an internal error."""
    pattern = store.records_pattern()
    names = [name async for name in store.client.scan_iter(match=pattern, count=SCAN_COUNT)]
    found = await read_records(store, names)
    return StoredKeyList(
        sorted(found.keys, key=lambda stored: stored.key.id),
        sorted(found.unreadable, key=lambda record: record.key),
    )


async def listing_batch(store: KeyStore, at: ScanPosition) -> ScanBatch:
    """The record names one SCAN call gives from ``at`` (a page of a paged listing reads
    some or all of them with ``read_records``)."""
    return await scan_batch(store.client, at, store.records_pattern(), SCAN_COUNT)


async def read_records(store: KeyStore, names: Sequence[bytes | str]) -> StoredKeyList:
    """The keys of the records named, and those of them that could not be read.

    A page of a listing meets some records without the others of the same key: the old
    record of a rotation the key names (read here when the page has not met it), or an
    old record met without its key (left out when its id names another record, which
    lists it; listed as the key of a rotation cut short when its id still names it)."""
    if not names:
        return StoredKeyList([], [])
    records = await _hashes(store, names)
    found: list[tuple[StoredKey, str | None]] = []
    unreadable: list[UnreadableRecord] = []
    # The old records of rotations still in their grace, by digest: not keys of their
    # own, but how long the old secret of the key that names them still works.
    replaced: dict[str, StoredKey] = {}
    for name, record in zip(names, records, strict=True):
        shown = shown_name(name)
        if of_another_type(record):
            unreadable.append(UnreadableRecord(shown, ANOTHER_TYPE + WRITTEN))
            continue
        try:
            stored = from_fields(record)
        except UnreadableRecordError as exc:
            unreadable.append(UnreadableRecord(shown, f"{exc}{WRITTEN}"))
            continue
        if stored is not None and field(record, "rotated_at"):
            replaced[digest_in(name)] = stored
        elif stored is not None:
            found.append((stored, previous(record)))
        elif record:
            # A hash, but none the gateway wrote (every record has its id): an empty
            # answer is a key deleted since the scan.
            reason = "is a hash without the field 'id', not a stored API key's record"
            unreadable.append(UnreadableRecord(shown, reason + WRITTEN))
    named = {older for _, older in found if older is not None}
    replaced |= await _old_records(store, sorted(named - replaced.keys()))
    now = store.clock()
    keys = [
        dataclasses.replace(stored, previous_expires_at=old_secret_ends(replaced[older], now))
        if older in replaced
        else stored
        for stored, older in found
    ]
    # A rotated-out record no key names is the key of a rotation cut short: listed.
    unnamed = {digest: stored for digest, stored in replaced.items() if digest not in named}
    keys += await _cut_short(store, unnamed)
    return StoredKeyList(keys, unreadable)


async def _hashes(store: KeyStore, names: Sequence[bytes | str]) -> list[Any]:
    """HGETALL of each name, in one round trip; a WRONGTYPE answers for its key alone."""
    async with store.client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        found: list[Any] = await pipe.execute(raise_on_error=False)
    return found


async def _old_records(store: KeyStore, digests: list[str]) -> dict[str, StoredKey]:
    """Of the old records named by the keys read, those still kept (the others' secrets
    have stopped), by digest."""
    if not digests:
        return {}
    records = await _hashes(store, [store.record_key(digest) for digest in digests])
    old: dict[str, StoredKey] = {}
    for digest, record in zip(digests, records, strict=True):
        if of_another_type(record) or not field(record, "rotated_at"):
            continue
        try:
            stored = from_fields(record)
        except UnreadableRecordError:
            # Named where a page meets it (a listing reaches every record).
            continue
        if stored is not None:
            old[digest] = stored
    return old


async def _cut_short(store: KeyStore, unnamed: dict[str, StoredKey]) -> list[StoredKey]:
    """Of old records no key read names, those whose id names no other record: the keys
    of rotations cut short (the others are listed by the key their id names)."""
    if not unnamed:
        return []
    digests = list(unnamed)
    async with store.client.pipeline(transaction=False) as pipe:
        for digest in digests:
            pipe.get(store.id_key(unnamed[digest].key.id))
        held = await pipe.execute(raise_on_error=False)
    listed = []
    for digest, names in zip(digests, held, strict=True):
        text = names.decode(errors="replace") if isinstance(names, bytes) else names
        if isinstance(text, str) and DIGEST_HEX.fullmatch(text) and text != digest:
            continue
        listed.append(unnamed[digest])
    return listed


def old_secret_ends(old: StoredKey, now: float) -> float:
    """When a rotated-out secret stops: its grace's end, or the key's expiry if sooner (a
    renewal may have brought it forward); 0 once it has stopped.

    The record itself stays until its grace's end, so an old secret that stopped with
    its key (the key expired, or a renewal brought its expiry forward) was listed until
    then with a past ``previous_expires_at``, as if it still worked, beside a key whose
    status said ``active``."""
    ends = old.usable_key().expires_at or old.secret_expires_at
    return ends if ends > now else 0.0
