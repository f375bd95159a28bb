"""Which keys a ``ListKeys`` call asks for: its filters, checked, then applied to each key.

An operator with hundreds of keys looks for a team's, a user's, the expired ones or
those that expire this week; before, ``keys list`` printed every key and left the search
to ``grep``, which cannot compare times. The filters run in the gateway on the store's
records as it reads them (there is no index to read fewer; a page of a paged listing
reads a part), so the answer and the CLI's output carry only the keys asked for.

A key's status is told here, for the filter and for the CLI's STATUS column alike:
``disabled`` (a config key with ``enabled: false``, or a stored key turned off by ``keys
disable``), ``expired``, ``rotating`` (works, and the old secret of a rotation still
works too) or ``active``. A revoked key is no
status: its record is deleted and only its retired id is left, with no user or group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from extproc.config.model import did_you_mean
from extproc.management.v1 import management_pb2 as pb

ACTIVE = "active"
ROTATING = "rotating"
EXPIRED = "expired"
DISABLED = "disabled"
STATUSES = (ACTIVE, ROTATING, EXPIRED, DISABLED)
SOURCES = ("config", "store")


class KeyFilterError(ValueError):
    """A filter that cannot be applied (INVALID_ARGUMENT): a typo must not read as "no
    such keys"."""


def status_of(key: pb.KeyInfo, now: float) -> str:
    """One of ``STATUSES``: what a request with the key's secret gets now."""
    if not key.enabled:
        return DISABLED
    if key.expires_at and key.expires_at <= now:
        return EXPIRED
    if key.previous_expires_at > now:
        return ROTATING
    return ACTIVE


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """The filters of one listing; an empty one passes every key."""

    now: float
    user_id: str = ""
    group_id: str = ""
    statuses: frozenset[str] = frozenset()
    # Keys expiring in (now, now + this]; 0: no such filter.
    expiring_within_s: float = 0.0
    source: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, request: pb.ListKeysRequest, now: float) -> KeyFilter:
        """The request's filters; ``KeyFilterError`` naming the first one that
        cannot be applied."""
        statuses = frozenset(name.strip().lower() for name in request.status)
        for name in sorted(statuses):
            if name == "revoked":
                raise KeyFilterError(
                    "status: a revoked key is deleted, not listed (its id stays retired,"
                    " and `extproc keys create` of it says since when); the states of the"
                    f" keys listed are {', '.join(STATUSES)}"
                )
            if name not in STATUSES:
                raise KeyFilterError(
                    f"status: unknown status {name!r}{did_you_mean(name, list(STATUSES))}"
                    f" (one of {', '.join(STATUSES)})"
                )
        within = request.expiring_within_seconds
        if not math.isfinite(within) or within < 0:
            raise KeyFilterError(
                "expiring_within_seconds must be a number of seconds above 0 (or 0: any)"
            )
        if within and statuses == {EXPIRED}:
            # No key passes both: the answer "no API key passes these filters" read as
            # "none has expired, none expires soon" to an operator asking for either.
            raise KeyFilterError(
                "status 'expired' and expiring_within_seconds together match no key: the"
                " one lists keys already expired, the other keys that expire from now on"
                " (not those already expired); ask for each on its own"
            )
        source = request.source.strip().lower()
        if source and source not in SOURCES:
            raise KeyFilterError(f"source: unknown source {request.source!r} (config or store)")
        return cls(
            now=now,
            user_id=request.user_id,
            group_id=request.group_id,
            statuses=statuses,
            expiring_within_s=within,
            source=source,
            labels=dict(request.labels),
        )

    def passes(self, key: pb.KeyInfo) -> bool:
        """Whether ``key`` is one the listing asked for: every filter given holds."""
        if self.user_id and key.user_id != self.user_id:
            return False
        if self.group_id and key.group_id != self.group_id:
            return False
        if self.source and key.source != self.source:
            return False
        if any(key.labels.get(name) != value for name, value in self.labels.items()):
            return False
        if self.statuses and not self._in_status(key):
            return False
        if self.expiring_within_s:
            expires = key.expires_at
            return bool(expires) and self.now < expires <= self.now + self.expiring_within_s
        return True

    def _in_status(self, key: pb.KeyInfo) -> bool:
        status = status_of(key, self.now)
        # A key in a rotation's grace works: it is active too.
        return status in self.statuses or (status == ROTATING and ACTIVE in self.statuses)
