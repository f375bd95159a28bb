"""The ``guardrails`` section and the per-route ``guardrails`` / ``enrichment`` fields.

Policies are named lists of guards for the request and the response; a route
names the policies it applies. Webhooks and moderation endpoints are defined
once and referenced by name, so several policies share one connection pool.
Validation happens here (patterns are compiled with RE2 to check them); the
meaning lives in ``extproc.guardrails``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from extproc.config.enrichment_template import TemplatePart, parse_template, render
from extproc.config.section import Section as _Section
from extproc.config.service_urls import checked_url, host_problem
from extproc.headers import CLIENT_CREDENTIAL_HEADERS

_NAME = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME)]
# Request headers that carry the client's credential: never sent to a webhook.
CREDENTIAL_HEADERS = frozenset({*CLIENT_CREDENTIAL_HEADERS, "cookie"})
# A header's name is an RFC 9110 token; its value may hold no control character but a tab.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _lower(value: Any) -> Any:
    # The and kgateway's spelling is upper case (REJECT, MASK); accept both.
    return value.lower() if isinstance(value, str) else value


class GuardAction(StrEnum):
    REJECT = "reject"
    MASK = "mask"


class FailureMode(StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


class Builtin(StrEnum):
    CREDIT_CARD = "CREDIT_CARD"
    SSN = "SSN"
    EMAIL = "EMAIL"
    PHONE_NUMBER = "PHONE_NUMBER"
    CA_SIN = "CA_SIN"


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class PatternConfig(_Section):
    """One regular expression (RE2 syntax); ``name`` labels its masks (``<name>``)."""

    pattern: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    # Streams hold back at most this many characters for a pattern whose match
    # length has no bound (``\\d+``); default: the policy's stream_max_match.
    max_match_chars: int | None = Field(default=None, ge=1, le=4096)


def _pattern(value: Any) -> Any:
    return {"pattern": value} if isinstance(value, str) else value


class GuardConfig(_Section):
    """One guard: a matcher (literals, patterns, builtins), a webhook or a moderation call."""

    name: Name
    literals: tuple[Annotated[str, Field(min_length=1, max_length=1024)], ...] = ()
    patterns: tuple[Annotated[PatternConfig, BeforeValidator(_pattern)], ...] = ()
    builtins: tuple[Annotated[Builtin, BeforeValidator(_upper)], ...] = ()
    # Literals and patterns match regardless of case.
    case_insensitive: bool = False
    webhook: Name | None = None
    moderation: Name | None = None
    action: Annotated[GuardAction, BeforeValidator(_lower)] = GuardAction.REJECT
    # What a masked match becomes; default: <BUILTIN> for builtins, <name> for a
    # named pattern, **** otherwise.
    replacement: str | None = Field(default=None, max_length=256)
    # The refusal the client sees (OpenAI error shape); a webhook's own
    # RejectAction body and status win over these.
    message: str | None = Field(default=None, min_length=1, max_length=2048)
    status: int = Field(default=403, ge=400, le=599)

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: tuple[PatternConfig, ...]) -> tuple[PatternConfig, ...]:
        options = re2.Options()
        options.log_errors = False
        for index, entry in enumerate(patterns):
            try:
                re2.compile(entry.pattern, options)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else "invalid"
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                raise ValueError(f"patterns[{index}]: not a valid RE2 pattern: {reason}") from None
        return patterns

    @model_validator(mode="after")
    def _one_kind(self) -> GuardConfig:
        matcher = bool(self.literals or self.patterns or self.builtins)
        kinds = sum((matcher, self.webhook is not None, self.moderation is not None))
        if kinds != 1:
            raise ValueError(
                "set exactly one kind of guard: literals/patterns/builtins, webhook or moderation"
            )
        if self.action is GuardAction.MASK and self.moderation is not None:
            raise ValueError("moderation guards can only reject")
        return self

    @property
    def kind(self) -> str:
        if self.webhook is not None:
            return "webhook"
        if self.moderation is not None:
            return "moderation"
        return "matcher"


class GuardPolicyConfig(_Section):
    """Guards for the request (before the provider sees it) and the response."""

    name: Name
    request: tuple[GuardConfig, ...] = ()
    response: tuple[GuardConfig, ...] = ()
    # Characters a stream may hold back for a pattern with no length bound.
    stream_max_match: int = Field(default=256, ge=1, le=4096)

    @model_validator(mode="after")
    def _checks(self) -> GuardPolicyConfig:
        for phase, guards in (("request", self.request), ("response", self.response)):
            seen: set[str] = set()
            for index, guard in enumerate(guards):
                if guard.name in seen:
                    raise ValueError(f"{phase}[{index}].name: duplicate guard {guard.name!r}")
                seen.add(guard.name)
                if phase == "response" and guard.moderation is not None:
                    raise ValueError(f"response[{index}]: moderation runs on requests only")
        return self


class WebhookConfig(_Section):
    """A guardrail webhook speaking kgateway's API (POST /request, POST /response)."""

    name: Name
    host: str = Field(min_length=1)
    port: int = Field(default=80, gt=0, lt=65536)
    scheme: Literal["http", "https"] = "http"
    request_path: str = "/request"
    response_path: str = "/response"
    # Request headers passed on to the webhook (exact names, or a prefix ending in *).
    forward_headers: tuple[str, ...] = ()
    # Headers the gateway adds itself, e.g. the webhook's own bearer token.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_ms: int = Field(default=2000, gt=0, le=60_000)
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        # Written into http://{host}:{port}: a URL here (https://hooks.example) or a
        # user and password loaded and every call went to a host that is no host.
        if (problem := host_problem(host)) is not None:
            raise ValueError(f"{problem} (the scheme and port have fields of their own)")
        return host

    @field_validator("request_path", "response_path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with /")
        return path

    @field_validator("headers")
    @classmethod
    def _sendable(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # aiohttp refuses such a header as the call is made: every request guarded by
        # the webhook failed with a 500. A value from an environment variable often ends
        # in a newline (a Secret written with `echo`). The value is never shown: it is
        # usually the webhook's token.
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if _HEADER_VALUE_CONTROL.search(value.get_secret_value()):
                raise ValueError(
                    f"the value of {name!r} holds a control character (a line break?), "
                    "which no HTTP header can carry"
                )
        return headers

    @field_validator("forward_headers")
    @classmethod
    def _no_credentials(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(name.lower() for name in names)
        for name in lowered:
            if name.endswith("*"):
                hits = [c for c in CREDENTIAL_HEADERS if c.startswith(name[:-1])]
            else:
                hits = [name] if name in CREDENTIAL_HEADERS else []
            if hits:
                raise ValueError(
                    f"{name!r} would forward the client's credential ({hits[0]}); "
                    "the gateway never does"
                )
        return lowered

    @property
    def base_url(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, bracketed in a URL
        return f"{self.scheme}://{host}:{self.port}"


# The roles the guards give texts, on every API: the message roles clients send (OpenAI's
# legacy `function` results included), `system` for system prompts and tool definitions,
# `tool` for tools' results.
MODERATION_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ModerationConfig(_Section):
    """An OpenAI-compatible moderation endpoint (``POST {base_url}/moderations``)."""

    name: Name
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    model: str = "omni-moderation-latest"
    # Category -> the score at or above which it rejects. Categories without a
    # threshold reject when the provider flags them, unless default_threshold is set.
    thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    default_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Which messages are sent: user messages by default.
    roles: tuple[str, ...] = Field(default=("user",), min_length=1)
    # Whether those messages' images are sent too (one call each); default: when the
    # model reads images, as OpenAI's omni-moderation models do (``reads_images``).
    images: bool | None = None
    # The most images of one request checked (one call each): a request with more is one
    # the guard cannot check (failure_mode decides), not hundreds of calls that spend the
    # service's rate limit for every other client and outlast Envoy's wait.
    max_images: int = Field(default=16, ge=1, le=500)
    timeout_ms: int = Field(default=3000, gt=0, le=60_000)
    failure_mode: FailureMode = FailureMode.FAIL_CLOSED

    @property
    def reads_images(self) -> bool:
        """Whether images are sent: ``images`` where set, else for an omni model (its
        text-moderation predecessors refuse an image)."""
        if self.images is not None:
            return self.images
        return self.model.startswith("omni-moderation")

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        # The gateway appends /moderations: a query ended up before it (`?x=1/moderations`,
        # the call going to the base path), and a user and password made aiohttp refuse
        # every call that also carried the key, each then failing as an outage.
        url = checked_url(
            url,
            no_query="the gateway appends /moderations to the URL",
            no_credentials="give the service's key in api_key",
        )
        return url.rstrip("/")

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: tuple[str, ...]) -> tuple[str, ...]:
        # A role no text carries (`users`, `User`) sent the service nothing, and every
        # request was logged as a pass: moderation off without a word.
        unknown = [role for role in roles if role not in MODERATION_ROLES]
        if unknown:
            raise ValueError(
                f"unknown role {unknown[0]!r}: roles are {', '.join(sorted(MODERATION_ROLES))}"
            )
        return roles


class GuardrailsConfig(_Section):
    """The top-level ``guardrails`` section."""

    policies: tuple[GuardPolicyConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    moderation: tuple[ModerationConfig, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> GuardrailsConfig:
        for section, names in (
            ("policies", [p.name for p in self.policies]),
            ("webhooks", [w.name for w in self.webhooks]),
            ("moderation", [m.name for m in self.moderation]),
        ):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    raise ValueError(f"{section}[{index}].name: duplicate name {name!r}")
                seen.add(name)
        webhooks = {w.name for w in self.webhooks}
        moderation = {m.name for m in self.moderation}
        for index, policy in enumerate(self.policies):
            for phase, guards in (("request", policy.request), ("response", policy.response)):
                for position, guard in enumerate(guards):
                    where = f"policies[{index}].{phase}[{position}]"
                    if guard.webhook is not None and guard.webhook not in webhooks:
                        raise ValueError(f"{where}.webhook: unknown webhook {guard.webhook!r}")
                    if guard.moderation is not None and guard.moderation not in moderation:
                        raise ValueError(
                            f"{where}.moderation: unknown moderation {guard.moderation!r}"
                        )
        return self


class EnrichmentMessage(_Section):
    """A message the gateway adds; ``{user_id}``, ``{group_id}``, ``{api_key_id}``,
    ``{route}`` and ``{model}`` are filled in from the request
    (``extproc.config.enrichment_template``)."""

    role: Literal["system", "user"] = "system"
    content: str = Field(min_length=1, max_length=65_536)
    _parts: tuple[TemplatePart, ...] = PrivateAttr(default=())

    @field_validator("content")
    @classmethod
    def _template(cls, content: str) -> str:
        parse_template(content)  # its ValueError names the mistake
        return content

    @model_validator(mode="after")
    def _parsed(self) -> EnrichmentMessage:
        self._parts = parse_template(self.content)
        return self

    def text(self, values: dict[str, str]) -> str:
        """The message for one request: its placeholders filled in from ``values``."""
        # Parsed at validation; a model made without it (model_construct) parses here.
        return render(self._parts or parse_template(self.content), values)


class EnrichmentConfig(_Section):
    """Messages put before and after the client's on one route."""

    prepend: tuple[EnrichmentMessage, ...] = ()
    append: tuple[EnrichmentMessage, ...] = ()


def _names(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


RoutePolicies = Annotated[tuple[Name, ...], BeforeValidator(_names)]
