"""Request headers: who is calling, proven by an org API key or a JWT, per the route's policy.

Credentials are read from ``Authorization: Bearer <x>``, a bare
``Authorization: <key>``, ``x-api-key``, ``api-key``, ``x-goog-api-key`` (Google's SDKs
and Gemini CLI) or a header the route names. A bearer value shaped like a JWT
(``eyJ...`` with two dots) is verified as a token when the route accepts JWTs; anything
else is looked up as an API key; the first of these a request carries is the one
used. Failures are 401 with an RFC 6750 ``WWW-Authenticate`` header and a message
saying what was wrong, never the credential itself (a credential in another scheme,
``Basic`` say, is refused by the scheme's name, with where the key goes). A
credential in the query string
(``?api-key=``, ``?key=``, ...) is refused with a 400 on every route, even next
to a good header: the gateway never reads it there, and the query would carry
it on to the provider. So is Google's ``?userProject=``, which would pick the
project the provider bills, as the ``x-goog-user-project`` header the gateway removes.
A value (or name) shaped as a well-known credential (``?x=sk-...``, an AWS key id, a
GitHub token, a JWT: ``auth.credential_shapes``) is refused the same way, under any name.

A token verified before is answered from the verifier's cache without a
coroutine; only a first sighting waits for signature checks (and maybe a JWKS
fetch). Likewise a key the config does not know is looked up among the keys
created at run time from a short-lived cache, and only a miss waits for the
store; a store that does not answer is a 503 ``key_store_unavailable``, and a record
there the gateway cannot read (written over by a person or another program) a 401
``api_key_unreadable``: the key cannot be used, and retrying will not change that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from urllib.parse import parse_qsl, unquote_plus

from extproc.auth import credential_shapes
from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.jwt_verifier import JwtIdentity, JwtVerifier
from extproc.auth.stored_keys import NOT_CACHED, UNREADABLE, StoredAnswer, StoredKeys
from extproc.config.auth_model import AuthMethod
from extproc.config.model import RouteApi
from extproc.context import ANONYMOUS, Identity, PhaseOutput, RequestContext
from extproc.errors import (
    AuthenticationError,
    BadRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

REALM = 'Bearer realm="aigw"'
# The error code of a bearer token (a JWT) the gateway refuses: RFC 6750's.
_INVALID_TOKEN = "invalid_token"
_KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")
# Query parameters that carry a credential by common convention: Azure's `api-key` (and
# its API Management's `subscription-key`), Google's `key` and `access_token` (once also
# `oauth_token`), RFC 6750's `access_token`, a SigV4 presigned URL's signature and session
# token, and their spellings.
_QUERY_CREDENTIALS = frozenset(
    {
        "api-key",
        "api_key",
        "apikey",
        "x-api-key",
        "key",
        "access_token",
        "oauth_token",
        "token",
        "authorization",
        "subscription-key",
        "x-amz-credential",
        "x-amz-signature",
        "x-amz-security-token",
    }
)
# Query parameters that pick the account a provider bills: Google's `userProject`, the
# twin of the `x-goog-user-project` header the gateway removes (headers.py). Beside the
# gateway's credentials it would bill another project the gateway's account may use.
_QUERY_ACCOUNTS = frozenset({"userproject"})
# Google takes each of its system parameters under a `$` too (`?$key=`, `?%24key=`), a
# spelling kept clear of the API's own parameters.
_SYSTEM_PREFIX = "$"
# Shorter, a credential could match a query's own words by chance (every real key and
# token is far longer: the demo keys are nine characters).
_MIN_QUERY_CREDENTIAL = 8


_NOT_A_TOKEN = (
    "invalid token: not a JWT; this route accepts only JWT bearer tokens, not API keys "
    "(send the token as 'Authorization: Bearer <token>')"
)


def _challenge(message: str, *, invalid: bool, code: str | None = None) -> AuthenticationError:
    """A 401 with its challenge; ``code``: the error's own (``invalid_token`` for a bearer
    token refused, so a log line tells a bad JWT from a bad key), else the class's."""
    value = REALM
    if invalid:
        # RFC 6750 allows neither '"' nor '\\' inside error_description.
        description = message.replace('"', "'").replace("\\", "")
        value += f', error="invalid_token", error_description="{description}"'
    return AuthenticationError(message, code=code, headers={"www-authenticate": value})


def looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


class AuthenticationStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> Awaitable[None] | None:
        route = ctx.route
        if route is None:
            return None
        runtime = ctx.runtime
        policy = runtime.route_auth[route.name]
        _refuse_query_secrets(ctx.path, policy.api_key_header, route.model_query)
        if AuthMethod.NONE in policy.methods or ctx.public:
            ctx.identity = ANONYMOUS
            return None
        credential = _read_credential(ctx, policy.api_key_header)
        if credential is not None:
            _refuse_credential_in_query(ctx.path, credential)
        accepts_jwt = AuthMethod.JWT in policy.methods and runtime.jwt is not None
        accepts_key = AuthMethod.API_KEY in policy.methods
        if credential is None:
            send_key = _where_keys_go(ctx.error_shape, policy.api_key_header)
            message = _missing_message(accepts_key, accepts_jwt, send_key)
            if _signed_for_aws(ctx.request_headers):
                message = _aws_signature_refused(accepts_key, accepts_jwt)
            elif (scheme := _other_scheme(ctx.request_headers)) is not None:
                message = _scheme_refused(scheme, accepts_key, accepts_jwt, send_key)
            # A route that takes tokens only is missing a token, not a key: its code says
            # so, as the docs' "no bearer token found" is listed with invalid_token, and
            # `invalid_api_key` sent its callers (and a log's error_code) to check a key.
            code = _INVALID_TOKEN if accepts_jwt and not accepts_key else None
            raise _challenge(message, invalid=False, code=code)
        if _byte_length(credential) > runtime.config.auth.max_token_bytes:
            code = _INVALID_TOKEN if looks_like_jwt(credential) else None
            raise _challenge("invalid token: too large", invalid=True, code=code)
        if accepts_jwt and looks_like_jwt(credential):
            verifier = runtime.jwt
            assert verifier is not None
            cached = verifier.cached(credential)
            if cached is None:
                return self._verify(ctx, verifier, credential)
            ctx.identity = _from_jwt(cached)
        elif accepts_key:
            key: StoredAnswer = runtime.api_keys.lookup(credential)
            stored = runtime.stored_keys
            if key is None and stored is not None:
                digest = key_digest(credential)
                found = stored.cached(digest)
                if found is NOT_CACHED:
                    return self._look_up_stored(ctx, stored, digest)
                key = found
            _from_api_key(ctx, key)
        else:
            # A JWT-only route given something that is no JWT: most often an org API
            # key (`x-api-key: team1-key`), which a bare "invalid token" left its holder
            # to check, though the key is fine and only the route does not take keys.
            raise _challenge(_NOT_A_TOKEN, invalid=True, code=_INVALID_TOKEN)
        _check_route(ctx)
        return None

    @staticmethod
    async def _verify(ctx: RequestContext, verifier: JwtVerifier, token: str) -> None:
        try:
            verified = await verifier.verify(token)
        except AuthenticationError as error:
            raise _challenge(error.message, invalid=True, code=_INVALID_TOKEN) from None
        ctx.identity = _from_jwt(verified)
        _check_route(ctx)

    @staticmethod
    async def _look_up_stored(ctx: RequestContext, stored: StoredKeys, digest: bytes) -> None:
        runtime = ctx.runtime
        try:
            # asyncio.timeout, not wait_for: no extra task per lookup.
            async with asyncio.timeout(runtime.config.store.timeout_ms / 1000.0):
                key = await stored.lookup(digest)
        except Exception:
            runtime.services.metrics.store_error("key_lookup")
            # Not a 401: the key may well be valid, and clients retry a 503.
            raise ServiceUnavailableError(
                "the API key store is unavailable; try again shortly",
                code="key_store_unavailable",
            ) from None
        _from_api_key(ctx, key)
        _check_route(ctx)


def presented_credential(ctx: RequestContext) -> str | None:
    """The key or token this request authenticates with (as its route reads it), if any.
    A route of the gateway's own (a failover attempt's) has no policy: the standard
    headers alone."""
    route = ctx.route
    if route is None:
        return None
    policy = ctx.runtime.route_auth.get(route.name)
    return _read_credential(ctx, policy.api_key_header if policy else None)


def standard_credential(ctx: RequestContext) -> str | None:
    """The key or token the request carries in the standard credential headers, before
    its route (and so its route's own key header) is known."""
    return _read_credential(ctx, None)


