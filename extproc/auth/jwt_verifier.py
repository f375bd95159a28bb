"""Bearer JWTs: which provider issued a token, whether it is genuine, and who it names.

The token's unverified ``iss`` only picks the provider; everything else is
checked by PyJWT against that provider's config: the algorithm allow-list, the
key (from its JWKS, or its shared secret for HS*), issuer, audiences,
``exp``/``nbf``/``iat`` with the provider's leeway, and the required claims.
A genuine token must name someone: a user or a group through the provider's
claim mapping, or its usage would count against no limit and land in no one's
rollup (unless the mapping names no claim at all). Verified tokens are cached
by their SHA-256 until their ``exp``, so a client reusing a token costs one
hash per request, with no coroutine.

Every refusal is an ``AuthenticationError`` whose message the client sees:
``token expired``, ``token not yet valid`` or ``invalid token: <reason>``. No
message or log line holds any part of a token or any key material.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from jwt.types import Options

from extproc.auth.jwks import JwksSource, KeySet, RemoteJwks, StaticJwks, plain_http
from extproc.config.auth_model import HMAC_ALGORITHMS, ClaimMapping, JwtProviderConfig
from extproc.config.loader import ConfigError
from extproc.egress import DIRECT, EgressProxy
from extproc.errors import AuthenticationError, ServiceUnavailableError

log = logging.getLogger(__name__)

# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

# Most specific first: PyJWT's exceptions subclass one another.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "invalid token: wrong audience"),
    (jwt.InvalidIssuerError, "invalid token: wrong issuer"),
    (jwt.InvalidAlgorithmError, "invalid token: algorithm not allowed"),
    (jwt.InvalidSignatureError, "invalid token: bad signature"),
    (jwt.InvalidIssuedAtError, "invalid token: iat is not a number"),
    (jwt.exceptions.InvalidSubjectError, "invalid token: sub is not a string"),
    (jwt.exceptions.InvalidJTIError, "invalid token: jti is not a string"),
    (jwt.InvalidKeyError, "invalid token: unusable signing key"),
)


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    provider: str  # JwtProviderConfig.name
    user_id: str | None
    group_id: str | None  # first group
    groups: tuple[str, ...]  # every group the token names
    claims: dict[str, object]  # the ClaimMapping.extra claims that were present (for the log)
    expires_at: float | None  # exp


class _Provider:
    """One provider's config with what verification needs ready to hand."""

    __slots__ = ("config", "keys", "options", "secret")

    def __init__(
        self, config: JwtProviderConfig, clock: Callable[[], float], egress: EgressProxy
    ) -> None:
        self.config = config
        self.secret: bytes | None = None
        self.keys: StaticJwks | RemoteJwks | None = None
        if config.shared_secret is not None:
            self.secret = config.shared_secret.get_secret_value().encode("utf-8")
        elif config.jwks is not None and config.jwks.url is not None:
            self.keys = RemoteJwks(config.name, config.jwks, config.algorithms, clock, egress)
        elif config.jwks is not None:
            self.keys = StaticJwks(config.jwks, config.algorithms)
        self.options: Options = {
            "require": list(config.required_claims),
            # PyJWT rejects any token carrying `aud` when no audience is given.
            "verify_aud": bool(config.audiences),
            "enforce_minimum_key_length": True,
        }


