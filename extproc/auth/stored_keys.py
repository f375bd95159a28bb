"""Org API keys created at run time: stored hashed in Redis, remembered briefly per process.

The management API creates, lists and revokes them; the authentication stage
asks for a presented key the config does not know. The store holds, with
``<prefix>`` the config's ``store.key_prefix``::

    <prefix>key:{<sha256 hex>}   a hash: id, user_id, group_id, labels (JSON), enabled,
                                 expires_at, created_at, allowed_models, allowed_routes (JSON);
                                 after a rotation, ``previous`` (the old secret's sha256
                                 hex) in the new record, ``rotated_at`` and
                                 ``secret_expires_at`` (the grace's end) in the old one
    <prefix>keyid:<id>           the sha256 hex: revoke by id, and one key per id; once
                                 the key is revoked, ``revoked:<unix seconds>:<sha256
                                 hex>`` until its retirement ends (``retire_ids_for_s``)

The secret is generated here and leaves in the answer to ``create``, once;
neither Redis nor this process keeps it, only its SHA-256. The two keys live in
different cluster slots, so no command spans both. A create claims the id first
(``SET NX``) and writes the record, both expiring in ``CLAIM_TTL_MS``, then makes
them permanent, the id first: an id without an expiry is a finished create. A
revoke that finds the id of a create in flight without its record leaves both
alone (the create has not happened yet); one that finds the record deletes it and
then the id, and the create, whose id is then gone, deletes its record and
fails. An id is only ever made permanent or deleted while it still names the
caller's key (``stored_key_id.lua``): a create whose claim expired while the store
stalled, a create cleaning up after a lost answer, or a second revoke of the same
key never keeps or frees an id that another create holds by then. So a revoke
racing a create never leaves a working key nobody can revoke, and a process that
dies half-way leaves nothing that lasts past the expiry. A revoke that has deleted
the record finishes (notice, id) even if its caller hangs up.

A revoke retires the id rather than freeing it: ``<prefix>keyid:<id>`` then holds
when the key was revoked, for ``retire_ids_for_s`` (the usage rollups' retention),
and a create of that id is refused. Freed, the id went to the next key created
under it, whose requests a usage report by api_key, the ``api_key_id`` label and the
quota and rate-limit counters (all keyed by id) then counted as the old key's: two
holders billed as one, the new key starting with the old one's spent quota. An id
freed by a gateway from before this (no marker) is simply free: nothing to migrate.
A create that a revoke took back (its secret never handed out) frees the id it
retired, so that the create can be run again as its error says.

A rotation gives a key a new secret under the same id, so that its usage, quotas
and rate limits carry on (a revoke and a create could not: the id is retired). It
writes the new record (expiring like a create's until done) naming the old digest
as ``previous``, cuts the old secret's life to the grace (``secret_expires_at``, and
the record's own expiry; a minute for no grace, so that a rotation cut short can be
run again), points the id at the new digest only while it still names the old one
(``stored_key_id.lua``), keeps the new record, and (no grace) deletes the old one. A
rotation cut short by the store leaves the id naming the old record, whose
``expires_at`` is still the key's own: running it again finishes it, never
lengthening the old secret's grace. A revoke deletes the ``previous`` record too,
so no old secret outlives its key.

On the request path ``KeyCache`` remembers what the store answered for a
digest: a key for 30 s, "no such key" for 5 s, at most 10,000 digests (least
recently used go first); lookups of one digest made while a read of it is in
flight share that read. Revoking forgets the key in this process at once and
announces it on the store's pub/sub channel, so that every other process
sharing the store forgets it too (``extproc.auth.key_revocations``); the 30 s
expiry is the bound only while a process cannot hear those notices.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal, TypeAlias

import orjson
from redis.exceptions import ResponseError

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.key_revocations import RevocationListener, announce
from extproc.store.connection import of_another_type
from extproc.store.scripts import register

log = logging.getLogger(__name__)

SECRET_PREFIX = "aigw-"
FOUND_TTL_S = 30.0
MISSING_TTL_S = 5.0
CACHE_ENTRIES = 10_000
# How long a create's claim on its id (and its record) lasts before the create makes them
# permanent: a create takes milliseconds; one whose process died leaves nothing behind.
CLAIM_TTL_MS = 60_000
# How long a revoked key's id stays retired when the caller does not say: as long as
# the usage rollups are kept by default (store.usage_retention_days, 400 days).
RETIRED_FOR_S = 400 * 86400.0
# Keys are scanned in batches of about this many per SCAN call (a hint to Redis).
SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_DIGEST_HEX = re.compile(r"[0-9a-f]{64}")
_RECORD_DIGEST = re.compile(r"\{([0-9a-f]{64})\}$")
# The longest grace a rotation gives the old secret: a rotation is for a secret that
# must stop working; one meant to last is a second key.
MAX_GRACE_S = 30 * 86400.0
# How much of a record's digest names it where people read it: enough to find it with
# SCAN MATCH, never the whole hash of a secret (no answer of the API carries one).
_DIGEST_SHOWN = 12
# What stored_key_id.lua does with an id that still names the caller's key.
_KEEP = "keep"
_FREE = "free"
_RETIRE = "retire"
_SWAP = "swap"
# What <prefix>keyid:<id> holds once its key is revoked: the marker, the unix time, and
# the revoked key's digest (so that only a create of that very key can free the id).
_RETIRED = "revoked:"


class KeyIdTakenError(ValueError):
    """Another key (stored, or in the config) already has this id."""


class KeyIdRetiredError(KeyIdTakenError):
    """The id named a key revoked within its retirement: not given to another key yet."""


class UnknownKeyIdError(LookupError):
    """No stored key has this id."""


class KeyCreateConflictError(RuntimeError):
    """A create and a revoke of the same id ran at once; the one that failed may be run
    again."""


class UnreadableRecordError(ValueError):
    """A record under ``<prefix>key:{...}`` that the gateway never wrote so."""


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A key a listing left out: its name (the digest cut short) and what is wrong."""

    key: str
    reason: str


