"""Fuzzing what clients send to Gemini's routes and to agent (MCP, A2A) routes.

Gemini's own API (``generateContent``, ``streamGenerateContent?alt=sse``,
``countTokens``) on a Vertex provider, Vertex's client paths for Claude
(``anthropic_vertex``) and OpenAI chat to Gemini on Vertex's OpenAI-compatible
endpoint get bodies shaped like their requests with any JSON in any field, raw
bytes, and any model name and operation in the path. Agent routes get JSON-RPC
bodies of any shape (batches, ids of any JSON type, any method and params, client
answers), any ``Mcp-Method``/``Mcp-Name``/``Mcp-Session-Id`` text and any HTTP
method.

The property: Envoy always gets an answer, either "go on" (the request forwarded to
a provider's or an agent's cluster) or a 4xx (503 for a store the unit tests do not
run) in the route's error shape (Google's ``{"error": {code, message, status}}``,
Anthropic's, OpenAI's, a JSON-RPC error object) with a JSON content-type; never an
exception, never a 5xx for input. A few targeted tests pin what the estimate and
the checks must not let through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc import gemini_api
from extproc.config import load_config
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_vertex_review import serving, vertex_config

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
GOOGLE_KEY = {"x-goog-api-key": "team1-key"}
BEARER = {"authorization": "Bearer team1-key"}
GEMINI_MODEL = "gemini-2.5-flash"
PREFIX = "/v1beta/models"
GUARDED = "/guarded/v1beta/models"
# A route whose prompt the guards read and mask, and whose enrichment writes into it.
POLICIES = {
    "policies": [
        {
            "name": "pii",
            "request": [
                {"name": "secrets", "literals": ["hunter2"], "action": "reject"},
                {"name": "emails", "builtins": ["EMAIL"], "action": "mask"},
            ],
        }
    ]
}
ENRICHMENT = {
    "prepend": [
        {"role": "system", "content": "You answer for {group_id}."},
        {"role": "user", "content": "Context first."},
    ],
    "append": [{"role": "system", "content": "Be brief."}],
}
VERTEX_CLIENT = "/vertex/projects/p/locations/us-east5/publishers/anthropic/models"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
# Text the guards act on: a secret they refuse, an address they mask.
guarded_text = st.sampled_from(["hunter2", "jane@example.com", "mail jane@example.com now"])
counts = st.integers(-5, 10**6) | st.sampled_from([0, 2**63 - 1, 2**64 - 1]) | json_values


def _spelled(camel: str, snake: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One field in either of the spellings Google's REST API takes (or both)."""
    return st.fixed_dictionaries({}, optional={camel: value, snake: value})


parts = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "text": st.text(max_size=20) | guarded_text | json_values,
            "thought": json_values,
            "thoughtSignature": json_values,
            "inlineData": json_values,
            "fileData": json_values,
            "functionCall": st.fixed_dictionaries(
                {}, optional={"name": json_values, "args": json_values}
            )
            | json_values,
            "function_response": st.fixed_dictionaries(
                {}, optional={"name": json_values, "response": json_values}
            )
            | json_values,
            "executableCode": st.fixed_dictionaries({}, optional={"code": json_values})
            | json_values,
            "codeExecutionResult": st.fixed_dictionaries({}, optional={"output": json_values})
            | json_values,
        },
    )
    | json_values,
    max_size=3,
)
contents = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "model", "function", "system"]) | json_values,
            "parts": parts | json_values,
        },
    )
    | json_values,
    max_size=3,
)
generation_config = st.fixed_dictionaries(
    {},
    optional={
        "maxOutputTokens": counts,
        "max_output_tokens": counts,
        "candidateCount": counts,
        "candidate_count": counts,
        "thinkingConfig": json_values,
        "responseLogprobs": json_values,
        "temperature": json_values,
    },
)
gemini_request = st.fixed_dictionaries(
    {},
    optional={
        "contents": contents | json_values,
        "systemInstruction": st.fixed_dictionaries({}, optional={"parts": parts}) | json_values,
        "system_instruction": st.fixed_dictionaries({}, optional={"parts": parts}) | json_values,
        "generationConfig": generation_config | json_values,
        "generation_config": generation_config | json_values,
        "tools": st.lists(
            st.fixed_dictionaries(
                {}, optional={"googleSearch": json_values, "functionDeclarations": json_values}
            )
        )
        | json_values,
        "safetySettings": json_values,
        "cachedContent": json_values,
        "toolConfig": json_values,
    },
)
# Bodies that pass the shape check, so that the quota, the guards and the translation
# read them too: contents is a list of objects whose parts are objects.
checked_parts = st.lists(
    parts.flatmap(lambda found: st.just([p for p in found if isinstance(p, dict)])),
    max_size=1,
).map(lambda found: found[0] if found else [])
shaped_request = st.builds(
    lambda body, shaped: {**body, "contents": shaped},
    gemini_request,
    st.lists(
        st.fixed_dictionaries(
            {"parts": checked_parts},
            optional={"role": st.sampled_from(["user", "model", "function"]) | json_values},
        ),
        max_size=3,
    ),
)
gemini_bodies = (
    shaped_request
    | gemini_request
    | st.builds(
        lambda inner, outer: {**outer, "generateContentRequest": inner},
        gemini_request | json_values,
        _spelled("model", "contents", json_values),
    )
)
raw_bodies = st.binary(max_size=120) | st.sampled_from(
    [b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000]
)
bodies = gemini_bodies.map(orjson.dumps) | json_values.map(orjson.dumps) | raw_bodies