class JwtVerifier:
    """Verifies bearer JWTs for the configured providers and caches who they name."""

    def __init__(
        self,
        providers: Sequence[JwtProviderConfig],
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        egress: EgressProxy = DIRECT,
    ) -> None:
        problems: list[str] = []
        for index, config in enumerate(providers):
            problem = _secret_problem(config) or _jwks_problem(config)
            if problem is not None:
                problems.append(f"auth.jwt_providers[{index}] ({config.name}): {problem}")
        if problems:
            raise ConfigError("jwt", problems)
        self._by_issuer = {config.issuer: _Provider(config, clock, egress) for config in providers}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def load_static(self) -> None:
        """Load file and inline JWKS; their problems are config errors (no network)."""
        problems: list[str] = []
        for index, provider in enumerate(self._by_issuer.values()):
            if isinstance(provider.keys, StaticJwks):
                where = f"auth.jwt_providers[{index}] ({provider.config.name})"
                problems.extend(f"{where}: {problem}" for problem in provider.keys.load())
        if problems:
            raise ConfigError("jwt", problems)

    async def start(self, previous: JwtVerifier | None = None) -> None:
        """Load file and inline JWKS (their problems are config errors), fetch URL JWKS.

        ``previous``: the verifier of the config a reload replaces. Each URL JWKS it
        fetched too starts from its keys, so a reload while the identity provider is
        out of reach keeps the keys trusted until then (``RemoteJwks.carry_over``)."""
        # Off the event loop: a reload runs while requests are served, and a JWKS file
        # on a slow volume would hold every one of them until it was read.
        await asyncio.to_thread(self.load_static)
        remote = [
            provider.keys
            for provider in self._by_issuer.values()
            if isinstance(provider.keys, RemoteJwks)
        ]
        if previous is not None:
            fetched = {
                provider.keys.origin: provider.keys
                for provider in previous._by_issuer.values()
                if isinstance(provider.keys, RemoteJwks)
            }
            for source in remote:
                if (earlier := fetched.get(source.origin)) is not None:
                    source.carry_over(earlier)
        if remote:
            # No proxy of the environment: the configured one (egress) goes with each fetch.
            self._session = aiohttp.ClientSession(trust_env=False)
            # Together: an identity provider slow to answer holds the start (or a reload)
            # for one timeout_s, not one per provider (a provider per Entra tenant, say).
            async with asyncio.TaskGroup() as fetches:
                for source in remote:
                    fetches.create_task(source.start(self._session))

    async def close(self) -> None:
        for provider in self._by_issuer.values():
            if isinstance(provider.keys, RemoteJwks):
                await provider.keys.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cached(self, token: str) -> JwtIdentity | None:
        """The identity of a token verified before, until its ``exp``, or until the key
        that verified it leaves its JWKS (an identity provider withdrawing a key, say a
        compromised one, means tokens it signed stop working)."""
        key = _cache_key(token)
        entry = self._cache.get(key)
        if entry is None:
            return None
        identity = entry.identity
        if (
            identity.expires_at is None
            or self._clock() >= identity.expires_at
            or not entry.still_signed()
        ):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return identity

    async def verify(self, token: str) -> JwtIdentity:
        """Verify a token fully; raise ``AuthenticationError`` saying why it is refused."""
        header, unverified = _read_unverified(token)
        issuer = unverified.get("iss")
        if issuer is None:
            raise AuthenticationError('invalid token: missing claim "iss"')
        provider = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise AuthenticationError("invalid token: unknown issuer")
        config = provider.config
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in config.algorithms:
            raise AuthenticationError("invalid token: algorithm not allowed")
        verified_with: jwt.PyJWK | None = None
        try:
            if provider.secret is not None:
                claims = _decode(token, provider, provider.secret)
            else:
                claims, verified_with = await self._decode_with_jwks(
                    token, provider, header, algorithm
                )
        except jwt.PyJWTError as exc:
            message = _reason(exc)
            log.debug("JWT from provider %s refused: %s", config.name, message)
            raise AuthenticationError(message) from None
        identity = _identity(config, claims)
        _check_named(config.claims, identity)
        _check_encodable(identity)
        source = provider.keys if provider.secret is None else None
        kid = header.get("kid")
        keys = source.keys if source else None
        self._remember(token, _Cached(identity, source, keys, kid, verified_with))
        return identity

    async def _decode_with_jwks(
        self, token: str, provider: _Provider, header: Mapping[str, Any], algorithm: str
    ) -> tuple[dict[str, Any], jwt.PyJWK]:
        """The token's claims, and the key that verified its signature."""
        source: JwksSource | None = provider.keys
        assert source is not None
        if algorithm in HMAC_ALGORITHMS:
            # Config already forbids HS* with a JWKS. Checked again because this is
            # the classic forgery: an HMAC over the token keyed with the public key.
            raise AuthenticationError("invalid token: algorithm not allowed")
        kid = header.get("kid")  # PyJWT has checked it is a string when present
        keys = source.keys.candidates(kid, algorithm)
        if not keys:
            # An unknown kid, or a known one whose key does not fit the token's alg: an
            # IdP that keeps its kid ("1", "default") publishes a key of another type
            # under it. Either is worth a fetch, rate limited like every other.
            await source.refresh_for_unknown_key()
            keys = source.keys.candidates(kid, algorithm)
        if not keys:
            if kid is not None and source.keys.knows(kid):
                raise AuthenticationError("invalid token: algorithm does not match the signing key")
            if not source.available or not source.up_to_date:
                # Nothing to check the token against, or keys the last fetch (failed: an
                # outage) could not bring up to date, which may lack the token's key (the
                # identity provider rotated meanwhile): not a 401, which tells the client
                # its token is bad; clients retry a 503.
                raise _keys_unavailable(provider)
            raise AuthenticationError("invalid token: unknown signing key")
        try:
            return _first_that_verifies(token, provider, keys)
        except jwt.InvalidSignatureError:
            # An IdP that keeps its kid ("1", "default") rotates by publishing a new
            # key under it: its new tokens fail the old key until we fetch again
            # (rate limited, as for an unknown kid, so forgeries cannot flood the IdP).
            before = source.keys
            await source.refresh_for_unknown_key()
            if source.keys is before:
                if not source.up_to_date:
                    # The fetch failed (an outage): the identity provider may have
                    # replaced the key under this kid meanwhile, so the gateway cannot
                    # tell a forgery from its new token. Refused all the same, as a 503.
                    raise _keys_unavailable(provider) from None
                raise
        keys = source.keys.candidates(kid, algorithm)
        if not keys:
            raise AuthenticationError("invalid token: unknown signing key")
        return _first_that_verifies(token, provider, keys)

    def _remember(self, token: str, entry: _Cached) -> None:
        identity = entry.identity
        # Without exp a token never leaves the cache, not even when its key is
        # withdrawn from the JWKS: verify such tokens every time instead.
        if self._cache_size <= 0 or identity.expires_at is None:
            return
        if identity.expires_at <= self._clock():
            return  # accepted within the leeway; cached() would drop it at once
        key = _cache_key(token)
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Cached:
    """A verified token's identity, and what verified it."""

    identity: JwtIdentity
    # The JWKS whose key checked the signature, and its keys then (None: a shared secret).
    source: JwksSource | None
    keys: KeySet | None
    kid: str | None
    # The JWKS key that checked the signature (None: a shared secret).
    verified_with: jwt.PyJWK | None

    def still_signed(self) -> bool:
        """Whether the key that verified the token is still in its JWKS."""
        if self.source is None or self.source.keys is self.keys:
            return True
        # The JWKS was fetched again: the token stands while its key is still there,
        # under its kid and with the same material; a token without a kid is
        # verified again against the new keys.
        return (
            self.kid is not None
            and self.verified_with is not None
            and self.source.keys.still_lists(self.kid, self.verified_with)
        )