@dataclass(slots=True)
class StoredKeyList:
    keys: list[StoredKey]
    # Empty when every record under the prefix was read.
    unreadable: list[UnreadableRecord]


class RevokedUnreadableRecordError(UnreadableRecordError):
    """A revoke deleted a key whose record the gateway cannot read: the key is refused
    everywhere, but what it was (user, group, limits) cannot be told."""


class UnreadableKeyIdError(UnreadableRecordError):
    """``<prefix>keyid:<id>`` holds no key's digest: the key cannot be found by its id."""


class _DamagedIdKeyError(UnreadableKeyIdError):
    """``UnreadableKeyIdError`` with what a revoke needs to find the key another way."""

    def __init__(self, message: str, id_key: str, reason: str) -> None:
        super().__init__(message)
        self.id_key = id_key
        self.reason = reason


class UnreadableRecordsError(Exception):
    """``list`` met records it cannot read, for a caller with no way to name them."""

    def __init__(self, records: list[UnreadableRecord]) -> None:
        self.records = records
        named = "; ".join(f"{record.key} {record.reason}" for record in records)
        super().__init__(f"{len(records)} stored API key record(s) cannot be read: {named}")


class _NotCached(Enum):
    NOT_CACHED = "not cached"


class _Unreadable(Enum):
    UNREADABLE = "unreadable"


# What the cache says about a digest it has no live answer for: ask the store.
NOT_CACHED: Final = _NotCached.NOT_CACHED
# A digest whose record the gateway cannot read (a key of another type, fields it never
# writes so): the key cannot be used, which is neither "no such key" nor a store outage.
UNREADABLE: Final = _Unreadable.UNREADABLE
# What the store answered for a digest: the key, None for "no such key", or UNREADABLE.
StoredAnswer: TypeAlias = ApiKey | Literal[_Unreadable.UNREADABLE] | None
# A cached answer: a StoredAnswer, or NOT_CACHED.
CachedAnswer: TypeAlias = StoredAnswer | Literal[_NotCached.NOT_CACHED]


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key created at run time, as the store holds it (never its secret or digest)."""

    key: ApiKey
    created_at: float
    # After a rotation with a grace: when the old secret stops working (0: none works).
    previous_expires_at: float = 0.0
    # A secret rotated out: when its grace ends (0: not rotated out).
    secret_expires_at: float = 0.0

    def usable_key(self) -> ApiKey:
        """The key as requests with this record's secret get it: a secret rotated out
        expires when its grace ends, if the key does not before."""
        if not self.secret_expires_at:
            return self.key
        ends = min(self.secret_expires_at, self.key.expires_at or self.secret_expires_at)
        return dataclasses.replace(self.key, expires_at=ends)


def new_secret() -> str:
    """A fresh secret: 256 random bits, prefixed so that scanners and people recognise it."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyCache:
    """What the store answered for recent digests: found for 30 s, not found for 5 s.

    An LRU of bounded size, so a flood of made-up keys evicts entries instead
    of growing memory. The clock is injected so that tests can move time.
    """

    def __init__(
        self,
        *,
        found_ttl_s: float = FOUND_TTL_S,
        missing_ttl_s: float = MISSING_TTL_S,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._missing_ttl_s = missing_ttl_s
        self.found_ttl_s = found_ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, StoredAnswer]] = OrderedDict()
        # Bumped by every revocation: a lookup that started before one must not
        # cache what it read, or a revoked key could come back for 30 s.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> CachedAnswer:
        """The key, None for a key known not to exist, UNREADABLE, or NOT_CACHED."""
        entry = self._entries.get(digest)
        if entry is None:
            return NOT_CACHED
        expires_at, key = entry
        if expires_at <= self._clock():
            del self._entries[digest]
            return NOT_CACHED
        self._entries.move_to_end(digest)
        return key

    def put(self, digest: bytes, key: StoredAnswer, generation: int) -> None:
        """Remember an answer read when the cache was at ``generation``; an unreadable
        record as briefly as a missing key, so that one moved away or mended counts soon."""
        if generation != self.generation:
            return
        ttl = self.found_ttl_s if isinstance(key, ApiKey) else self._missing_ttl_s
        self._entries[digest] = (self._clock() + ttl, key)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, digest: bytes) -> None:
        self._entries.pop(digest, None)
        self.generation += 1

    def clear(self) -> None:
        """Forget every answer: revocations may have been missed."""
        self._entries.clear()
        self.generation += 1


