"""The ``quotas`` section: limit rules per API key, user, group or request header.

A rule names a subject and a selector, optionally the models it covers, and
any number of limits: requests per second/minute/hour/day, tokens per
minute/hour/day, one token quota and one cost quota (in dollars) per calendar
day/week/month (in a time zone) or for a lifetime. Validation happens here; the meaning lives in
``extproc.quota``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from extproc.config.section import Section as _Section
from extproc.headers import CLIENT_CREDENTIAL_HEADERS
from extproc.headers import PREFIX as GATEWAY_HEADER_PREFIX
from extproc.hosts import AUTHORITY, request_host

# Headers whose values are secrets: never a rule's subject.
CREDENTIAL_SUBJECT_HEADERS = frozenset({*CLIENT_CREDENTIAL_HEADERS, "cookie"})

_RULE_NAME = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
# An HTTP field name (RFC 9110's token), or one of Envoy's pseudo-headers (`:authority`):
# a header subject named otherwise (a space, a comma, a quote in it) is a header no
# request carries, and its rule limited nobody.
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+.^_`|~0-9a-z-]+$")
# The request's host. Envoy moves HTTP/1.1's Host into :authority before any filter, so
# a rule on header:host read a header no request carried and limited no one: both
# names are this subject, whose values are hosts as routes name them (hosts.request_host).
HOST_SUBJECT = f"header:{AUTHORITY}"
_HOST_HEADERS = frozenset({"host", AUTHORITY})
# The largest limit the store's Lua scripts count exactly (they compute in doubles): a
# larger one came back wrong (2**63 - 1 as -2**63 in every x-ratelimit-limit-* header,
# and a hard cap then refused every prompt). The management API's bound too.
MAX_LIMIT = 2**53 - 1
# How long a client refused because running requests hold its token budget is asked to
# wait (retry-after) by default: their settlements free what they did not use as they end.
HELD_RETRY_AFTER_S = 5
# The longest such wait: the openai and anthropic SDKs retry on their own after a
# retry-after of up to 60 s; past it they use their own short backoff (or, Anthropic's
# Python client, sleep it whole), so a longer wait would not be the one clients keep.
MAX_HELD_RETRY_AFTER_S = 60


def check_subject(subject: str) -> str:
    """A rule's subject, normalised: ``api_key``, ``user``, ``group`` or ``header:<name>``.

    Never a header carrying a client's credentials: its counters would be keyed by the
    secrets themselves, stored in Redis and printed by ``extproc quota list``."""
    if subject in {"api_key", "user", "group"}:
        return subject
    kind, _, header = subject.partition(":")
    if kind == "header" and header and header == header.strip():
        name = header.lower()
        if not _HEADER_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-):"
                " no request carries it, and the rule would limit no one"
            )
        if name in CREDENTIAL_SUBJECT_HEADERS:
            raise ValueError(
                f"header:{name} carries clients' credentials, which would become quota"
                " subjects in the store; use subject: api_key (or user, group) instead"
            )
        if name.startswith(GATEWAY_HEADER_PREFIX):
            # The gateway writes these for agents after it authenticates; a rule reads
            # the request as the client sent it, so it would count whatever the client
            # wrote there (a new value per request escapes the limit).
            raise ValueError(
                f"header:{name} is a header the gateway sets, and a rule would read the"
                " client's own value of it; use subject: api_key, user or group instead"
            )
        if name in _HOST_HEADERS:
            return HOST_SUBJECT
        return f"header:{name}"
    raise ValueError("must be api_key, user, group or header:<name>")


def host_match(subject: str, match: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """A rule's ``match``, its hosts spelt as the request's host is read (lower case, no
    port, no trailing dot) when the subject is the host: ``Gateway.Local`` matched no
    request, and a client wrote ``GATEWAY.local`` or ``gateway.local:80`` to escape a
    rule on ``gateway.local`` while its routes still served it."""
    if subject != HOST_SUBJECT or match == "*":
        return match
    if isinstance(match, str):
        return request_host(match)
    return tuple(dict.fromkeys(request_host(host) for host in match))


def check_match(match: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """A rule's ``match``, refused when it selects no subject (quota and agent rules)."""
    # A match that selects no subject loaded as a rule that never applied: the cap an
    # operator wrote for every team, as match: ["*"], capped none of them.
    ids = (match,) if isinstance(match, str) else match
    if not ids:
        raise ValueError('an empty list selects no subject: name ids, or "*" for each one')
    if "" in ids:
        raise ValueError('an empty id selects no subject: name ids, or "*" for each one')
    if isinstance(match, tuple) and "*" in match:
        raise ValueError(
            '"*" in a list is taken as an id, not every subject: write match: "*" alone'
        )
    return match


class QuotaMode(StrEnum):
    ENFORCE = "enforce"
    # Count and report, never block.
    SHADOW = "shadow"


