"""`extproc keys ...` against a running gateway, and the official OpenAI client through Envoy.

An operator creates a key and hands its secret (printed once) to a client; the
client's requests carry the new key's identity into the log. The list shows the
key without any secret; once revoked, the same client gets a 401 on its next
request. Creating a second key with a taken id exits 2.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    config_with_admin_token,
    run_cli,
    running_stack,
    wait_for,
)
from tests.integration.forked import run_extproc_text

ADMIN_TOKEN = "keys-cli-test-admin-token"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "who am I?"}]


@pytest.fixture(scope="module")
def keys_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("keys")
    with running_stack(workdir, config_with_admin_token(workdir, ADMIN_TOKEN)) as running:
        yield running


def keys(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `extproc keys ...` as an operator would, with the stack's config."""
    return run_cli(stack, "keys", *args, admin_token=ADMIN_TOKEN)


def client(stack: LocalStack, key: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def test_a_key_created_at_run_time_works_until_it_is_revoked(keys_stack: LocalStack) -> None:
    created = keys(
        keys_stack, "create", "--id", "ci-bot", "--user", "carol", "--group", "research",
        "--label", "team=ml", "--model", "gpt-4o-mini",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]  # fmt: skip
    assert secret.startswith("aigw-")
    assert "will not be shown again" in created.stderr

    ci_bot = client(keys_stack, secret)
    raw = ci_bot.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    [line] = GatewayLog(keys_stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "ci-bot",
        "carol",
        "research",
    )
    assert line["auth_method"] == "api_key"

    listed = keys(keys_stack, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in orjson.loads(listed.stdout)}
    assert (rows["team1"]["source"], rows["ci-bot"]["source"]) == ("config", "store")
    assert (rows["ci-bot"]["user_id"], rows["ci-bot"]["labels"]) == ("carol", {"team": "ml"})
    assert rows["ci-bot"]["allowed_models"] == ["gpt-4o-mini"]
    table = keys(keys_stack, "list")
    assert "ci-bot" in table.stdout and "store" in table.stdout
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for output in (listed.stdout, table.stdout):
        assert secret not in output and digest not in output

    revoked = keys(keys_stack, "revoke", "--id", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError) as refused:
        ci_bot.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 401
    assert "invalid API key" in str(refused.value)

    # Each change left an audit line on the gateway's stderr; the secret is nowhere.
    err = keys_stack.workdir / "gateway.err"
    audits = wait_for(lambda: [line for line in err.read_text().splitlines() if '"audit"' in line])
    ci_bot_lines = [orjson.loads(line) for line in audits if '"ci-bot"' in line]
    assert [(line["action"], line["caller"]) for line in ci_bot_lines] == [
        ("create_key", "ops"), ("revoke_key", "ops"),
    ]  # fmt: skip
    for path in (err, keys_stack.gateway_log):
        assert secret not in path.read_text()


def test_a_taken_id_exits_2_with_a_clear_message(keys_stack: LocalStack) -> None:
    assert keys(keys_stack, "create", "--id", "nightly").returncode == 0

    for taken in ("nightly", "team1"):
        again = keys(keys_stack, "create", "--id", taken)
        assert again.returncode == 2
        assert f"an API key with id '{taken}' already exists" in again.stderr
        assert "Traceback" not in again.stderr
        assert again.stdout == ""


def test_bad_input_and_unknown_ids_exit_2(keys_stack: LocalStack) -> None:
    naive = keys(keys_stack, "create", "--id", "x", "--expires", "2030-01-01T00:00:00")
    assert naive.returncode == 2 and "needs a time zone" in naive.stderr
    unknown = keys(keys_stack, "revoke", "--id", "nobody")
    assert unknown.returncode == 2
    assert "no API key with id 'nobody' was created at run time" in unknown.stderr


def test_the_admin_token_comes_from_a_file_and_one_on_the_command_line_is_warned_about(
    keys_stack: LocalStack, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"{ADMIN_TOKEN}\n")
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "extproc", "keys", "list", "--config",
            str(keys_stack.config_path), "--json"]  # fmt: skip
    # No token in the environment: the file is the only place it is.
    env = {name: value for name, value in keys_stack.env.items() if name != "AIGW_ADMIN_TOKEN"}

    def run(*more: str) -> subprocess.CompletedProcess[str]:
        return run_extproc_text([*argv, *more], env)

    from_file = run("--token-file", str(token_file))
    assert (from_file.returncode, from_file.stderr) == (0, "")
    assert "team1" in [row["id"] for row in orjson.loads(from_file.stdout)]

    # Before: taken without a word, while `ps` showed the token to every user of the host.
    on_command_line = run("--token", ADMIN_TOKEN)
    assert on_command_line.returncode == 0
    assert on_command_line.stderr.startswith("warning: --token puts the admin token on the")
    assert ADMIN_TOKEN not in on_command_line.stderr

    missing = run("--token-file", str(tmp_path / "nope"))
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"error: cannot read the admin token file {tmp_path / 'nope'}: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("option", "value", "field", "reason"),
    [
        ("--user", "carol\nmallory  store  admin", "user_id", "control or invisible character"),
        ("--group", "research\x1b[2J", "group_id", "control or invisible character"),
        ("--user", "carol ", "user_id", "has spaces around it"),
        ("--group", "g" * 10_000, "group_id", "is 10000 characters long, more than 256"),
        ("--label", "team=ml\r\nfake,row", "labels['team']", "control or invisible character"),
    ],
    ids=["user-line-break", "group-escape", "user-trailing-space", "group-10kb", "label-crlf"],
)  # fmt: skip
def test_an_owner_or_label_no_table_can_show_is_refused_naming_the_field(
    keys_stack: LocalStack, option: str, value: str, field: str, reason: str
) -> None:
    # Before: stored as sent, and `keys list` printed a forged row (or cleared the
    # operator's screen); "carol " was a user no quota or report of carol counted.
    err = keys_stack.workdir / "gateway.err"
    audited = err.read_text(errors="replace").count('"audit"')
    key_id = f"odd-{field.split('[')[0]}-{len(value)}"

    refused = keys(keys_stack, "create", "--id", key_id, option, value)

    assert (refused.returncode, refused.stdout) == (2, "")
    assert f"{field}" in refused.stderr and reason in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = keys(keys_stack, "list", "--format", "json")
    assert key_id not in [row["id"] for row in orjson.loads(listed.stdout)]
    # Nothing stored, nothing audited.
    assert err.read_text(errors="replace").count('"audit"') == audited


@pytest.mark.parametrize("command", ["create", "list"])
def test_a_label_given_twice_with_two_values_is_a_usage_error(
    keys_stack: LocalStack, command: str
) -> None:
    # Before: the last value was kept without a word (a key created as team=infra for
    # an operator who also typed team=ml; a list filtered on one of the two).
    given = keys(
        keys_stack, command, *(["--id", "two-teams"] if command == "create" else []),
        "--label", "team=ml", "--label", "team=infra",
    )  # fmt: skip

    assert (given.returncode, given.stdout) == (2, "")
    assert "--label: 'team' is given twice, as 'ml' and as 'infra'" in given.stderr
    listed = keys(keys_stack, "list", "--format", "json")
    assert "two-teams" not in [row["id"] for row in orjson.loads(listed.stdout)]
