"""Quota state as operators see and change it: read, override, adjust, reset, list.

The counters and override hashes are the ones ``QuotaStore.reserve`` checks:
keys come from ``Limit.key`` / ``Limit.overrides_key`` (their one source of
truth) and the current window from the Redis clock estimate, so what this
module reads and writes is exactly what the next request is checked against.
Requests naming what the config does not know raise ``NotFoundError`` or
``InvalidArgumentError``, which the gRPC service turns into status codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from extproc.config.quota_model import HOST_SUBJECT, MAX_LIMIT
from extproc.hosts import AUTHORITY, request_host
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.script_numbers import script_count, script_generation, script_limit
from extproc.quota.store import QuotaStore, generation_field, held_key
from extproc.store.connection import of_another_type
from extproc.store.scan_pages import ScanPosition, scan_batch
from extproc.store.scripts import script_source

# Keys are scanned in batches of about this many per SCAN call (a hint to Redis).
SCAN_COUNT = 1000
# Subjects whose state one round trip of a list reads (a few reads each).
READ_BATCH = 500
# The largest limit or adjustment an operator may set: the config's own bound (the
# quota scripts count exactly only up to it).
MAX_AMOUNT = MAX_LIMIT
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
# Delete counters and bump their reset generations in one atomic step
# (extproc/store/lua/quota_reset.lua), reading each generation as every quota script does.
_RESET_SCRIPT = script_source("quota_reset")


class InvalidArgumentError(ValueError):
    """The request is malformed: an unknown subject kind, a missing field, a bad value."""


class NotFoundError(LookupError):
    """The subject, rule or counter is not one the config's quota rules have."""


@dataclass(frozen=True, slots=True)
class UnreadableKey:
    """A key of a subject's quota state that holds what the gateway never writes there."""

    key: str
    reason: str