# --- the gateway under test -------------------------------------------------------------------


def _gemini_routes(raw: dict[str, Any]) -> None:
    """A gemini_generate_content route and an anthropic_vertex route, before the others."""
    raw["models"].append(
        {"name": GEMINI_MODEL, "provider": "vertex", "upstream_model": "google/gemini-2.5-flash"}
    )
    raw["routes"][:0] = [
        {"name": "gemini", "path_prefix": PREFIX, "api": "gemini_generate_content"},
        {
            "name": "gemini-guarded",
            "path_prefix": GUARDED,
            "api": "gemini_generate_content",
            "guardrails": "pii",
            "enrichment": ENRICHMENT,
        },
        {"name": "vertex-clients", "path_prefix": "/vertex", "api": "anthropic_vertex"},
    ]
    raw["guardrails"] = POLICIES


@pytest.fixture(scope="module")
async def gemini(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Processor]:
    """One processor for the module, its runtime's Vertex token minted at the mock's."""
    key_file = tmp_path_factory.mktemp("vertex") / "vertex-key.json"
    async with mock_vertex(key_file) as mock:
        config = vertex_config((mock, key_file), _gemini_routes)
        async with serving(config, MemoryLog()) as running:
            yield running


async def _answers(
    processor: Processor, path: str, headers: dict[str, str], body: bytes | None, method: str
) -> list[ext.ProcessingResponse]:
    messages = [request_headers(path, headers=headers, method=method)]
    if body is not None:
        messages.append(request_body(body))
    return await run_stream(processor, messages)


def _content_type(refusal: Any) -> list[bytes]:
    return [
        h.header.raw_value for h in refusal.headers.set_headers if h.header.key == "content-type"
    ]


def _check_refusal(answer: ext.ProcessingResponse, shape: str) -> tuple[int, Any]:
    """A refusal must be a 4xx (or 503) in the route's error JSON; its status and body."""
    refusal = answer.immediate_response
    status = int(refusal.status.code)
    assert 400 <= status < 500 or status == 503, (status, refusal.body)
    error = orjson.loads(refusal.body)
    if shape == "google":
        assert set(error) == {"error"}, error
        inner = error["error"]
        assert inner["code"] == status and inner["message"] and inner["status"], error
        assert isinstance(inner["status"], str) and inner["status"].isupper(), error
    elif shape == "anthropic":
        assert error["type"] == "error" and error["error"]["message"], error
    else:
        assert error["error"]["message"] and error["error"]["type"], error
    assert _content_type(refusal) == [b"application/json"]
    return status, error