def _read_credential(ctx: RequestContext, route_header: str | None) -> str | None:
    """``_credential`` of the request's headers, read once per request: authentication,
    the model's check and the log line's redaction each ask (about 0.5 us a read). Kept
    with the route's header, which a later route may name otherwise. The client's
    credential headers do not change once read (a failover attempt drops the earlier
    attempt's before its route is known)."""
    read = ctx.credential_read
    if read is not None and read[0] == route_header:
        return read[1]
    credential = _credential(ctx.request_headers, route_header)
    ctx.credential_read = (route_header, credential)
    return credential


def _credential(headers: dict[str, str], route_header: str | None) -> str | None:
    authorization = headers.get("authorization", "").strip()
    if authorization:
        # Any HTTP whitespace (a space or a tab) ends the scheme, not just a space.
        scheme, *rest_of = authorization.split(None, 1)
        rest = rest_of[0] if rest_of else ""
        if scheme.lower() == "bearer":
            if token := rest.strip():
                return token
            # `Authorization: Bearer ` reaches us as `Bearer` (HTTP trims values): no
            # credential there, not a key named "Bearer" hiding an `x-api-key`.
        elif not rest:
            return authorization  # the bare form: `Authorization: team1-key`
    for name in (route_header, *_KEY_HEADERS):
        if name and (value := headers.get(name.lower(), "").strip()):
            return value
    return None


def _refuse_query_secrets(path: str, route_header: str | None, model_query: str | None) -> None:
    """Refuse a credential, or a choice of the account billed, sent in the query string,
    whatever else the request carries.

    The gateway never reads one there, and one left in the URL would be sent on to the
    provider with the rest of the query (the client's secret in a third party's logs;
    the client's project billed with the gateway's credentials). Said plainly, and the
    parameter named, never its value: a client that took the key for accepted would
    otherwise be told only that none was found, or nothing at all.
    """
    _, _, query = path.partition("?")
    if not query:
        return
    names = _QUERY_CREDENTIALS | {route_header.lower()} if route_header else _QUERY_CREDENTIALS
    model_name = model_query.lower() if model_query else None
    # `;` too: Python's parser, and others, split on `&` alone, yet servers that also take
    # `;` as a separator (as Python's did before 3.10) would read `?a=1;key=...` as a key.
    for name, value in parse_qsl(query.replace(";", "&"), keep_blank_values=True):
        lowered = name.lower()
        if lowered == model_name:
            _refuse_credential_shape(name, value)
            continue  # a route may read its model from `?key=`
        plain = lowered.removeprefix(_SYSTEM_PREFIX)
        if lowered in names or plain in names:
            raise BadRequestError(
                f"credentials are not accepted in the query string (parameter '{name}'): "
                "URLs are logged and passed on; send the key as 'Authorization: Bearer "
                "<key>', 'x-api-key: <key>' or 'x-goog-api-key: <key>'",
                param=name,
                code="credential_in_query",
            )
        if plain in _QUERY_ACCOUNTS:
            raise BadRequestError(
                f"the query string may not pick the provider account that is billed "
                f"(parameter '{name}'): the gateway's own credentials pick it",
                param=name,
                code="account_in_query",
            )
        _refuse_credential_shape(name, value)


def _refuse_credential_shape(name: str, value: str) -> None:
    """Refuse a parameter whose name or value is shaped as a known credential, whatever its
    name: an innocent one (``?x=sk-...``) carried a key on to the provider. Refused, not
    dropped: the client learns its key left its hands in a URL (to rotate it), and the
    provider never gets a request other than the one the client wrote."""
    found = credential_shapes.kind(name)
    if found is not None:
        # The name is the secret (``?sk-...`` alone): the message names no parameter.
        raise _credential_shaped(f"a parameter holds what looks like {found}")
    found = credential_shapes.kind(value)
    if found is not None:
        raise _credential_shaped(f"parameter '{name}' holds what looks like {found}", name)


def _credential_shaped(what: str, param: str | None = None) -> BadRequestError:
    return BadRequestError(
        f"credentials are not accepted in the query string ({what}): URLs are logged and "
        "passed on to the provider; remove it, and send the gateway's key as "
        "'Authorization: Bearer <key>', 'x-api-key: <key>' or 'x-goog-api-key: <key>'",
        param=param,
        code="credential_in_query",
    )


def _refuse_credential_in_query(path: str, credential: str) -> None:
    """Refuse a request whose query holds the very credential it presents, under any
    name or none (``?<key>``, ``?k=<key>``): no parameter name says it is one, but the
    query would carry it on to the provider all the same."""
    _, _, query = path.partition("?")
    if not query or len(credential) < _MIN_QUERY_CREDENTIAL:
        return
    if credential in query or credential in unquote_plus(query):
        raise BadRequestError(
            "credentials are not accepted in the query string (it holds this request's "
            "API key or token): URLs are logged and passed on; send the key only as "
            "'Authorization: Bearer <key>', 'x-api-key: <key>' or 'x-goog-api-key: <key>'",
            code="credential_in_query",
        )


