"""Agent traffic, a third review, behind the real Envoy and gateway.

Stand-in MCP servers read JSON-RPC as other languages do. At ``/mcp``, the way Go's
``encoding/json`` does (mcp-go, the Go MCP SDK before CVE-2026-27896): keys match its
fields case-insensitively, with the long s and the Kelvin sign folded to ``s`` and ``k``,
the last matching key wins, and a message with a method is a request. At ``/node``, the
way JavaScript does (the TypeScript SDK): every number is a double, so ids ``1`` and
``1.0`` are one id, and a batch's answers are looked up by id. Bob (team 2, marketing)
may not use ``deploy_*``: whatever he sends, no ``deploy_*`` tool runs for him and no
answer lists one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, running_stack_calling
from tests.integration.test_agents import TEAM1, TEAM2

ACCEPT = {"accept": "application/json, text/event-stream"}
TOOL_LIST = {"tools": [{"name": name, "inputSchema": {"type": "object"}}
                       for name in ("echo", "deploy_production")]}  # fmt: skip


def folded(obj: dict[str, Any], key: str) -> Any:
    """The value Go's encoding/json gives the field ``key``: the last key equal to it
    under case folding (Python's casefold folds the long s and the Kelvin sign as Go does)."""
    found = None
    for name, value in obj.items():
        if name.casefold() == key:
            found = value
    return found


class FoldingServer(BaseHTTPRequestHandler):
    """An MCP endpoint that runs tool calls as a Go server would; ``ran`` lists them."""

    ran: list[str] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/node":
            self._answer(node_answer(raw))
            return
        # Every key with its value, in order (a dict would merge equal keys).
        message = json.loads(raw, object_pairs_hook=lambda pairs: dict(enumerate(pairs)))
        pairs = dict(message.values())
        params = folded(pairs, "params")
        params = dict(params.values()) if isinstance(params, dict) else {}
        method = folded(pairs, "method")
        if method == "tools/call":
            tool = folded(params, "name")
            with self.lock:
                self.ran.append(str(tool))
            result: dict[str, Any] = {"content": [{"type": "text", "text": f"ran {tool}"}]}
        elif method == "tools/list":
            result = TOOL_LIST
        else:
            result = {}
        answer = {"jsonrpc": "2.0", "id": folded(pairs, "id"), "result": result}
        self._answer(orjson.dumps(answer))

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def node_answer(raw: bytes) -> bytes:
    """A batch answered as the TypeScript SDK's JSON mode answers it: every number a
    double (``1.0`` is ``1``, written back as ``1``), each answer stored by its request's
    id, then the answers looked up by the requests' ids."""
    parsed = json.loads(raw, parse_int=float)
    messages = parsed if isinstance(parsed, list) else [parsed]
    by_id: dict[Any, dict[str, Any]] = {}
    ids = []
    for message in messages:
        request_id = message.get("id")
        if isinstance(request_id, float) and request_id.is_integer():
            request_id = int(request_id)
        ids.append(request_id)
        result = TOOL_LIST if message.get("method") == "tools/list" else {}
        by_id[request_id] = {"jsonrpc": "2.0", "id": request_id, "result": result}
    answers = [by_id[request_id] for request_id in ids]
    return orjson.dumps(answers if isinstance(parsed, list) else answers[0])


def config_for(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["agents"] = {
        "servers": [{"name": "go", "protocol": "mcp", "url": f"http://127.0.0.1:{port}/mcp"},
                    {"name": "node", "protocol": "mcp",
                     "url": f"http://127.0.0.1:{port}/node"}],
        "access": [{"name": "deploy-is-engineering", "tools": ["deploy_*"],
                    "groups": ["engineering"]}],
    }  # fmt: skip
    raw["routes"] = [
        {"name": "mcp-go", "path_prefix": "/mcp/go", "api": "mcp", "server": "go"},
        {"name": "mcp-node", "path_prefix": "/mcp/node", "api": "mcp", "server": "node"},
        *raw["routes"],
    ]
    return raw


@pytest.fixture(scope="module")
def go_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("agents-review3")
    with running_stack_calling(FoldingServer, workdir, config_for) as stack:
        yield stack


def post(stack: LocalStack, key: str, body: bytes, route: str = "go") -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/mcp/{route}",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **ACCEPT},
        timeout=30.0,
    )


def ran() -> list[str]:
    with FoldingServer.lock:
        return list(FoldingServer.ran)


DEPLOY = b'{"name":"deploy_production","arguments":{"service":"billing"}}'


def test_the_go_server_runs_what_engineering_may_call(go_stack: LocalStack) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + DEPLOY + b"}"
    answer = post(go_stack, TEAM1, body)
    assert answer.json()["result"]["content"][0]["text"] == "ran deploy_production"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"jsonrpc":"2.0","id":2,"method":"tools/list","Method":"tools/call",'
                     b'"params":' + DEPLOY + b"}", id="a-tool-list-the-server-reads-as-a-call"),
        pytest.param(b'{"jsonrpc":"2.0","id":3,"method":"tools/call",'
                     b'"params":{"name":"echo","Name":"deploy_production"}}', id="tool-cased"),
        pytest.param(b'{"jsonrpc":"2.0","id":4,"result":{},"METHOD":"tools/call",'
                     b'"Params":' + DEPLOY + b"}", id="an-answer-the-server-reads-as-a-call"),
        pytest.param('{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"},'
                     '"param\u017f":'.encode() + DEPLOY + b"}", id="long-s"),
    ],
)  # fmt: skip
def test_bob_cannot_make_a_case_blind_server_run_a_tool_other_than_the_one_checked(
    go_stack: LocalStack, body: bytes
) -> None:
    before = ran().count("deploy_production")
    answer = post(go_stack, TEAM2, body)
    assert ran().count("deploy_production") == before, "bob's deploy ran"
    assert "ran deploy_production" not in answer.text
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600


def test_bob_still_lists_the_tools_he_may_call(go_stack: LocalStack) -> None:
    answer = post(go_stack, TEAM2, b'{"jsonrpc":"2.0","id":6,"method":"tools/list"}')
    assert answer.status_code == 200
    assert [tool["name"] for tool in answer.json()["result"]["tools"]] == ["echo"]


# --- ids: one number to the server, two to the gateway -------------------------------------


def test_bob_lists_only_his_tools_from_a_server_that_reads_every_number_as_a_double(
    go_stack: LocalStack,
) -> None:
    answer = post(go_stack, TEAM2, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', "node")
    assert [tool["name"] for tool in answer.json()["result"]["tools"]] == ["echo"]


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param((b"1.0", b"1"), id="1.0-and-1"),
        # Past 2**53 a double cannot tell these apart.
        pytest.param((b"9007199254740993", b"9007199254740992"), id="past-2**53"),
    ],
)
def test_bob_never_sees_a_tool_list_unfiltered_under_an_id_that_is_two_to_the_gateway(
    go_stack: LocalStack, ids: tuple[bytes, bytes]
) -> None:
    ping, tools = ids
    body = (b'[{"jsonrpc":"2.0","id":' + ping + b',"method":"ping"},'
            b'{"jsonrpc":"2.0","id":' + tools + b',"method":"tools/list"}]')  # fmt: skip
    answer = post(go_stack, TEAM2, body, "node")
    assert "deploy_production" not in answer.text
    # Two requests under one id to the server: the batch is refused as ambiguous.
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600
