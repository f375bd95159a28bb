"""Fuzzing what clients send, through the processor as Envoy drives it.

Every API the gateway serves (OpenAI chat in the body, path, header and query
shapes; Anthropic messages; chat translated to Anthropic and to Bedrock) gets
bodies shaped like its requests with any JSON in any field, plus raw bytes.
Credential headers get any text. The property: Envoy always gets an answer,
either "go on" or a 4xx (503 for a store the unit tests do not run) in the
error shape of the route's API; never an exception, never a 5xx for input.
"""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config import load_config
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream

# Hypothesis's default number of examples a test; FUZZ_EXAMPLES asks for more, for a
# longer search by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RUNTIME = Runtime(
    load_config("config/gateway.yaml", environ={}),
    Services(GatewayMetrics(), AccessLog(stdout=False)),
)
# Bedrock's signer resolves its (static) credentials once, as the server does at start.
for _signer in RUNTIME.signers.values():
    asyncio.run(_signer.start())
PROCESSOR = Processor(lambda: RUNTIME, default_stages())
AUTH = {"authorization": "Bearer team1-key"}

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
content_blocks = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["text", "image", "image_url", "tool_use", "tool_result"])
            | json_values,
            "text": json_values,
            "image_url": json_values,
            "source": json_values,
            "id": json_values,
            "input": json_values,
            "content": json_values,
        },
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer"])},
        optional={
            "content": st.text(max_size=20) | content_blocks | json_values,
            "tool_calls": json_values,
            "tool_call_id": json_values,
            "name": json_values,
        },
    )
    | json_values,
    max_size=4,
)
# Fields of OpenAI's chat and Anthropic's messages requests, each with any JSON too.
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "haiku", "x"])
        | json_values,
        "messages": messages | json_values,
        "system": st.text(max_size=10) | content_blocks | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values})
        | json_values,
        "max_tokens": st.integers(-5, 10**12) | json_values,
        "max_completion_tokens": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "stop": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "response_format": json_values,
        "n": json_values,
    },
)
bodies = (
    chat_bodies.map(orjson.dumps)
    | json_values.map(orjson.dumps)
    | st.binary(max_size=120)
    | st.sampled_from([b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000])
)
# (path, headers, error shape) of every client-facing API.
ROUTES = {
    "openai chat": ("/v1/chat/completions", {}, "openai"),
    "model in path": ("/openai/gpt-4o/chat/completions", {}, "openai"),
    "model in header": ("/openai/chat/completions", {"model": "gpt-4o"}, "openai"),
    "model in query": ("/openai/chat/completions?model=gpt-4o", {}, "openai"),
    "anthropic messages": ("/v1/messages", {"anthropic-version": "2023-06-01"}, "anthropic"),
    "chat to anthropic": ("/anthropic/chat/completions", {}, "openai"),
    "chat to bedrock": ("/bedrock/haiku/chat/completions", {}, "openai"),
    "chat to bedrock, any model": ("/bedrock/chat/completions", {}, "openai"),
}


async def _answers(
    path: str, headers: dict[str, str], body: bytes | None
) -> list[ext.ProcessingResponse]:
    messages = [request_headers(path, headers=headers)]
    if body is not None:
        messages.append(request_body(body))
    return await run_stream(PROCESSOR, messages)


def _check_refusal(answer: ext.ProcessingResponse, shape: str) -> int:
    """A refusal must be a 4xx (or 503) with the route's error JSON; returns the status."""
    refusal = answer.immediate_response
    status = int(refusal.status.code)
    assert 400 <= status < 500 or status == 503, (status, refusal.body)
    error = orjson.loads(refusal.body)
    if shape == "anthropic":
        assert error["type"] == "error" and error["error"]["message"]
    else:
        assert error["error"]["message"] and error["error"]["type"]
    content_types = [
        h.header.raw_value for h in refusal.headers.set_headers if h.header.key == "content-type"
    ]
    assert content_types == [b"application/json"]
    return status


@pytest.mark.parametrize("route", list(ROUTES))
@FUZZ
@given(body=bodies)
async def test_any_body_on_any_api_is_served_or_refused_cleanly(route: str, body: bytes) -> None:
    path, headers, shape = ROUTES[route]
    answers = await _answers(path, {**AUTH, **headers}, body)
    assert len(answers) == 2
    last = answers[-1]
    if last.HasField("immediate_response"):
        _check_refusal(last, shape)
    else:
        # Served: the request goes to a provider cluster, its body in that provider's API.
        mutation = last.request_body.response
        assert mutation.clear_route_cache
        clusters = [h.header.raw_value for h in mutation.header_mutation.set_headers]
        assert any(value.startswith(b"provider_") for value in clusters)


header_text = (
    st.text(max_size=60)
    | st.text(alphabet=st.characters(codec="ascii"), min_size=200, max_size=10_000)
    | st.sampled_from(["", "Bearer", "Bearer ", "bearer team1-key", "Basic dGVhbTE=", "eyJ.a.b"])
    | st.builds(lambda s: "eyJ" + s + "." + s + "." + s, st.text(max_size=30))
)


@FUZZ
@given(
    authorization=st.none() | header_text,
    api_key=st.none() | header_text,
    route=st.sampled_from(list(ROUTES)),
)
async def test_any_credential_header_is_accepted_or_a_401(
    authorization: str | None, api_key: str | None, route: str
) -> None:
    path, headers, shape = ROUTES[route]
    sent = dict(headers)
    if authorization is not None:
        sent["authorization"] = authorization
    if api_key is not None:
        sent["x-api-key"] = api_key
    [answer] = await _answers(path, sent, None)
    if answer.HasField("immediate_response"):
        assert _check_refusal(answer, shape) in (401, 403)
    else:
        assert answer.HasField("request_headers")