def _check_served_or_refused(answers: list[ext.ProcessingResponse], shape: str) -> None:
    last = answers[-1]
    if last.HasField("immediate_response"):
        _check_refusal(last, shape)
        return
    assert len(answers) == 2, answers
    mutation = last.request_body.response
    assert mutation.clear_route_cache
    clusters = [h.header.raw_value for h in mutation.header_mutation.set_headers]
    assert any(value.startswith(b"provider_") for value in clusters), clusters


# (path, headers, error shape) of each client-facing API that reaches Vertex.
GEMINI_ROUTES = {
    "generateContent": (f"{PREFIX}/{GEMINI_MODEL}:generateContent", GOOGLE_KEY, "google"),
    "streamGenerateContent": (
        f"{PREFIX}/{GEMINI_MODEL}:streamGenerateContent?alt=sse",
        GOOGLE_KEY,
        "google",
    ),
    "countTokens": (f"{PREFIX}/{GEMINI_MODEL}:countTokens", GOOGLE_KEY, "google"),
    "encoded colon": (f"{PREFIX}/{GEMINI_MODEL}%3AgenerateContent", GOOGLE_KEY, "google"),
    "guarded": (f"{GUARDED}/{GEMINI_MODEL}:generateContent", GOOGLE_KEY, "google"),
    "guarded count": (f"{GUARDED}/{GEMINI_MODEL}:countTokens", GOOGLE_KEY, "google"),
    "vertex client": (f"{VERTEX_CLIENT}/sonnet-vertex:rawPredict", BEARER, "anthropic"),
    "vertex client count": (f"{VERTEX_CLIENT}/count-tokens:rawPredict", BEARER, "anthropic"),
}


@pytest.mark.parametrize("route", list(GEMINI_ROUTES))
@FUZZ
@given(body=bodies)
async def test_any_body_on_a_gemini_route_is_served_or_refused_in_its_shape(
    gemini: Processor, route: str, body: bytes
) -> None:
    path, headers, shape = GEMINI_ROUTES[route]
    answers = await _answers(gemini, path, headers, body, "POST")
    _check_served_or_refused(answers, shape)


chat_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"])},
        optional={"content": st.text(max_size=20) | json_values, "tool_calls": json_values},
    )
    | json_values,
    max_size=3,
)
chat_to_gemini = st.fixed_dictionaries(
    {"model": st.just("gemini-flash") | json_values},
    optional={
        "messages": chat_messages | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": json_values,
        "max_tokens": counts,
        "max_completion_tokens": counts,
        "n": counts,
        "tools": json_values,
        "tool_choice": json_values,
        "reasoning_effort": st.sampled_from(["low", "high", "none"]) | json_values,
        "extra_body": json_values,
    },
)


@FUZZ
@given(body=chat_to_gemini.map(orjson.dumps) | raw_bodies)
async def test_any_chat_body_to_gemini_on_vertex_is_served_or_refused(
    gemini: Processor, body: bytes
) -> None:
    answers = await _answers(gemini, "/v1/chat/completions", BEARER, body, "POST")
    _check_served_or_refused(answers, "openai")


# Model names and operations as a path's last segment may spell them.
odd_segments = (
    st.text(max_size=40)
    | st.text(alphabet=st.characters(codec="ascii"), min_size=200, max_size=2_000)
    | st.sampled_from(
        [
            "",
            ":",
            "::generateContent",
            ":generateContent",
            "gemini-2.5-flash:",
            "gemini-2.5-flash:generateContent:generateContent",
            "gemini-2.5-flash%3AcountTokens",
            "gemini-2.5-flash%253AgenerateContent",
            "gemini-2.5-flash%2F:generateContent",
            "..%2F..%2Fgemini-2.5-flash:generateContent",
            "gemini-2.5-flash:countTokens%2F",
            "gemini-2.5-flash:streamGenerateContent",
            "gemini-2.5-flash:streamGenerateContent?alt=json",
            "gemini-2.5-flash:streamGenerateContent?alt=sse&alt=sse",
            "gemini-2.5-flash:batchGenerateContent",
            "gemini-2.5-flash:predict",
            "gemini-2.5-flash:GENERATECONTENT",
            "%E2%80%8Bgemini-2.5-flash:generateContent",
            "%ED%A0%80:generateContent",
            "gemini-2.5-flash%00:generateContent",
            "x" * 300 + ":generateContent",
        ]
    )
)


