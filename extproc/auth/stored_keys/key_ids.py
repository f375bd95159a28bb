"""Ids: which key ``<prefix>keyid:<id>`` names (``named_digest``; ``named_record`` reads
its record too, for a rotation or a renewal), and the retirement of a revoked key's id.

A revoke retires the id rather than freeing it: the id key then holds
``revoked:<unix seconds>:<sha256 hex>`` for ``retire_ids_for_s`` (the usage rollups'
retention), and a create of that id is refused, so that usage reports, metrics and
quotas (all keyed by id) never count two holders' requests as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from extproc.auth.stored_keys.errors import (
    DamagedIdKeyError,
    KeyIdRetiredError,
    KeyIdTakenError,
    UnknownKeyIdError,
    UnreadableRecordError,
)
from extproc.auth.stored_keys.key_store import KeyStore
from extproc.auth.stored_keys.records import (
    ANOTHER_TYPE,
    DIGEST_HEX,
    WRITTEN,
    StoredKey,
    from_fields,
    shown_name,
)
from extproc.store import key_id_usage
from extproc.store.connection import of_another_type
from extproc.utc_moments import utc_moment

# What <prefix>keyid:<id> holds once its key is revoked: the marker, the unix time, and
# the revoked key's digest (so that only a create of that very key can free the id).
RETIRED = "revoked:"


def retired_marker(store: KeyStore, digest_hex: str) -> str:
    """What the id of the key with ``digest_hex`` holds once the key is revoked now."""
    return f"{RETIRED}{store.clock()!r}:{digest_hex}"


def revoked_at(held: object) -> float | None:
    """When the key an id named was revoked, if the id is retired (else None)."""
    text = held.decode(errors="replace") if isinstance(held, bytes) else held
    if not isinstance(text, str) or not text.startswith(RETIRED):
        return None
    try:
        return float(text.removeprefix(RETIRED).partition(":")[0])
    except ValueError:
        return None


def _retired(key_id: str, revoked: float, until: float | None) -> str:
    free_again = f" until {utc_moment(until)}" if until is not None else ""
    return (
        f"API key id {key_id!r} belonged to a key revoked at {utc_moment(revoked)}: an id is"
        f" not given to a new key{free_again} (store.usage_retention_days), so that usage"
        " reports, metrics and quotas never count two holders' requests as one; choose"
        " another id"
    )


async def used_until(store: KeyStore, key_id: str) -> float | None:
    """The latest hour the usage rollups bill ``key_id`` in, if within their retention."""
    last = await key_id_usage.last_used(store.client, store.prefix, key_id)
    if last is None or last <= store.clock() - store.retire_ids_for_ms / 1000:
        return None
    return last


def id_used(key_id: str, last: float) -> str:
    return (
        f"API key id {key_id!r} has usage in the rollups up to the hour of {utc_moment(last)},"
        " but no key has it now (a key removed from the config, or revoked by an earlier"
        " gateway): a new key under it would be reported, labelled and limited together"
        " with that usage (store.usage_retention_days); choose another id, or, to give"
        " the same holder a key that carries that usage on, set continue_usage"
        " (`extproc keys create --continue-usage`)"
    )


def unreadable_id(key_id: str, id_key: str, reason: str, doing: str = "revoked") -> str:
    return (
        f"API key {key_id!r} cannot be {doing} by its id: {id_key} {reason}{WRITTEN}; until"
        " then the key, if it exists, still works"
    )


async def taken(store: KeyStore, key_id: str, id_key: str) -> KeyIdTakenError:
    """Why a create cannot have the id: a key has it, or had it until revoked."""
    async with store.client.pipeline(transaction=False) as pipe:
        pipe.get(id_key)
        pipe.pttl(id_key)
        held, left_ms = await pipe.execute(raise_on_error=False)
    revoked = revoked_at(held)
    if revoked is None:
        return KeyIdTakenError(f"an API key with id {key_id!r} already exists")
    # To the second: the milliseconds since the revoke are no part of its retirement.
    left_s = round(left_ms / 1000) if isinstance(left_ms, int) and left_ms > 0 else None
    until = store.clock() + left_s if left_s is not None else None
    return KeyIdRetiredError(_retired(key_id, revoked, until))


async def retired(store: KeyStore, key_ids: Iterable[str]) -> dict[str, float]:
    """Of ``key_ids``, those retired by a revoke, with when (one pipelined read)."""
    ids = list(key_ids)
    if not ids:
        return {}
    async with store.client.pipeline(transaction=False) as pipe:
        for key_id in ids:
            pipe.get(store.id_key(key_id))
        held = await pipe.execute(raise_on_error=False)
    found = {key_id: revoked_at(value) for key_id, value in zip(ids, held, strict=True)}
    return {key_id: at for key_id, at in found.items() if at is not None}


async def named_digest(store: KeyStore, key_id: str, doing: str) -> tuple[str, str, int]:
    """The id's key, the digest it names and its expiry in ms (-1: none, a finished
    create); ``UnknownKeyIdError`` or ``UnreadableKeyIdError`` when it names none."""
    id_key = store.id_key(key_id)
    # The id and its expiry in one read (one key): an expiry marks a create in flight.
    async with store.client.pipeline(transaction=False) as pipe:
        pipe.get(id_key)
        pipe.pttl(id_key)
        raw, expires_in_ms = await pipe.execute(raise_on_error=False)
    if of_another_type(raw):
        message = unreadable_id(key_id, id_key, ANOTHER_TYPE, doing)
        raise DamagedIdKeyError(message, id_key, ANOTHER_TYPE)
    if raw is None:
        raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
    revoked = revoked_at(raw)
    if revoked is not None:
        raise UnknownKeyIdError(
            f"no API key with id {key_id!r}: the key of that id was revoked at"
            f" {utc_moment(revoked)}"
        )
    digest_hex = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    if not DIGEST_HEX.fullmatch(digest_hex):
        reason = "holds no SHA-256 of a key, not what the gateway writes there"
        message = unreadable_id(key_id, id_key, reason, doing)
        raise DamagedIdKeyError(message, id_key, reason)
    return id_key, digest_hex, expires_in_ms if isinstance(expires_in_ms, int) else 0


@dataclass(frozen=True, slots=True)
class NamedRecord:
    """The record an id names, read before a change to its key."""

    id_key: str
    digest_hex: str
    record: dict[Any, Any]  # as HGETALL returned it (``records.previous`` reads it)
    stored: StoredKey


async def named_record(store: KeyStore, key_id: str, doing: str) -> NamedRecord:
    """The key ``key_id`` names and its record, to be ``doing`` ("rotated", "renewed"):
    ``UnknownKeyIdError`` when there is none yet, ``UnreadableRecordError`` (naming the
    record by its digest cut short) when its record is not one the gateway wrote."""
    id_key, digest_hex, expires_in_ms = await named_digest(store, key_id, doing)
    record_key = store.record_key(digest_hex)
    try:
        record = await store.client.hgetall(record_key)
    except ResponseError as exc:
        if of_another_type(exc):
            shown = shown_name(record_key)
            raise UnreadableRecordError(
                f"API key {key_id!r} cannot be {doing}: its record {shown} {ANOTHER_TYPE}{WRITTEN}"
            ) from None
        raise
    try:
        stored = from_fields(record)
    except UnreadableRecordError as exc:
        raise UnreadableRecordError(f"API key {key_id!r} cannot be {doing}: {exc}") from None
    if stored is None or expires_in_ms != -1:
        # No record: a create in flight, or one that failed half-way.
        raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
    return NamedRecord(id_key, digest_hex, record, stored)
