"""What the stored-key operations raise, and what a listing reports it could not read.

::

    ValueError
    +-- KeyIdTakenError                  a key (stored, or in the config) has the id
    |   +-- KeyIdRetiredError            the id's key was revoked within its retirement
    |   +-- KeyIdUsedError               no key has the id, but the rollups bill usage to it
    +-- UnreadableRecordError            a record the gateway never wrote so
    |   +-- RevokedUnreadableRecordError revoked, but what it held cannot be told
    |   +-- UnreadableKeyIdError         the id key holds no key's digest
    +-- KeyExpiredError                  a rotation of a key past its expiry
    LookupError
    +-- UnknownKeyIdError                no stored key has the id
    RuntimeError
    +-- KeyCreateConflictError           a create or rotation raced a revoke: run it again
    Exception
    +-- UnreadableRecordsError           a listing met records it cannot read
"""

from __future__ import annotations

from dataclasses import dataclass


class KeyIdTakenError(ValueError):
    """Another key (stored, or in the config) already has this id."""


class KeyIdRetiredError(KeyIdTakenError):
    """The id named a key revoked within its retirement: not given to another key yet."""


class KeyIdUsedError(KeyIdTakenError):
    """No key has this id, but the usage rollups still bill usage under it (a config key
    removed from the config, a key revoked by a gateway from before ids were retired)."""


class UnknownKeyIdError(LookupError):
    """No stored key has this id."""


class KeyCreateConflictError(RuntimeError):
    """A create and a revoke of the same id ran at once; the one that failed may be run
    again."""


class KeyExpiredError(ValueError):
    """The key is past its expiry: a new secret under it would not work either."""


class UnreadableRecordError(ValueError):
    """A record under ``<prefix>key:{...}`` that the gateway never wrote so."""


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A key a listing left out: its name (the digest cut short) and what is wrong."""

    key: str
    reason: str


class RevokedUnreadableRecordError(UnreadableRecordError):
    """A revoke deleted a key whose record the gateway cannot read: the key is refused
    everywhere, but what it was (user, group, limits) cannot be told."""


class UnreadableKeyIdError(UnreadableRecordError):
    """``<prefix>keyid:<id>`` holds no key's digest: the key cannot be found by its id."""


class DamagedIdKeyError(UnreadableKeyIdError):
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