def _segment(text: str, encode: bool) -> str:
    return quote(text, safe=":?=&%") if encode else text


@FUZZ
@given(segment=odd_segments, encode=st.booleans(), extra=st.sampled_from(["/", "/x/", "//"]))
async def test_any_model_and_operation_in_a_gemini_path_is_served_or_refused(
    gemini: Processor, segment: str, encode: bool, extra: str
) -> None:
    path = f"{PREFIX}{extra}{_segment(segment, encode)}"
    if not path.isascii() or any(c in path for c in " \t\r\n#"):
        path = quote(path, safe="/:?=&%")
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    answers = await _answers(gemini, path, GOOGLE_KEY, body, "POST")
    _check_served_or_refused(answers, "google")


@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]),
    route=st.sampled_from(list(GEMINI_ROUTES)),
)
async def test_other_methods_on_gemini_routes_are_a_405_in_the_route_shape(
    gemini: Processor, method: str, route: str
) -> None:
    path, headers, shape = GEMINI_ROUTES[route]
    [answer] = await _answers(gemini, path, headers, None, method)
    status, _ = _check_refusal(answer, shape)
    assert status == 405


# --- the estimate: what a body asks of the quota ------------------------------------------------


@FUZZ
@given(body=gemini_bodies, default=st.integers(1, 10**6))
def test_the_estimate_and_allowance_are_never_negative_whatever_the_body(
    body: dict[str, Any], default: int
) -> None:
    """Whatever a checked or unchecked body holds, the reservation's parts are counts."""
    assert gemini_api.estimate_prompt_tokens(body) >= 0
    allowance = gemini_api.completion_allowance(body, default)
    assert allowance >= default or allowance >= 1
    assert gemini_api.choices(body) >= 1


# --- agent routes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agents() -> Processor:
    """The default config with an MCP route (/mcp) and an A2A route (/a2a/helper)."""
    config = with_agents(load_config("config/gateway.yaml", environ={}))
    return processor_for(config, Services(GatewayMetrics(), MemoryLog()))


ids = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, -0.0, 0.0, 1.0, 1e308, -1e-308, 2**53, 2**53 + 1, "", "1", None])
    | json_values
)
methods = (
    st.sampled_from(
        [
            "tools/call",
            "tools/list",
            "Tools/Call",
            "tools/call\u200b",
            " tools/list",
            "initialize",
            "ping",
            "notifications/initialized",
            "message/send",
            "SendMessage",
            "message/stream",
            "GetExtendedAgentCard",
            "agent/getAuthenticatedExtendedCard",
            "tasks/get",
            "x" * 1100,
        ]
    )
    | json_values
)
params = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["echo", "deploy_prod", "", "x" * 300]) | json_values,
            "arguments": json_values,
            "message": json_values,
        },
    )
    | json_values
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values},
    optional={
        "id": ids,
        "method": methods,
        "params": params,
        "result": json_values,
        "error": json_values,
    },
)
rpc_bodies = (
    messages.map(orjson.dumps)
    | st.lists(messages | json_values, max_size=4).map(orjson.dumps)
    | json_values.map(orjson.dumps)
    | raw_bodies
    | st.sampled_from(
        [
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"ping"}',
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"tools/c\\u0061ll","params":{"name":"a"}}',
            b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}',
            b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}',
        ]
    )
)
header_text = (
    st.text(max_size=40)
    | st.sampled_from(["tools/call", "tools/list", "=?base64?ZWNobw==?=", "=?base64?***?="])
    | st.builds(lambda s: "=?base64?" + s + "?=", st.text(max_size=20))
)
AGENT_ROUTES = {"mcp": "/mcp", "a2a": "/a2a/helper", "a2a below": "/a2a/helper/v1/x"}


