"""A JWT provider's signing keys: a JWKS read from a file, given inline, or fetched from a URL.

A ``KeySet`` is one parsed JWKS, immutable, indexed for the only question the
verifier asks: which keys could have signed a token with this ``kid`` and
``alg``? Each key is built once per algorithm it may verify, so a JWK without
``alg`` (common for RSA keys, which serve RS* and PS* alike) still ends up as a
``PyJWK`` bound to exactly one algorithm, and PyJWT refuses a token whose header
names another.

``StaticJwks`` (file, inline) is loaded once at start-up and its problems are
config errors. ``RemoteJwks`` (url) is fetched with aiohttp, refreshed in the
background and, on a token with an unknown ``kid``, refetched at most once per
``min_refresh_interval_s``.

What a fetch answers decides what is trusted. A JWKS document is the identity
provider's word, even when it lists no key this provider can use: the keys it
no longer lists stop verifying at once, so an IdP that withdraws every key
stops every token. A fetch that fails (no answer, not 200, a redirect to
plain http, not a JWKS, or only broken entries) says nothing about the keys:
the last good ones keep verifying, but only for ``max_stale_s`` after the last
good fetch, so an outage, or someone blocking the fetch, cannot keep a
withdrawn key alive.

Messages name the JWKS entry by index and ``kid``, never by content: PyJWT's own
exception texts embed the whole JWK, which must not reach a log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import orjson

from extproc import background
from extproc.config.auth_model import JwksConfig
from extproc.egress import DIRECT, EgressProxy

log = logging.getLogger(__name__)

# A JWKS is a few kilobytes; anything far larger is a misconfigured URL.
MAX_JWKS_BYTES = 1 << 20

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = ("Ed25519", "Ed448")


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    by_algorithm: dict[str, jwt.PyJWK]


class KeySet:
    """One parsed JWKS: keys that may verify tokens for the provider's algorithms."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[_Key] = ()) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def knows(self, kid: str) -> bool:
        return any(key.kid == kid for key in self._keys)

    def still_lists(self, kid: str, verified_with: jwt.PyJWK) -> bool:
        """Whether the key behind ``kid`` is still the one that verified a token.

        The ``kid`` alone is not enough: an identity provider that keeps one ``kid``
        ("1", "default") withdraws a key by publishing another under the same name.
        """
        return any(
            key.kid == kid
            and any(same.key == verified_with.key for same in key.by_algorithm.values())
            for key in self._keys
        )

    def candidates(self, kid: str | None, algorithm: str) -> list[jwt.PyJWK]:
        """Keys that could have signed a token with this header.

        A token naming a ``kid`` the JWKS lists gets only that key. A token without
        one tries every key that fits the algorithm: a provider with a single key
        often leaves ``kid`` out of both the JWKS and its tokens. A token naming a
        ``kid`` the JWKS does not list tries the keys published without one: a JWKS
        written from the IdP's PEM has no kid to match, while its tokens name one.
        """
        fitting = [key for key in self._keys if algorithm in key.by_algorithm]
        if kid is not None:
            named = [key for key in fitting if key.kid == kid]
            fitting = named if named or self.knows(kid) else [k for k in fitting if k.kid is None]
        return [key.by_algorithm[algorithm] for key in fitting]


