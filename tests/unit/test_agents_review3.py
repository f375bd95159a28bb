"""Agent routes, a third review: what a server that reads JSON differently from the gateway
would run.

Bob (key team2, group marketing) may not use ``deploy_*`` on the MCP server ``tools``.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_agents_review import immediate

_DEPLOY = b'{"name":"deploy_prod","arguments":{}}'


# Go's encoding/json (mcp-go, the Go MCP SDK before CVE-2026-27896, Go A2A servers) matches
# keys to its fields case-insensitively, folding the long s and the Kelvin sign too, and the
# last matching key wins: the server reads "Method" as the method, "Name" as the tool.
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/list",'
                     b'"Method":"tools/call","params":' + _DEPLOY + b"}", id="method-cased"),
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                     b'"params":{"name":"echo","NAME":"deploy_prod"}}', id="tool-cased"),
        pytest.param("/mcp", b'{"jsonrpc":"2.0","id":1,"result":{},"Method":"tools/call",'
                     b'"Params":' + _DEPLOY + b"}", id="an-answer-to-the-gateway"),
        pytest.param("/mcp", '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
                     '{"name":"echo"},"param\u017f":{"name":"deploy_prod"}}'.encode(),
                     id="long-s"),
        pytest.param("/mcp", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list",'
                     b'"METHOD":"tools/call","params":' + _DEPLOY + b"}]", id="in-a-batch"),
        pytest.param("/a2a/helper/", b'{"jsonrpc":"2.0","id":1,"method":"GetTask",'
                     b'"Method":"SendMessage","params":{"message":{"role":"ROLE_USER",'
                     b'"messageId":"m","parts":[]}}}', id="a2a-message-uncounted"),
    ],
)  # fmt: skip
async def test_a_key_spelt_in_another_case_is_refused_not_read_one_way_and_run_another(
    config: GatewayConfig, services: Services, path: str, body: bytes
) -> None:
    processor = processor_for(with_agents(config), services)
    answers = await run_stream(processor, [request_headers(path, headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    refusal = immediate(answers)
    assert refusal is not None, "the request went on to the server"
    status, error = refusal
    first = error[0] if isinstance(error, list) else error
    assert status == 400 and first["error"]["code"] == -32600


async def test_keys_in_another_case_deep_in_a_tools_arguments_are_the_tools_business(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_agents(config), services)
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"Name":"x","METHOD":"y","Params":{}}}}')  # fmt: skip
    answers = await run_stream(processor, [request_headers("/mcp", headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    assert immediate(answers) is None


# JavaScript (the TypeScript SDK) reads every JSON number as a double.
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(b"1.0", b"1", id="1.0-and-1"),
        pytest.param(b"9007199254740993", b"9007199254740992", id="past-2**53"),
    ],
)
async def test_a_batch_of_two_ids_one_to_a_javascript_server_is_refused(
    config: GatewayConfig, services: Services, first: bytes, second: bytes
) -> None:
    processor = processor_for(with_agents(config), services)
    body = (b'[{"jsonrpc":"2.0","id":' + first + b',"method":"ping"},'
            b'{"jsonrpc":"2.0","id":' + second + b',"method":"tools/list"}]')  # fmt: skip
    answers = await run_stream(processor, [request_headers("/mcp", headers=TEAM2),
                                           request_body(body)])  # fmt: skip
    refusal = immediate(answers)
    assert refusal is not None, "the request went on to the server"
    assert refusal[0] == 400 and refusal[1]["error"]["code"] == -32600


async def test_a_tool_list_answered_under_the_ids_integer_spelling_is_filtered(
    config: GatewayConfig, services: Services
) -> None:
    # Bob asked under id 1.0; a JavaScript server answers under 1, the same id.
    processor = processor_for(with_agents(config), services)
    tools = [{"name": "echo"}, {"name": "deploy_prod"}]
    answer = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})
    answers = await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(b'{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}'),
            response_headers(200, {"content-type": "application/json"}),
            response_body(answer, end_of_stream=True),
        ],
    )
    sent = answers[-1].response_body.response.body_mutation.body
    assert [tool["name"] for tool in orjson.loads(sent)["result"]["tools"]] == ["echo"]