def _check_agent_refusal(answer: ext.ProcessingResponse) -> None:
    """An agent route refuses with JSON-RPC errors, whatever refused: the body's checks
    (HTTP 400, or 200 for an access rule) or an HTTP error (credentials, method, size)."""
    refusal = answer.immediate_response
    status = int(refusal.status.code)
    assert 200 <= status < 500 or status == 503, (status, refusal.body)
    assert _content_type(refusal) == [b"application/json"]
    error = orjson.loads(refusal.body)
    found = error if isinstance(error, list) else [error]
    for each in found:
        assert isinstance(each, dict), error
        assert each["jsonrpc"] == "2.0" and "id" in each, error
        assert isinstance(each["error"]["code"], int) and each["error"]["message"], error


def _check_agent_answer(answers: list[ext.ProcessingResponse]) -> None:
    last = answers[-1]
    if last.HasField("immediate_response"):
        _check_agent_refusal(last)
        return
    # Went on: the headers phase pointed Envoy at the agent's cluster.
    first = answers[0].request_headers.response
    clusters = [h.header.raw_value for h in first.header_mutation.set_headers]
    assert any(value.startswith(b"agent_") for value in clusters), clusters


@pytest.mark.parametrize("route", list(AGENT_ROUTES))
@FUZZ
@given(body=rpc_bodies)
async def test_any_jsonrpc_body_on_an_agent_route_is_forwarded_or_refused(
    agents: Processor, route: str, body: bytes
) -> None:
    answers = await _answers(agents, AGENT_ROUTES[route], TEAM2, body, "POST")
    _check_agent_answer(answers)


@FUZZ
@given(
    body=messages.map(orjson.dumps) | st.lists(messages, max_size=2).map(orjson.dumps),
    mcp_method=st.none() | header_text,
    mcp_name=st.none() | header_text,
    session=st.none() | header_text,
    http_method=st.sampled_from(["POST", "GET", "DELETE", "PUT", "HEAD", "OPTIONS"]),
    with_body=st.booleans(),
)
async def test_any_mcp_headers_and_method_are_forwarded_or_refused(
    agents: Processor,
    body: bytes,
    mcp_method: str | None,
    mcp_name: str | None,
    session: str | None,
    http_method: str,
    with_body: bool,
) -> None:
    sent = dict(TEAM2)
    for name, value in (
        ("mcp-method", mcp_method),
        ("mcp-name", mcp_name),
        ("mcp-session-id", session),
    ):
        if value is not None:
            sent[name] = value
    send = body if http_method == "POST" or with_body else None
    answers = await _answers(agents, "/mcp", sent, send, http_method)
    _check_agent_answer(answers)


# --- found: header values that raised instead of being refused ---------------------------------

# Base64-marked Mcp-Name values whose payload is not ASCII: Envoy passes a header's
# non-ASCII bytes, which the gateway reads as U+FFFD; base64 refused them with a
# ValueError that is neither binascii.Error nor UnicodeDecodeError, and the gateway
# answered a 500 instead of the JSON-RPC error a mismatched header gets.
NON_ASCII_NAMES = ["=?base64?\u00e9?=", "=?base64?\ufffd?=", "=?base64?ZWNob\u00e9==?="]
TOOL_CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}


@pytest.mark.parametrize("name", NON_ASCII_NAMES)
async def test_a_base64_mcp_name_that_is_not_ascii_is_a_jsonrpc_refusal(
    agents: Processor, name: str
) -> None:
    sent = {**TEAM2, "mcp-method": "tools/call", "mcp-name": name}
    answers = await _answers(agents, "/mcp", sent, orjson.dumps(TOOL_CALL), "POST")
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400, refusal.body
    error = orjson.loads(refusal.body)
    assert error["id"] == 7 and error["error"]["code"] == -32600, error
    assert "mcp-name" in error["error"]["message"], error


@FUZZ
@given(name=header_text, tool=st.sampled_from(["echo", "deploy_prod", "\u00e9cho"]))
async def test_any_mcp_name_on_a_tool_call_is_forwarded_or_refused(
    agents: Processor, name: str, tool: str
) -> None:
    body = {**TOOL_CALL, "params": {"name": tool, "arguments": {}}}
    sent = {**TEAM2, "mcp-method": "tools/call", "mcp-name": name}
    answers = await _answers(agents, "/mcp", sent, orjson.dumps(body), "POST")
    _check_agent_answer(answers)


