"""Listing the stored keys: every record under the prefix, read with SCAN, never KEYS.

A record the gateway cannot read (a key of another type, a hash with fields it never
writes so) is named and left out instead of failing the whole list. The old record of
a rotation still in its grace is no key of its own: it says how long the old secret of
the key that names it still works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from extproc.auth.stored_keys.errors import UnreadableRecord, UnreadableRecordError
from extproc.auth.stored_keys.key_store import SCAN_COUNT, KeyStore
from extproc.auth.stored_keys.records import (
    ANOTHER_TYPE,
    WRITTEN,
    StoredKey,
    digest_in,
    field,
    from_fields,
    previous,
    shown_name,
)
from extproc.store.connection import of_another_type


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
    if not names:
        return StoredKeyList([], [])
    async with store.client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        # Each answer on its own: a WRONGTYPE is about one key, not the store.
        records = await pipe.execute(raise_on_error=False)
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
    now = store.clock()
    keys = [
        dataclasses.replace(stored, previous_expires_at=old_secret_ends(replaced[older], now))
        if older in replaced
        else stored
        for stored, older in found
    ]
    # A rotated-out record no key names is the key of a rotation cut short: listed.
    named = {older for _, older in found}
    keys += [stored for digest, stored in replaced.items() if digest not in named]
    return StoredKeyList(
        sorted(keys, key=lambda stored: stored.key.id),
        sorted(unreadable, key=lambda record: record.key),
    )


def old_secret_ends(old: StoredKey, now: float) -> float:
    """When a rotated-out secret stops: its grace's end, or the key's expiry if sooner (a
    renewal may have brought it forward); 0 once it has stopped.

    The record itself stays until its grace's end, so an old secret that stopped with
    its key (the key expired, or a renewal brought its expiry forward) was listed until
    then with a past ``previous_expires_at``, as if it still worked, beside a key whose
    status said ``active``."""
    ends = old.usable_key().expires_at or old.secret_expires_at
    return ends if ends > now else 0.0
