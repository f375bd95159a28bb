"""A hidden tool called, or listed, under another spelling of its name.

Bob (key team2, group marketing) may not use ``deploy_*`` on the MCP server ``tools``
(engineering only). MCP tool names are exact, but servers and aggregators in front of
them are not all exact: some resolve ``DEPLOY_PROD`` or ``" deploy_prod"`` to
``deploy_prod`` and run it. Such a spelling must meet the rule that the name it stands
for meets, and count in that name's limit, never in a counter of its own.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson
import pytest

from extproc.agents.tool_names import folded
from extproc.config import GatewayConfig
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_agents_review import immediate, tool_call, with_limits

SPELLINGS = [
    "DEPLOY_PROD",
    "Deploy_Prod",
    " deploy_prod",
    "deploy_prod\t",
    "deploy_prod\u200b",  # a zero-width space
    "\uff44eploy_prod",  # a full-width d
    "deploy\ufe4dprod",  # a dashed low line, NFKC's underscore
]


@pytest.mark.parametrize("name", SPELLINGS)
async def test_a_hidden_tool_under_another_spelling_is_refused_before_the_server(
    config: GatewayConfig, services: Services, name: str
) -> None:
    processor = processor_for(with_agents(config), services)
    refusal = immediate(await tool_call(processor, {"name": name, "arguments": {}}, 7))
    assert refusal is not None, "the call went on to the MCP server"
    status, error = refusal
    assert status == 200 and error["id"] == 7 and error["error"]["code"] == -32003
    assert error["error"]["data"] == {
        "type": "permission_error",
        "code": "tool_not_allowed",
        "tool": name,
    }
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "denied" and line["agent"]["tool"] == name


async def test_a_tool_whose_name_only_looks_alike_in_part_still_goes_on(
    config: GatewayConfig, services: Services
) -> None:
    # Folding widens a rule to the spellings of the names it covers, not beyond them.
    processor = processor_for(with_agents(config), services)
    for name in ("Echo", "redeploy_prod", "deployprod"):
        assert immediate(await tool_call(processor, {"name": name, "arguments": {}})) is None


async def test_a_tool_list_hides_a_tool_listed_under_another_spelling(
    config: GatewayConfig, services: Services
) -> None:
    # A server listing DEPLOY_PROD runs it when called so: Bob must not see it either.
    processor = processor_for(with_agents(config), services)
    tools = [{"name": name, "inputSchema": {}} for name in ("echo", "DEPLOY_PROD", "Deploy_x")]
    answer = {"jsonrpc": "2.0", "id": 5, "result": {"tools": tools}}
    request = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    answers = await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(request)),
            response_headers(200, {"content-type": "application/json"}),
            response_body(orjson.dumps(answer), end_of_stream=True),
        ],
    )
    body = answers[-1].response_body.response.body_mutation.body
    assert [tool["name"] for tool in orjson.loads(body)["result"]["tools"]] == ["echo"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["tools_listed"] == 1 and line["agent"]["tools_hidden"] == 2


async def test_a_per_tool_limit_counts_every_spelling_of_a_tool_as_that_tool(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    # echo twice a day for each key; a new spelling per call must not open a new counter.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rule = {"name": "echo-twice", "subject": "api_key", "tools": ["echo"], "requests_per_day": 2}
    processor = processor_for(with_limits(config, rule), services)
    for name in ("echo", "ECHO"):
        assert immediate(await tool_call(processor, {"name": name, "arguments": {}})) is None
    refusal: Any = immediate(await tool_call(processor, {"name": " Echo", "arguments": {}}))
    assert refusal is not None and refusal[1]["error"]["code"] == -32029
    assert refusal[1]["error"]["data"]["rule"] == "echo-twice"


def _full_fold(name: str) -> str:
    """The fold as defined (jsonrpc.canonical_method), with no shortcut for plain names."""
    normal = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in normal if not c.isspace() and unicodedata.category(c)[0] != "C")


@pytest.mark.parametrize(
    "name",
    [
        *(chr(code) for code in range(128)),  # every ASCII character, plain or not
        *(f"deploy{chr(code)}prod" for code in range(128)),
        "", "deploy_prod", "search-issues.v2", "tools/call", "a:b@c[0]{x}|~`'^",
        *SPELLINGS, "deploy_prod\x7f", "deploy_prod\x85", "\u212aelvin",
    ],
)  # fmt: skip
def test_a_plain_name_folds_to_itself_and_every_other_one_as_defined(name: str) -> None:
    assert folded(name) == _full_fold(name)