# An AWS SDK with AWS credentials signs its requests (SigV4) for AWS itself: nothing in
# the signature is a key the gateway knows, and the gateway signs for Bedrock itself.
_AWS_SIGNATURE = "aws4-hmac-sha256"
_AWS_SIGNED = "this request is signed with AWS credentials (SigV4), which the gateway does not take"
# botocore sends AWS_BEARER_TOKEN_BEDROCK as `Authorization: Bearer <it>`, a key or a JWT.
_AWS_BEARER = "(AWS SDKs: set AWS_BEARER_TOKEN_BEDROCK to it, over HTTPS)"


def _aws_signature_refused(accepts_key: bool, accepts_jwt: bool) -> str:
    """Why a SigV4-signed request is not read, and what this route takes instead: on a
    JWT-only route, "send the gateway API key" sent the caller to a key the route then
    refused as "not a JWT"."""
    if accepts_jwt and not accepts_key:
        return (
            f"no bearer token found: {_AWS_SIGNED}; this route accepts only JWT bearer"
            f" tokens, not API keys: send the JWT as 'Authorization: Bearer <token>' instead"
            f" {_AWS_BEARER}"
        )
    if accepts_jwt:
        return (
            f"no credentials found: {_AWS_SIGNED}; send the gateway API key or a JWT as a"
            f" bearer token instead {_AWS_BEARER}"
        )
    return (
        f"no API key found: {_AWS_SIGNED}; send the gateway API key as a bearer token"
        f" instead {_AWS_BEARER}"
    )


def _signed_for_aws(headers: dict[str, str]) -> bool:
    scheme = headers.get("authorization", "").lstrip().partition(" ")[0]
    return scheme.lower() == _AWS_SIGNATURE


# Authorization schemes other than Bearer that clients send (IANA's HTTP Authentication
# Scheme Registry, and `Token`, which several APIs take), by lower-case name. A refusal
# names one of these; any other first word is not repeated: it may be the start of a
# key sent as `Authorization: <key> <more>`.
_OTHER_SCHEMES = {
    name.lower(): name
    for name in (
        "Basic",
        "Digest",
        "Negotiate",
        "NTLM",
        "HOBA",
        "Mutual",
        "DPoP",
        "OAuth",
        "PrivateToken",
        "Concealed",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "vapid",
        "Token",
    )
}


def _other_scheme(headers: dict[str, str]) -> str | None:
    """The scheme of an ``Authorization`` header that carries a credential in another
    scheme than Bearer (``Basic dXNlcjprZXk=``): its registered name, ``""`` for a
    scheme not registered; None when the header is not of that form."""
    parts = headers.get("authorization", "").split(None, 1)
    if len(parts) < 2 or parts[0].lower() == "bearer":
        return None
    return _OTHER_SCHEMES.get(parts[0].lower(), "")


# Where a key goes, as the client of each API sends it: Google's Gen AI SDKs and Gemini
# CLI send x-goog-api-key, AWS SDKs a bearer token (AWS_BEARER_TOKEN_BEDROCK, which
# botocore sends over HTTPS only), Anthropic's SDKs x-api-key, OpenAI's a bearer token.
# A client told of headers its SDK has no setting for is left to guess which one it has.
_SEND_KEY = {
    "google": "'x-goog-api-key: <key>' (the api_key of Google's Gen AI SDKs, GEMINI_API_KEY "
    "for Gemini CLI) or 'Authorization: Bearer <key>'",
    "bedrock": "a bearer token, 'Authorization: Bearer <key>' (AWS SDKs: set "
    "AWS_BEARER_TOKEN_BEDROCK to it, over HTTPS)",
    "anthropic": "'x-api-key: <key>' or 'Authorization: Bearer <key>'",
}
_SEND_KEY_ELSE = "'Authorization: Bearer <key>' or 'x-api-key: <key>'"


def _where_keys_go(shape: str, route_header: str | None) -> str:
    """Where a client of the API shaped ``shape`` sends a key: the header its route
    names (``api_key_header``), else the one its SDK sends."""
    if route_header:
        return f"'{route_header}: <key>' or 'Authorization: Bearer <key>'"
    return _SEND_KEY.get(shape, _SEND_KEY_ELSE)