def _keys_unavailable(provider: _Provider) -> ServiceUnavailableError:
    """The refusal of a token the gateway could not check: the 503 clients retry."""
    log.debug(
        "JWT from provider %s not checked: no JWKS keys, or none fetched lately",
        provider.config.name,
    )
    return ServiceUnavailableError(
        "the identity provider's signing keys could not be fetched; try again shortly",
        code="jwks_unavailable",
    )


def _secret_problem(config: JwtProviderConfig) -> str | None:
    if config.shared_secret is None:
        return None
    length = len(config.shared_secret.get_secret_value().encode("utf-8"))
    for algorithm in config.algorithms:
        needed = _HMAC_MIN_BYTES.get(algorithm, 0)
        if length < needed:
            return f"shared_secret must be at least {needed} bytes for {algorithm}"
    return None


def _jwks_problem(config: JwtProviderConfig) -> str | None:
    jwks = config.jwks
    if jwks is None or jwks.url is None:
        return None
    if not jwks.allow_http and plain_http(jwks.url):
        # Whoever can answer a plain-http fetch (a hop on the way, a spoofed DNS
        # answer) publishes a key of their own and mints tokens for anyone.
        return (
            "jwks.url must be https:// (or on this host): keys fetched over plain http "
            "can be replaced on the way; set jwks.allow_http: true to accept that"
        )
    if jwks.max_stale_s < jwks.refresh_interval_s:
        # Otherwise every key would turn stale between two regular refreshes.
        return "jwks.max_stale_s must be at least jwks.refresh_interval_s"
    return None


def _cache_key(token: str) -> str:
    # surrogatepass: any str hashes, even one no client could have sent as UTF-8.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, unverified, only to choose the provider and key."""
    # A compact JWS is ASCII with exactly two dots; anything else never reaches PyJWT.
    if not token.isascii() or token.count(".") != 2:
        raise AuthenticationError("invalid token: malformed")
    if _names_critical_extension(token):
        raise AuthenticationError("invalid token: unsupported critical header")
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthenticationError("invalid token: malformed") from None
    return header, payload


def _names_critical_extension(token: str) -> bool:
    """Whether the token's header has ``crit``, read before PyJWT reads it.

    RFC 7515 §4.1.11: a JWS naming an extension its recipient does not process is
    invalid, and a JWT has no use for one (the only one PyJWT knows, ``b64``, exists
    to be false, which RFC 7797 §7 forbids in JWTs). Not left to PyJWT, which refuses
    them as a bare "malformed", and ignored ``crit`` before 2.12.
    """
    segment = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError: PyJWT says malformed
        return False
    return isinstance(header, dict) and "crit" in header


