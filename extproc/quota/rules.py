"""Which limits apply to a request: rules x the request's subjects x their windows.

A request has up to four kinds of subject: its API key, its user, its group,
and request header values. Every rule whose subject, selector and model scope
match yields one limit per configured counter; all of them are checked, and
the tightest decides. Counter keys carry the subject in a hash tag, so one
subject's counters live in one Redis Cluster slot and one script checks them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from extproc.config.quota_model import (
    HELD_RETRY_AFTER_S,
    HOST_SUBJECT,
    LimitRule,
    QuotaMode,
    QuotasConfig,
    StoreFailure,
    usd_micros_text,
)
from extproc.context import Identity
from extproc.errors import BadRequestError
from extproc.hosts import host_of
from extproc.model_names import comparable, covering_aliases, covers
from extproc.quota.windows import Window, WindowKind, validate_timezone, window_for
from extproc.time_zones import zone_named

# Counter -> (window kind, request or token counter)
_COUNTERS: tuple[tuple[str, WindowKind, str], ...] = (
    ("requests_per_second", WindowKind.SECOND, "r"),
    ("requests_per_minute", WindowKind.MINUTE, "r"),
    ("requests_per_hour", WindowKind.HOUR, "r"),
    ("requests_per_day", WindowKind.DAY, "r"),
    ("tokens_per_minute", WindowKind.MINUTE, "t"),
    ("tokens_per_hour", WindowKind.HOUR, "t"),
    ("tokens_per_day", WindowKind.DAY, "t"),
)
# The most values one header subject's header may carry (each is a subject of its own).
MAX_HEADER_SUBJECTS = 16
_PERIODS = {
    "calendar_day": WindowKind.CALENDAR_DAY,
    "calendar_week": WindowKind.CALENDAR_WEEK,
    "calendar_month": WindowKind.CALENDAR_MONTH,
    "lifetime": WindowKind.LIFETIME,
}


@dataclass(frozen=True, slots=True)
class Limit:
    """One counter a request is checked against."""

    rule: str
    subject_kind: str
    subject: str
    counter: str  # e.g. requests_per_minute, token_quota, cost_quota
    kind: str  # "r" requests, "t" tokens, "c" cost (millionths of a US dollar)
    limit: int
    window: Window
    enforce: bool
    fail_open: bool
    time_zone: str
    hard_cap: bool = False
    # retry-after, in seconds, of a refusal by this token budget while running requests
    # hold what it lacks (quotas.held_retry_after_s, or the rule's own).
    held_retry_after: int = HELD_RETRY_AFTER_S

    @property
    def is_quota(self) -> bool:
        """A calendar (or lifetime) budget, of tokens or dollars; not a rate limit."""
        return self.counter in ("token_quota", "cost_quota")

    @property
    def is_budget(self) -> bool:
        """Counts what requests use (tokens, dollars), reserved while they run and
        settled when they end; a request limit counts each request once."""
        return self.kind != "r"

    def amount_text(self, amount: int) -> str:
        """``amount`` of this limit's counter as people read it: dollars for a cost
        budget (which counts millionths of one), else the number."""
        return usd_micros_text(amount) if self.kind == "c" else str(amount)

    @property
    def subject_tag(self) -> str:
        return f"{{{self.subject_kind}:{self.subject}}}"

    @property
    def override_field(self) -> str:
        return f"{self.rule}:{self.counter}"

    def overrides_key(self, prefix: str) -> str:
        """The subject's hash of limits set at run time, field ``<rule>:<counter>``."""
        return f"{prefix}qo:{self.subject_tag}"

    def key(self, prefix: str) -> str:
        # The braces are the hash tag: every counter of one subject shares a slot.
        return f"{prefix}q:{self.subject_tag}:{self.rule}:{self.kind}:{self.window.key}"

    def ended(self, now: float) -> bool:
        """Whether the window this limit counts in has ended by ``now``: a token quota's
        period the request started in, or a rate limit's window that ended while the
        store was asked. The request's next one counts in a window of its own."""
        end = self.window.end
        return end is not None and now >= end

    def window_at(self, now: float) -> Window:
        """The window of this limit's kind that holds ``now``."""
        if not self.ended(now):
            return self.window
        return window_for(self.window.kind, now, self.time_zone)

    def reset_time(self) -> str | None:
        """When the window ends, in ISO 8601 in the zone it is computed in (None: never).

        A Berlin month ends at midnight on the 1st there: written in UTC, the same instant
        read as 23:00 on the last day, which a reader had to convert back."""
        end = self.window.end
        if end is None:
            return None
        local = datetime.fromtimestamp(end, zone_named(self.time_zone))
        return local.isoformat(timespec="seconds")

    def describe(self, limit: int | None = None) -> str:
        amount = self.limit if limit is None else limit
        unit = {"r": " requests", "t": " tokens"}.get(self.kind, "")
        counted = f"{self.amount_text(amount)}{unit}"
        if self.is_quota:
            period = self.window.kind.value.replace("_", " ")
            zone = f" ({self.time_zone})" if self.window.kind is not WindowKind.LIFETIME else ""
            return f"{counted} per {period}{zone}"
        return f"{counted} per {self.window.kind.value}"


