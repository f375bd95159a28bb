"""Fuzzing request lines, request headers and response headers, as Envoy sends them.

What is fuzzed: the request line (any ``:path`` under every route of
config/gateway.yaml, with percent-escapes valid and not, ``..`` and empty segments,
unicode, long paths, queries naming ``model`` any number of ways, fragments; any
``:method``; any ``:authority``, the virtual hosts included; ``:path`` or
``:method`` missing; a request that ends with its headers), the request headers the
gateway reads (content-type, content-length, content-encoding, ``model``,
anthropic-version and -beta, trace context, x-request-id, the gateway's own
``x-aigw-*`` names, repeated names, values in any raw bytes), and the response
headers of a chat request, a streamed chat request and a chat request translated to
Anthropic (any ``:status``, content types that do not match the body, gzip,
no content type, an answer that ends with its headers).

The property: Envoy gets an answer to every message it sends, either "go on" or a
4xx (503 for a store the unit tests do not run) in the error shape of the API of the
route the request is on, with ``content-type: application/json``; never an
exception, never a 5xx for input. A client cannot pick the provider cluster. On the
response side nothing is refused, and the request's log line is written exactly once,
its token counts never negative.
"""

from __future__ import annotations

import asyncio
import gzip
import os

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc import headers
from extproc.config import load_config
from extproc.hosts import request_host
from extproc.processor import Processor
from extproc.runtime import Route, Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, response_body, run_stream
from tests.unit.conftest import MemoryLog

# Hypothesis's default number of examples a test; FUZZ_EXAMPLES asks for more, for a
# longer search by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LOG = MemoryLog()
RUNTIME = Runtime(load_config("config/gateway.yaml", environ={}), Services(GatewayMetrics(), LOG))
# Bedrock's signer resolves its (static) credentials once, as the server does at start.
for _signer in RUNTIME.signers.values():
    asyncio.run(_signer.start())
PROCESSOR = Processor(lambda: RUNTIME, default_stages())
AUTH = (("authorization", b"Bearer team1-key"),)
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
HOSTS = ("gateway", "openai.gateway.local", "anthropic.gateway.local")

Headers = list[tuple[str, bytes]]


def _headers_message(pairs: Headers, end_of_stream: bool) -> ext.ProcessingRequest:
    """Request headers as Envoy sends them: each value in raw_value, in any bytes."""
    request = ext.ProcessingRequest()
    for key, value in pairs:
        header = request.request_headers.headers.headers.add()
        header.key = key
        header.raw_value = value
    request.request_headers.end_of_stream = end_of_stream
    return request


def _route_of(path: str, authority: str) -> Route | None:
    """The route of a request's host and path, as config/gateway.yaml names it; for a
    path whose trailing slash put it on another route than the path without it, that
    route (the gateway's 404 is in its shape, and logged)."""
    assert RUNTIME.host_routes is not None
    host = request_host(authority)
    found = RUNTIME.host_routes.resolve(host, path)
    meant = path.partition("?")[0].rstrip("/")
    if meant and meant != path.partition("?")[0]:
        twin = RUNTIME.host_routes.resolve(host, meant)
        if twin is not None and twin != found:
            return twin
    return found


def _shape(route: Route | None) -> str:
    """The error shape of the route's API (the client's SDK parses that one)."""
    if route is not None and route.api.startswith("anthropic_"):
        return "anthropic"
    if route is not None and route.api.startswith("bedrock_"):
        return "bedrock"
    return "openai"


def _check_refusal(answer: ext.ProcessingResponse, shape: str) -> int:
    """A refusal: a 4xx (or 503) with the route's error JSON; returns the status."""
    refusal = answer.immediate_response
    status = int(refusal.status.code)
    assert 400 <= status < 500 or status == 503, (status, refusal.body)
    error = orjson.loads(refusal.body)
    if shape == "anthropic":
        assert error["type"] == "error", error
        assert error["error"]["message"] and error["error"]["type"], error
    elif shape == "bedrock":
        assert isinstance(error["message"], str) and error["message"], error
    else:
        assert error["error"]["message"] and error["error"]["type"], error
    content_types = [
        h.header.raw_value for h in refusal.headers.set_headers if h.header.key == "content-type"
    ]
    assert content_types == [b"application/json"]
    return status


