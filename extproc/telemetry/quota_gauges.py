"""Quota gauges (limit, used, remaining, reset time) read from the shared store.

Counting requests locally would give each replica (and each worker) its own
partial view, and an 80% alert would depend on which one Prometheus scraped.
So the gauges are read from the counters the quota script itself checks:

* every request-serving process notes the quota subjects its requests touched
  (``SubjectTracker.note``: a set insert, no I/O) and publishes them every few
  seconds to one shared sorted set (``<prefix>qa``, score: last seen);
* the process serving ``/metrics`` (``QuotaGauges``) refreshes in the
  background: one round trip trims and lists that set, one pipelined round trip
  reads every listed subject's current window counters and overrides; the
  result is a snapshot that ``collect()`` turns into gauges. A scrape never
  waits on the store; the gauges are as old as the last refresh, which the
  ``aigw_quota_gauges_updated_timestamp_seconds`` gauge tells.

Every gauge carries its rule's ``mode`` (``enforce`` or ``shadow``, from the
config; an operator's override changes the limit, never the mode): alerts that
say "its requests are refused" must leave out shadow rules, which never refuse.
One rule has one mode, so the label adds no series.

Subjects named explicitly in a rule's ``match`` are always listed, with or
without traffic. Every replica lists every subject any replica saw, so all of
them publish the same values: aggregate with ``max`` across instances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc import background
from extproc.config.metrics_model import QuotaGaugesConfig
from extproc.config.quota_model import MICRO_USD_PER_USD, QuotaMode
from extproc.quota.rules import Limit, RuleSet
from extproc.quota.script_numbers import script_count, script_generation, script_limit
from extproc.quota.store import generation_field, held_key
from extproc.store.connection import of_another_type
from extproc.store.outage_log import OutageLog

log = logging.getLogger(__name__)

QUOTA_LABELS = ("rule", "subject_kind", "subject", "counter", "mode")
# Separates kind and subject in the shared set's members (never in a header value).
_SEPARATOR = "\x1f"


def active_set_key(prefix: str) -> str:
    return f"{prefix}qa"


class SubjectTracker:
    """Notes the quota subjects of this process's requests; publishes them to the shared set."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        clock: Callable[[], float],
        interval_s: float,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._key = active_set_key(key_prefix)
        self._clock = clock
        self._interval = interval_s
        self._on_error = on_error
        self._pending: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._publishing = OutageLog(log, "publishing quota subjects failed, the gauges lag")

    def note(self, limits: Iterable[Limit]) -> None:
        pending = self._pending
        for limit in limits:
            pending.add((limit.subject_kind, limit.subject))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, set()
        if not pending:
            return
        now = self._clock()
        try:
            await self._client.zadd(
                self._key, {f"{kind}{_SEPARATOR}{subject}": now for kind, subject in pending}
            )
        except Exception as exc:
            # Seen again on the subject's next request; meanwhile the gauges lag.
            self._publishing.failed(exc)
            self._on_error()
            return
        self._publishing.answered()

    async def close(self) -> None:
        await background.stop(self._task)
        await self.flush()


@dataclass(frozen=True, slots=True)
class QuotaSample:
    limit: Limit
    in_force: int
    # Spent: settled usage, without what running requests hold.
    used: int
    # What requests still running hold (their reservations, settled when they end).
    reserved: int = 0

    @property
    def labels(self) -> list[str]:
        limit = self.limit
        return [limit.rule, limit.subject_kind, limit.subject, limit.counter, _mode(limit)]


