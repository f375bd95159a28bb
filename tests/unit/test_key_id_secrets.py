"""A key whose id is a secret is refused: its id is what every record shows.

The request log's ``api_key_id``, the metrics' ``api_key_id`` label, the quota keys and
the usage reports name a key by its id. An entry written with its secret as its id (a
template that filled both from one variable, ``id: ${TEAM1_API_KEY}``), or with another
key's secret, published that secret on every line and every dashboard. The config is
now refused, in ``check-config``, at start and on reload, by the field's place alone:
the id is the very value that must not be shown; so is a key created at run time
(``extproc keys create --id``) under an id that is a key's secret or shaped as one,
and an admin token whose id, which names the caller in every audit line, is a token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.auth.api_keys import ApiKeyStore, key_digest
from extproc.cli import main
from extproc.config import parse_config
from extproc.config.auth_model import ApiKeyConfig, AuthConfig
from extproc.config.loader import ConfigError
from extproc.config.model import ManagementConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.service import AdminTokens
from extproc.management.v1 import management_pb2 as pb
from tests.unit.test_stored_keys import Api, api, client, keys

__all__ = ["api", "client", "keys"]  # test_stored_keys's fixtures

SECRET = "team1-Zq4vW9x3Lm7Kp2"
OTHER = "team2-Hb8nR5t1Yc6Gd0"


def refused(*entries: ApiKeyConfig, directory: Path | None = None) -> list[str]:
    auth = AuthConfig(api_keys=entries, api_key_directory=str(directory) if directory else None)
    with pytest.raises(ConfigError) as caught:
        ApiKeyStore(auth)
    said = str(caught.value)
    assert SECRET not in said and OTHER not in said
    return caught.value.problems


WHY = (
    "is the secret of a key (its own or another's): an id is shown in every request's "
    "log line, metrics and quota keys; give the key an id that is no secret"
)


@pytest.mark.parametrize(
    "entry",
    [
        ApiKeyConfig(id=SECRET, key=SECRET),
        ApiKeyConfig(id=SECRET, key=f"  {SECRET}\n"),  # read as it is matched: stripped
        ApiKeyConfig(id=SECRET, key_sha256=key_digest(SECRET).hex()),
    ],
    ids=["key", "key-with-newline", "key_sha256"],
)
def test_a_key_whose_id_is_its_own_secret_is_refused_by_its_place(entry: ApiKeyConfig) -> None:
    assert refused(ApiKeyConfig(id="ops", key=OTHER), entry) == [f"auth.api_keys[1].id: {WHY}"]


def test_a_key_whose_id_is_another_keys_secret_is_refused(tmp_path: Path) -> None:
    problems = refused(ApiKeyConfig(id="team1", key=SECRET), ApiKeyConfig(id=SECRET, key=OTHER))
    assert problems == [f"auth.api_keys[1].id: {WHY}"]


def test_a_key_file_named_with_its_own_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / SECRET).write_text(SECRET + "\n")
    (tmp_path / "team2").write_text(OTHER)
    assert refused(directory=tmp_path) == [f"auth.api_key_directory: a file's name {WHY}"]


def test_an_entry_naming_a_file_of_its_own_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / SECRET).write_text(SECRET)
    assert refused(ApiKeyConfig(id=SECRET), directory=tmp_path) == [f"auth.api_keys[0].id: {WHY}"]


def test_keys_whose_ids_are_no_secret_still_load(tmp_path: Path) -> None:
    (tmp_path / "team3").write_text("team3-Wd2kP8s4Nf6Jq1")
    store = ApiKeyStore(
        AuthConfig(
            api_keys=(ApiKeyConfig(id="team1", key=SECRET), ApiKeyConfig(id="team2", key=OTHER)),
            api_key_directory=str(tmp_path),
        )
    )
    assert [key.id for key in store.records()] == ["team1", "team2", "team3"]


def test_check_config_refuses_an_id_filled_from_the_key_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One variable filled both fields: the id is the key.
    text = DEFAULT_CONFIG.read_text().replace(
        "    - id: team1\n      key: ${TEAM1_API_KEY:-team1-key}\n",
        "    - id: ${TEAM1_API_KEY}\n      key: ${TEAM1_API_KEY}\n",
        1,
    )
    assert "id: ${TEAM1_API_KEY}" in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    monkeypatch.setenv("TEAM1_API_KEY", SECRET)
    assert main(["check-config", "--config", str(path)]) == 2
    printed = capsys.readouterr()
    assert f"auth.api_keys[0].id: {WHY}" in printed.err
    assert SECRET not in printed.out + printed.err


def test_an_id_shaped_as_a_key_is_refused_at_load() -> None:
    # Another created key's secret, pasted as the id: the config cannot know it, its
    # shape tells it.
    pasted = "aigw-" + "Zq4vW9x3Lm7Kp2Hb8nR5t1Yc6Gd0Wd2kP8s4Nf6Jq1a"[:43]
    text = DEFAULT_CONFIG.read_text().replace("    - id: team1\n", f"    - id: {pasted}\n", 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", {})
    [problem] = caught.value.problems
    assert problem.startswith("auth.api_keys[0].id: holds an API key of this gateway, not a name")
    assert pasted not in str(caught.value)


# --- `extproc keys create --id`: the management API ------------------------------------
# A created key's own secret is made after its id, so it cannot be its id; but an id
# pasted from a key (a config key's secret, a created key's `aigw-...`, a provider's token)
# would be published the same way.


@pytest.mark.parametrize(
    ("pasted", "said"),
    [
        ("team1-key", "id: " + WHY),  # the default config's team1 secret
        ("ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2, "id: holds a GitHub token"),
    ],
    ids=["config-key", "github-token"],
)
async def test_keys_create_refuses_an_id_that_is_a_secret(api: Api, pasted: str, said: str) -> None:
    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id=pasted, user_id="u"))
    assert code == "INVALID_ARGUMENT"
    assert details.startswith(said)
    assert pasted not in details
    assert api.audit_lines() == []
    exit_code, out, err = await api.cli("keys", "create", "--id", pasted)
    assert exit_code != 0
    assert said in err and pasted not in out + err


async def test_keys_create_refuses_the_secret_of_a_created_key_as_an_id(api: Api) -> None:
    created = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id=created.key))
    assert code == "INVALID_ARGUMENT"
    assert "holds an API key of this gateway" in details
    assert created.key not in details
    assert [line["key_id"] for line in api.audit_lines()] == ["ci-bot"]


# --- Admin tokens: the audit log names every caller by its token's id ------------------


# An admin token that is a valid id too (lower-case letters, digits and dashes).
ADMIN_TOKEN = "team1-zq4vw9x3"


@pytest.mark.parametrize(
    "tokens",
    [
        [{"id": "ops", "token": "ops-Hb8nR5t1Yc6Gd0"}, {"id": ADMIN_TOKEN, "token": ADMIN_TOKEN}],
        [{"id": "ops", "token": ADMIN_TOKEN}, {"id": ADMIN_TOKEN, "token_file": "{file}"}],
    ],
    ids=["its-own", "another-tokens"],
)
def test_an_admin_token_whose_id_is_a_token_is_refused(
    tmp_path: Path, tokens: list[dict[str, str]]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("ci-Wd2kP8s4Nf6Jq1\n")
    filled = [{k: v.replace("{file}", str(token_file)) for k, v in t.items()} for t in tokens]
    config = ManagementConfig.model_validate({"admin_tokens": filled})
    with pytest.raises(ConfigError) as refused:
        AdminTokens(config)
    assert refused.value.problems == [
        "management.admin_tokens[1].id: is an admin token (its own or another's): the id names"
        " the caller in every audit line; give the token an id that is no secret"
    ]
    assert ADMIN_TOKEN not in str(refused.value)
