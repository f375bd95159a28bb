"""Odd requests and config files: each is refused as a mistake, or served as what it is.

The request side: a body the gateway read as JSON whatever ``content-type`` the client
named (``curl -d`` says ``application/x-www-form-urlencoded``) goes to the provider
labelled as the JSON it is, translated or not; Anthropic's API requires the label.

The config side: a float YAML reads as infinite (``.inf``, ``1e400``) or NaN, a key
written twice in one mapping, a file that is not UTF-8. Each is named at load, in the
``ConfigError`` form ``check-config`` prints and a reload logs (exit status 2, the
running config kept), and never becomes a setting nobody wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.cli import main
from extproc.config import ConfigError, load_config, parse_config
from extproc.envoy_bootstrap import render_bootstrap_yaml
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.test_config_numbers import PROVIDERS


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gateway.yaml", environ or {})
    return raised.value.problems


# --- infinite and NaN numbers -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("envoy:\n  upstream_timeout_s: .inf\n", "envoy.upstream_timeout_s"),
        ("envoy:\n  upstream_timeout_s: 1e400\n", "envoy.upstream_timeout_s"),
        ("envoy:\n  upstream_timeout_s: .nan\n", "envoy.upstream_timeout_s"),
        ("envoy:\n  upstream_timeout_s: ${TIMEOUT}\n", "envoy.upstream_timeout_s"),
        ("envoy:\n  request_slack_s: .inf\n", "envoy.request_slack_s"),
        (
            "telemetry:\n  tracing:\n    export_timeout_s: .inf\n",
            "telemetry.tracing.export_timeout_s",
        ),
    ],
)
def test_an_infinite_or_nan_number_is_refused_naming_its_field(text: str, field: str) -> None:
    # Loaded, `.inf` rendered `stream_idle_timeout: infs` into Envoy's bootstrap: a
    # config `check-config` passed and Envoy could not start with.
    [problem] = _problems(PROVIDERS + text, {"TIMEOUT": "inf"})
    assert problem.startswith(f"{field}: Input should be a finite number")


def test_an_infinite_provider_timeout_is_refused_before_it_reaches_the_bootstrap() -> None:
    text = """
providers:
  - {name: mock, base_url: "http://127.0.0.1:8000/v1", timeout_s: .inf}
models:
  - {name: gpt-4o-mini, provider: mock}
"""
    [problem] = _problems(text)
    assert problem.startswith("providers[0].timeout_s: Input should be a finite number")
    # A finite one renders as Envoy reads durations.
    config = parse_config(text.replace(".inf", "12.5"), "gateway.yaml", {})
    rendered = render_bootstrap_yaml(config)
    assert "12.5s" in rendered
    assert "infs" not in rendered


# --- keys written twice -------------------------------------------------------------


def test_a_section_written_twice_is_refused_naming_its_line() -> None:
    # PyYAML keeps the last `limits:`: the first one's setting (and its mistake) vanished.
    text = PROVIDERS + "limits:\n  max_messages: 5\nlimits:\n  max_json_depth: 10\n"
    [problem] = _problems(text)
    assert problem == (
        'YAML syntax error at line 8, column 1: the key "limits" is written twice in one mapping'
    )


def test_a_field_written_twice_in_a_flow_mapping_is_refused() -> None:
    text = """
providers:
  - {name: mock, base_url: "http://127.0.0.1:8000/v1"}
  - {name: other, base_url: "http://127.0.0.1:8001/v1"}
models:
  - {name: gpt-4o-mini, provider: mock, provider: other}
"""
    [problem] = _problems(text)
    assert 'the key "provider" is written twice' in problem
    assert "line 6" in problem


def test_merge_keys_still_merge_and_the_mappings_own_keys_override_them() -> None:
    # Not a repeated key: YAML's merge, which an explicit key overrides by design.
    text = PROVIDERS + (
        "limits:\n"
        "  <<: {max_messages: 5, max_json_depth: 9}\n"
        "  <<: {max_request_body_bytes: 2048}\n"
        "  max_json_depth: 12\n"
    )
    config = parse_config(text, "gateway.yaml", {})
    assert config.limits.max_messages == 5
    assert config.limits.max_json_depth == 12
    assert config.limits.max_request_body_bytes == 2048


# --- a file that is not UTF-8 -------------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    # Saved by an editor in Latin-1: the `é` of a comment is one byte, 0xe9.
    path.write_bytes(b"# caf\xe9 team\n" + PROVIDERS.encode())
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert raised.value.problems == ["the file is not UTF-8 text (byte 5 cannot be decoded)"]


def test_check_config_answers_a_file_that_is_not_utf8_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(PROVIDERS.encode("utf-16"))
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err
    assert "Traceback" not in err


# --- secrets in the values a config error shows -------------------------------------


def test_a_refused_url_is_shown_without_the_token_in_its_query() -> None:
    # Hosted MCP servers take their key in the URL; the validator refuses a query there,
    # and its error (printed by check-config, logged by a reload) showed the key.
    text = PROVIDERS + (
        "agents:\n  servers:\n"
        "    - {name: tools, protocol: mcp, url: 'https://mcp.example.com/mcp?api_key=s3cr3t-v4lue'}\n"
    )
    [problem] = _problems(text)
    assert "s3cr3t-v4lue" not in problem
    assert problem == (
        "agents.servers[0].url: must hold no query or fragment: only its path reaches the "
        "server (its key goes in api_key) (got 'https://mcp.example.com/mcp?***')"
    )


def test_a_key_written_in_the_wrong_field_is_not_shown() -> None:
    # `base_url: ${OPENAI_API_KEY}` for `${OPENAI_BASE_URL}`: the value is a key.
    text = """
