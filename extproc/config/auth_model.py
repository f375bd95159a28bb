"""The ``auth`` section: org API keys, JWT providers, per-route methods, access rules.

Kept apart from ``model`` because it is the largest section and the one
operators change most. Secrets are ``SecretStr``: they never show in a repr, a
log line or a validation error.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from extproc.auth import credential_shapes
from extproc.config.section import Section as _Section
from extproc.config.service_urls import checked_url

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CLAIM_PATH = r"^[A-Za-z0-9_:/.-]{1,256}$"
ClaimPath = Annotated[str, Field(pattern=_CLAIM_PATH)]


class AuthMethod(StrEnum):
    API_KEY = "api_key"
    JWT = "jwt"
    NONE = "none"


class ApiKeyConfig(_Section):
    """One org API key. Its secret comes from exactly one of ``key``, ``key_file``,
    ``key_sha256``, or (when none is set) the file named like the id in
    ``auth.api_key_directory``."""

    id: Annotated[str, Field(pattern=_ID)]
    key: SecretStr | None = None
    key_file: str | None = None
    key_sha256: str | None = None
    user_id: str | None = None
    group_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    expires_at: datetime | None = None
    # Empty: every model / route the route's rules allow.
    allowed_models: tuple[str, ...] = ()
    allowed_routes: tuple[str, ...] = ()

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        # The id is every record's api_key_id (log lines, metric labels, quota keys): a
        # credential pasted there would be published with it. Named by kind, never shown.
        kind = credential_shapes.kind(value)
        if kind is not None:
            raise ValueError(
                f"holds {kind}, not a name: the id is shown in every request's log line, "
                "metrics and quota keys; give the key an id that is no secret"
            )
        return value

    @field_validator("key_sha256")
    @classmethod
    def _check_hash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not _SHA256.match(value):
            raise ValueError("must be the hex SHA-256 of the key (64 hex digits)")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeyConfig:
        given = [self.key is not None, self.key_file is not None, self.key_sha256 is not None]
        if sum(given) > 1:
            raise ValueError("set at most one of key, key_file and key_sha256")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return self


# The least `min_refresh_interval_s`: at most one fetch a second on unknown kids.
MIN_JWKS_REFETCH_S = 1.0


class JwksConfig(_Section):
    """Where a provider's signing keys come from: exactly one of file, inline, url."""

    file: str | None = None
    inline: dict[str, object] | None = None
    url: str | None = None
    # A URL's keys are refetched this often, and on an unknown `kid` at most
    # once per `min_refresh_interval_s`; when the URL is down the cached keys stay
    # for `max_stale_s` after the last good fetch (docs/authentication.md).
    refresh_interval_s: float = Field(default=300.0, gt=0)
    min_refresh_interval_s: float = 10.0
    timeout_s: float = Field(default=2.0, gt=0)
    max_stale_s: float = Field(default=3600.0, gt=0)
    # A plain http:// URL on another host than this one lets anyone on the network
    # path publish keys: refused unless the operator accepts that here.
    allow_http: bool = False

    @field_validator("min_refresh_interval_s")
    @classmethod
    def _check_min_refresh(cls, seconds: float) -> float:
        # The floor bounds what a caller can make the gateway do: each token with a
        # `kid` the keys lack asks for a fetch, so below it anyone sending random kids
        # (no valid token needed) had the gateway fetch the JWKS once per request,
        # hammering the identity provider and queueing every token behind the fetches.
        if seconds < MIN_JWKS_REFETCH_S:
            raise ValueError(
                f"must be at least {MIN_JWKS_REFETCH_S:g} s: below, every token with an"
                " unknown kid, valid or not, would fetch the JWKS again"
            )
        return seconds

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        # Found now rather than at the first fetch, which would only log a warning and
        # leave every token of the provider refused (or, for a broken IPv6 host, stop the
        # gateway with a traceback). A query is the IdP's (Azure AD B2C names its user
        # flow in `?p=`), and a user and password are sent as Basic credentials: both
        # are fetched as written and never logged (``shown_url``).
        if url is None:
            return None
        return checked_url(url, no_query=None, no_credentials=None)

    @model_validator(mode="after")
    def _one_source(self) -> JwksConfig:
        if sum(x is not None for x in (self.file, self.inline, self.url)) != 1:
            raise ValueError("set exactly one of file, inline and url")
        return self