def parse_jwks(document: object, algorithms: Sequence[str]) -> tuple[KeySet, list[str]]:
    """Build the usable keys of a JWKS document; also return one line per broken entry.

    Entries that are fine but of no use here (encryption keys, by ``use`` or
    ``key_ops``, symmetric keys, keys for algorithms the provider does not allow)
    are skipped silently.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return KeySet(), ["not a JWKS: expected an object with a 'keys' array"]
    keys: list[_Key] = []
    problems: list[str] = []
    for index, entry in enumerate(document["keys"]):
        name = f"keys[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{name}: not an object")
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            problems.append(f"{name}: kid is not a string")
            continue
        if kid is not None:
            name += f" (kid {kid!r})"
        if not _for_signatures(entry) or entry.get("kty") == "oct":
            continue
        if "d" in entry:
            # A published private key is a leak at the IdP; using it would hide that.
            problems.append(f"{name}: holds private key material; publish public keys only")
            continue
        fitting = _algorithms_for(entry)
        declared = entry.get("alg")
        if declared is not None:
            if declared not in algorithms:
                continue  # a key for an algorithm this provider does not accept
            if declared not in fitting:
                problems.append(f"{name}: alg {declared!r} does not fit its kty/crv")
                continue
            fitting = (declared,)
        wanted = [a for a in fitting if a in algorithms]
        by_algorithm: dict[str, jwt.PyJWK] = {}
        for algorithm in wanted:
            problem = _build(entry, algorithm, by_algorithm)
            if problem is not None:
                problems.append(f"{name}: {problem}")
                break
        else:
            if by_algorithm:
                keys.append(_Key(kid, by_algorithm))
    return KeySet(keys), problems


def _for_signatures(entry: dict[str, object]) -> bool:
    """Whether the IdP published this key to verify signatures (RFC 7517 §4.2, §4.3).

    A key for encryption (``use: enc``, or ``key_ops`` without ``verify``) must never
    verify a token: the IdP may run that key's private half as a decryption oracle,
    which is not the care it takes of a signing key.
    """
    if entry.get("use", "sig") != "sig":
        return False
    operations = entry.get("key_ops")
    return operations is None or (isinstance(operations, list) and "verify" in operations)


def _algorithms_for(entry: dict[str, object]) -> tuple[str, ...]:
    """The signature algorithms a key of this type and curve can verify."""
    kty, curve = entry.get("kty"), entry.get("crv")
    if kty == "RSA":
        return _RSA_ALGORITHMS
    if kty == "EC" and isinstance(curve, str) and curve in _EC_ALGORITHM_BY_CURVE:
        return (_EC_ALGORITHM_BY_CURVE[curve],)
    if kty == "OKP" and curve in _OKP_CURVES:
        return ("EdDSA",)
    return ()


def _build(entry: dict[str, object], algorithm: str, into: dict[str, jwt.PyJWK]) -> str | None:
    try:
        key = jwt.PyJWK(entry, algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        # The exception text carries the JWK itself: report only its kind.
        return f"not a usable {algorithm} key ({type(exc).__name__})"
    # PyJWT only warns per verification about a weak key; refuse it once, here.
    if key.Algorithm.check_key_length(key.key) is not None:
        return f"key too short for {algorithm}"
    into[algorithm] = key
    return None


# What an untrusted remote JWKS answers: no key at all.
_NO_KEYS = KeySet()


class JwksSource(Protocol):
    @property
    def keys(self) -> KeySet:
        """The keys trusted now."""

    @property
    def available(self) -> bool:
        """False while no keys are trusted because none could be fetched (never, or not
        within ``max_stale_s``): a refusal then says the identity provider is out of
        reach, not that the token is bad."""

    @property
    def up_to_date(self) -> bool:
        """Whether the last fetch succeeded: a key it did not list is then not the
        identity provider's. False after a failed one (an outage): its keys may lack
        one the identity provider published since."""

    async def refresh_for_unknown_key(self) -> None:
        """A token named a key we lack: fetch again if the source allows it now."""


class StaticJwks:
    """Keys from a JSON file or the config itself, loaded once at start-up."""

    def __init__(self, config: JwksConfig, algorithms: Sequence[str]) -> None:
        self._config = config
        self._algorithms = tuple(algorithms)
        self.keys = KeySet()

    def load(self) -> list[str]:
        """Load the keys; return the problems (empty when the JWKS is usable)."""
        where = "jwks.inline"
        document: object = self._config.inline
        if self._config.file is not None:
            where = f"jwks.file {self._config.file}"
            try:
                document = orjson.loads(Path(self._config.file).read_bytes())
            except OSError as exc:
                return [f"{where}: cannot read: {exc.strerror}"]
            except orjson.JSONDecodeError:
                return [f"{where}: not valid JSON"]
        keys, problems = parse_jwks(document, self._algorithms)
        if not keys and not problems:
            problems = ["no key usable with the provider's algorithms"]
        self.keys = keys
        return [f"{where}: {problem}" for problem in problems]

    @property
    def available(self) -> bool:
        return True

    @property
    def up_to_date(self) -> bool:
        return True

    async def refresh_for_unknown_key(self) -> None:
        return None


class RemoteJwks:
    """Keys from a JWKS URL: refreshed on a timer and on demand, kept across short outages."""

    def __init__(
        self,
        provider: str,
        config: JwksConfig,
        algorithms: Sequence[str],
        clock: Callable[[], float],
        egress: EgressProxy = DIRECT,
    ) -> None:
        assert config.url is not None
        self._provider = provider
        self._url = config.url
        # The configured proxy, unless egress.no_proxy lists the identity provider.
        self._proxy = egress.aiohttp(config.url)
        # What logs name: no user or password, no query (either may carry a secret).
        self._shown_url = shown_url(config.url)
        self._config = config
        self._algorithms = tuple(algorithms)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._last_attempt: float | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._keys = _NO_KEYS
        # When the last good fetch was made, and until when its keys are trusted; None
        # before the first one.
        self._good_at: float | None = None
        self._trusted_until: float | None = None
        self._last_failed = False

    @property
    def keys(self) -> KeySet:
        """The last good fetch's keys, or none once they are ``max_stale_s`` old."""
        if self._trusted_until is None or self._clock() >= self._trusted_until:
            return _NO_KEYS
        return self._keys

    @property
    def available(self) -> bool:
        """Whether a fetch succeeded within ``max_stale_s`` (its keys are trusted, even
        none: an identity provider may withdraw every key)."""
        return self._trusted_until is not None and self._clock() < self._trusted_until

    @property
    def up_to_date(self) -> bool:
        return not self._last_failed

    @property
    def origin(self) -> tuple[str, tuple[str, ...]]:
        """What decides the keys a fetch yields: the URL, and the algorithms kept of it."""
        return self._url, self._algorithms

    def carry_over(self, previous: RemoteJwks) -> None:
        """Start from the keys ``previous`` (the same URL and algorithms, in the config a
        reload replaces) fetched last, trusted until the same moment as there.

        A reload makes a new source, whose first fetch during an identity provider
        outage found nothing: every token got a 503 though the replaced config still
        trusted its keys for up to ``max_stale_s``. The time of that good fetch comes
        along, so a reload, however often, never extends the trust in a key.
        """
        if previous.origin != self.origin or previous._good_at is None:
            return
        self._keys = previous._keys
        self._good_at = previous._good_at
        self._trusted_until = previous._good_at + self._config.max_stale_s
        self._last_attempt = previous._last_attempt
        self._last_failed = previous._last_failed

    async def start(self, session: aiohttp.ClientSession) -> None:
        """First fetch, then the refresh timer. A failing URL is logged, not fatal (the
        keys ``carry_over`` gave stay, as after any failed fetch)."""
        self._session = session
        async with self._lock:
            await self._fetch()
        self._refresher = asyncio.create_task(
            self._refresh_forever(), name=f"jwks-refresh-{self._provider}"
        )

    async def close(self) -> None:
        await background.stop(self._refresher)
        self._refresher = None

    async def refresh_for_unknown_key(self) -> None:
        # Under the lock, so a burst of tokens with a new kid makes one fetch: the
        # others wait, find the fetch recent and look the kid up in its result.
        async with self._lock:
            if self._last_attempt is not None:
                elapsed = self._clock() - self._last_attempt
                # A clock that went backwards must not stall refetching for good.
                if 0 <= elapsed < self._config.min_refresh_interval_s:
                    return
            await self._fetch()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.refresh_interval_s)
            try:
                async with self._lock:
                    await self._fetch()
            except Exception:
                # One surprising failure must not end refreshing for the process' life.
                log.exception("JWKS refresh failed for provider %s", self._provider)

    async def _fetch(self) -> None:
        """Fetch and parse the JWKS: its keys replace ours, a failure keeps ours (bounded)."""
        assert self._session is not None, "start() first"
        self._last_attempt = self._clock()
        try:
            body = await self._download(self._session)
        except (aiohttp.ClientError, TimeoutError, _FetchError) as exc:
            self._fetch_failed(str(exc) if isinstance(exc, _FetchError) else type(exc).__name__)
            return
        answer = self._parse(body)
        if isinstance(answer, str):
            self._fetch_failed(answer)
            return
        if not answer and (self._trusted_until is None or self._keys):
            # Once, when the set becomes empty: refetches of an empty set are routine.
            log.warning(
                "JWKS of provider %s from %s lists no key usable with %s: its tokens are refused",
                self._provider, self._shown_url, ", ".join(self._algorithms),
            )  # fmt: skip
        self._keys = answer
        self._last_failed = False
        self._good_at = self._last_attempt
        self._trusted_until = self._last_attempt + self._config.max_stale_s

    def _parse(self, body: bytes) -> KeySet | str:
        """The document's usable keys, or why it is no answer at all."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "not valid JSON"
        keys, problems = parse_jwks(document, self._algorithms)
        if problems and not keys:
            # Not a JWKS, or nothing but broken entries: an IdP fault, not its decision
            # to withdraw keys.
            more = len(problems) - 1
            return problems[0] + (f" (and {more} more broken entries)" if more else "")
        for problem in problems:
            log.warning("JWKS of provider %s from %s: %s", self._provider, self._shown_url, problem)
        return keys

    def _fetch_failed(self, reason: str) -> None:
        self._last_failed = True
        where = (self._provider, self._shown_url, reason)
        if self._trusted_until is None:
            log.warning("JWKS fetch failed for provider %s from %s: %s; no key yet", *where)
            return
        left = self._trusted_until - self._clock()
        if left > 0:
            log.warning(
                "JWKS fetch failed for provider %s from %s: %s; keeping %d key(s) for %.0f s more",
                *where, len(self._keys), left,
            )  # fmt: skip
            return
        log.error(
            "JWKS fetch failed for provider %s from %s: %s; the last good keys are older than "
            "max_stale_s (%g s) and no longer trusted: every token is refused",
            *where, self._config.max_stale_s,
        )  # fmt: skip

    async def _download(self, session: aiohttp.ClientSession) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        async with session.get(
            self._url, timeout=timeout, headers={"accept": "application/json"}, **self._proxy
        ) as response:
            if response.status != 200:
                raise _FetchError(f"HTTP {response.status}")
            if response.history and not self._config.allow_http and plain_http(str(response.url)):
                # An https URL that redirects to plain http would hand the keys to
                # whoever sits on that path, as a plain-http URL would.
                raise _FetchError(f"redirected to plain http ({shown_url(str(response.url))})")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(65536):
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise _FetchError(f"larger than {MAX_JWKS_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)


class _FetchError(Exception):
    """The URL answered, but not with something worth parsing."""


def shown_url(url: str) -> str:
    """``url`` as a log line may name it: scheme, host, port and path only.

    Everything up to the last '@' goes first: a password written raw with a '/' or '#'
    in it ends the authority a URL parser finds inside the password."""
    scheme, sep, rest = url.partition("://")
    parts = urlsplit(f"{scheme}{sep}{rest.rpartition('@')[2]}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def plain_http(url: str) -> bool:
    """Whether fetching ``url`` crosses a network without TLS (loopback does not)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