class _Read:
    """One HGETALL in flight and how many lookups wait on it."""

    __slots__ = ("generation", "task", "waiters")

    def __init__(self, task: asyncio.Task[StoredAnswer], generation: int) -> None:
        self.task = task
        # The cache's generation when the read began: lookups after a revocation
        # do not join it.
        self.generation = generation
        self.waiters = 0


class StoredKeys:
    """The keys created at run time in one store, and this process's cache of lookups."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        cache: KeyCache | None = None,
        clock: Callable[[], float] = time.time,
        retire_ids_for_s: float = RETIRED_FOR_S,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._retire_ids_for_ms = max(1, round(retire_ids_for_s * 1000))
        self.cache = cache if cache is not None else KeyCache()
        self._clock = clock
        self.listener = RevocationListener(client, key_prefix, self.cache)
        # The store reads in flight, by digest: concurrent lookups of one key share one.
        self._reads: dict[bytes, _Read] = {}
        self._id_script = register(client, "stored_key_id")

    def start(self) -> None:
        """Listen for revocations made by any process sharing the store."""
        self.listener.start()

    async def close(self) -> None:
        await self.listener.close()

    def _record_key(self, digest_hex: str) -> str:
        return f"{self._prefix}key:{{{digest_hex}}}"

    def _id_key(self, key_id: str) -> str:
        return f"{self._prefix}keyid:{key_id}"

    def _records_pattern(self) -> str:
        """SCAN's pattern of every record under the prefix (its glob characters escaped)."""
        return _GLOB_SPECIAL.sub(r"\\\1", f"{self._prefix}key:{{") + "*"

    def cached(self, digest: bytes) -> CachedAnswer:
        """The request path's answer without I/O, when a recent lookup gave one."""
        return self.cache.get(digest)

    async def lookup(self, digest: bytes) -> StoredAnswer:
        """Ask the store for the key with this digest (one HGETALL) and cache the answer:
        the key, None when there is none, UNREADABLE when its record cannot be read.

        Concurrent lookups of one digest share one read: a client that opens many
        streams at once with a key not yet cached costs the store one HGETALL, not one
        per request. A read started before a revocation is not shared with lookups
        made after it (it may have found the revoked key). A failed read is not kept:
        the next lookup reads again.
        """
        generation = self.cache.generation
        flight = self._reads.get(digest)
        if flight is None or flight.generation != generation or flight.task.done():
            flight = _Read(asyncio.create_task(self._read(digest, generation)), generation)
            self._reads[digest] = flight
            flight.task.add_done_callback(lambda _: self._landed(digest, flight))
        flight.waiters += 1
        try:
            # Shielded: one caller giving up (its request's deadline, a client gone)
            # must not cancel the read the others wait on.
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Nobody waits any more: the read is cancelled as an unshared one was,
                # and the next lookup starts a fresh one instead of joining it.
                flight.task.cancel()
                self._landed(digest, flight)

    async def _read(self, digest: bytes, generation: int) -> StoredAnswer:
        record_key = self._record_key(digest.hex())
        answer: StoredAnswer
        try:
            found = _from_fields(await self._client.hgetall(record_key))
            answer = found.usable_key() if found is not None else None
        except (ResponseError, UnreadableRecordError) as exc:
            # of_another_type raises any other error answer: the store failed (a 503).
            reason = _ANOTHER_TYPE if of_another_type(exc) else str(exc)
            # Before, a key of another type was a 503 on every request (clients retry),
            # and fields the gateway never writes so were one as well.
            log.warning(
                "an API key was presented whose record %s %s%s: the key is refused with 401"
                " until the record is moved away or the key is revoked",
                _shown_name(record_key), reason, _BY_OTHERS,
            )  # fmt: skip
            answer = UNREADABLE
        self.cache.put(digest, answer, generation)
        return answer

    def _landed(self, digest: bytes, flight: _Read) -> None:
        """The read is over (or abandoned): later lookups no longer join it."""
        if self._reads.get(digest) is flight:
            del self._reads[digest]
        if flight.task.done() and not flight.task.cancelled():
            # Every waiter has had the error already (or none was left to): not worth
            # asyncio's "exception was never retrieved" at exit.
            flight.task.exception()

    async def create(self, key: ApiKey) -> tuple[str, StoredKey]:
        """Store a new key under a fresh secret; the secret is returned here and nowhere else."""
        secret = new_secret()
        digest_hex = key_digest(secret).hex()
        stored = StoredKey(key, created_at=self._clock())
        id_key = self._id_key(key.id)
        record_key = self._record_key(digest_hex)
        try:
            if not await self._client.set(id_key, digest_hex, nx=True, px=CLAIM_TTL_MS):
                raise await self._taken(key.id, id_key)
            # One slot: the record and its expiry in one transaction.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(record_key, mapping=_to_fields(stored))
                pipe.pexpire(record_key, CLAIM_TTL_MS)
                await pipe.execute()
            # Only while the id is still this create's: a claim that expired (the store
            # stalled) may be another create's by now, or gone with a revoke.
            claimed = await self._id_named(id_key, digest_hex, _KEEP)
            if claimed and not await self._client.persist(record_key):
                # A revoke took the record after the id was made permanent (or the store
                # stalled past its expiry): it is gone, and so goes its id (the revoke
                # frees it too, only while it names this key).
                await asyncio.shield(self._id_named(id_key, digest_hex, _FREE))
                raise KeyCreateConflictError(_revoked_while_created(key.id))
        except (KeyIdTakenError, KeyCreateConflictError):
            raise
        except BaseException:
            # A key that was never stored must not keep its id taken, nor one whose
            # create was cancelled (the caller hung up: nobody will get its secret), nor
            # a claim whose answer was lost (it may have been taken all the same).
            # Shielded, so that a second cancellation cannot cut the clean-up short.
            await asyncio.shield(self._undo_create(record_key, id_key, digest_hex))
            raise
        if not claimed:
            # The id is gone: revoked meanwhile (or its claim expired, the store stalled,
            # and the id may be another create's now): only the record is this one's,
            # and the id only if the revoke retired it for this very key.
            await asyncio.shield(self._client.delete(record_key))
            await asyncio.shield(self._id_named(id_key, digest_hex, _FREE))
            raise KeyCreateConflictError(_revoked_while_created(key.id))
        return secret, stored

    async def _taken(self, key_id: str, id_key: str) -> KeyIdTakenError:
        """Why a create cannot have the id: a key has it, or had it until revoked."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(id_key)
            pipe.pttl(id_key)
            held, left_ms = await pipe.execute(raise_on_error=False)
        revoked_at = _revoked_at(held)
        if revoked_at is None:
            return KeyIdTakenError(f"an API key with id {key_id!r} already exists")
        # To the second: the milliseconds since the revoke are no part of its retirement.
        left_s = round(left_ms / 1000) if isinstance(left_ms, int) and left_ms > 0 else None
        until = self._clock() + left_s if left_s is not None else None
        return KeyIdRetiredError(_retired(key_id, revoked_at, until))

    async def _undo_create(self, record_key: str, id_key: str, digest_hex: str) -> None:
        # The write may have gone through all the same (its answer lost): its record
        # goes first, so that no key is left that its id cannot revoke (nobody has its
        # secret anyway), and the id stays taken, pointing at it, if that delete fails.
        # The id only while it is this create's: another create may hold it by now.
        await self._client.delete(record_key)
        await self._id_named(id_key, digest_hex, _FREE)

    async def _id_named(self, id_key: str, digest_hex: str, action: str, *more: str) -> bool:
        """Keep (make permanent), free (delete) or retire the id only while it names the
        key with ``digest_hex`` (stored_key_id.lua); whether it did."""
        args = [digest_hex, action, *more]
        named = await self._id_script(keys=[id_key], args=args, client=self._client)
        return bool(named)

    async def list(self) -> list[StoredKey]:
        """The keys of ``listing``; ``UnreadableRecordsError`` when a record could not be read."""
        found = await self.listing()
        if found.unreadable:
            raise UnreadableRecordsError(found.unreadable)
        return found.keys

    async def listing(self) -> StoredKeyList:
        """Every stored key, by id, and the records under the prefix that could not be read.

        SCAN, never KEYS: the store serves requests meanwhile. A key of another type (a
        person's SET, another program's) or a hash with fields the gateway never writes so
        is named and left out: before, it failed the whole list as a store outage
        ("the store did not answer"), or as an internal error."""
        pattern = self._records_pattern()
        names = [name async for name in self._client.scan_iter(match=pattern, count=SCAN_COUNT)]
        if not names:
            return StoredKeyList([], [])
        async with self._client.pipeline(transaction=False) as pipe:
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
            shown = _shown_name(name)
            if of_another_type(record):
                unreadable.append(UnreadableRecord(shown, _ANOTHER_TYPE + _WRITTEN))
                continue
            try:
                stored = _from_fields(record)
            except UnreadableRecordError as exc:
                unreadable.append(UnreadableRecord(shown, f"{exc}{_WRITTEN}"))
                continue
            if stored is not None and _field(record, "rotated_at"):
                replaced[_digest_in(name)] = stored
            elif stored is not None:
                found.append((stored, _previous(record)))
            elif record:
                # A hash, but none the gateway wrote (every record has its id): an empty
                # answer is a key deleted since the scan.
                reason = "is a hash without the field 'id', not a stored API key's record"
                unreadable.append(UnreadableRecord(shown, reason + _WRITTEN))
        keys = [
            dataclasses.replace(stored, previous_expires_at=replaced[previous].secret_expires_at)
            if previous in replaced
            else stored
            for stored, previous in found
        ]
        # A rotated-out record no key names is the key of a rotation cut short: listed.
        named = {previous for _, previous in found}
        keys += [stored for digest, stored in replaced.items() if digest not in named]
        return StoredKeyList(
            sorted(keys, key=lambda stored: stored.key.id),
            sorted(unreadable, key=lambda record: record.key),
        )

    async def retired(self, key_ids: Iterable[str]) -> dict[str, float]:
        """Of ``key_ids``, those retired by a revoke, with when (one pipelined read)."""
        ids = list(key_ids)
        if not ids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.get(self._id_key(key_id))
            held = await pipe.execute(raise_on_error=False)
        found = {key_id: _revoked_at(value) for key_id, value in zip(ids, held, strict=True)}
        return {key_id: at for key_id, at in found.items() if at is not None}

    async def _named_digest(self, key_id: str, doing: str) -> tuple[str, str, int]:
        """The id's key, the digest it names and its expiry in ms (-1: none, a finished
        create); ``UnknownKeyIdError`` or ``UnreadableKeyIdError`` when it names none."""
        id_key = self._id_key(key_id)
        # The id and its expiry in one read (one key): an expiry marks a create in flight.
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(id_key)
            pipe.pttl(id_key)
            raw, expires_in_ms = await pipe.execute(raise_on_error=False)
        if of_another_type(raw):
            message = _unreadable_id(key_id, id_key, _ANOTHER_TYPE, doing)
            raise _DamagedIdKeyError(message, id_key, _ANOTHER_TYPE)
        if raw is None:
            raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
        revoked_at = _revoked_at(raw)
        if revoked_at is not None:
            raise UnknownKeyIdError(
                f"no API key with id {key_id!r}: the key of that id was revoked at"
                f" {_moment(revoked_at)}"
            )
        digest_hex = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if not _DIGEST_HEX.fullmatch(digest_hex):
            reason = "holds no SHA-256 of a key, not what the gateway writes there"
            message = _unreadable_id(key_id, id_key, reason, doing)
            raise _DamagedIdKeyError(message, id_key, reason)
        return id_key, digest_hex, expires_in_ms if isinstance(expires_in_ms, int) else 0

    async def revoke(self, key_id: str) -> StoredKey:
        """Delete a stored key; from now on this process refuses its secret."""
        try:
            id_key, digest_hex, expires_in_ms = await self._named_digest(key_id, "revoked")
        except _DamagedIdKeyError as damaged:
            return await self._revoke_found(key_id, damaged.id_key, damaged.reason)
        record_key = self._record_key(digest_hex)
        # Read after the expiry: a create makes its id permanent only once its record is
        # written, so a permanent id whose record is missing lost it for good.
        unreadable: str | None = None
        previous: str | None = None
        try:
            record = await self._client.hgetall(record_key)
            stored = _from_fields(record)
            previous = _previous(record)
        except (ResponseError, UnreadableRecordError) as exc:
            # A record a person or another program wrote over: the id names it, so it is
            # this key's, and revoked means refused. Deleted like a readable one: left,
            # it would be refused today, and the key working again once someone "mends"
            # the record. Before, a key of another type failed the revoke as UNAVAILABLE.
            unreadable = _ANOTHER_TYPE if of_another_type(exc) else str(exc)
            stored = None
        if stored is None and unreadable is None and expires_in_ms != -1:
            # A create in flight that has not written its record yet: the key does not
            # exist yet, and deleting its id now would leave the key it is about to
            # write without one.
            raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
        # Shielded: a caller that hangs up once the record's delete is sent must not
        # leave the other processes accepting the key for their cache's lifetime, nor
        # the id taken by a key that no longer exists.
        await asyncio.shield(self._delete_key(key_id, id_key, record_key, digest_hex, previous))
        if unreadable is not None:
            raise RevokedUnreadableRecordError(
                f"the record of API key {key_id!r} ({_shown_name(record_key)}) {unreadable}"
                f"{_BY_OTHERS}: it was deleted and the key's id retired, so the key is refused"
                " everywhere, but what it held is not known"
            )
        if stored is None:
            # An id whose record was never written (a create that failed half-way).
            raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
        return stored

    async def _revoke_found(self, key_id: str, id_key: str, reason: str) -> StoredKey:
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
        found = await self._records_with_id(key_id)
        if not found:
            raise UnreadableKeyIdError(
                f"no API key with id {key_id!r} was created at run time (no record has it),"
                f" but {id_key} {reason}{_WRITTEN}: a key with this id cannot be created"
                " until then"
            )
        stored: StoredKey | None = None
        unreadable: list[str] = []
        for record_key, digest_hex in found:
            try:
                current = _from_fields(await self._client.hgetall(record_key))
            except (ResponseError, UnreadableRecordError) as exc:
                unreadable.append(f"{_shown_name(record_key)} {exc}")
                current = None
            stored = stored or current
            await asyncio.shield(self._delete_record(key_id, record_key, digest_hex))
        # Retired as any revoked key's id is (``_delete_key``), written whole: it held no
        # key's digest, so no create can have claimed it meanwhile.
        marker = f"{_RETIRED}{self._clock()!r}:{found[0][1]}"
        await self._client.set(id_key, marker, px=self._retire_ids_for_ms)
        log.warning(
            "API key %r revoked, found by its record: its id key %s %s%s; the id was"
            " retired with the key",
            key_id, id_key, reason, _BY_OTHERS,
        )  # fmt: skip
        if unreadable or stored is None:
            raise RevokedUnreadableRecordError(
                f"API key {key_id!r} was found by its record ({id_key} {reason}{_BY_OTHERS})"
                f" and deleted, so the key is refused everywhere, but what it held is not"
                f" known: {'; '.join(unreadable) or 'its record was gone'}"
            )
        return stored

    async def _records_with_id(self, key_id: str) -> builtins.list[tuple[str, str]]:
        """The records (store key, digest) whose ``id`` field is ``key_id``, read a SCAN
        batch at a time."""
        found: builtins.list[tuple[str, str]] = []
        batch: builtins.list[Any] = []
        async for name in self._client.scan_iter(match=self._records_pattern(), count=SCAN_COUNT):
            batch.append(name)
            if len(batch) >= SCAN_COUNT:
                found += await self._with_id(batch, key_id)
                batch = []
        if batch:
            found += await self._with_id(batch, key_id)
        return found

    async def _with_id(
        self, names: builtins.list[Any], key_id: str
    ) -> builtins.list[tuple[str, str]]:
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(name, "id")
            # A record of another type answers WRONGTYPE: it names no id.
            ids = await pipe.execute(raise_on_error=False)
        found: builtins.list[tuple[str, str]] = []
        for name, found_id in zip(names, ids, strict=True):
            text = name.decode(errors="replace") if isinstance(name, bytes) else name
            digest = _RECORD_DIGEST.search(text)
            if found_id == key_id.encode() and digest is not None:
                found.append((text, digest.group(1)))
        return found

    async def _delete_record(self, key_id: str, record_key: str, digest_hex: str) -> None:
        await self._client.delete(record_key)
        self.cache.forget(bytes.fromhex(digest_hex))
        await self._announce(key_id, digest_hex)

    async def _delete_key(
        self, key_id: str, id_key: str, record_key: str, digest_hex: str, previous: str | None
    ) -> None:
        # The record first: once it is gone the secret no longer works anywhere
        # (once the caches forget it), even if freeing the id then fails.
        await self._client.delete(record_key)
        self.cache.forget(bytes.fromhex(digest_hex))
        await self._announce(key_id, digest_hex)
        if previous is not None:
            # The old secret of a rotation still in its grace: revoked with its key.
            await self._end_secret(key_id, previous)
        # Retired, not freed (see the module's docstring), and only while it names the
        # key revoked: another revoke of the same key may have retired it already.
        marker = f"{_RETIRED}{self._clock()!r}:{digest_hex}"
        await self._id_named(id_key, digest_hex, _RETIRE, marker, str(self._retire_ids_for_ms))

    async def _end_secret(self, key_id: str, digest_hex: str) -> None:
        """Stop a key's old secret now, on every process."""
        await self._client.delete(self._record_key(digest_hex))
        self.cache.forget(bytes.fromhex(digest_hex))
        await self._announce(key_id, digest_hex)

    async def rotate(self, key_id: str, grace_s: float) -> tuple[str, StoredKey, float]:
        """A new secret for a stored key, same id and identity; the old secret works
        ``grace_s`` more. The new secret (returned here only), the key, and when the
        old secret stops working."""
        id_key, old_hex, expires_in_ms = await self._named_digest(key_id, "rotated")
        old_key = self._record_key(old_hex)
        try:
            record = await self._client.hgetall(old_key)
        except ResponseError as exc:
            if of_another_type(exc):
                raise UnreadableRecordError(
                    _cannot_rotate(key_id, old_key, _ANOTHER_TYPE)
                ) from None
            raise
        try:
            stored = _from_fields(record)
        except UnreadableRecordError as exc:
            raise UnreadableRecordError(f"API key {key_id!r} cannot be rotated: {exc}") from None
        if stored is None or expires_in_ms != -1:
            # No record: a create in flight, or one that failed half-way.
            raise UnknownKeyIdError(f"no API key with id {key_id!r} was created at run time")
        secret = new_secret()
        new_hex = key_digest(secret).hex()
        new_key = self._record_key(new_hex)
        now = self._clock()
        # Never longer than a rotation cut short (the id still names its old record) gave.
        until = min(now + grace_s, stored.secret_expires_at or math.inf)
        older = _previous(record)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(new_key, mapping={**_to_fields(stored), "previous": old_hex})
                pipe.pexpire(new_key, CLAIM_TTL_MS)
                await pipe.execute()
            if older is not None:
                # One old secret at a time: the one before, still in its grace, stops now.
                await self._end_secret(key_id, older)
            await self._shorten(key_id, old_key, old_hex, now, until)
            swapped = await self._id_named(id_key, old_hex, _SWAP, new_hex)
            if swapped and await self._client.persist(new_key):
                if until <= now:
                    await self._end_secret(key_id, old_hex)
                return secret, stored, min(until, stored.key.expires_at or until)
        except BaseException:
            # Never a record nobody will get the secret of, nor one its id does not name.
            await asyncio.shield(self._client.delete(new_key))
            raise
        await asyncio.shield(self._client.delete(new_key))
        raise KeyCreateConflictError(
            f"API key {key_id!r} was revoked or rotated while it was being rotated; no new"
            " secret was made (none was handed out): list the keys, then rotate again"
        )

    async def _shorten(
        self, key_id: str, old_key: str, old_hex: str, now: float, until: float
    ) -> None:
        """Cut the old secret's life to the grace (or end it now), on every process."""
        # With no grace the record stays a minute, refused: a rotation cut short before
        # the id names the new key can then be run again, reading the key from it.
        forgotten_ms = (
            math.ceil(until * 1000) if until > now else math.ceil(now * 1000) + CLAIM_TTL_MS
        )
        async with self._client.pipeline(transaction=True) as pipe:
            # The field refuses the secret ("has expired") where a cached record is read
            # again; the store forgets the record itself at the grace's end.
            fields = {"secret_expires_at": repr(until), "rotated_at": repr(now)}
            pipe.hset(old_key, mapping=fields)
            pipe.pexpireat(old_key, forgotten_ms)
            await pipe.execute()
        self.cache.forget(bytes.fromhex(old_hex))
        await self._announce(key_id, old_hex)

    async def _announce(self, key_id: str, digest_hex: str) -> None:
        """Make the other processes forget the key; the store already refuses it."""
        try:
            await announce(self._client, self._prefix, digest_hex)
        except Exception as exc:
            # Failing the revoke here would only hide that the key is gone from the store.
            log.warning(
                "API key %r revoked, but the notice to other gateway processes failed (%s): "
                "they refuse it within %g s",
                key_id, type(exc).__name__, self.cache.found_ttl_s,
            )  # fmt: skip