class StoreFailure(StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


class QuotaPeriod(StrEnum):
    CALENDAR_DAY = "calendar_day"
    CALENDAR_WEEK = "calendar_week"
    CALENDAR_MONTH = "calendar_month"
    LIFETIME = "lifetime"


class TokenQuota(_Section):
    limit: int = Field(gt=0, le=MAX_LIMIT)
    period: QuotaPeriod = QuotaPeriod.CALENDAR_MONTH
    # Default: quotas.time_zone.
    time_zone: str | None = None


# A cost budget is counted in millionths of a US dollar: whole numbers the store's
# scripts count exactly up to MAX_LIMIT (about $9 billion), fine enough that a request
# of a few tokens still counts (a request's cost is rounded up to the next millionth).
MICRO_USD_PER_USD = 10**6
MAX_LIMIT_USD = Decimal(MAX_LIMIT) / MICRO_USD_PER_USD


def usd_micros_text(micro_usd: int) -> str:
    """Millionths of a dollar as dollars: ``$5,000.00``, ``$0.000015``, ``-$1.50``."""
    sign = "-" if micro_usd < 0 else ""
    dollars, micros = divmod(abs(micro_usd), MICRO_USD_PER_USD)
    cents = f"{micros:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars:,}.{cents}"


class CostQuota(_Section):
    """A budget in US dollars per calendar period (or for a lifetime), at the prices of
    the config's ``pricing``."""

    limit_usd: Decimal = Field(gt=0, le=MAX_LIMIT_USD)
    period: QuotaPeriod = QuotaPeriod.CALENDAR_MONTH
    # Default: quotas.time_zone.
    time_zone: str | None = None

    @field_validator("limit_usd")
    @classmethod
    def _whole_micro_dollars(cls, limit: Decimal) -> Decimal:
        if (limit * MICRO_USD_PER_USD) % 1:
            raise ValueError("at most six decimals: budgets count millionths of a dollar")
        return limit

    @property
    def limit_micro_usd(self) -> int:
        return int(self.limit_usd * MICRO_USD_PER_USD)


class LimitRule(_Section):
    name: Annotated[str, Field(pattern=_RULE_NAME)]
    # api_key, user, group, or header:<name> (a request header's value, e.g. x-user-type)
    subject: str
    # "*": each subject separately; or one id, or a list of ids.
    match: str | tuple[str, ...] = "*"
    # Empty: every model. A trailing * matches a prefix.
    models: tuple[str, ...] = ()
    requests_per_second: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_minute: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_hour: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    requests_per_day: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    tokens_per_minute: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    tokens_per_hour: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    tokens_per_day: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    token_quota: TokenQuota | None = None
    # A budget in dollars: each request counts what it costs at the config's prices.
    cost_quota: CostQuota | None = None
    mode: QuotaMode = QuotaMode.ENFORCE
    # Cap each request's max_tokens at what the rule's token budgets have left, so
    # the budget holds up to the accuracy of the prompt estimate.
    hard_cap: bool = False
    # Default: quotas.on_store_failure.
    on_store_failure: StoreFailure | None = None
    # Default: quotas.held_retry_after_s.
    held_retry_after_s: int | None = Field(default=None, ge=1, le=MAX_HELD_RETRY_AFTER_S)

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, subject: str) -> str:
        return check_subject(subject)

    @field_validator("match")
    @classmethod
    def _check_match(
        cls, match: str | tuple[str, ...], info: ValidationInfo
    ) -> str | tuple[str, ...]:
        return check_match(host_match(info.data.get("subject", ""), match))

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        # Compared trimmed (extproc.model_names): an empty pattern covers no model, and
        # a rule whose only pattern it was loaded and capped nothing.
        if any(not model.strip() for model in models):
            raise ValueError(
                "an empty pattern names no model: name models, or leave models out for all"
            )
        return models

    @model_validator(mode="after")
    def _has_a_limit(self) -> LimitRule:
        limits = (
            self.requests_per_second,
            self.requests_per_minute,
            self.requests_per_hour,
            self.requests_per_day,
            self.tokens_per_minute,
            self.tokens_per_hour,
            self.tokens_per_day,
            self.token_quota,
        )
        if all(limit is None for limit in limits) and self.cost_quota is None:
            raise ValueError(
                "set at least one limit (requests_per_*, tokens_per_*, token_quota, cost_quota)"
            )
        budgets = (*limits[4:], self.cost_quota)
        if self.held_retry_after_s is not None and all(limit is None for limit in budgets):
            # Only a budget is held by running requests: a request limit counts each
            # request once, at admission, and its refusal lasts until its window resets.
            raise ValueError(
                "held_retry_after_s is the wait of a budget that running requests hold, and"
                " the rule has none: add tokens_per_*, token_quota or cost_quota, or remove it"
            )
        if self.hard_cap and all(limit is None for limit in limits[4:]):
            # The cap is what the rule's token budgets leave an answer: with request limits
            # alone, every answer went out as uncapped as without it.
            raise ValueError(
                "hard_cap caps answers at what the rule's token budgets leave, and it has"
                " none: add tokens_per_* or token_quota, or remove hard_cap"
            )
        return self


class QuotasConfig(_Section):
    rules: tuple[LimitRule, ...] = ()
    time_zone: str = "UTC"
    # Completion tokens reserved when a request names no max_tokens; bounded like a limit,
    # since a reservation is counted by the same scripts.
    default_max_tokens: int = Field(default=1024, gt=0, le=MAX_LIMIT)
    on_store_failure: StoreFailure = StoreFailure.FAIL_CLOSED
    # retry-after of a 429 for a token budget that running requests hold; a rule's own
    # held_retry_after_s overrides it.
    held_retry_after_s: int = Field(default=HELD_RETRY_AFTER_S, ge=1, le=MAX_HELD_RETRY_AFTER_S)

    @model_validator(mode="after")
    def _unique_rules(self) -> QuotasConfig:
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{index}].name: duplicate rule {rule.name!r}")
            seen.add(rule.name)
        return self