def _decode(token: str, provider: _Provider, key: jwt.PyJWK | bytes) -> dict[str, Any]:
    config = provider.config
    return jwt.decode(
        token,
        key,
        # The provider's allow-list, never the token's own `alg`; a PyJWK is also
        # bound to one algorithm and PyJWT refuses a header that names another.
        algorithms=list(config.algorithms),
        options=provider.options,
        audience=list(config.audiences) or None,
        issuer=config.issuer,
        leeway=config.leeway_s,
    )


def _first_that_verifies(
    token: str, provider: _Provider, keys: Sequence[jwt.PyJWK]
) -> tuple[dict[str, Any], jwt.PyJWK]:
    """The claims and the first key whose signature check passes; the last key's
    error when none does."""
    for key in keys[:-1]:
        # Without a kid several keys may fit; only a signature mismatch means
        # "try the next one": any other failure is about the token itself.
        try:
            return _decode(token, provider, key), key
        except jwt.InvalidSignatureError:
            continue
    return _decode(token, provider, keys[-1]), keys[-1]


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        # The claim name comes from the config (or is "aud"/"iss"), not the token.
        return f'invalid token: missing claim "{exc.claim}"'
    for kind, message in _REASONS:
        if isinstance(exc, kind):
            return message
    return "invalid token: malformed"


def _identity(config: JwtProviderConfig, claims: dict[str, Any]) -> JwtIdentity:
    mapping = config.claims
    groups = _groups(claims, mapping)
    return JwtIdentity(
        provider=config.name,
        user_id=_user_id(claims, mapping),
        group_id=groups[0] if groups else None,
        groups=groups,
        claims=_extra(claims, mapping),
        expires_at=_expires_at(claims.get("exp")),
    )


def _expires_at(expires: Any) -> float | None:
    """``exp`` as the cache compares it, or None (never cached) when it has none."""
    if expires is None:
        return None
    # PyJWT has checked int(exp) works; compare the same whole seconds it did.
    seconds = int(expires)
    try:
        return float(seconds)
    except OverflowError:
        # A JSON integer past any float (exp: 1e400 written out): PyJWT found it in
        # the future, but no clock reaches it. Verify such a token on every use.
        return None


def _check_named(mapping: ClaimMapping, identity: JwtIdentity) -> None:
    """Refuse a token that names neither a user nor a group.

    User and group are what limits, access rules and rollups key on: a token with
    neither would pass every ``user`` and ``group`` limit and bill no one. A mapping
    that names no claim at all is the operator's choice (the token is a gate only).
    """
    if identity.user_id is not None or identity.groups:
        return
    paths = (*mapping.user_id, *mapping.group_id)
    if paths:
        # The claim paths come from the config, never from the token.
        raise AuthenticationError(
            f"invalid token: names no user or group (claims {', '.join(paths)})"
        )


def _check_encodable(identity: JwtIdentity) -> None:
    """Refuse claims that are not Unicode text: JSON lets a token carry a lone surrogate
    (``"\\udcff"``), which no store key, log line or metric label can hold, so such an
    identity would fail every one of them after the provider had answered."""
    try:
        orjson.dumps([identity.user_id, identity.groups, identity.claims])
    except orjson.JSONEncodeError:
        raise AuthenticationError("invalid token: a claim is not valid Unicode text") from None


def _claim_at(claims: Mapping[str, object], path: str) -> object | None:
    """The value at a dotted path (``realm_access.roles``), or None.

    A claim named with dots (Auth0's ``https://example.com/roles``) is matched
    whole first, so namespaced claims work without escaping.
    """
    if path in claims:
        return claims[path]
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _user_id(claims: Mapping[str, object], mapping: ClaimMapping) -> str | None:
    for path in mapping.user_id:
        value = _claim_at(claims, path)
        if isinstance(value, str) and value:
            return value
        # Some IdPs issue numeric user ids; bool is an int to Python but no id.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float) and math.isfinite(value):
            return str(value)
    return None


def _groups(claims: Mapping[str, object], mapping: ClaimMapping) -> tuple[str, ...]:
    for path in mapping.group_id:
        value = _claim_at(claims, path)
        if isinstance(value, str):
            groups: tuple[str, ...] = (value,) if value else ()
        elif isinstance(value, list):
            groups = tuple(item for item in value if isinstance(item, str) and item)
        else:
            continue
        if groups:
            return groups
    return ()


def _extra(claims: Mapping[str, object], mapping: ClaimMapping) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in mapping.extra:
        value = _claim_at(claims, path)
        if value is None:
            continue
        try:
            # The access log writes these with orjson, which refuses integers past
            # 64 bits and very deep nesting: drop such a claim here, not the log line.
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            log.debug("JWT claim %s left out of the log: not representable as JSON", path)
            continue
        found[path] = value
    return found