# What a person does about a record the gateway cannot read.
_BY_OTHERS = " (written by a person or another program)"
_WRITTEN = f"{_BY_OTHERS}: move the key away"
_ANOTHER_TYPE = "is a key of another type, not a stored API key's record"


def _unreadable_id(key_id: str, id_key: str, reason: str, doing: str = "revoked") -> str:
    return (
        f"API key {key_id!r} cannot be {doing} by its id: {id_key} {reason}{_WRITTEN}; until"
        " then the key, if it exists, still works"
    )


def _cannot_rotate(key_id: str, record_key: str, reason: str) -> str:
    shown = _shown_name(record_key)
    return f"API key {key_id!r} cannot be rotated: its record {shown} {reason}{_WRITTEN}"


def _field(record: Any, name: str) -> str | None:
    """One field of a record as HGETALL returns it (bytes names and values)."""
    if not isinstance(record, dict):
        return None
    value = record.get(name.encode(), record.get(name))
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _previous(record: Any) -> str | None:
    """The digest of the old secret a rotation left working, if the record names one."""
    value = _field(record, "previous")
    return value if value is not None and _DIGEST_HEX.fullmatch(value) else None


def _digest_in(name: bytes | str) -> str:
    text = name.decode(errors="replace") if isinstance(name, bytes) else name
    return text.rpartition("{")[2].removesuffix("}")


