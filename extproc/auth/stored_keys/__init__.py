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

A renewal gives a key a new ``expires_at`` under the same id and secret (an expired key
included: a rotation refuses one, a revoke retires the id), in the record the id names
and in a rotated-out record still in its grace, each only while it is still that key's
record in that state (``stored_key_expiry.lua``), then announces both digests as a
revoke does, so that no process keeps the old expiry cached. A rotation that read the
key before a renewal reads its expiry again once it has marked the old record rotated
out (after which no renewal writes it), and carries it into the new record.

On the request path ``KeyCache`` remembers what the store answered for a
digest: a key for 30 s, "no such key" for 5 s, at most 10,000 digests (least
recently used go first); lookups of one digest made while a read of it is in
flight share that read. Revoking forgets the key in this process at once and
announces it on the store's pub/sub channel, so that every other process
sharing the store forgets it too (``extproc.auth.key_revocations``); the 30 s
expiry is the bound only while a process cannot hear those notices.

A disable (or enable) writes ``enabled`` in the same two records under the same guard
(``stored_key_enabled.lua``) and announces both digests: a disabled key is refused at
once everywhere, keeping its id, secret and terms, until it is enabled again. A rotation
carries a change of ``enabled`` made while it ran into its new record, as it does a
renewal's expiry.

The modules, one responsibility each: ``records`` (the record format), ``cache``
(``KeyCache``), ``lookup`` (the request path's shared reads), ``key_store`` (the store
keys' names and the writes every operation shares), ``key_ids`` (which key an id names,
and the retirement of a revoked key's id), ``creation``, ``rotation``, ``revocation``,
``renewal``, ``switching`` (disable and enable), ``listing``, ``errors``, and ``store``
(``StoredKeys``, what the rest of the gateway uses).
"""

from __future__ import annotations

from extproc.auth.stored_keys.cache import (
    CACHE_ENTRIES,
    FOUND_TTL_S,
    MISSING_TTL_S,
    NOT_CACHED,
    UNREADABLE,
    CachedAnswer,
    KeyCache,
    StoredAnswer,
)
from extproc.auth.stored_keys.errors import (
    KeyCreateConflictError,
    KeyExpiredError,
    KeyIdRetiredError,
    KeyIdTakenError,
    KeyIdUsedError,
    RevokedUnreadableRecordError,
    UnknownKeyIdError,
    UnreadableKeyIdError,
    UnreadableRecord,
    UnreadableRecordError,
    UnreadableRecordsError,
)
from extproc.auth.stored_keys.key_store import CLAIM_TTL_MS, RETIRED_FOR_S, SCAN_COUNT
from extproc.auth.stored_keys.listing import StoredKeyList
from extproc.auth.stored_keys.records import SECRET_PREFIX, StoredKey, new_secret
from extproc.auth.stored_keys.rotation import MAX_GRACE_S
from extproc.auth.stored_keys.store import StoredKeys

__all__ = [
    "CACHE_ENTRIES",
    "CLAIM_TTL_MS",
    "FOUND_TTL_S",
    "MAX_GRACE_S",
    "MISSING_TTL_S",
    "NOT_CACHED",
    "RETIRED_FOR_S",
    "SCAN_COUNT",
    "SECRET_PREFIX",
    "UNREADABLE",
    "CachedAnswer",
    "KeyCache",
    "KeyCreateConflictError",
    "KeyExpiredError",
    "KeyIdRetiredError",
    "KeyIdTakenError",
    "KeyIdUsedError",
    "RevokedUnreadableRecordError",
    "StoredAnswer",
    "StoredKey",
    "StoredKeyList",
    "StoredKeys",
    "UnknownKeyIdError",
    "UnreadableKeyIdError",
    "UnreadableRecord",
    "UnreadableRecordError",
    "UnreadableRecordsError",
    "new_secret",
]