def _clusters(answer: ext.ProcessingResponse) -> list[bytes]:
    phase = answer.WhichOneof("response")
    assert phase is not None
    mutation = getattr(answer, phase).response.header_mutation
    return [h.header.raw_value for h in mutation.set_headers if h.header.key == headers.CLUSTER]


async def _play(
    pairs: Headers, end_of_stream: bool, body: bytes, route: Route | None
) -> list[ext.ProcessingResponse]:
    """Play one request; every message answered, a refusal clean and last (the model
    list and the caller's own limits, which the gateway answers itself, a 200 with their
    JSON)."""
    LOG.buffer.seek(0)
    LOG.buffer.truncate()
    messages = [_headers_message(pairs, end_of_stream)]
    if not end_of_stream:
        messages.append(request_body(body))
    answers = await run_stream(PROCESSOR, messages)
    assert answers, "Envoy got no answer"
    for answer in answers[:-1]:
        assert not answer.HasField("immediate_response")
    last = answers[-1].immediate_response
    if answers[-1].HasField("immediate_response") and last.status.code == 200:
        assert route is not None and route.api in ("openai_models", "aigw_limits")
        listed = orjson.loads(last.body)
        if route.api == "aigw_limits":
            # GET /aigw/v1/limits: the caller's own limits (stages.limits_view).
            assert isinstance(listed, dict), listed
            return answers
        # An Anthropic client (one that sends anthropic-version) gets Anthropic's page.
        if any(key == "anthropic-version" for key, _ in pairs):
            assert isinstance(listed["data"], list) and isinstance(listed["has_more"], bool)
        else:
            assert listed["object"] == "list"
    elif answers[-1].HasField("immediate_response"):
        _check_refusal(answers[-1], _shape(route))
    else:
        assert len(answers) == len(messages)
    for answer in answers:
        if not answer.HasField("immediate_response"):
            # Only the gateway's own cluster names, never one a client wrote.
            assert all(value.startswith(b"provider_") for value in _clusters(answer))
    return answers


