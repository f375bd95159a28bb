"""A test MCP server and a test A2A agent, written with the official SDKs' server sides.

Run as a process of its own (``python -m tests.integration.agent_servers
--mcp-port P --a2a-port Q --a2a-public-url URL``): the MCP server (``mcp``'s
MCPServer, Streamable HTTP at ``/mcp``) and the A2A agent (``a2a-sdk``,
JSON-RPC at ``/``, its card at ``/.well-known/agent-card.json``) each on
their own port, served by uvicorn in one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import zlib
from typing import Any

import uvicorn
from a2a.helpers import get_message_text, new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
)
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOOLS = ("echo", "add", "fail", "deploy_staging", "deploy_production")


def mcp_server() -> MCPServer:
    server = MCPServer("test-tools")

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def fail() -> str:
        """A tool that always reports an error."""
        raise ValueError("this tool always fails")

    @server.tool()
    def deploy_staging(service: str) -> str:
        """Deploy a service to staging."""
        return f"{service} deployed to staging"

    @server.tool()
    def deploy_production(service: str) -> str:
        """Deploy a service to production."""
        return f"{service} deployed to production"

    return server


class EchoAgent(AgentExecutor):
    """Makes a task, reports it working, answers with an artifact, completes it."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        task = context.current_task or new_task_from_user_message(message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        await updater.add_artifact([Part(text="echo: " + get_message_text(message))])
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def a2a_app(public_url: str) -> Starlette:
    card = AgentCard(
        name="echo-agent",
        description="Echoes what it is told",
        version="1.0.0",
        # The agent's own address: the gateway points it at itself.
        supported_interfaces=[
            AgentInterface(url=public_url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="Echoes text", tags=["echo"])],
    )
    handler = DefaultRequestHandlerV2(EchoAgent(), InMemoryTaskStore(), card)
    # A2A 0.3 clients (`message/send`, `message/stream`) are served on the same endpoint.
    rpc = create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True)
    return Starlette(routes=[*create_agent_card_routes(card), *rpc])


async def serve(mcp_port: int, a2a_port: int) -> None:
    servers = [
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        for app, port in (
            (mcp_server().streamable_http_app(), mcp_port),
            (a2a_app(f"http://127.0.0.1:{a2a_port}/"), a2a_port),
        )
    ]
    await asyncio.gather(*(server.serve() for server in servers))


# --- a lenient MCP server: lax where real servers differ, to test the gateway fails closed ---

# The tools the lenient server ran, in order: a test reads them at GET /calls.
LENIENT_CALLS: list[str] = []
SSE_TYPE = "text/event-stream"


def _lenient_answer(message: dict[str, Any]) -> dict[str, Any]:
    """What a lax server makes of one message: methods and tool names matched loosely,
    tools run."""
    method = str(message.get("method", "")).strip().lower()
    found = message.get("params")
    params: dict[str, Any] = found if isinstance(found, dict) else {}
    if method == "tools/call":
        name = _resolved(str(params.get("name")))
        LENIENT_CALLS.append(name)
        return {"content": [{"type": "text", "text": f"ran {name}"}]}
    if method == "tools/list":
        return {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]}
    return {}


def _resolved(name: str) -> str:
    """The tool a lax server runs for a name: matched ignoring case and surrounding
    whitespace, as some MCP servers and aggregators resolve tool names."""
    loose = name.strip().casefold()
    return next((tool for tool in TOOLS if tool.casefold() == loose), name)


def _lenient_response(request: Request, payload: bytes, sse: bool) -> Response:
    """The payload framed and labelled as the query asks: ``type`` (``none``: no
    content type), ``sse=1`` for an event, ``twice=1`` sent twice (a broken server
    answering each request twice: two events, or a JSON batch holding both).
    ``list_too=<id>`` (in ``_lenient_post``) adds a tool list under that id. The body
    is compressed as ``compress`` says (``_compressed``), whatever was accepted."""
    query = request.query_params
    body = b"event: message\ndata: " + payload + b"\n\n" if sse else payload
    if query.get("twice") == "1":
        body = body + body if sse else b"[" + payload + b"," + payload + b"]"
    found_type = query.get("type", "text/event-stream" if sse else "application/json")
    extra = {} if found_type == "none" else {"content-type": found_type}
    return _compressed(request, body, extra)


def _compressed(request: Request, body: bytes, headers: dict[str, str]) -> Response:
    """``body`` compressed as the query's ``compress`` asks (``gzip``, ``deflate`` in
    zlib's format, ``br``: bytes that stand for brotli, which the gateway cannot read
    and no client here decodes), ``content-encoding`` naming it; as it is without one.
    A server (or middleware) that compresses although the request accepted no encoding."""
    encoding = request.query_params.get("compress")
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "br":
        body = b"\x0b\x80" + body
    if encoding:
        headers = {**headers, "content-encoding": encoding}
    return Response(body, headers=headers)