# Content-Length values the checks took for numbers but int() refuses: superscripts and
# circled digits (str.isdigit() takes them), and more than 4300 ASCII digits (Python's
# limit on int() of a string). Meant to be refused with a 400 (not a number) or a 413
# (over the body limit), each raised a ValueError: a 500 on every AI route (routing)
# and on agent routes. (Envoy's own codecs refuse such a header first; the gateway's
# check must hold on its own.)
ODD_LENGTHS = {"\u00b2": 400, "1\u00b9": 400, "\u2460": 400, "9" * 5000: 413, "0" * 5000: 0}
LENGTH_ROUTES = {
    "gemini": (f"{PREFIX}/{GEMINI_MODEL}:generateContent", GOOGLE_KEY, "google"),
    "openai chat": ("/v1/chat/completions", BEARER, "openai"),
}


def _length_id(length: str) -> str:
    return length if len(length) < 8 else f"{length[0]}x{len(length)}"


@pytest.mark.parametrize("length", list(ODD_LENGTHS), ids=_length_id)
@pytest.mark.parametrize("route", list(LENGTH_ROUTES))
async def test_an_odd_content_length_is_refused_or_passed_on_an_ai_route(
    gemini: Processor, route: str, length: str
) -> None:
    path, headers, shape = LENGTH_ROUTES[route]
    [answer] = await _answers(gemini, path, {**headers, "content-length": length}, None, "POST")
    if ODD_LENGTHS[length] == 0:
        assert answer.HasField("request_headers"), answer
        return
    status, _ = _check_refusal(answer, shape)
    assert status == ODD_LENGTHS[length]


@pytest.mark.parametrize("length", list(ODD_LENGTHS), ids=_length_id)
@pytest.mark.parametrize("route", ["/mcp", "/a2a/helper"])
async def test_an_odd_content_length_is_refused_or_passed_on_an_agent_route(
    agents: Processor, route: str, length: str
) -> None:
    sent = {**TEAM2, "content-length": length}
    [answer] = await _answers(agents, route, sent, None, "POST")
    if ODD_LENGTHS[length] == 0:
        assert answer.HasField("request_headers"), answer
        return
    _check_agent_refusal(answer)
    assert answer.immediate_response.status.code == ODD_LENGTHS[length]


@FUZZ
@given(
    length=st.text(max_size=12)
    | st.integers(0, 10**12).map(str)
    | st.text(alphabet="0123456789", min_size=4000, max_size=5000),
    route=st.sampled_from([*GEMINI_ROUTES, "mcp", "a2a"]),
)
async def test_any_content_length_is_accepted_or_refused_cleanly(
    gemini: Processor, agents: Processor, length: str, route: str
) -> None:
    if route in GEMINI_ROUTES:
        path, headers, shape = GEMINI_ROUTES[route]
        [answer] = await _answers(gemini, path, {**headers, "content-length": length}, None, "POST")
        if answer.HasField("immediate_response"):
            _check_refusal(answer, shape)
        return
    sent = {**TEAM2, "content-length": length}
    [answer] = await _answers(agents, AGENT_ROUTES[route], sent, None, "POST")
    if answer.HasField("immediate_response"):
        _check_agent_refusal(answer)


@FUZZ
@given(
    authority=st.text(max_size=30) | st.sampled_from(["", "[::1]:8080", "a:99999", "h:1"]),
    proto=st.none() | st.text(max_size=10),
    path=st.sampled_from(
        ["/a2a/helper", "/a2a/helper/.well-known/agent-card.json", "/a2a/helper/message:send"]
    ),
    method=st.sampled_from(["POST", "GET"]),
)
async def test_any_host_on_an_a2a_route_is_forwarded_or_refused(
    agents: Processor, authority: str, proto: str | None, path: str, method: str
) -> None:
    sent = {**TEAM2, ":authority": authority}
    if proto is not None:
        sent["x-forwarded-proto"] = proto
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}})
    answers = await _answers(agents, path, sent, body if method == "POST" else None, method)
    _check_agent_answer(answers)
