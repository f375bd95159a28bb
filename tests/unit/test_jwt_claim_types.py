"""Which claim values name a user or a group, as docs/authentication.md lists them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from extproc.auth.jwt_verifier import JwtVerifier
from extproc.config.auth_model import JwtProviderConfig
from tests.unit.test_jwt_verifier import inline_provider, mint, refusal

MAPPING = {"user_id": ["sub", "uid"], "group_id": ["groups"]}


@pytest.fixture
async def verifier() -> AsyncIterator[JwtVerifier]:
    started = JwtVerifier([JwtProviderConfig.model_validate(inline_provider(claims=MAPPING))])
    await started.start()
    yield started
    await started.close()


@pytest.mark.parametrize(
    ("claims", "user", "groups"),
    [
        ({"sub": None, "uid": 42}, "42", ()),  # a numeric user id, by its digits
        ({"sub": None, "uid": True, "groups": "eng"}, None, ("eng",)),  # true is no one
        ({"groups": [1, "", "eng", {"a": 1}, "ml"]}, "alice", ("eng", "ml")),
        ({"groups": 7}, "alice", ()),  # a number is no group
    ],
)
async def test_claim_values_name_users_and_groups_as_documented(
    verifier: JwtVerifier, claims: dict[str, Any], user: str | None, groups: tuple[str, ...]
) -> None:
    identity = await verifier.verify(mint(**claims))
    assert (identity.user_id, identity.groups) == (user, groups)


async def test_a_numeric_sub_is_refused_saying_so(verifier: JwtVerifier) -> None:
    assert await refusal(verifier, mint(sub=42)) == "invalid token: sub is not a string"


async def test_only_values_naming_no_one_are_refused(verifier: JwtVerifier) -> None:
    token = mint(sub=None, uid=["alice"], groups={"eng": True})
    message = await refusal(verifier, token)
    assert message == "invalid token: names no user or group (claims sub, uid, groups)"