async def _lenient_post(request: Request) -> Response:
    parsed = json.loads(await request.body())
    messages = parsed if isinstance(parsed, list) else [parsed]
    answers = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        # Notifications run too, unanswered: the laxness the gateway must not rely on.
        result = _lenient_answer(message)
        if "id" in message:
            answers.append({"jsonrpc": "2.0", "id": message["id"], "result": result})
    if not answers:
        return Response(status_code=202)
    sse = request.query_params.get("sse") == "1"
    stray = request.query_params.get("list_too")
    if stray is not None:
        # The answer to a tools/list the client sent elsewhere, sent down this answer's
        # stream (an SDK client matches it to that request by id): a second event, or
        # one batch holding both in JSON.
        listed = {"jsonrpc": "2.0", "id": int(stray), "result": _lenient_answer(
            {"method": "tools/list"})}  # fmt: skip
        if sse:
            events = [json.dumps(answers[0]).encode(), json.dumps(listed).encode()]
            body = b"".join(b"event: message\ndata: " + data + b"\n\n" for data in events)
            return _compressed(request, body, {"content-type": SSE_TYPE})
        return _lenient_response(request, json.dumps([*answers, listed]).encode(), sse=False)
    payload = json.dumps(answers if isinstance(parsed, list) else answers[0]).encode()
    return _lenient_response(request, payload, sse)


async def _lenient_stream(request: Request) -> Response:
    """A server stream replaying a tool list (as after a resumption), then ending; a GET
    or DELETE that carries a body is served as a POST (a lax server's shortcut)."""
    if await request.body():
        return await _lenient_post(request)
    replayed = {"jsonrpc": "2.0", "id": 99, "result": _lenient_answer({"method": "tools/list"})}
    return _lenient_response(request, json.dumps(replayed).encode(), sse=True)


async def _lenient_calls(request: Request) -> Response:
    return JSONResponse(LENIENT_CALLS)


async def _cut_a2a_stream(request: Request) -> Response:
    """An A2A agent whose streams end before their task settles: the task submitted and
    working, then the body ends cleanly (``cut=inside``: inside the working event), as an
    agent whose connection closed mid-task behind a proxy ends it (1.0's wire shapes)."""
    request_id = json.loads(await request.body()).get("id")

    def event(result: dict[str, Any]) -> bytes:
        answer = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return b"event: message\r\ndata: " + json.dumps(answer).encode() + b"\r\n\r\n"

    task = {"id": "t-cut", "contextId": "c-cut", "status": {"state": "TASK_STATE_SUBMITTED"}}
    working = {"taskId": "t-cut", "contextId": "c-cut", "status": {"state": "TASK_STATE_WORKING"}}
    body = event({"task": task}) + event({"statusUpdate": working})
    if request.query_params.get("cut") == "inside":
        body = body[:-30]
    return Response(body, headers={"content-type": SSE_TYPE})


async def _a2a_stream_under_another_id(request: Request) -> Response:
    """An A2A agent that answers every request under an id of its own (a number for the
    client's string, as an agent keeping its own counter does): its task submitted, then
    completed. The A2A SDK reads an answer without looking at its id, so this agent works
    for a client that reaches it directly."""
    await request.body()

    def event(result: dict[str, Any]) -> bytes:
        answer = {"jsonrpc": "2.0", "id": 1, "result": result}
        return b"event: message\r\ndata: " + json.dumps(answer).encode() + b"\r\n\r\n"

    task = {"id": "t-other", "contextId": "c-other", "status": {"state": "TASK_STATE_SUBMITTED"}}
    done = {"taskId": "t-other", "contextId": "c-other",
            "status": {"state": "TASK_STATE_COMPLETED"}}  # fmt: skip
    body = event({"task": task}) + event({"statusUpdate": done})
    return Response(body, headers={"content-type": SSE_TYPE})


def lenient_mcp_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/mcp", _lenient_post, methods=["POST"]),
            Route("/mcp", _lenient_stream, methods=["GET", "DELETE"]),
            Route("/calls", _lenient_calls, methods=["GET"]),
            Route("/a2a/", _cut_a2a_stream, methods=["POST"]),
            Route("/a2a-other-id/", _a2a_stream_under_another_id, methods=["POST"]),
        ]
    )


def run_lenient_mcp(port: int) -> None:
    uvicorn.run(lenient_mcp_app(), host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mcp-port", type=int, required=True)
    parser.add_argument("--a2a-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.mcp_port, args.a2a_port))


if __name__ == "__main__":
    main()