ROUTE_BASES = sorted(
    {spec.path or spec.path_prefix or "/" for spec in RUNTIME.config.routes}
    | {"/model/anthropic.claude-3-haiku-20240307-v1:0/converse", "/v1/responses/resp_1"}
)
segments = st.sampled_from(
    (
        *("", ".", "..", "%00", "%zz", "%2F", "%2e%2e", "%ff%fe", "%", "gpt-4o", "haiku"),
        *("chat", "completions", "v1", "messages", "ü", "模型", "a b", "x:rawPredict"),
    )
) | st.text(max_size=12)
query_values = st.sampled_from(["", "gpt-4o", "%zz", "%00", "a&model=b", "gpt-4o#f"]) | st.text(
    max_size=10
)
queries = st.lists(
    st.tuples(st.sampled_from(["model", "Model", "", "x", "key", "stream", "%zz"]), query_values),
    max_size=4,
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs))
paths = st.one_of(
    st.builds(
        lambda base, rest, query, fragment: base + rest + query + fragment,
        st.sampled_from(ROUTE_BASES),
        st.lists(segments, max_size=3).map(lambda parts: "".join("/" + p for p in parts)),
        st.none().map(lambda _: "") | queries.map(lambda q: "?" + q),
        st.sampled_from(["", "#", "#frag", "?#x"]),
    ),
    st.text(max_size=30),
    st.sampled_from(ROUTE_BASES).map(lambda base: base + "/" + "a" * 9000),
    st.sampled_from(ROUTE_BASES).map(lambda base: "/" + base + "/"),
)
methods = st.sampled_from(
    ["POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "post", "get", "", "P\x00ST"]
) | st.text(max_size=8)
authorities = st.sampled_from(
    [*HOSTS, "ANTHROPIC.Gateway.Local:10000", "anthropic.gateway.local.", "[::1]:80", "", ":"]
) | st.text(max_size=20)
bodies = st.sampled_from([CHAT, b"", b"{", b"\xff\xfe"]) | st.binary(max_size=40)


@FUZZ
@given(path=paths, method=methods, authority=authorities, ends=st.booleans(), body=bodies)
async def test_any_request_line_is_served_or_refused_cleanly(
    path: str, method: str, authority: str, ends: bool, body: bytes
) -> None:
    pairs = [(":method", method.encode()), (":path", path.encode()), (":scheme", b"http")]
    pairs += [(":authority", authority.encode()), *AUTH]
    route = _route_of(path, authority)
    await _play(pairs, ends, body, route)
    # A request on a route is logged once; one on no route is Envoy's to log.
    assert len(LOG.lines()) == (route is not None)


@pytest.mark.parametrize("missing", [":path", ":method", ":authority"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/models"])
@pytest.mark.parametrize("ends", [False, True])
async def test_a_request_line_missing_a_part_is_answered(
    missing: str, path: str, ends: bool
) -> None:
    pairs = [(":method", b"POST"), (":path", path.encode()), (":authority", b"gateway")]
    pairs = [(key, value) for key, value in pairs if key != missing] + list(AUTH)
    route = _route_of(path if missing != ":path" else "", "gateway")
    await _play(pairs, ends, CHAT, route)


# The headers the gateway reads, each with any text; names repeated and values in any bytes.
header_names = st.sampled_from(
    [
        "content-type",
        "content-length",
        "content-encoding",
        "model",
        "anthropic-version",
        "anthropic-beta",
        "traceparent",
        "tracestate",
        "x-request-id",
        "accept-encoding",
        "x-api-key",
        "authorization",
        "cookie",
        "x-amz-date",
        headers.CALLER,
        headers.CALLER_USER_ID,
        headers.ANSWERED_BY_PROVIDER,
        headers.ATTEMPTS_STARTED,
        headers.FAILOVER_CHAIN_KEY,
        "x-aigw-stream",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        (
            *("", "application/json", "application/json; charset=utf-16", "text/plain", "0"),
            *("multipart/form-data; boundary=x", "gzip", "br", "identity", " identity ", "10"),
            *("gzip, br", "\u00b2", "\u0661\u0660", "-1", "1e3", " 5", "9" * 30, "2023-06-01"),
            *(
                ",,,",
                "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
            ),
        )
    ).map(str.encode),
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=40),
    # Numbers in any script's digits ("²".isdigit() is true; int("²") raises).
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4).map(
        str.encode
    ),
    st.text(alphabet=st.characters(codec="ascii"), min_size=300, max_size=5000).map(str.encode),
)
HEADER_ROUTES = [
    "/v1/chat/completions",
    "/openai/chat/completions",
    "/openai/chat/completions?model=gpt-4o",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/anthropic/chat/completions",
    "/bedrock/haiku/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
    "/vertex/v1/projects/p/locations/l/publishers/anthropic/models/claude-3-5-haiku-latest:rawPredict",
]


@FUZZ
@given(
    path=st.sampled_from(HEADER_ROUTES),
    authority=st.sampled_from(HOSTS),
    sent=st.lists(st.tuples(header_names, header_values), max_size=5),
    ends=st.booleans(),
    body=st.sampled_from([CHAT, b"", b"\x1f\x8b\x08\x00"]),
)
async def test_any_request_header_is_served_or_refused_cleanly(
    path: str, authority: str, sent: Headers, ends: bool, body: bytes
) -> None:
    method = b"GET" if path == "/v1/models" else b"POST"
    pairs = [(":method", method), (":path", path.encode()), (":authority", authority.encode())]
    pairs += [*AUTH, *sent]
    route = _route_of(path, authority)
    await _play(pairs, ends, body, route)
    assert len(LOG.lines()) == 1


@pytest.mark.parametrize("value", ["²", "³", "¹⁰"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_content_length_in_other_digits_is_a_400(value: str, path: str) -> None:
    """``"²".isdigit()`` is true, and ``int("²")`` raises: a 500 before the fix."""
    pairs = [(":method", b"POST"), (":path", path.encode()), (":authority", b"gateway")]
    pairs += [*AUTH, ("content-length", value.encode())]
    route = _route_of(path, "gateway")
    answers = await _play(pairs, False, CHAT, route)
    assert _check_refusal(answers[-1], _shape(route)) == 400


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
        "/vertex/v1/projects/p/locations/l/publishers/anthropic/models/claude-3-5-haiku-latest:rawPredict",
        "/not/an/ai/route",
    ],
)
@pytest.mark.parametrize("cluster", [b"provider_openai", b"", b"\xff"])
async def test_a_client_cannot_pick_the_cluster(path: str, cluster: bytes) -> None:
    """Refused (never trusted), in the error shape of the client's API: an Anthropic SDK
    on /v1/messages got OpenAI's error before the fix, which it cannot parse."""
    pairs = [(":method", b"POST"), (":path", path.encode()), (":authority", b"gateway")]
    pairs += [*AUTH, (headers.CLUSTER, cluster)]
    route = _route_of(path, "gateway")
    [answer] = await _play(pairs, False, CHAT, route)
    assert _check_refusal(answer, _shape(route)) == 400


# The response side: a chat request, a streamed one, and one translated to Anthropic.
STREAM = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
CLAUDE = orjson.dumps(
    {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}]}
)
REQUESTS = {
    "chat": ("/v1/chat/completions", CHAT),
    "streamed chat": ("/v1/chat/completions", STREAM),
    "chat to anthropic": ("/anthropic/chat/completions", CLAUDE),
}
JSON_ANSWER = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)
SSE_ANSWER = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"hi"}}]}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)
CLAUDE_ANSWER = orjson.dumps(
    {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
)
CLAUDE_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
    b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":-2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
answer_bodies = st.sampled_from(
    (
        *(JSON_ANSWER, SSE_ANSWER, CLAUDE_ANSWER, CLAUDE_SSE, gzip.compress(JSON_ANSWER), b""),
        *(b'{"error":{"message":"x","type":"y"}}', b"<html>", b"\xff\xfe", b"data: [DONE]\n\n"),
    )
) | st.binary(max_size=60)
statuses = st.one_of(
    st.sampled_from(["200", "0", "100", "101", "204", "304", "400", "429", "500", "529", "999"]),
    st.sampled_from(["", "abc", "²", "-1", "2e2", " 200", "20x", "1" * 30]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
    st.text(max_size=5),
)
content_types = st.sampled_from(
    (
        *(None, "application/json", "text/event-stream", "application/json; charset=utf-8"),
        *("text/event-stream; charset=utf-8", "text/html", "", "APPLICATION/JSON", "garbage;;="),
    )
)


@FUZZ
@given(
    kind=st.sampled_from(list(REQUESTS)),
    status=statuses,
    content_type=content_types,
    encoding=st.sampled_from([None, "gzip", "br", "identity", ""]),
    ends=st.booleans(),
    chunks=st.lists(answer_bodies, min_size=1, max_size=3),
)
async def test_any_response_header_is_read_and_logged_once(
    kind: str,
    status: str,
    content_type: str | None,
    encoding: str | None,
    ends: bool,
    chunks: list[bytes],
) -> None:
    path, body = REQUESTS[kind]
    pairs = [(":method", b"POST"), (":path", path.encode()), (":authority", b"gateway"), *AUTH]
    answer: Headers = [(":status", status.encode())]
    if content_type is not None:
        answer.append(("content-type", content_type.encode()))
    if encoding is not None:
        answer.append(("content-encoding", encoding.encode()))
    # An answer naming a provider itself: only the failover filter's names are read.
    answer.append((headers.ANSWERED_BY_PROVIDER, b"mock-bedrock"))
    message = ext.ProcessingRequest()
    message.response_headers.CopyFrom(_headers_message(answer, ends).request_headers)
    messages = [_headers_message(pairs, False), request_body(body), message]
    if not ends:
        messages += [
            response_body(chunk, end_of_stream=i == len(chunks) - 1)
            for i, chunk in enumerate(chunks)
        ]
    LOG.buffer.seek(0)
    LOG.buffer.truncate()
    answers = await run_stream(PROCESSOR, messages)
    # Served: the request went on, and every message of the answer was answered, none
    # refused (an exception becomes a 500 refusal, which Envoy would send the client).
    assert len(answers) == len(messages)
    assert not any(a.HasField("immediate_response") for a in answers), answers[-1]
    [line] = LOG.lines()
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        assert line[name] is None or line[name] >= 0, (name, line)
    assert line["provider"] != "mock-bedrock"
    assert 0 <= line["upstream_status_code"] <= 999
