"""A provider key put in the wrong field of the config is never echoed back.

An operator who writes ``provider: ${OPENAI_API_KEY}`` (meaning ``api_key:``), or puts a
key variable in a key's ``allowed_models``, gets an error or a warning that names the
field: from ``extproc check-config``, from ``serve``, and in the log line of a refused
reload. The value the field refused, or the message quoted (``unknown provider '...'``),
was the key itself, whole, whenever it did not look like a well-known key: a self-hosted
server's key, an org key, an admin token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import parse_config
from extproc.config.load_warnings import config_warnings
from extproc.config.loader import ConfigError
from extproc.devstack import DEFAULT_CONFIG

DEFAULT = DEFAULT_CONFIG.read_text()
# A self-hosted server's key: no well-known shape, so only knowing it finds it.
SERVER_KEY = "vllm-local-4f2a9c1e7b"
# OpenAI's shape, read from a variable whose name says nothing.
OPENAI_KEY = "sk-proj-Ab3dEf9hIjKlMnOpQrStUvWxYz0123456789"
CHAT_ROUTE = "  - name: openai-chat\n    path: /v1/chat/completions\n"


def problems_of(text: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "gateway.yaml", environ)
    return refused.value.problems


def with_route_field(field: str) -> str:
    assert CHAT_ROUTE in DEFAULT
    return DEFAULT.replace(CHAT_ROUTE, f"{CHAT_ROUTE}    {field}\n", 1)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # The messages that quote the value themselves.
        (with_route_field("provider: ${OPENAI_API_KEY}"), "routes[0].provider: unknown provider"),
        (with_route_field("model: ${OPENAI_API_KEY}"), "routes[0].model: unknown model"),
        # And a value the loader appends as the one it got.
        (
            DEFAULT.replace("base_url: https://api.openai.com/v1", "base_url: ${OPENAI_API_KEY}"),
            "providers[0].base_url: must be an http:// or https:// URL",
        ),
    ],
)
def test_a_key_variable_in_the_wrong_field_is_named_by_field_not_echoed(
    text: str, field: str
) -> None:
    [problem] = problems_of(text, {"OPENAI_API_KEY": SERVER_KEY})
    assert problem.startswith(field)
    assert SERVER_KEY not in problem
    assert "[redacted]" in problem


def test_a_key_written_in_a_secret_field_is_hidden_where_it_is_pasted_again() -> None:
    text = DEFAULT.replace("api_key: ${OPENAI_API_KEY:-}", f"api_key: {SERVER_KEY}", 1)
    text = text.replace(CHAT_ROUTE, f"{CHAT_ROUTE}    provider: {SERVER_KEY}\n", 1)
    [problem] = problems_of(text, {})
    assert problem.startswith("routes[0].provider: unknown provider")
    assert SERVER_KEY not in problem


def test_a_message_quoting_a_well_known_key_shape_hides_it_under_any_variable() -> None:
    [problem] = problems_of(with_route_field("provider: ${UPSTREAM}"), {"UPSTREAM": OPENAI_KEY})
    assert problem.startswith("routes[0].provider: unknown provider")
    assert OPENAI_KEY not in problem and OPENAI_KEY[-8:] not in problem


def test_other_values_are_still_quoted_as_written() -> None:
    [problem] = problems_of(with_route_field("provider: nope-provider"), {})
    assert problem == "routes[0].provider: unknown provider 'nope-provider'"
    # A store URL keeps its host readable, its password masked, as before.
    text = DEFAULT.replace("url: ${REDIS_URL:-}", "url: http://user:pw-9f8e7d6c@store:6379", 1)
    [problem] = problems_of(text, {})
    assert "(got 'http://***@store:6379')" in problem


def test_warnings_never_quote_a_key_variable_put_in_allowed_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DEFAULT.replace(
        "      user_id: alice\n",
        "      user_id: alice\n      allowed_models:\n        - ${OPENAI_API_KEY}\n",
        1,
    )
    config = parse_config(text, "gateway.yaml", {"OPENAI_API_KEY": SERVER_KEY})
    [warning] = config_warnings(config)
    assert warning.startswith("auth.api_keys[0].allowed_models: '[redacted]' is no model")
    # check-config prints it: the config is valid, the warning names the field alone.
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    assert main(["check-config", "--config", str(path)]) == 0
    printed = capsys.readouterr()
    assert "allowed_models" in printed.err
    assert SERVER_KEY not in printed.out + printed.err


def test_check_config_never_echoes_the_key_of_a_refused_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(with_route_field("provider: ${OPENAI_API_KEY}"))
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert "routes[0].provider: unknown provider" in printed.err
    assert SERVER_KEY not in printed.out + printed.err


def test_a_key_id_an_access_rule_lists_is_still_named_where_a_message_quotes_it() -> None:
    # An access rule lists key ids under `api_keys`, a field named like a secret; the ids
    # are in every request line (api_key_id). Starred out, the error about that key's
    # typo named no key, and the operator had to guess which of them was wrong.
    text = DEFAULT.replace(
        "      group_id: marketing\n",
        "      group_id: marketing\n"
        f"    - id: analytics-batch\n      key: {SERVER_KEY}\n"
        "      allowed_routes: [openai-chatt]\n",
        1,
    ).replace(
        "auth:\n",
        "auth:\n  access_rules:\n    - name: analytics-only\n"
        "      models: [gpt-4o-mini]\n      api_keys: [analytics-batch]\n",
        1,
    )
    [problem] = problems_of(text, {})
    assert problem.startswith("auth.api_keys[2].allowed_routes: unknown route 'openai-chatt'")
    assert "(key 'analytics-batch')" in problem
    # The key itself stays a secret, wherever it is pasted.
    pasted = text.replace(CHAT_ROUTE, f"{CHAT_ROUTE}    provider: {SERVER_KEY}\n", 1)
    assert all(SERVER_KEY not in line for line in problems_of(pasted, {}))