class UnreadableStateError(Exception):
    """A subject's quota state cannot be read: keys under the gateway's prefix hold what it
    never wrote (a person's SET, another program's list, a hand-written count). The store
    answered: a person must move the keys away, trying again cannot help."""

    def __init__(self, kind: str, subject: str, keys: list[UnreadableKey]) -> None:
        self.subject_kind = kind
        self.subject = subject
        self.keys = keys
        named = "; ".join(f"{found.key} {found.reason}" for found in keys)
        super().__init__(f"the quota state of {kind} {subject!r} cannot be read: {named}")


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit of one subject as it stands in the current window."""

    limit: Limit
    in_force: int
    overridden: bool
    # Spent: the settled requests' usage, without what running requests hold (as the
    # gauge aigw_quota_used counts it).
    used: int
    # What requests still running hold of a token limit (aigw_quota_reserved).
    reserved: int = 0

    @property
    def remaining(self) -> int:
        """What the next request is checked against: the limit less both."""
        return max(0, self.in_force - self.used - self.reserved)

    def as_dict(self) -> dict[str, Any]:
        """The state for an audit line."""
        return {
            "limit": self.in_force,
            "configured_limit": self.limit.limit,
            "overridden": self.overridden,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
            "window": self.limit.window.key,
        }


def normalize_kind(kind: str) -> str:
    """The subject kind as the config spells it (header names are lower-cased there)."""
    kind = kind.strip()
    if kind.startswith("header:"):
        name = kind.removeprefix("header:").strip().lower()
        # header:host is the host's subject, as in the config (quota_model.HOST_SUBJECT).
        return HOST_SUBJECT if name in ("host", AUTHORITY) else "header:" + name
    return kind


def normalize_subject(kind: str, subject: str) -> str:
    """A subject of ``kind`` (normalised) as the gateway counts it.

    The host is counted as routes read it (lower case, no port, no trailing dot), so
    ``Gateway.Local:10000`` named a counter no request ever wrote: a read showed
    nothing used and a change went to a subject no request is checked against.
    Another header's value is counted without the spaces around it (``subject_values``),
    so a value pasted with a trailing space or line end did the same.
    """
    if kind == HOST_SUBJECT:
        return request_host(subject)
    return subject.strip() if kind.startswith("header:") else subject


class QuotaAdmin:
    """Reads and changes one store's quota state under one config's rules."""

    def __init__(self, client: Any, key_prefix: str, quota_store: QuotaStore) -> None:
        self._client = client
        self._prefix = key_prefix
        # Its clock estimate places "now" in the window requests are counted in;
        # its settle script adjusts a counter the way settlement does.
        self._quota_store = quota_store

    def now(self) -> float:
        return self._quota_store.now()

    @staticmethod
    def check_kind(rules: RuleSet, kind: str) -> None:
        kinds = sorted({rule.subject for rule in rules.rules})
        if kind not in kinds:
            known = ", ".join(kinds) or "none"
            raise InvalidArgumentError(
                f"unknown subject kind {kind!r} (the quota rules use: {known})"
            )

    def limits(self, rules: RuleSet, kind: str, subject: str) -> list[Limit]:
        """Every limit of every rule that applies to the subject, in the current windows."""
        self.check_kind(rules, kind)
        if not subject:
            raise InvalidArgumentError("subject is required")
        found = rules.limits_for_subject(kind, subject, self.now())
        if not found:
            raise NotFoundError(f"no quota rule applies to {kind} {subject!r}")
        return found

    @staticmethod
    def select(limits: list[Limit], rule: str, counter: str) -> list[Limit]:
        """The limits named by rule and counter; an empty name selects all of that level."""
        rules = sorted({limit.rule for limit in limits})
        if rule and rule not in rules:
            subject = f"{limits[0].subject_kind} {limits[0].subject!r}"
            raise NotFoundError(
                f"rule {rule!r} does not apply to {subject} (rules that do: {', '.join(rules)})"
            )
        chosen = [limit for limit in limits if not rule or limit.rule == rule]
        counters = sorted({limit.counter for limit in chosen})
        if counter and counter not in counters:
            owner, has = (f"rule {rule!r}", "has") if rule else ("the subject's rules", "have")
            raise NotFoundError(
                f"{owner} {has} no counter {counter!r} ({'it' if rule else 'they'} {has}: "
                f"{', '.join(counters)})"
            )
        return [limit for limit in chosen if not counter or limit.counter == counter]

    @classmethod
    def select_one(cls, limits: list[Limit], rule: str, counter: str) -> Limit:
        if not rule or not counter:
            raise InvalidArgumentError("rule and counter are required")
        return cls.select(limits, rule, counter)[0]

    async def read(self, limits: list[Limit]) -> list[LimitState]:
        """The state of limits of one subject: one round trip (they share a hash tag).

        ``UnreadableStateError`` names the keys that hold what the gateway never writes:
        before, such a key failed the call as a store outage (UNAVAILABLE, "the store did
        not answer"), or a value that is no integer as an internal error."""
        if not limits:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            self._queue_read(pipe, limits)
            # Each answer on its own: a WRONGTYPE is about one key, not the store.
            answers = await pipe.execute(raise_on_error=False)
        return self._states(limits, answers)

    async def read_subjects(
        self, subjects: list[tuple[str, list[Limit]]]
    ) -> list[tuple[str, list[LimitState] | UnreadableStateError]]:
        """``read`` of many subjects, ``READ_BATCH`` of them per round trip: a list of
        thousands of subjects took one round trip each, and ``extproc quota list`` of
        20,000 users with a counter this month outlasted its 10 s timeout. A subject
        whose state cannot be read comes with its ``UnreadableStateError``."""
        found: list[tuple[str, list[LimitState] | UnreadableStateError]] = []
        for first in range(0, len(subjects), READ_BATCH):
            batch = [(subject, limits) for subject, limits in subjects[first:first + READ_BATCH]
                     if limits]  # fmt: skip
            async with self._client.pipeline(transaction=False) as pipe:
                for _, limits in batch:
                    self._queue_read(pipe, limits)
                answers = await pipe.execute(raise_on_error=False)
            at = 0
            for subject, limits in batch:
                count = 1 + 2 * len(limits)
                try:
                    found.append((subject, self._states(limits, answers[at : at + count])))
                except UnreadableStateError as exc:
                    found.append((subject, exc))
                at += count
        return found

    def _queue_read(self, pipe: Any, limits: list[Limit]) -> None:
        """The reads of one subject's state: its overrides, then each counter and hold."""
        pipe.hgetall(limits[0].overrides_key(self._prefix))
        for limit in limits:
            pipe.get(limit.key(self._prefix))
            # Beside each counter, what running requests hold of it (only token
            # counters have one): in the same round trip, so the two add up.
            pipe.get(held_key(limit.key(self._prefix)))

    def _states(self, limits: list[Limit], answers: list[Any]) -> list[LimitState]:
        """The states ``_queue_read``'s answers give; ``UnreadableStateError`` as ``read``."""
        overrides_key = limits[0].overrides_key(self._prefix)
        overrides, *counters = answers
        unreadable: list[UnreadableKey] = []
        if of_another_type(overrides):
            unreadable.append(UnreadableKey(overrides_key, _ANOTHER_TYPE.format("overrides hash")))
            overrides = {}
        states: list[LimitState] = []
        for limit, used, held in zip(limits, counters[::2], counters[1::2], strict=True):
            key = limit.key(self._prefix)
            override = overrides.get(limit.override_field.encode())
            in_force = script_limit(override) if override is not None else limit.limit
            count = _count(used, key, "counter", unreadable)
            holding: int | None = 0
            if limit.is_budget:
                # The reserve script refuses a held amount that is no integer as it
                # refuses such a counter: the subject's requests meet a store failure.
                holding = _count(held, held_key(key), "held amount", unreadable)
            if in_force is None:
                field = limit.override_field
                unreadable.append(
                    UnreadableKey(overrides_key, f"field {field!r} holds no integer{_WRITTEN}")
                )
            generation = overrides.get(generation_field(limit).encode())
            if generation is not None and script_generation(generation) is None:
                field = generation_field(limit)
                unreadable.append(
                    UnreadableKey(overrides_key, f"field {field!r} holds no integer{_WRITTEN}")
                )
            if in_force is not None and count is not None and holding is not None:
                # The counter counts both what was spent and what running requests hold
                # (every request is checked against the sum). Shown as used, four long
                # requests' max_tokens read as a month's quota spent while they ran, where
                # the gauges say "0 used, 128016 reserved". A hold is never more than the
                # counter (an operator's negative adjustment may bring that below it).
                reserved = min(max(0, holding), max(0, count))
                states.append(
                    LimitState(limit, in_force, override is not None, count - reserved, reserved)
                )
        if unreadable:
            raise UnreadableStateError(limits[0].subject_kind, limits[0].subject, unreadable)
        return states

    async def set_limit(self, limit: Limit, value: int) -> None:
        """Override the limit for its subject; 0 goes back to the config's value."""
        if not 0 <= value <= MAX_AMOUNT:
            raise InvalidArgumentError(
                f"limit must be 0 (the config's value) or more, and at most {MAX_AMOUNT}"
            )
        key = limit.overrides_key(self._prefix)
        # No expiry: an override is a standing decision, removed by setting 0.
        if value == 0:
            await self._client.hdel(key, limit.override_field)
        else:
            await self._client.hset(key, limit.override_field, value)

    async def adjust(self, limit: Limit, delta: int) -> None:
        """Add to the current window's counter (never below 0; it expires with its window)."""
        if delta == 0:
            raise InvalidArgumentError("delta must not be 0")
        if abs(delta) > MAX_AMOUNT:
            # Redis would refuse it (an overflow), which reads as a store outage.
            raise InvalidArgumentError(f"delta must be at most {MAX_AMOUNT} either way")
        await self._quota_store.settle_now([(limit, delta)])

    async def reset(self, limits: list[Limit]) -> None:
        """Zero the current window's counters: the next request starts from nothing.

        Requests admitted before the reset and still running settle afterwards: the
        new generation makes the store drop their corrections, which belong to the
        usage the reset discarded, instead of taking them off the usage counted since.
        """
        if not limits:
            return
        keys = [
            key
            for limit in limits
            for key in (
                limit.key(self._prefix),
                limit.overrides_key(self._prefix),
                held_key(limit.key(self._prefix)),
            )
        ]
        fields = [generation_field(limit) for limit in limits]
        # Rare (an operator's command): the script's text each time, no SHA to manage.
        await self._client.eval(_RESET_SCRIPT, len(keys), *keys, *fields)

    async def subjects(self, rules: RuleSet, kind: str) -> list[tuple[str, list[Limit]]]:
        """Subjects of a kind with a counter in a current window, with their limits.

        SCAN, never KEYS: the store may hold millions of keys and serves
        requests meanwhile. RedisCluster's scan_iter walks every primary.
        """
        head = f"{self._prefix}q:{{{kind}:"
        found: set[str] = set()
        pattern = _GLOB_SPECIAL.sub(r"\\\1", head) + "*"
        async for raw in self._client.scan_iter(match=pattern, count=SCAN_COUNT):
            found.add(raw.decode() if isinstance(raw, bytes) else raw)
        names = sorted({name for key in found if (name := _subject_of(key, head)) is not None})
        now = self.now()
        listed: list[tuple[str, list[Limit]]] = []
        for subject in names:
            limits = rules.limits_for_subject(kind, subject, now)
            # Counters of past windows linger until they expire: only current ones count.
            if any(limit.key(self._prefix) in found for limit in limits):
                listed.append((subject, limits))
        return listed

    async def subjects_page(
        self, rules: RuleSet, kind: str, at: ScanPosition, room: int, scans: int
    ) -> tuple[list[tuple[str, list[Limit]]], ScanPosition | None]:
        """Up to ``room`` subjects of ``subjects``, from at most ``scans`` SCAN calls from
        ``at``, by name, and the position after them (None: the scan is over).

        A subject has a counter per limit, which SCAN gives in any order and on any page:
        it is listed on the page that meets the first of its current counters (by name)
        that exists, so that a pass lists it once (unless counters of it are created or
        expire while paging)."""
        head = f"{self._prefix}q:{{{kind}:"
        pattern = _GLOB_SPECIAL.sub(r"\\\1", head) + "*"
        now = self.now()
        met: dict[str, tuple[str, list[Limit]]] = {}
        position: ScanPosition | None = at
        for _ in range(scans):
            if position is None or len(met) >= room:
                break
            batch = await scan_batch(self._client, position, pattern, SCAN_COUNT)
            handled = 0
            for name, _ in batch.names:
                if len(met) >= room:
                    break
                handled += 1
                subject = _subject_of(name, head)
                if subject is None:
                    continue
                limits = rules.limits_for_subject(kind, subject, now)
                # Counters of past windows linger until they expire: only current ones count.
                current = {limit.key(self._prefix) for limit in limits}
                if name in current and (subject not in met or name < met[subject][0]):
                    met[subject] = (name, limits)
            position = batch.position_after(handled)
        owned = await self._first_met(list(met.items()))
        return sorted(owned), position

    async def _first_met(
        self, met: list[tuple[str, tuple[str, list[Limit]]]]
    ) -> list[tuple[str, list[Limit]]]:
        """Of subjects met at one of their counters, those with no current counter before
        it by name (one round trip): a page meeting a later one leaves the subject to the
        page that meets the first."""
        earlier = [
            sorted(key for limit in limits if (key := limit.key(self._prefix)) < name)
            for _, (name, limits) in met
        ]
        counts: list[Any] = []
        if any(earlier):
            async with self._client.pipeline(transaction=False) as pipe:
                for keys in earlier:
                    if keys:
                        # A subject's counters share its hash tag: one EXISTS reads them all.
                        pipe.exists(*keys)
                counts = await pipe.execute()
        found = iter(counts)
        return [
            (subject, limits)
            for (subject, (_, limits)), keys in zip(met, earlier, strict=True)
            if not keys or int(next(found)) == 0
        ]


# Why a key of a subject cannot be read, and what a person does about it.
_WRITTEN = (
    " (written by a person or another program; the subject's requests meet it as a store"
    " failure, on_store_failure applies): move the key away"
)
_ANOTHER_TYPE = "is a key of another type, not the gateway's {}" + _WRITTEN


def _count(raw: Any, key: str, what: str, unreadable: list[UnreadableKey]) -> int | None:
    """A count as read from the store (absent: 0); None, with ``key`` noted as unreadable,
    for what the gateway never writes there."""
    if raw is None:
        return 0
    if of_another_type(raw):
        unreadable.append(UnreadableKey(key, _ANOTHER_TYPE.format(what)))
        return None
    count = script_count(raw)
    if count is None:
        unreadable.append(UnreadableKey(key, f"holds no integer{_WRITTEN}"))
    return count


def _subject_of(key: str, head: str) -> str | None:
    """The subject of a counter key ``<head><subject>}:<rule>:<r|t>:<window>``.

    The subject ends at the LAST ``}``: rule names and window keys never hold
    one, while a subject may (a JWT ``sub``, a header value). Redis's hash tag
    ends at the first, which changes only the slot, shared by all of a
    subject's keys either way. None for a key not of that shape.
    """
    end = key.rfind("}")
    return key[len(head) : end] if end >= len(head) else None
