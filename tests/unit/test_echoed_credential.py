"""A client's own key, sent where the gateway repeats what it was sent, is never repeated:
not in the error it gets back, not in the request's log line.

A refusal quotes the value it refuses ("messages with role '...' cannot be sent to this
model", "service_tier '...' is not a Bedrock service tier"), and the log line records
an agent call's JSON-RPC method and tool as sent, so a key pasted there (a client whose
settings were swapped) was shown back in the error and written to the gateway's log, in
the error's ``error_message`` too. It is ``[redacted]`` in both now.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line
from tests.unit.test_agents import with_agents
from tests.unit.test_docs_reference import SCHEMA
from tests.unit.test_response_path import whole_answer

KEY = "team1-key"
AGENT_KEY = "team2-key"  # the agents' access rules serve team2's group


@pytest.fixture
async def processor(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor with agent routes, its Bedrock signer started."""
    runtime = Runtime(with_agents(config), services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


async def send(processor: Processor, path: str, headers: dict[str, str], body: Any) -> Any:
    answers = await run_stream(
        processor, [request_headers(path, headers=headers), request_body(orjson.dumps(body))]
    )
    return answers[-1]


# Refusals that quote the value they refuse, the client's key in it.
QUOTING = {
    "a role Claude does not take": (
        "/anthropic/chat/completions",
        {"model": "claude-3-5-haiku-latest", "messages": [{"role": KEY, "content": "hi"}]},
    ),
    "a service tier Bedrock does not serve": (
        "/bedrock/llama/chat/completions",
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "service_tier": KEY},
    ),
}


@pytest.mark.parametrize("case", list(QUOTING))
@pytest.mark.parametrize(
    "headers", [{"authorization": f"Bearer {KEY}"}, {"api-key": KEY}], ids=["bearer", "api-key"]
)
async def test_a_refusal_quoting_the_clients_key_shows_it_redacted(
    processor: Processor, services: Services, case: str, headers: dict[str, str]
) -> None:
    path, body = QUOTING[case]
    answer = await send(processor, path, headers, body)
    refusal = answer.immediate_response
    assert refusal.status.code == 400
    assert KEY.encode() not in refusal.body
    error = orjson.loads(refusal.body)["error"]
    assert "[redacted]" in error["message"]
    line = only_line(services)
    assert line["error_message"] == error["message"]
    assert KEY not in orjson.dumps(line).decode()


def _form_naming_the_key(as_file: bool) -> bytes:
    """An image edit's form with a field named by the client's key: given twice, or as a
    file (the refusal names the field, as its ``param`` too)."""
    picture = b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG'
    if as_file:
        named = f'name="{KEY}"; filename="k.png"'.encode()
        parts = [picture, b"Content-Disposition: form-data; " + named + b"\r\n\r\nx"]
    else:
        named = f'Content-Disposition: form-data; name="{KEY}"\r\n\r\n'.encode()
        parts = [named + b"x", named + b"y"]
    return b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"


@pytest.mark.parametrize("as_file", [False, True], ids=["twice", "as-file"])
async def test_an_edit_form_field_named_by_the_clients_key_is_refused_without_it(
    processor: Processor, services: Services, as_file: bool
) -> None:
    """The refusal's ``param`` names the field as its message does: both hide the key."""
    sent = {"authorization": f"Bearer {KEY}", "content-type": "multipart/form-data; boundary=b"}
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/images/edits", headers=sent),
            request_body(_form_naming_the_key(as_file)),
        ],
    )
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert (error["code"], error["param"]) == ("invalid_multipart", "[redacted]")
    assert KEY.encode() not in refusal.body
    assert KEY not in orjson.dumps(only_line(services)).decode()


@pytest.mark.parametrize("lean", [False, True], ids=["full-path", "lean-path"])
async def test_a_providers_error_quoting_the_clients_key_shows_it_starred(
    processor: Processor, services: Services, lean: bool
) -> None:
    # The body goes on as sent (no check of the gateway's reads service_tier on this
    # route), and OpenAI's 400 quotes the value it refused. Starred, not [redacted]: on
    # the lean path the answer's length has left with its headers.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "service_tier": KEY}  # fmt: skip
    said = f"Invalid value for 'service_tier': '{KEY}'. Supported values are: 'auto'."
    error = orjson.dumps({"error": {"message": said, "type": "invalid_request_error"}})
    if lean:
        answer = [whole_answer(error, 400)]
    else:
        provider = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
        answer = [response_headers(400, provider), response_body(error, end_of_stream=True)]
    # The model in the path: the lean path is chosen before the body is read.
    sent = [request_headers("/openai/gpt-4o-mini", headers={"authorization": f"Bearer {KEY}"}),
            request_body(orjson.dumps(body)), *answer]  # fmt: skip
    answers = await run_stream(processor, sent)
    shown = client_body([error], answers[-1:])
    assert shown == error.replace(KEY.encode(), b"*" * len(KEY))
    assert KEY not in orjson.dumps(only_line(services)).decode()