class ClaimMapping(_Section):
    """Which claims become the identity. Paths are dotted (``realm_access.roles``).

    A token must name a user or a group through these paths (limits and rollups
    key on them); only a mapping with both lists empty accepts tokens naming no one.
    """

    user_id: tuple[ClaimPath, ...] = ("sub",)
    # A string claim, or an array claim: then group_id is its first element and
    # access rules consider every element.
    group_id: tuple[ClaimPath, ...] = ("group", "groups")
    # Claims copied into the log line's `claims` object (never the whole token).
    extra: tuple[ClaimPath, ...] = ()


ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


class JwtProviderConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")]
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = ()
    jwks: JwksConfig | None = None
    # HMAC only: a shared secret, never together with a JWKS.
    shared_secret: SecretStr | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    required_claims: tuple[str, ...] = ("exp",)
    claims: ClaimMapping = ClaimMapping()

    @model_validator(mode="after")
    def _keys_match_algorithms(self) -> JwtProviderConfig:
        unknown = [
            a for a in self.algorithms if a not in (*ASYMMETRIC_ALGORITHMS, *HMAC_ALGORITHMS)
        ]
        if unknown:
            raise ValueError(f"unknown algorithm {unknown[0]!r}")
        hmac = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
        if (self.jwks is None) == (self.shared_secret is None):
            raise ValueError("set exactly one of jwks and shared_secret")
        if self.shared_secret is not None and len(hmac) != len(self.algorithms):
            raise ValueError("a shared_secret allows only HS256, HS384 or HS512")
        if self.jwks is not None and hmac:
            raise ValueError("HMAC algorithms need a shared_secret and are never used with a JWKS")
        return self


class RouteAuthConfig(_Section):
    """Which credentials a route accepts. ``none`` alone makes it anonymous."""

    methods: tuple[AuthMethod, ...] = (AuthMethod.API_KEY, AuthMethod.JWT)
    # An extra header carrying an org API key on this route (besides the standard ones).
    api_key_header: str | None = None

    @model_validator(mode="after")
    def _none_alone(self) -> RouteAuthConfig:
        if AuthMethod.NONE in self.methods and len(self.methods) > 1:
            raise ValueError("'none' cannot be combined with other methods")
        if not self.methods:
            raise ValueError("list at least one method (or 'none')")
        return self


class AccessRule(_Section):
    """Who may use what. A request matched by any rule must satisfy one matching rule."""

    name: str = Field(min_length=1)
    # What the rule covers (empty: everything). Model names may end in `*`.
    models: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    # Who it allows: any listed group, user or API key id.
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _allows_someone(self) -> AccessRule:
        if not (self.groups or self.users or self.api_keys):
            raise ValueError("list the groups, users or api_keys the rule allows")
        return self


class AuthConfig(_Section):
    api_keys: tuple[ApiKeyConfig, ...] = ()
    # A mounted Kubernetes Secret: one file per key, named by the key's id.
    api_key_directory: str | None = None
    jwt_providers: tuple[JwtProviderConfig, ...] = ()
    # Routes without an `auth` block use this.
    default: RouteAuthConfig = RouteAuthConfig()
    access_rules: tuple[AccessRule, ...] = ()
    # Bearer tokens longer than this are refused before any parsing.
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        for section, names in (
            ("api_keys", [k.id for k in self.api_keys]),
            ("jwt_providers", [p.name for p in self.jwt_providers]),
        ):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    raise ValueError(f"{section}[{index}]: duplicate {name!r}")
                seen.add(name)
        issuers = [p.issuer for p in self.jwt_providers]
        if len(set(issuers)) != len(issuers):
            raise ValueError("jwt_providers: two providers share an issuer")
        return self