def _scheme_refused(scheme: str, accepts_key: bool, accepts_jwt: bool, send_key: str) -> str:
    """Why a credential in another Authorization scheme is not read (a user name and
    password in Basic, say), and where the gateway reads one (``send_key``: where this
    route's clients send a key). Never the credential."""
    if accepts_jwt and not accepts_key:
        found, send = "no bearer token found", "send the token as 'Authorization: Bearer <token>'"
    elif accepts_jwt:
        found = "no credentials found"
        send = "send an API key or a token as 'Authorization: Bearer <credential>'"
    else:
        found, send = "no API key found", f"send the API key as {send_key}"
    named = f"the {scheme} scheme" if scheme else "a scheme other than Bearer"
    return f"{found}: the Authorization header uses {named}, which is not accepted; {send}"


def _missing_message(accepts_key: bool, accepts_jwt: bool, send_key: str) -> str:
    """What a request without a credential is told (``send_key``: where this route's
    clients send a key)."""
    if accepts_jwt and not accepts_key:
        return "no bearer token found"
    if accepts_key and not accepts_jwt:
        return f"no API key found: send it as {send_key}"
    return "no credentials found: send an API key or a bearer token"


def _from_api_key(ctx: RequestContext, key: StoredAnswer) -> None:
    """Identify the request by ``key``, or refuse it. A disabled or expired key is
    recognised before it is refused: its refusal is logged and counted under its id,
    user and group, so an operator finds a team's failing requests by the key's id."""
    if key is None:
        raise _challenge("invalid API key", invalid=True)
    if key is UNREADABLE:
        # Not a 503: the store answered, and a client retrying would meet the same
        # record; not "invalid API key" either, which sends its holder to check a key
        # that is right. The operator has a warning naming the record.
        raise _challenge(
            "this API key cannot be used: the gateway's record of it cannot be read;"
            " ask the gateway's operator",
            invalid=True,
            code="api_key_unreadable",
        )
    ctx.identity = _key_identity(key)
    if not key.enabled:
        raise _challenge(f"API key '{key.id}' is disabled", invalid=True)
    if key.expires_at is not None and key.expires_at <= time.time():
        raise _challenge(f"API key '{key.id}' has expired", invalid=True)


# The identity of each key record seen lately, by key id, beside the record it was made
# from: an Identity is frozen, so every request with one key can share it (building it
# took about 2 us per request). A record replaced (a reload, a stored key read again)
# is a new object: its identity is made anew. Past the size the cache starts again.
_KEY_IDENTITIES_KEPT = 4096
_key_identities: dict[str, tuple[ApiKey, Identity]] = {}


def _key_identity(key: ApiKey) -> Identity:
    kept = _key_identities.get(key.id)
    if kept is not None and kept[0] is key:
        return kept[1]
    identity = Identity(
        method="api_key",
        api_key_id=key.id,
        user_id=key.user_id,
        group_id=key.group_id,
        groups=(key.group_id,) if key.group_id else (),
        allowed_models=key.allowed_models,
        allowed_routes=key.allowed_routes,
    )
    if len(_key_identities) >= _KEY_IDENTITIES_KEPT:
        _key_identities.clear()
    _key_identities[key.id] = (key, identity)
    return identity


def _from_jwt(verified: JwtIdentity) -> Identity:
    return Identity(
        method="jwt",
        user_id=verified.user_id,
        group_id=verified.group_id,
        groups=verified.groups,
        jwt_provider=verified.provider,
        claims=verified.claims,
    )


def _check_route(ctx: RequestContext) -> None:
    allowed = ctx.identity.allowed_routes
    route = ctx.route
    # The model list is open to every key: it names only what the key may use on the
    # routes it is allowed (stages.model_list), and SDKs and eval tools read it first.
    # So are the caller's own limits (stages.limits_view): they tell it nothing of others.
    if (
        allowed
        and route is not None
        and route.name not in allowed
        and route.api is not RouteApi.OPENAI_MODELS
        and route.api is not RouteApi.AIGW_LIMITS
    ):
        raise PermissionDeniedError(
            f"API key '{ctx.identity.api_key_id}' may not use route '{route.name}'",
            code="route_not_allowed",
        )


def _byte_length(credential: str) -> int:
    """The credential's size in bytes, as ``auth.max_token_bytes`` counts it: a non-ASCII
    character is several (an undecodable byte was read as U+FFFD, three)."""
    return len(credential) if credential.isascii() else len(credential.encode())