async def test_an_agent_method_holding_the_clients_key_is_logged_redacted(
    processor: Processor, services: Services
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": f"x/{AGENT_KEY}", "params": {"name": AGENT_KEY}}
    await send(processor, "/mcp", {"authorization": f"Bearer {AGENT_KEY}"}, body)
    line = only_line(services)
    assert line["agent"]["method"] == "x/[redacted]"
    assert AGENT_KEY not in orjson.dumps(line).decode()


async def test_a_tool_denied_by_an_access_rule_is_answered_without_the_clients_key(
    processor: Processor, services: Services
) -> None:
    # The denial is a JSON-RPC error the agent stage answers itself (the SDK reads it as
    # that call's error), not an error raised to the processor: it quoted the tool as
    # sent, the caller's key in it, in its message and its data.
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": f"deploy_{AGENT_KEY}", "arguments": {}}}  # fmt: skip
    answer = await send(processor, "/mcp", {"authorization": f"Bearer {AGENT_KEY}"}, body)
    refusal = answer.immediate_response
    assert AGENT_KEY.encode() not in refusal.body
    error = orjson.loads(refusal.body)["error"]
    assert "may not use tool 'deploy_[redacted]'" in error["message"]
    assert error["data"]["tool"] == "deploy_[redacted]"
    assert AGENT_KEY not in orjson.dumps(only_line(services)).decode()


GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2


@pytest.mark.parametrize(
    ("path", "message", "field"),
    [
        ("/mcp", {"method": f"x/{GITHUB_TOKEN}"}, "method"),
        ("/mcp", {"method": "tools/call", "params": {"name": GITHUB_TOKEN, "arguments": {}}},
         "tool"),
        ("/a2a/helper", {"method": f"{GITHUB_TOKEN}/send"}, "method"),
    ],
    ids=["mcp-method", "mcp-tool", "a2a-method"],
)  # fmt: skip
async def test_an_agent_name_holding_a_token_is_logged_redacted(
    processor: Processor, services: Services, path: str, message: dict[str, Any], field: str
) -> None:
    # Not the caller's key, so the line-wide hiding of it missed it: the tool's metric
    # label hid the token, while the log line, read by whoever runs the gateway, kept it.
    body = {"jsonrpc": "2.0", "id": 1, **message}
    await send(processor, path, {"authorization": f"Bearer {AGENT_KEY}"}, body)
    line = only_line(services)
    assert "[redacted]" in line["agent"][field]
    assert GITHUB_TOKEN not in orjson.dumps(line).decode()
    assert GITHUB_TOKEN.encode() not in generate_latest(services.metrics.registry)


def _tool_labels(services: Services) -> set[str]:
    return {
        sample.labels["tool"]
        for family in services.metrics.registry.collect()
        if family.name == "aigw_mcp_tool_calls"
        for sample in family.samples
        if "tool" in sample.labels
    }


@pytest.mark.parametrize(
    "tool",
    [AGENT_KEY, f"run_{AGENT_KEY}", "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2],
    ids=["own-key", "own-key-inside", "github-token"],
)
async def test_a_tool_named_with_a_credential_is_no_metric_label(
    processor: Processor, services: Services, tool: str
) -> None:
    # A label is read by everyone who can query Prometheus, for as long as it keeps it.
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}}  # fmt: skip
    await send(processor, "/mcp", {"authorization": f"Bearer {AGENT_KEY}"}, body)
    assert _tool_labels(services) == {"[redacted]"}
    assert tool.encode() not in generate_latest(services.metrics.registry)


async def test_an_ordinary_tool_name_stays_its_label(
    processor: Processor, services: Services
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "create_issue_2024", "arguments": {}}}  # fmt: skip
    await send(processor, "/mcp", {"authorization": f"Bearer {AGENT_KEY}"}, body)
    assert _tool_labels(services) == {"create_issue_2024"}


# Whatever a client presents as its key, the gateway's own words stay in its line. A
# client that sent "api_key_id" renamed that field to "[redacted]" (the line then missed
# a field the schema requires), and one that sent "rejected" had its outcome rewritten,
# out of the alerts that count refusals.
@pytest.mark.parametrize("presented", ["api_key_id", "error_message", "rejected"])
async def test_a_key_that_is_one_of_the_lines_own_words_leaves_the_line_whole(
    processor: Processor, services: Services, presented: str
) -> None:
    path = "/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    answer = await send(processor, path, {"authorization": f"Bearer {presented}"}, body)
    assert answer.immediate_response.status.code == 401
    line = only_line(services)
    assert list(SCHEMA.iter_errors(line)) == []
    assert (line["http_status_code"], line["outcome"]) == (401, "rejected")
    assert line["api_key_id"] is None
    assert line["auth_method"] == "none"
