"""Org API keys: every way of giving the secret, and lookups that only ever see hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from extproc.auth.access import AccessPolicy
from extproc.auth.api_keys import ApiKeyStore
from extproc.config.auth_model import AccessRule, ApiKeyConfig, AuthConfig
from extproc.config.loader import ConfigError
from extproc.context import Identity


def store(*keys: ApiKeyConfig, directory: Path | None = None) -> ApiKeyStore:
    return ApiKeyStore(
        AuthConfig(api_keys=keys, api_key_directory=str(directory) if directory else None)
    )


def test_inline_file_and_hash_keys_are_found_by_their_secret(tmp_path: Path) -> None:
    (tmp_path / "team2.key").write_text("team2-secret-from-file\n")
    digest = hashlib.sha256(b"team3-secret-hashed").hexdigest()
    keys = store(
        ApiKeyConfig(id="team1", key="team1-secret-inline", user_id="alice", group_id="eng"),
        ApiKeyConfig(id="team2", key_file=str(tmp_path / "team2.key")),
        ApiKeyConfig(id="team3", key_sha256=digest.upper()),
    )
    found = keys.lookup("team1-secret-inline")
    assert found is not None and (found.id, found.user_id, found.group_id) == (
        "team1",
        "alice",
        "eng",
    )
    assert keys.lookup("team2-secret-from-file") is not None
    assert keys.lookup("team3-secret-hashed") is not None
    assert keys.lookup("team1-secret-inlinX") is None
    assert keys.lookup("") is None


def test_a_secret_directory_supplies_keys_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "team1").write_text("directory-secret-1")
    (tmp_path / "team9").write_text("directory-secret-9")
    (tmp_path / "..data").mkdir()  # Kubernetes' own bookkeeping is skipped
    keys = store(ApiKeyConfig(id="team1", group_id="eng"), directory=tmp_path)
    first = keys.lookup("directory-secret-1")
    assert first is not None and first.group_id == "eng"
    ninth = keys.lookup("directory-secret-9")
    assert ninth is not None and ninth.id == "team9" and ninth.group_id is None


def test_a_directory_key_is_held_to_the_same_rules_as_any_other(tmp_path: Path) -> None:
    (tmp_path / "weak").write_text("x")
    (tmp_path / "garbled").write_bytes(b"\xff\xfe not text")
    with pytest.raises(ConfigError) as caught:
        store(directory=tmp_path)
    assert caught.value.problems == [
        "auth.api_key_directory/garbled: not UTF-8 text",
    ]
    (tmp_path / "garbled").unlink()
    with pytest.raises(ConfigError, match="weak: the key is shorter than 8 characters"):
        store(directory=tmp_path)


def test_no_secret_is_kept_in_clear(tmp_path: Path) -> None:
    keys = store(ApiKeyConfig(id="team1", key="team1-secret-inline"))
    assert "team1-secret-inline" not in repr(vars(keys)) + repr(keys._by_digest)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (ApiKeyConfig(id="a"), "no secret"),
        (ApiKeyConfig(id="a", key="short"), "shorter than 8"),
        (ApiKeyConfig(id="a", key_file="/nonexistent/key"), "cannot read key_file"),
    ],
)
def test_unusable_keys_are_config_errors(spec: ApiKeyConfig, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        store(spec)
    assert problem in caught.value.problems[0]
    assert "auth.api_keys[0] (a)" in caught.value.problems[0]


def test_two_keys_with_one_secret_are_refused() -> None:
    with pytest.raises(ConfigError, match="same secret"):
        store(ApiKeyConfig(id="a", key="same-secret-1"), ApiKeyConfig(id="b", key="same-secret-1"))


ENGINEER = Identity(method="jwt", user_id="alice", group_id="eng", groups=("eng", "ml"))
MARKETER = Identity(method="jwt", user_id="bob", group_id="mkt", groups=("mkt",))


def test_access_rules_cover_matching_models_only() -> None:
    policy = AccessPolicy([AccessRule(name="gpt4o-eng", models=("gpt-4o",), groups=("eng",))])
    assert policy.denial(ENGINEER, "gpt-4o", "chat") is None
    denial = policy.denial(MARKETER, "gpt-4o", "chat")
    assert denial == "group 'mkt' may not use model 'gpt-4o' (access rule 'gpt4o-eng')"
    assert policy.denial(MARKETER, "gpt-4o-mini", "chat") is None


def test_any_group_of_the_caller_counts_and_patterns_match_prefixes() -> None:
    policy = AccessPolicy([AccessRule(name="ml", models=("o1*",), groups=("ml",))])
    assert policy.denial(ENGINEER, "o1-preview", None) is None
    assert policy.denial(MARKETER, "o1-mini", None) is not None


def test_a_key_restricted_to_some_models_is_refused_others() -> None:
    key = Identity(method="api_key", api_key_id="k1", allowed_models=("gpt-4o-mini",))
    policy = AccessPolicy([])
    assert policy.denial(key, "gpt-4o-mini", None) is None
    assert policy.denial(key, "gpt-4o", None) == "API key 'k1' may not use model 'gpt-4o'"
