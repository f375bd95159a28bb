"""The record format: how a stored key's fields are written and read back, never its secret.

A record is the hash ``<prefix>key:{<sha256 hex>}`` (see the package's docstring for
its fields). Reading one is strict: a record whose fields the gateway never writes so
raises ``UnreadableRecordError`` instead of passing for a key with other limits.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.auth.api_keys import ApiKey
from extproc.auth.stored_keys.errors import UnreadableRecordError

SECRET_PREFIX = "aigw-"
DIGEST_HEX = re.compile(r"[0-9a-f]{64}")
RECORD_DIGEST = re.compile(r"\{([0-9a-f]{64})\}$")
# How much of a record's digest names it where people read it: enough to find it with
# SCAN MATCH, never the whole hash of a secret (no answer of the API carries one).
_DIGEST_SHOWN = 12

# What a person does about a record the gateway cannot read.
BY_OTHERS = " (written by a person or another program)"
WRITTEN = f"{BY_OTHERS}: move the key away"
ANOTHER_TYPE = "is a key of another type, not a stored API key's record"


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


def field(record: Any, name: str) -> str | None:
    """One field of a record as HGETALL returns it (bytes names and values)."""
    if not isinstance(record, dict):
        return None
    value = record.get(name.encode(), record.get(name))
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def previous(record: Any) -> str | None:
    """The digest of the old secret a rotation left working, if the record names one."""
    value = field(record, "previous")
    return value if value is not None and DIGEST_HEX.fullmatch(value) else None


def digest_in(name: bytes | str) -> str:
    text = name.decode(errors="replace") if isinstance(name, bytes) else name
    return text.rpartition("{")[2].removesuffix("}")


def shown_name(name: bytes | str) -> str:
    """A record's store key as a listing names it: the digest cut short."""
    text = name.decode(errors="replace") if isinstance(name, bytes) else name
    head, _, rest = text.rpartition("{")
    digest = rest.removesuffix("}")
    if DIGEST_HEX.fullmatch(digest) and rest.endswith("}"):
        return f"{head}{{{digest[:_DIGEST_SHOWN]}...}}"
    return text


def to_fields(stored: StoredKey) -> dict[str, str]:
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


def from_fields(raw: dict[Any, Any]) -> StoredKey | None:
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
        value = float(fields.get(name) or 0.0)
    except ValueError:
        raise _unreadable(fields, name, "no number") from None
    if not math.isfinite(value) or value < 0:
        # Never written so (a moment from 1970 on, or 0: none). Read as one, "nan" made a
        # key that never expires (no time is past it), and "inf" or "-1" stood for never
        # or long ago where the gateway would write 0 or a date.
        raise _unreadable(fields, name, f"{value!r}, no moment from 1970 on")
    return value


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