class RuleSet:
    def __init__(
        self,
        config: QuotasConfig,
        aliases: Mapping[str, str] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``aliases``: each model alias and its model's name, ``groups``: each model
        group's name and its members' (``model_names.covering_aliases``)."""
        # Named by field (and rule): with dozens of rules, "unknown time zone" alone
        # left the operator to search the file for the one mistyped.
        _check_zone("time_zone", config.time_zone)
        for index, rule in enumerate(config.rules):
            for name in ("token_quota", "cost_quota"):
                quota = getattr(rule, name)
                if quota is not None and quota.time_zone:
                    field = f"rules[{index}].{name}.time_zone (rule {rule.name!r})"
                    _check_zone(field, quota.time_zone)
        self._config = config
        self.rules = config.rules
        # Each rule's model patterns as names are compared (extproc.model_names), once,
        # with the model of each alias they name.
        self._models = {
            rule.name: covering_aliases(rule.models, aliases or {}, groups) for rule in self.rules
        }

    def __bool__(self) -> bool:
        return bool(self.rules)

    def limits_for_subject(self, subject_kind: str, subject: str, now: float) -> list[Limit]:
        """Every limit of every rule that applies to one subject (for management)."""
        found: list[Limit] = []
        for rule in self.rules:
            if rule.subject == subject_kind and selected(rule.match, subject):
                found.extend(self._limits(rule, subject, now))
        return found

    def caller_limits(
        self, identity: Identity, headers: dict[str, str], now: float
    ) -> list[tuple[Limit, LimitRule]]:
        """The enforced limits on the caller's requests, whatever their model (each with
        its rule, whose ``models`` say which it covers), in the windows of ``now``: what a
        caller asking for its own limits is shown. Shadow rules never refuse it."""
        found: list[tuple[Limit, LimitRule]] = []
        for rule in self.rules:
            if rule.mode is not QuotaMode.ENFORCE:
                continue
            for subject in subject_values(rule.subject, identity, headers):
                if selected(rule.match, subject):
                    found.extend((limit, rule) for limit in self._limits(rule, subject, now))
        return found

    def limits_for(
        self,
        identity: Identity,
        headers: dict[str, str],
        model: str,
        now: float,
        canonical: str | None = None,
        started: float | None = None,
    ) -> list[Limit]:
        """The limits on this request; a rule naming ``model`` or its ``canonical`` name
        (``model`` being an alias) covers it.

        Rate limits count in the windows of ``now``, when the request is checked (just
        before it goes to its provider), token quotas in the calendar period of
        ``started``, when the request began (default ``now``)."""
        names = tuple(comparable(name) for name in (model, canonical) if name is not None)
        found: list[Limit] = []
        for rule in self.rules:
            patterns = self._models[rule.name]
            if patterns and not covers(patterns, names):
                continue  # before the subjects: a rule not covering the model reads none
            for subject in subject_values(rule.subject, identity, headers):
                if not selected(rule.match, subject):
                    continue
                found.extend(self._limits(rule, subject, now, started))
        return refusal_order(found)

    def _limits(
        self, rule: LimitRule, subject: str, now: float, started: float | None = None
    ) -> list[Limit]:
        config = self._config
        enforce = rule.mode is QuotaMode.ENFORCE
        fail_open = (rule.on_store_failure or config.on_store_failure) is StoreFailure.FAIL_OPEN
        held_wait = rule.held_retry_after_s or config.held_retry_after_s
        # header:<name> keeps the header name: its values are a namespace of their own.
        subject_kind = rule.subject
        limits: list[Limit] = []
        for counter, window_kind, unit in _COUNTERS:
            value = getattr(rule, counter)
            if value is not None:
                window = window_for(window_kind, now)
                limits.append(
                    Limit(rule.name, subject_kind, subject, counter, unit, value, window,
                          enforce, fail_open, "UTC", rule.hard_cap, held_wait)
                )  # fmt: skip
        # The period of the request's start: the one its log line and usage rollup name,
        # so that a period's counter and its report count the same requests. Rate limits
        # above pace the calls providers get, so they count when the request is checked:
        # counted in the windows they started in, requests held open and sent on together
        # would all pass a per-second or per-minute limit.
        period = now if started is None else started
        quota = rule.token_quota
        if quota is not None:
            zone = quota.time_zone or config.time_zone
            window = window_for(_PERIODS[quota.period.value], period, zone)
            limits.append(
                Limit(rule.name, subject_kind, subject, "token_quota", "t", quota.limit, window,
                      enforce, fail_open, zone, rule.hard_cap, held_wait)
            )  # fmt: skip
        budget = rule.cost_quota
        if budget is not None:
            zone = budget.time_zone or config.time_zone
            window = window_for(_PERIODS[budget.period.value], period, zone)
            # Never hard-capped: a cap lowers an answer's tokens, and a dollar budget
            # would need each model's prices to do it (the rule's token budgets may).
            limits.append(
                Limit(rule.name, subject_kind, subject, "cost_quota", "c",
                      budget.limit_micro_usd, window, enforce, fail_open, zone, False,
                      held_wait)
            )  # fmt: skip
        return limits


def _check_zone(field: str, zone: str) -> None:
    """``validate_timezone``, its ValueError prefixed with the field that names the zone."""
    try:
        validate_timezone(zone)
    except ValueError as error:
        raise ValueError(f"{field}: {error}") from None


def refusal_order(limits: list[Limit]) -> list[Limit]:
    """The limits, the one that holds longest first (lifetime quotas, then the latest reset).

    The reserve script names the first limit that refuses, and the 429's
    message, ``retry-after`` and ``x-ratelimit-reset-*`` come from it. When
    several refuse (a minute's and a month's both used up), the request stays
    refused until the last of them resets: naming the minute's told clients to
    come back in seconds, only to be refused again. Stable: config order among
    limits that reset together.
    """
    return sorted(limits, key=_holds_until, reverse=True)


def _holds_until(limit: Limit) -> float:
    end = limit.window.end
    return math.inf if end is None else end


def subject_values(kind: str, identity: Identity, headers: dict[str, str]) -> list[str]:
    """The request's subjects of a rule's ``kind``: its key, user or group, or each value of
    a header. A header sent twice reaches the gateway as one comma-separated list (as HTTP
    reads it), and a client may write one list itself: each value is a subject, so a
    client cannot slip a limited value past its rule by adding another beside it (a proxy
    in front appending its value to the client's header)."""
    if kind == "api_key":
        found = identity.api_key_id
    elif kind == "user":
        found = identity.user_id
    elif kind == "group":
        found = identity.group_id
    elif kind == HOST_SUBJECT:
        # The host the routes see, not the header as spelt: a client could otherwise
        # escape a rule on its host by its case, a port or a trailing dot.
        found = host_of(headers)
    else:
        name = kind.removeprefix("header:")
        listed = (part.strip() for part in headers.get(name, "").split(","))
        values = list(dict.fromkeys(part for part in listed if part))
        if len(values) > MAX_HEADER_SUBJECTS:
            # Each is counted: a request must not open counters by the thousand (a rule
            # matching "*"), and keeping only some would let a limited value hide.
            raise BadRequestError(
                f"header '{name}' carries {len(values)} values; a quota counts each, and "
                f"takes at most {MAX_HEADER_SUBJECTS}",
                code="too_many_header_values",
            )
        return values
    return [found] if found else []


def selected(match: str | tuple[str, ...], subject: str) -> bool:
    """Whether a rule's ``match`` (``"*"``, one id or a list of ids) selects ``subject``."""
    if isinstance(match, str):
        return match == "*" or match == subject
    return subject in match


def tightest(
    limits: Sequence[Limit], used: Sequence[int], effective: Sequence[int], kind: str
) -> int | None:
    """Index of the limit of ``kind`` with the least left, for the rate-limit headers."""
    best: int | None = None
    for index, limit in enumerate(limits):
        if limit.kind != kind or not limit.enforce:
            continue
        left = effective[index] - used[index]
        if best is None or left < effective[best] - used[best]:
            best = index
    return best
