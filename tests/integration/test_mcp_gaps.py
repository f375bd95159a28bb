"""MCP tool access control against a lenient MCP server, behind the real Envoy and gateway.

The server (``agent_servers.lenient_mcp_app``) is lax where real servers differ: it runs a
``tools/call`` sent as a notification or under a lookalike method name, and answers tool
lists in whatever content type and encoding it is asked for. Bob (team 2, marketing) may
not use ``deploy_*``: whatever he sends, no ``deploy_*`` tool runs for him and no answer
shows him one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack, free_port
from tests.integration.conftest import running_stack, wait_for
from tests.integration.test_agents import TEAM1, TEAM2, _listening

AGENTS = """
agents:
  servers:
    - name: lenient
      protocol: mcp
      url: http://127.0.0.1:{port}/mcp
  access:
    - name: deploy-is-engineering
      tools: ["deploy_*"]
      groups: [engineering]
"""
ROUTES = """routes:
  - name: mcp-lenient
    path_prefix: /mcp/lenient
    api: mcp
    server: lenient
"""
ACCEPT = {"accept": "application/json, text/event-stream"}


class Lenient:
    def __init__(self, stack: LocalStack, port: int) -> None:
        self.stack = stack
        self.port = port

    def post(self, key: str, body: Any, query: str = "") -> httpx.Response:
        return httpx.post(
            f"{self.stack.base_url}/mcp/lenient{query}",
            json=body,
            headers={"authorization": f"Bearer {key}", **ACCEPT},
            timeout=30.0,
        )

    def stream(self, key: str, query: str) -> httpx.Response:
        return httpx.get(
            f"{self.stack.base_url}/mcp/lenient{query}",
            headers={"authorization": f"Bearer {key}", "accept": "text/event-stream"},
            timeout=30.0,
        )

    def calls(self) -> list[str]:
        """The tools the server ran (asked of the server itself, not through the gateway)."""
        found: list[str] = httpx.get(f"http://127.0.0.1:{self.port}/calls", timeout=10.0).json()
        return found


@contextmanager
def lenient_mcp_server(stderr_file: Path) -> Iterator[int]:
    """The tests' lenient MCP server, in a process of its own on a free port (yielded), its
    stderr appended to ``stderr_file``; stopped on exit."""
    port = free_port()
    start = "import sys; from tests.integration.agent_servers import run_lenient_mcp; "
    with stderr_file.open("ab") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-c", start + "run_lenient_mcp(int(sys.argv[1]))", str(port)],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=Path.cwd(),
        )  # fmt: skip
    try:
        assert wait_for(lambda: _listening(port), 60.0), "the lenient MCP server did not start"
        yield port
    finally:
        server.terminate()
        server.wait(15)


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lenient]:
    workdir = tmp_path_factory.mktemp("mcp-gaps")
    with lenient_mcp_server(workdir / "lenient.err") as port:
        text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\n" + ROUTES, 1)
        config = workdir / "gateway.yaml"
        config.write_text(text + AGENTS.format(port=port))
        with running_stack(workdir, config) as stack:
            yield Lenient(stack, port)


def deploy(**envelope: Any) -> dict[str, Any]:
    params = {"name": "deploy_production", "arguments": {"service": "billing"}}
    return {"jsonrpc": "2.0", "method": "tools/call", "params": params, **envelope}


def listed(answer: httpx.Response) -> set[str]:
    text = answer.text
    if answer.headers.get("content-type", "").lower().startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return {tool["name"] for tool in orjson.loads(text)["result"]["tools"]}


# --- item 1: tool calls that would skip the check ------------------------------------------


def test_the_lenient_server_runs_what_engineering_may_call(lenient: Lenient) -> None:
    answer = lenient.post(TEAM1, deploy(id=1))
    assert answer.json()["result"]["content"][0]["text"] == "ran deploy_production"
    assert "deploy_production" in lenient.calls()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(deploy(), id="notification"),
        pytest.param([deploy()], id="notification-in-a-batch"),
        pytest.param(deploy(id=2, method="Tools/Call"), id="uppercase-method"),
        pytest.param(deploy(id=3, method=" tools/call "), id="padded-method"),
    ],
)
def test_bobs_deploy_never_runs_whatever_shape_his_request_takes(
    lenient: Lenient, body: Any
) -> None:
    before = lenient.calls().count("deploy_production")
    answer = lenient.post(TEAM2, body)
    assert lenient.calls().count("deploy_production") == before, "bob's deploy ran"
    assert answer.status_code == 400
    error = answer.json()
    first = error[0] if isinstance(error, list) else error
    assert first["jsonrpc"] == "2.0" and first["error"]["code"] == -32600


def test_bobs_deploy_as_a_request_is_refused_as_before(lenient: Lenient) -> None:
    before = lenient.calls().count("deploy_production")
    answer = lenient.post(TEAM2, deploy(id=4))
    assert answer.status_code == 200 and answer.json()["error"]["code"] == -32003
    assert lenient.calls().count("deploy_production") == before


@pytest.mark.parametrize("name", ["DEPLOY_PRODUCTION", "Deploy_Production", " deploy_production"])
def test_bobs_deploy_under_another_spelling_of_its_name_never_runs(
    lenient: Lenient, name: str
) -> None:
    # The lenient server runs Alice's call of it as deploy_production: another spelling is
    # the same tool to it, so it must be the same tool to the rules.
    params = {"name": name, "arguments": {"service": "billing"}}
    body = {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": params}
    assert lenient.post(TEAM1, body).json()["result"]["content"][0]["text"] == (
        "ran deploy_production"
    )
    before = lenient.calls().count("deploy_production")
    answer = lenient.post(TEAM2, body)
    assert answer.status_code == 200 and answer.json()["error"]["code"] == -32003
    assert lenient.calls().count("deploy_production") == before, "bob's deploy ran"


# --- item 2: tool lists in answers the gateway did not read --------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?type=text/plain",
        "?type=APPLICATION/JSON",
        "?type=application/json;%20charset=utf-8",
        "?type=none",
        "?sse=1&type=TEXT/EVENT-STREAM",
        "?sse=1&type=text/event-stream;%20charset=utf-8",
    ],
)
def test_bob_lists_only_the_tools_he_may_call_whatever_the_content_type(
    lenient: Lenient, query: str
) -> None:
    answer = lenient.post(TEAM2, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, query)
    assert answer.status_code == 200
    assert "deploy" not in answer.text
    assert listed(answer) == {"echo", "add", "fail"}


@pytest.mark.parametrize("query", ["?twice=1", "?twice=1&sse=1"])
def test_bob_never_sees_the_second_copy_of_a_tool_list_answered_twice_unfiltered(
    lenient: Lenient, query: str
) -> None:
    answer = lenient.post(TEAM2, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, query)
    assert answer.status_code == 200
    assert "deploy" not in answer.text, answer.text
    assert answer.text.count('"echo"') == 2


@pytest.mark.parametrize("sse", ["", "&sse=1"], ids=["json", "sse"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_tool_list_reaches_bob_filtered_and_uncompressed(
    lenient: Lenient, encoding: str, sse: str
) -> None:
    # Compressed although the gateway asked for no encoding: decoded, filtered, sent plain.
    query = f"?compress={encoding}{sse}"
    answer = lenient.post(TEAM2, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, query)
    assert answer.status_code == 200
    assert "content-encoding" not in answer.headers
    assert "deploy" not in answer.text and listed(answer) == {"echo", "add", "fail"}


@pytest.mark.parametrize("sse", ["", "&sse=1"], ids=["json", "sse"])
def test_a_stray_list_in_a_compressed_tool_call_answer_is_filtered(
    lenient: Lenient, sse: str
) -> None:
    # Before, the answer to any POST but a tools/list passed unread when compressed: the
    # list of Bob's pending tools/list 8 in it reached him whole.
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}}}  # fmt: skip
    answer = lenient.post(TEAM2, call, f"?list_too=8&compress=gzip{sse}")
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    assert "deploy" not in answer.text, answer.text
    assert "ran echo" in answer.text and '"add"' in answer.text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, id="tools-list"),
        pytest.param({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {}}}, id="tool-call"),
    ],
)  # fmt: skip
def test_an_answer_in_an_encoding_the_gateway_cannot_decode_is_a_jsonrpc_error(
    lenient: Lenient, body: dict[str, Any]
) -> None:
    answer = lenient.post(TEAM2, body, "?list_too=8&compress=br")
    assert answer.status_code == 200
    assert "content-encoding" not in answer.headers
    error = answer.json()
    assert error["id"] == 7 and error["error"]["code"] == -32603


@pytest.mark.parametrize("query", ["?list_too=8", "?list_too=8&sse=1"])
def test_a_tool_list_sent_down_a_tool_calls_answer_is_filtered(
    lenient: Lenient, query: str
) -> None:
    # An SDK client would take it as the answer to its pending tools/list 8.
    call = {"name": "echo", "arguments": {"text": "hi"}}
    answer = lenient.post(TEAM2, {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                  "params": call}, query)  # fmt: skip
    assert answer.status_code == 200
    assert "deploy" not in answer.text, answer.text
    assert "ran echo" in answer.text and '"add"' in answer.text


@pytest.mark.parametrize("query", ["?list_too=8", "?list_too=8&sse=1"])
@pytest.mark.parametrize("method", ["ping", "resources/list", "prompts/get"])
def test_a_tool_list_sent_down_any_other_answer_is_filtered(
    lenient: Lenient, query: str, method: str
) -> None:
    # The answer to Bob's pending tools/list 8, sent down his ping's (or any POST's) stream.
    answer = lenient.post(TEAM2, {"jsonrpc": "2.0", "id": 7, "method": method}, query)
    assert answer.status_code == 200
    assert "deploy" not in answer.text, answer.text
    assert '"id":7' in answer.text.replace(" ", "") and '"add"' in answer.text


def test_a_tool_list_replayed_on_the_server_stream_is_filtered(lenient: Lenient) -> None:
    answer = lenient.stream(TEAM2, "?type=Text/Event-Stream")
    assert answer.status_code == 200
    assert "deploy" not in answer.text and listed(answer) == {"echo", "add", "fail"}


def test_a_compressed_server_stream_is_filtered(lenient: Lenient) -> None:
    answer = lenient.stream(TEAM2, "?compress=gzip")
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    assert "deploy" not in answer.text and listed(answer) == {"echo", "add", "fail"}


@pytest.mark.parametrize("query", ["?type=text/plain", "?compress=br"])
def test_a_server_stream_the_gateway_cannot_filter_is_refused(lenient: Lenient, query: str) -> None:
    answer = lenient.stream(TEAM2, query)
    assert answer.status_code == 502
    assert "deploy" not in answer.text and answer.json()["error"]["code"] == -32603


# --- item 3: a JSON-RPC body on a request the gateway does not read ------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_tool_call_in_the_body_of_a_get_or_delete_never_runs(
    lenient: Lenient, method: str
) -> None:
    before = lenient.calls().count("deploy_production")
    answer = httpx.request(
        method,
        f"{lenient.stack.base_url}/mcp/lenient",
        content=orjson.dumps(deploy(id=5)),
        headers={"authorization": f"Bearer {TEAM2}", **ACCEPT},
        timeout=30.0,
    )
    assert lenient.calls().count("deploy_production") == before, "bob's deploy ran"
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600