def _shown_name(name: bytes | str) -> str:
    """A record's store key as a listing names it: the digest cut short."""
    text = name.decode(errors="replace") if isinstance(name, bytes) else name
    head, _, rest = text.rpartition("{")
    digest = rest.removesuffix("}")
    if _DIGEST_HEX.fullmatch(digest) and rest.endswith("}"):
        return f"{head}{{{digest[:_DIGEST_SHOWN]}...}}"
    return text


def _revoked_at(held: object) -> float | None:
    """When the key an id named was revoked, if the id is retired (else None)."""
    text = held.decode(errors="replace") if isinstance(held, bytes) else held
    if not isinstance(text, str) or not text.startswith(_RETIRED):
        return None
    try:
        return float(text.removeprefix(_RETIRED).partition(":")[0])
    except ValueError:
        return None


def _moment(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retired(key_id: str, revoked_at: float, until: float | None) -> str:
    free_again = f" until {_moment(until)}" if until is not None else ""
    return (
        f"API key id {key_id!r} belonged to a key revoked at {_moment(revoked_at)}: an id is"
        f" not given to a new key{free_again} (store.usage_retention_days), so that usage"
        " reports, metrics and quotas never count two holders' requests as one; choose"
        " another id"
    )


def _revoked_while_created(key_id: str) -> str:
    return (
        f"API key {key_id!r} was revoked while it was being created; no key was made "
        "(its secret was never handed out): create it again"
    )


def _to_fields(stored: StoredKey) -> dict[str, str]:
    key = stored.key
    return {
        "id": key.id,
        "user_id": key.user_id or "",
        "group_id": key.group_id or "",
        "labels": orjson.dumps(key.labels).decode(),
        "enabled": "1" if key.enabled else "0",
        "expires_at": repr(key.expires_at or 0.0),
        "created_at": repr(stored.created_at),
        "allowed_models": orjson.dumps(key.allowed_models).decode(),
        "allowed_routes": orjson.dumps(key.allowed_routes).decode(),
    }


def _from_fields(raw: dict[Any, Any]) -> StoredKey | None:
    """A record as HGETALL returns it (bytes); None when there is none.
    ``UnreadableRecordError`` for one whose fields the gateway never writes so."""
    fields = {
        (name.decode() if isinstance(name, bytes) else name): (
            value.decode() if isinstance(value, bytes) else value
        )
        for name, value in raw.items()
    }
    if not fields.get("id"):
        return None
    expires_at = _number(fields, "expires_at")
    key = ApiKey(
        id=fields["id"],
        user_id=fields.get("user_id") or None,
        group_id=fields.get("group_id") or None,
        enabled=fields.get("enabled", "1") == "1",
        expires_at=expires_at or None,
        allowed_models=_names(fields, "allowed_models"),
        allowed_routes=_names(fields, "allowed_routes"),
        labels=_labels(fields),
    )
    return StoredKey(
        key,
        created_at=_number(fields, "created_at"),
        secret_expires_at=_number(fields, "secret_expires_at"),
    )


def _number(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name) or 0.0)
    except ValueError:
        raise _unreadable(fields, name, "no number") from None


def _names(fields: dict[str, str], name: str) -> tuple[str, ...]:
    found = _json(fields, name, "[]")
    if not isinstance(found, list) or not all(isinstance(item, str) for item in found):
        raise _unreadable(fields, name, "no JSON list of strings")
    return tuple(found)


def _labels(fields: dict[str, str]) -> dict[str, str]:
    found = _json(fields, "labels", "{}")
    if not isinstance(found, dict) or not all(isinstance(value, str) for value in found.values()):
        raise _unreadable(fields, "labels", "no JSON object of strings")
    return found


def _json(fields: dict[str, str], name: str, empty: str) -> Any:
    try:
        return orjson.loads(fields.get(name) or empty)
    except orjson.JSONDecodeError:
        raise _unreadable(fields, name, "no JSON") from None


def _unreadable(fields: dict[str, str], name: str, what: str) -> UnreadableRecordError:
    return UnreadableRecordError(
        f"is the record of API key {fields['id']!r}, but its field {name!r} holds {what}"
    )
