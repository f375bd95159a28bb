"""Review of authentication edge cases: alg handling, aud lists, claim mapping, header parsing."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from extproc.errors import AuthenticationError
from extproc.stages.authentication import _credential

ISSUER = "https://idp.example.com"
SECRET = "a-shared-secret-of-at-least-32-bytes!"


def verifier(**extra: Any) -> JwtVerifier:
    spec = {"name": "internal", "issuer": ISSUER, "shared_secret": SECRET, "algorithms": ["HS256"]}
    spec.update(extra)
    return JwtVerifier([JwtProviderConfig.model_validate(spec)])


def token(alg: str = "HS256", key: str = SECRET, **overrides: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 600}
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_alg_none_is_refused() -> None:
    forged = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'iss': ISSUER, 'sub': 'x'})}."
    with pytest.raises(AuthenticationError, match="algorithm not allowed"):
        await verifier().verify(forged)


async def test_alg_outside_the_allow_list_is_refused_even_with_the_right_secret() -> None:
    with pytest.raises(AuthenticationError, match="algorithm not allowed"):
        await verifier().verify(token(alg="HS512", key=SECRET * 2))


async def test_aud_list_in_token_matches_one_configured_audience() -> None:
    v = verifier(audiences=["gw"])
    identity = await v.verify(token(aud=["other", "gw"]))
    assert identity.user_id == "alice"
    with pytest.raises(AuthenticationError, match="wrong audience"):
        await v.verify(token(aud=["other"]))
    with pytest.raises(AuthenticationError, match='missing claim "aud"'):
        await v.verify(token(aud=None))


async def test_expired_within_leeway_is_accepted_but_not_cached() -> None:
    v = verifier(leeway_s=30)
    t = token(exp=int(time.time()) - 5)
    assert (await v.verify(t)).user_id == "alice"
    assert v.cached(t) is None


async def test_empty_sub_falls_back_to_group_and_names_no_one_is_refused() -> None:
    v = verifier()
    identity = await v.verify(token(sub="", groups=["", "team-a", 7]))
    assert identity.user_id is None and identity.groups == ("team-a",)
    with pytest.raises(AuthenticationError, match="names no user or group"):
        await v.verify(token(sub="", groups=[]))
    # RFC 7519: sub is a StringOrURI, PyJWT refuses a number there; a numeric id in
    # another claim is taken as text, a boolean is no id.
    with pytest.raises(AuthenticationError, match="sub is not a string"):
        await v.verify(token(sub=12345))
    uid = verifier(claims={"user_id": ["uid"], "group_id": []})
    assert (await uid.verify(token(uid=12345))).user_id == "12345"
    with pytest.raises(AuthenticationError, match="names no user or group"):
        await uid.verify(token(uid=True))


def test_bearer_scheme_is_case_insensitive_and_takes_precedence_over_x_api_key() -> None:
    assert (
        _credential({"authorization": "bEaReR \t tok-1  ", "x-api-key": "key-2"}, None) == "tok-1"
    )
    # An empty Bearer falls through to x-api-key; a non-bearer scheme with a value too.
    assert _credential({"authorization": "Bearer", "x-api-key": "key-2"}, None) == "key-2"
    assert _credential({"authorization": "Basic dXNlcjpw", "x-api-key": "key-2"}, None) == "key-2"
    assert _credential({"authorization": "bare-key-1"}, None) == "bare-key-1"