providers:
  - {name: mock, base_url: "${OPENAI_BASE_URL}"}
models:
  - {name: gpt-4o-mini, provider: mock}
"""
    [problem] = _problems(text, {"OPENAI_BASE_URL": "sk-proj-abcdef0123456789"})
    assert "abcdef0123456789" not in problem
    assert problem.startswith("providers[0].base_url: must be an http:// or https:// URL")


def test_a_store_password_is_still_masked_with_the_query() -> None:
    text = PROVIDERS + "store:\n  url: 'foo://user:pa55word@host:6379/0?password=pa55word'\n"
    [problem] = _problems(text)
    assert "pa55word" not in problem
    assert problem.endswith("(got 'foo://***@host:6379/0?***')")


def test_an_environment_variable_that_is_not_utf8_is_refused_at_load() -> None:
    # os.environ hands a byte that is not UTF-8 over as a lone surrogate. Loaded as the
    # provider's key, it could not be written into the Authorization header: every
    # request through that provider failed in the gateway, after check-config passed.
    text = """
providers:
  - {name: mock, base_url: "http://127.0.0.1:8000/v1", api_key: "${PROVIDER_KEY}"}
models:
  - {name: gpt-4o-mini, provider: mock}
"""
    [problem] = _problems(text, {"PROVIDER_KEY": "sk-test-\udcff"})
    assert problem == "providers[0].api_key: environment variable PROVIDER_KEY is not UTF-8 text"
    config = parse_config(text, "gateway.yaml", {"PROVIDER_KEY": "sk-test-clé"})
    [provider] = config.providers
    assert provider.api_key is not None
    assert provider.api_key.get_secret_value() == "sk-test-clé"


# --- the content type of what the gateway sends ---------------------------------------

GATEWAY = """
providers:
  - {name: openai, type: openai, base_url: "http://127.0.0.1:8001/v1", api_key: sk-test-0000}
  - {name: anthropic, type: anthropic, base_url: "http://127.0.0.1:8002", api_key: sk-ant-0000}
  - {name: backup, type: anthropic, base_url: "http://127.0.0.1:8003", api_key: sk-ant-0001}
models:
  - {name: gpt-4o-mini, provider: openai}
  - {name: claude-sonnet-4-0, provider: anthropic}
  - {name: claude-fallback, provider: backup}
  - {name: claude-chain, provider: anthropic, fallbacks: [claude-fallback]}
auth:
  api_keys:
    - {id: team, key: team-key-0001}
"""
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
MESSAGES = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _sent_headers(path: str, body: dict[str, object], content_type: str | None) -> dict[str, str]:
    """The header changes the gateway asks Envoy to make to the request it sends upstream."""
    sent = {"authorization": "Bearer team-key-0001"}
    if content_type is not None:
        sent["content-type"] = content_type
    processor = processor_for(parse_config(GATEWAY, "gateway.yaml", {}))
    messages = [request_headers(path, headers=sent), request_body(orjson.dumps(body))]
    answers = asyncio.run(run_stream(processor, messages))
    [answer] = [a for a in answers if a.WhichOneof("response") == "request_body"]
    return _set_headers(answer.request_body.response)


def _set_headers(response: ext.CommonResponse) -> dict[str, str]:
    return {
        option.header.key: option.header.raw_value.decode()
        for option in response.header_mutation.set_headers
    }


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Translated: the gateway wrote the body itself.
        ("/v1/chat/completions", {"model": "claude-sonnet-4-0", **CHAT}),
        # Passed through, and with a failover chain (each attempt starts from it).
        ("/v1/messages", {"model": "claude-sonnet-4-0", **MESSAGES}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", **CHAT}),
        ("/v1/chat/completions", {"model": "claude-chain", **CHAT}),
    ],
)
def test_what_the_gateway_read_as_json_goes_upstream_labelled_json(
    path: str, body: dict[str, object], content_type: str | None
) -> None:
    # Before: the client's label went on with the body (a form, text, none), which
    # Anthropic's API refuses: the gateway had parsed, guarded and counted a request
    # that the provider then refused for a header.
    sent = _sent_headers(path, body, content_type)
    assert headers.CLUSTER in sent  # routed upstream, not refused
    assert sent["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_body_that_is_not_utf8_is_refused_naming_where_it_stops_being_utf8(path: str) -> None:
    # A client sending Latin-1 text (`charset=latin-1`) was told "str is not valid UTF-8:
    # surrogates not allowed: line 1 column 1 (char 0)": the parser's words, and a place
    # that is not where the bad byte is.
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    sent = {
        "authorization": "Bearer team-key-0001",
        "content-type": "application/json; charset=latin-1",
    }
    processor = processor_for(parse_config(GATEWAY, "gateway.yaml", {}))
    answers = asyncio.run(
        run_stream(processor, [request_headers(path, headers=sent), request_body(body)])
    )
    [refusal] = [a.immediate_response for a in answers if a.HasField("immediate_response")]
    assert refusal.status.code == 400
    message = orjson.loads(refusal.body)["error"]["message"]
    bad_byte = body.index(b"\xe9")
    assert f"byte {bad_byte}" in message and "UTF-8" in message
    assert "surrogates" not in message
