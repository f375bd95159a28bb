"""A security review of JWT verification: real keys, real tokens, every way one could be misread.

The helpers and verifier fixtures of test_jwt_verifier (RSA 2048 and EC P-256
keys, PyJWT-signed tokens, hand-made ones where PyJWT rightly refuses to sign).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    EC_KEY,
    RSA_JWK,
    RSA_KEY,
    RSA_KEY_NEXT,
    Factory,
    handmade,
    inline_provider,
    jwk,
    mint,
    refusal,
)

clock = jwt_tests.clock
make_verifier = jwt_tests.make_verifier


def rs256_with(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def keys_provider(*keys: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return inline_provider(jwks={"inline": {"keys": list(keys)}}, **overrides)


async def test_a_token_issued_in_the_future_is_not_yet_valid(make_verifier: Factory) -> None:
    verifier = await make_verifier(inline_provider(leeway_s=30))
    assert await refusal(verifier, mint(iat=int(time.time()) + 600)) == "token not yet valid"


async def test_a_key_published_for_encryption_only_never_verifies(make_verifier: Factory) -> None:
    # RFC 7517 §4.3: key_ops says what a key is for; one without "verify" is not a signing key.
    encryption_only = {**jwk(RSA_KEY, "rsa-1", "RS256"), "key_ops": ["encrypt", "wrapKey"]}
    del encryption_only["use"]
    verifier = await make_verifier(keys_provider(encryption_only, RSA_JWK | {"kid": "other"}))
    assert await refusal(verifier, mint()) == "invalid token: unknown signing key"


async def test_a_key_marked_use_enc_never_verifies(make_verifier: Factory) -> None:
    verifier = await make_verifier(keys_provider(RSA_JWK | {"use": "enc"}, jwk(EC_KEY, "e", None)))
    assert await refusal(verifier, mint()) == "invalid token: unknown signing key"


async def test_a_token_naming_no_user_or_group_is_refused(make_verifier: Factory) -> None:
    verifier = await make_verifier(inline_provider())
    for nobody in (mint(sub=None), mint(sub=""), mint(sub=None, group="", groups=[7, {}])):
        assert await refusal(verifier, nobody) == (
            "invalid token: names no user or group (claims sub, group, groups)"
        )
        assert verifier.cached(nobody) is None


async def test_a_token_naming_only_a_group_or_only_a_user_is_accepted(
    make_verifier: Factory,
) -> None:
    verifier = await make_verifier(inline_provider())
    group_only = await verifier.verify(mint(sub=None, group="engineering"))
    assert (group_only.user_id, group_only.group_id) == (None, "engineering")
    user_only = await verifier.verify(mint(groups=[]))
    assert (user_only.user_id, user_only.groups) == ("alice", ())


async def test_a_provider_that_maps_no_claims_accepts_tokens_as_a_gate_only(
    make_verifier: Factory,
) -> None:
    # The operator said so explicitly: the token proves membership, nobody is counted.
    provider = inline_provider(claims={"user_id": [], "group_id": []})
    verifier = await make_verifier(provider)
    identity = await verifier.verify(mint())
    assert (identity.user_id, identity.groups) == (None, ())


async def test_the_user_claim_path_is_named_in_the_refusal(make_verifier: Factory) -> None:
    provider = inline_provider(claims={"user_id": ["email", "profile.id"], "group_id": []})
    verifier = await make_verifier(provider)
    assert await refusal(verifier, mint()) == (
        "invalid token: names no user or group (claims email, profile.id)"
    )
    assert (await verifier.verify(mint(profile={"id": "u-1"}))).user_id == "u-1"


async def test_a_signed_exp_past_any_float_is_verified_on_each_use_not_a_crash(
    make_verifier: Factory,
) -> None:
    verifier = await make_verifier(inline_provider())
    token = mint(exp=10**400)  # PyJWT finds it in the future; no clock reaches it
    assert (await verifier.verify(token)).user_id == "alice"
    assert verifier.cached(token) is None


async def test_an_issuers_token_is_never_checked_with_another_issuers_keys(
    make_verifier: Factory,
) -> None:
    # Both providers publish a key with kid "k"; each issuer's tokens meet only its own.
    first = keys_provider(jwk(RSA_KEY, "k", "RS256"))
    second = keys_provider(jwk(RSA_KEY_NEXT, "k", "RS256"), name="second", issuer="https://b")
    verifier = await make_verifier(first, second)
    forged = mint(RSA_KEY_NEXT, kid="k")  # iss is the first provider's
    assert await refusal(verifier, forged) == "invalid token: bad signature"
    assert (await verifier.verify(mint(RSA_KEY_NEXT, kid="k", iss="https://b"))).user_id == "alice"


async def test_a_key_embedded_in_the_token_header_is_ignored(make_verifier: Factory) -> None:
    verifier = await make_verifier(inline_provider())
    attacker = jwk(RSA_KEY_NEXT, "attacker", "RS256")
    header = {"alg": "RS256", "kid": "attacker", "jwk": attacker, "jku": "https://evil.test/"}
    token = handmade(header, jwt_tests.claims(), rs256_with(RSA_KEY_NEXT))
    assert await refusal(verifier, token) == "invalid token: unknown signing key"