class QuotaGauges(Collector):
    """A Prometheus collector over the last snapshot of the store's quota counters."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        rules: Callable[[], RuleSet],
        clock: Callable[[], float],
        config: QuotaGaugesConfig,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._key = active_set_key(key_prefix)
        self._rules = rules
        self._clock = clock
        self._config = config
        self._samples: list[QuotaSample] = []
        self._updated: float | None = None
        self._errors = 0
        self._task: asyncio.Task[None] | None = None
        self._refreshing = OutageLog(log, "quota gauges refresh failed, the gauges lag")
        self._unreadable: frozenset[str] = frozenset()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await background.stop(self._task)

    async def _run(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                # cancellation that close() sends when the refresh fails at that moment.
                async with asyncio.timeout(self._config.refresh_interval_s):
                    await self.refresh()
            except Exception as exc:
                self._errors += 1
                self._refreshing.failed(exc)
            else:
                self._refreshing.answered()
            await asyncio.sleep(self._config.refresh_interval_s)

    async def refresh(self) -> None:
        """Read the current windows of every listed subject: two round trips in all."""
        rules = self._rules()
        if not rules:
            self._samples, self._updated = [], time.time()
            return
        now = self._clock()
        config = self._config
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self._key, "-inf", now - config.retention_s)
            # Keep the most recently seen max_subjects (lowest scores go first).
            pipe.zremrangebyrank(self._key, 0, -(config.max_subjects + 1))
            # Most recent first: past max_subjects (named subjects come first and
            # always stay) the least recently seen are the ones left out.
            pipe.zrange(self._key, 0, -1, desc=True)
            *_, members = await pipe.execute()
        subjects = dict.fromkeys(_static_subjects(rules))
        for member in members:
            kind, _, subject = _text(member).partition(_SEPARATOR)
            subjects[(kind, subject)] = None
        limits = [
            limit
            for kind, subject in list(subjects)[: config.max_subjects]
            for limit in rules.limits_for_subject(kind, subject, now)
        ]
        self._samples = await self._read(limits)
        self._updated = time.time()

    async def _read(self, limits: list[Limit]) -> list[QuotaSample]:
        if not limits:
            return []
        override_keys = list(dict.fromkeys(limit.overrides_key(self._prefix) for limit in limits))
        async with self._client.pipeline(transaction=False) as pipe:
            for key in override_keys:
                pipe.hgetall(key)
            for limit in limits:
                pipe.get(limit.key(self._prefix))
                pipe.get(held_key(limit.key(self._prefix)))
            # Each answer for itself: one key of another type under the prefix (a
            # person's SET, another program's) failed the whole round trip, and every
            # subject's gauges went stale with it.
            results = await pipe.execute(raise_on_error=False)
        overrides = dict(zip(override_keys, results[: len(override_keys)], strict=True))
        samples = []
        unreadable: list[str] = []
        counters = results[len(override_keys) :]
        for limit, used, held in zip(limits, counters[::2], counters[1::2], strict=True):
            overrides_key = limit.overrides_key(self._prefix)
            try:
                found = _answer(overrides[overrides_key], overrides_key)
                override = found.get(limit.override_field.encode())
                # Read as the scripts read them (``5e3`` is an override of 5000 to them),
                # so a gauge shows the limit requests are checked against.
                in_force = _read(override, overrides_key, script_limit, limit.limit)
                # A reset generation the scripts cannot read fails the subject's every
                # request and settlement on this limit (reset_generation.lua): its gauges
                # showed a subject in good order, and nothing named the key.
                generation = found.get(generation_field(limit).encode())
                _read(generation, overrides_key, script_generation, 0)
                counted = _read(used, limit.key(self._prefix), script_count, 0)
                holding = _read(held, held_key(limit.key(self._prefix)), script_count, 0)
            except _UnreadableKeyError as exc:
                # What the quota script refuses the subject's requests for: a gauge
                # would show a guess. The key named is the one to put right.
                unreadable.append(exc.key)
                continue
            # The counter counts what running requests hold too (every request is checked
            # against both); what they hold is no usage yet. Counted as used, four long
            # requests' max_tokens filled a monthly quota's gauge while they ran, and its
            # "quota exhausted" alert fired, though the month was far from spent.
            reserved = min(max(0, holding), max(0, counted))
            samples.append(QuotaSample(limit, in_force, counted - reserved, reserved))
        self._note_unreadable(unreadable)
        return samples

    def _note_unreadable(self, keys: list[str]) -> None:
        """Log the keys whose limits have no gauges, when that list changes (not on every
        refresh: it would repeat every few seconds until someone fixes the key)."""
        found = frozenset(keys)
        if found and found != self._unreadable:
            log.warning(
                "quota gauges: %d counter(s) left out, their keys under the gateway's prefix"
                " hold something other than what the gateway writes: %s",
                len(found),
                ", ".join(sorted(found)),
            )
        self._unreadable = found

    def collect(self) -> Iterator[Metric]:
        samples = self._samples
        limit = GaugeMetricFamily(
            "aigw_quota_limit",
            "Limit in force for a quota counter of a subject (an operator's override, else the "
            "config's); read from the shared store",
            labels=QUOTA_LABELS,
        )
        used = GaugeMetricFamily(
            "aigw_quota_used",
            "Usage counted in the current window of a quota counter of a subject (all replicas):"
            " settled, without what running requests hold",
            labels=QUOTA_LABELS,
        )
        reserved = GaugeMetricFamily(
            "aigw_quota_reserved",
            "What requests still running hold of a token quota counter of a subject (their"
            " reservations, settled when they end)",
            labels=QUOTA_LABELS,
        )
        remaining = GaugeMetricFamily(
            "aigw_quota_remaining",
            "What is left in the current window of a quota counter of a subject for the next"
            " request: the limit less what is used and what running requests hold",
            labels=QUOTA_LABELS,
        )
        reset = GaugeMetricFamily(
            "aigw_quota_reset_timestamp_seconds",
            "When the current window ends (Unix time); absent for lifetime quotas",
            labels=QUOTA_LABELS,
        )
        for sample in samples:
            labels = sample.labels
            # A cost budget counts millionths of a dollar; its gauges say dollars.
            unit = MICRO_USD_PER_USD if sample.limit.kind == "c" else 1
            limit.add_metric(labels, sample.in_force / unit)
            used.add_metric(labels, sample.used / unit)
            if sample.limit.is_budget:
                # Request counters hold nothing: each request counts once, at admission.
                reserved.add_metric(labels, sample.reserved / unit)
            left = max(0, sample.in_force - sample.used - sample.reserved)
            remaining.add_metric(labels, left / unit)
            if sample.limit.window.end is not None:
                reset.add_metric(labels, sample.limit.window.end)
        yield from (limit, used, reserved, remaining, reset)
        updated = GaugeMetricFamily(
            "aigw_quota_gauges_updated_timestamp_seconds",
            "When the quota gauges were last read from the store (Unix time)",
        )
        if self._updated is not None:
            updated.add_metric([], self._updated)
        yield updated
        errors = CounterMetricFamily(
            "aigw_quota_gauges_refresh_errors",
            "Refreshes of the quota gauges that failed (the previous values stay)",
        )
        errors.add_metric([], self._errors)
        yield errors


class _UnreadableKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _answer(found: Any, key: str) -> Any:
    if of_another_type(found):
        raise _UnreadableKeyError(key)
    return found


def _read(found: Any, key: str, parse: Callable[[bytes], int | None], absent: int) -> int:
    """A value of ``key`` as the quota scripts read it (``absent`` when there is none)."""
    if found is None:
        return absent
    value = parse(_answer(found, key))
    if value is None:
        raise _UnreadableKeyError(key)
    return value


def _static_subjects(rules: RuleSet) -> list[tuple[str, str]]:
    """Subjects a rule names by id: listed with or without traffic."""
    found: list[tuple[str, str]] = []
    for rule in rules.rules:
        match = rule.match
        names = (match,) if isinstance(match, str) else match
        found.extend((rule.subject, name) for name in names if name != "*")
    return found


def _mode(limit: Limit) -> str:
    """The rule's mode as the config spells it."""
    return (QuotaMode.ENFORCE if limit.enforce else QuotaMode.SHADOW).value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
