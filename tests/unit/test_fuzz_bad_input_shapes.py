"""Fuzzing one field at a time: every request shape the gateway routes, each of its known
fields given a value of the wrong kind, through the processor as Envoy drives it.

Where ``test_fuzz_requests*`` draw whole bodies of any JSON (most of which the first
check refuses), this file starts from a body each route serves and breaks one field
(or drops it): null, a number for a string, an object for an array, integers past 64
bits, fractions, negatives, the client's own key, nesting past the depth limit; plus
raw bytes that are no JSON. So the stages behind the first checks read the broken
field too: the quota (a hard cap, with a store that admits everything), the guards, the
translation to each provider type, and the charge of an answer cut after the provider's
200 or of a provider's error.

The property, for every shape: no exception escapes a stage (none is logged); the
gateway either refuses with a 4xx (a 503 where documented) in the error shape of the
route's API (OpenAI's, Anthropic's, Bedrock's ``{"message"}``, Google's, JSON-RPC), or
sends the request on to a provider's (or an agent's) cluster, as the docs say it passes
what it does not read; the request writes exactly one log line; and neither the client's
key nor a provider's secret shows in an error body or the log line.

Each shape is fuzzed with and without a quota rule (one reads the bounds, and refused
some wrong ones only when it applied), 60 examples each (``FUZZ_EXAMPLES`` asks for
more, for a longer search by hand); and every field of every shape is also given each of
a few values for sure (``EDGES``): the ones that broke a stage before are too rare for a
random draw to be sure of meeting them in 60.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.config.model import RouteApi
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex, vertex_provider
from tests.unit.test_agents import with_agents
from tests.unit.test_fuzz_requests_routes import QUOTAS, FakeQuotaStore

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLIENT_KEY = "team1-key"
AGENT_KEY = "team2-key"
# The gateway's own secrets in the config below (its providers' and agents' keys): no
# error body or log line may show one, nor the key the request presented.
PROVIDER_SECRETS = ("mock-provider-key", "mock-secret-key", "upstream-secret")
GEMINI = "gemini-2.5-flash"
VERTEX_MODELS = "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
HAIKU_ID = "anthropic.claude-3-haiku-20240307-v1%3A0"
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Shape:
    """One request shape: where it is sent, a body the route serves, the fields to break
    (each a path of keys and indexes into the body) and the error shape of its API."""

    path: str
    body: dict[str, Any]
    fields: list[FieldPath]
    errors: str
    headers: dict[str, str] = field(
        default_factory=lambda: {"authorization": f"Bearer {CLIENT_KEY}"}
    )

    @property
    def credential(self) -> str:
        """The key the request presents, whichever header carries it."""
        for value in self.headers.values():
            if value.endswith("-key"):
                return value.removeprefix("Bearer ")
        raise AssertionError(f"no key in {self.headers}")


HI = [{"role": "user", "content": "Say hi."}]
CHAT = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 20}
CHAT_FIELDS: list[FieldPath] = [
    ("model",), ("messages",), ("messages", 0), ("messages", 0, "role"),
    ("messages", 0, "content"), ("stream",), ("stream_options",),
    ("stream_options", "include_usage"), ("max_tokens",), ("max_completion_tokens",), ("n",),
    ("temperature",), ("top_p",), ("stop",), ("tools",), ("tool_choice",),
    ("response_format",), ("reasoning_effort",), ("service_tier",), ("user",), ("seed",),
    ("logprobs",), ("parallel_tool_calls",), ("metadata",),
]  # fmt: skip
MESSAGES = {"model": "claude-3-5-haiku-latest", "messages": HI, "max_tokens": 20}
MESSAGES_FIELDS: list[FieldPath] = [
    ("model",), ("messages",), ("messages", 0, "role"), ("messages", 0, "content"),
    ("max_tokens",), ("system",), ("temperature",), ("top_k",), ("top_p",),
    ("stop_sequences",), ("stream",), ("thinking",), ("thinking", "type"),
    ("thinking", "budget_tokens"), ("tools",), ("tool_choice",), ("metadata",),
    ("service_tier",), ("output_config",),
]  # fmt: skip
THINKING = {"type": "enabled", "budget_tokens": 1024}
COUNT = {"model": "claude-3-5-haiku-latest", "messages": HI, "thinking": THINKING}
COUNT_FIELDS = [each for each in MESSAGES_FIELDS if each != ("max_tokens",)]
ANTHROPIC = {"anthropic-version": "2023-06-01", "authorization": f"Bearer {CLIENT_KEY}"}
RESPONSES = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Say hi."}]}
RESPONSES_FIELDS: list[FieldPath] = [
    ("model",), ("input",), ("input", 0), ("input", 0, "content"), ("input", 0, "role"),
    ("instructions",), ("max_output_tokens",), ("tools",), ("stream",), ("background",),
    ("previous_response_id",), ("reasoning",), ("text",), ("store",), ("truncation",),
    ("conversation",), ("prompt",), ("include",), ("tool_choice",),
]  # fmt: skip
COMPLETIONS = {"model": "gpt-4o-mini", "prompt": "Say hi.", "max_tokens": 20}
COMPLETIONS_FIELDS: list[FieldPath] = [
    ("model",), ("prompt",), ("max_tokens",), ("n",), ("best_of",), ("suffix",),
    ("stream",), ("echo",), ("logprobs",), ("stream_options",), ("temperature",),
]  # fmt: skip
IMAGES = {"model": "gpt-image-1", "prompt": "A cat.", "n": 1, "quality": "low"}
IMAGES_FIELDS: list[FieldPath] = [
    ("model",), ("prompt",), ("n",), ("quality",), ("size",), ("stream",),
    ("partial_images",), ("user",),
]  # fmt: skip
# Speech to text takes a multipart/form-data form, not JSON: a body holding ``_FORM`` is
# written as one (``_encoded``), each field a text part (a value that is no string as its
# JSON), beside the audio in ``file``.
_FORM = "\x00form"
FORM_BOUNDARY = "fuzzform"
AUDIO = {_FORM: True, "model": "whisper-1", "response_format": "text"}
AUDIO_FIELDS: list[FieldPath] = [
    ("model",), ("file",), ("prompt",), ("response_format",), ("stream",), ("language",),
    ("temperature",), ("timestamp_granularities[]",), ("include[]",),
]  # fmt: skip
FORM_HEADERS = {
    "authorization": f"Bearer {CLIENT_KEY}",
    "content-type": f"multipart/form-data; boundary={FORM_BOUNDARY}",
}
EMBEDDINGS_FIELDS: list[FieldPath] = [
    ("model",), ("input",), ("dimensions",), ("encoding_format",), ("input_type",), ("user",),
]  # fmt: skip
MODERATIONS = {
    "model": "omni-moderation-latest",
    "input": [
        {"type": "text", "text": "Is this fine?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ],
}
MODERATIONS_FIELDS: list[FieldPath] = [
    ("model",), ("input",), ("input", 0), ("input", 0, "text"), ("input", 1, "image_url"),
    ("input", 1, "image_url", "url"),
]  # fmt: skip
RERANK = {"model": "rerank-v3.5", "query": "hi", "documents": ["a", {"text": "b"}], "top_n": 1}
RERANK_FIELDS: list[FieldPath] = [
    ("model",), ("query",), ("documents",), ("documents", 0), ("documents", 1),
    ("documents", 1, "text"), ("top_n",), ("return_documents",), ("max_tokens_per_doc",),
]  # fmt: skip
CONVERSE = {
    "messages": [{"role": "user", "content": [{"text": "Say hi."}]}],
    "inferenceConfig": {"maxTokens": 20},
    "additionalModelRequestFields": {"thinking": THINKING},
}
CONVERSE_FIELDS: list[FieldPath] = [
    ("messages",), ("messages", 0, "role"), ("messages", 0, "content"),
    ("messages", 0, "content", 0, "text"), ("system",), ("inferenceConfig",),
    ("inferenceConfig", "maxTokens"), ("inferenceConfig", "temperature"),
    ("additionalModelRequestFields",), ("additionalModelRequestFields", "thinking"),
    ("additionalModelRequestFields", "thinking", "budget_tokens"), ("toolConfig",),
    ("performanceConfig",), ("serviceTier",), ("promptVariables",), ("guardrailConfig",),
]  # fmt: skip
INVOKE_CLAUDE = {"anthropic_version": "bedrock-2023-05-31", "messages": HI, "max_tokens": 20}
INVOKE_CLAUDE_FIELDS: list[FieldPath] = [
    ("anthropic_version",), ("messages",), ("messages", 0, "content"), ("max_tokens",),
    ("thinking",), ("system",), ("temperature",), ("anthropic_beta",), ("service_tier",),
]  # fmt: skip
INVOKE_LLAMA = {"prompt": "Say hi.", "max_gen_len": 20, "temperature": 0.5}
INVOKE_LLAMA_FIELDS: list[FieldPath] = [("prompt",), ("max_gen_len",), ("temperature",)]
COUNT_CONVERSE = {"input": {"converse": {"messages": CONVERSE["messages"]}}}
COUNT_CONVERSE_FIELDS: list[FieldPath] = [
    ("input",), ("input", "converse"), ("input", "converse", "messages"),
    ("input", "converse", "messages", 0, "content"), ("input", "converse", "system"),
]  # fmt: skip
GEMINI_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "Say hi."}]}],
    "generationConfig": {"maxOutputTokens": 20, "thinkingConfig": {"thinkingBudget": 128}},
}
GEMINI_FIELDS: list[FieldPath] = [
    ("contents",), ("contents", 0, "role"), ("contents", 0, "parts"),
    ("contents", 0, "parts", 0, "text"), ("generationConfig",),
    ("generationConfig", "maxOutputTokens"), ("generationConfig", "candidateCount"),
    ("generationConfig", "thinkingConfig"),
    ("generationConfig", "thinkingConfig", "thinkingBudget"),
    ("systemInstruction",), ("tools",), ("safetySettings",), ("cachedContent",),
]  # fmt: skip
GOOGLE_KEY = {"x-goog-api-key": CLIENT_KEY}
MCP = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {}},
}
A2A = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "message/send",
    "params": {
        "message": {"role": "user", "parts": [{"kind": "text", "text": "hi"}], "messageId": "m1"}
    },
}
RPC_FIELDS: list[FieldPath] = [
    ("jsonrpc",), ("id",), ("method",), ("params",), ("params", "name"), ("params", "arguments"),
    ("params", "message"),
]  # fmt: skip
AGENTS = {"authorization": f"Bearer {AGENT_KEY}"}


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, **changes}


SHAPES: dict[str, Shape] = {
    "chat to openai": Shape("/v1/chat/completions", CHAT, CHAT_FIELDS, "openai"),
    "chat to anthropic": Shape(
        "/v1/chat/completions", _with(CHAT, model="claude-3-5-haiku-latest"), CHAT_FIELDS, "openai"
    ),
    "chat to bedrock": Shape(
        "/v1/chat/completions", _with(CHAT, model="haiku"), CHAT_FIELDS, "openai"
    ),
    "chat to bedrock llama": Shape(
        "/bedrock/llama/chat/completions", _with(CHAT, model="x"), CHAT_FIELDS, "openai"
    ),
    "chat to vertex claude": Shape(
        "/v1/chat/completions", _with(CHAT, model="sonnet-vertex"), CHAT_FIELDS, "openai"
    ),
    "chat to vertex gemini": Shape(
        "/v1/chat/completions", _with(CHAT, model="gemini-flash"), CHAT_FIELDS, "openai"
    ),
    "completions": Shape("/v1/completions", COMPLETIONS, COMPLETIONS_FIELDS, "openai"),
    "images": Shape("/v1/images/generations", IMAGES, IMAGES_FIELDS, "openai"),
    "audio": Shape("/v1/audio/transcriptions", AUDIO, AUDIO_FIELDS, "openai", FORM_HEADERS),
    "embeddings openai": Shape(
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "hi"},
        EMBEDDINGS_FIELDS,
        "openai",
    ),
    "embeddings titan": Shape(
        "/v1/embeddings", {"model": "titan-embed", "input": "hi"}, EMBEDDINGS_FIELDS, "openai"
    ),
    "embeddings cohere": Shape(
        "/v1/embeddings", {"model": "cohere-embed", "input": ["hi"]}, EMBEDDINGS_FIELDS, "openai"
    ),
    "moderations": Shape("/v1/moderations", MODERATIONS, MODERATIONS_FIELDS, "openai"),
    "rerank": Shape("/v1/rerank", RERANK, RERANK_FIELDS, "openai"),
    "rerank v2": Shape("/v2/rerank", RERANK, RERANK_FIELDS, "openai"),
    "responses": Shape("/v1/responses", RESPONSES, RESPONSES_FIELDS, "openai"),
    "responses compact": Shape("/v1/responses/compact", RESPONSES, RESPONSES_FIELDS, "openai"),
    "responses input_tokens": Shape(
        "/v1/responses/input_tokens", RESPONSES, RESPONSES_FIELDS, "openai"
    ),
    "messages to anthropic": Shape(
        "/v1/messages", MESSAGES, MESSAGES_FIELDS, "anthropic", ANTHROPIC
    ),
    "messages to bedrock": Shape(
        "/v1/messages", _with(MESSAGES, model="haiku"), MESSAGES_FIELDS, "anthropic", ANTHROPIC
    ),
    "messages to vertex": Shape(
        "/v1/messages",
        _with(MESSAGES, model="sonnet-vertex"),
        MESSAGES_FIELDS,
        "anthropic",
        ANTHROPIC,
    ),
    "count_tokens to anthropic": Shape(
        "/v1/messages/count_tokens", COUNT, COUNT_FIELDS, "anthropic", ANTHROPIC
    ),
    "count_tokens to bedrock": Shape(
        "/v1/messages/count_tokens",
        _with(COUNT, model="haiku"),
        COUNT_FIELDS,
        "anthropic",
        ANTHROPIC,
    ),
    "count_tokens to vertex": Shape(
        "/v1/messages/count_tokens",
        _with(COUNT, model="sonnet-vertex"),
        COUNT_FIELDS,
        "anthropic",
        ANTHROPIC,
    ),
    "vertex client rawPredict": Shape(
        VERTEX_MODELS + "sonnet-vertex:rawPredict",
        _with(MESSAGES, anthropic_version="vertex-2023-10-16"),
        MESSAGES_FIELDS,
        "anthropic",
    ),
    "vertex client to bedrock": Shape(
        VERTEX_MODELS + "haiku:streamRawPredict",
        _with(MESSAGES, stream=True),
        MESSAGES_FIELDS,
        "anthropic",
    ),
    "vertex client count": Shape(
        VERTEX_MODELS + "count-tokens:rawPredict",
        _with(COUNT, model="haiku"),
        COUNT_FIELDS,
        "anthropic",
    ),
    "converse": Shape(f"/model/{HAIKU_ID}/converse", CONVERSE, CONVERSE_FIELDS, "bedrock"),
    "converse-stream": Shape(
        f"/model/{HAIKU_ID}/converse-stream", CONVERSE, CONVERSE_FIELDS, "bedrock"
    ),
    "invoke claude": Shape(
        f"/model/{HAIKU_ID}/invoke", INVOKE_CLAUDE, INVOKE_CLAUDE_FIELDS, "bedrock"
    ),
    "invoke llama": Shape("/model/llama/invoke", INVOKE_LLAMA, INVOKE_LLAMA_FIELDS, "bedrock"),
    "count-tokens converse": Shape(
        f"/model/{HAIKU_ID}/count-tokens", COUNT_CONVERSE, COUNT_CONVERSE_FIELDS, "bedrock"
    ),
    "count-tokens invoke": Shape(
        f"/model/{HAIKU_ID}/count-tokens",
        {"input": {"invokeModel": {"body": INVOKE_CLAUDE}}},
        [("input", "invokeModel", "body", *each) for each in INVOKE_CLAUDE_FIELDS],
        "bedrock",
    ),
    "gemini generateContent": Shape(
        f"/v1beta/models/{GEMINI}:generateContent", GEMINI_BODY, GEMINI_FIELDS, "google", GOOGLE_KEY
    ),
    "gemini stream": Shape(
        f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse",
        GEMINI_BODY,
        GEMINI_FIELDS,
        "google",
        GOOGLE_KEY,
    ),
    "gemini countTokens": Shape(
        f"/v1beta/models/{GEMINI}:countTokens", GEMINI_BODY, GEMINI_FIELDS, "google", GOOGLE_KEY
    ),
    "mcp": Shape("/mcp", MCP, RPC_FIELDS, "jsonrpc", AGENTS),
    "a2a": Shape("/a2a/helper", A2A, RPC_FIELDS, "jsonrpc", AGENTS),
}

# --- what a field may be given instead ----------------------------------------------------

small = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6)
wrong_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.5, -0.0, 100.0, 1e308, -1e308, 5e-324])
    | st.text(max_size=12)
    | st.sampled_from(["", "100", "true", "null", CLIENT_KEY, f"Bearer {CLIENT_KEY}", AGENT_KEY])
    | st.lists(small, max_size=3)
    | st.dictionaries(st.text(max_size=6), small, max_size=3)
    | st.integers(2, 80).map(lambda depth: json.loads("[" * depth + "]" * depth))
)
# Bytes that are no JSON object (or are one only just).
garbage = st.binary(max_size=80) | st.sampled_from(
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"text"',
        b"1e999",
        b'{"model":',
        b"\xff\xfe{}",
        b'{"a":1}x',
        b"{" * 70 + b"}" * 70,
        b'{"model": "gpt-4o-mini", "messages": NaN}',
    ]
)
_DROP = object()  # the field left out


def _broken(body: dict[str, Any], where: FieldPath, value: Any) -> bytes:
    """``body`` with the field at ``where`` set to ``value`` (or dropped), as JSON; an
    integer past 64 bits is written as its digits, as a client could send it."""
    changed = copy.deepcopy(body)
    if not where:
        return _encoded(changed)
    parent: Any = changed
    for step in where[:-1]:
        # A field inside an object the body does not hold yet: the object made for it.
        parent = parent.setdefault(step, {}) if isinstance(parent, dict) else parent[step]
    last = where[-1]
    if value is _DROP:
        if isinstance(parent, dict):
            parent.pop(last, None)
        else:
            del parent[last]
    else:
        parent[last] = value
    return _encoded(changed)


def _encoded(body: dict[str, Any]) -> bytes:
    """``body`` as JSON (an integer past 64 bits as its digits, as a client may send it);
    CountTokens' InvokeModel body base64-encoded in it, as Bedrock takes it; a form's
    fields (``_FORM``) as a multipart/form-data form with its audio file."""
    if body.pop(_FORM, False):
        parts = [
            f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value if isinstance(value, str) else json.dumps(value)}\r\n"
            for name, value in body.items()
        ]
        audio = (
            f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n'
        )
        return ("".join(parts) + audio + f"--{FORM_BOUNDARY}--\r\n").encode()
    inner = (
        body.get("input", {}).get("invokeModel") if isinstance(body.get("input"), dict) else None
    )
    if isinstance(inner, dict) and isinstance(inner.get("body"), dict):
        inner["body"] = base64.b64encode(json.dumps(inner["body"]).encode()).decode()
    return json.dumps(body).encode()


@st.composite
def requests(draw: st.DrawFn, shape: Shape) -> bytes:
    """A body of ``shape`` with one field broken, or bytes that are no such body."""
    if draw(st.integers(0, 9)) == 0:
        return draw(garbage)
    where = draw(st.sampled_from(shape.fields))
    # Left out one time in eight: a missing field is one wrong shape among many.
    value = _DROP if draw(st.integers(0, 7)) == 0 else draw(wrong_values)
    return _broken(shape.body, where, value)


# How the request ends once it went on: the client left before any answer, the answer
# was cut after the provider's 200, or the provider refused it.
ENDINGS = ["client left", "cut after 200", "cut after 200", "provider error"]
PROVIDER_ERROR = orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error"}})


# --- the gateway under test ---------------------------------------------------------------


class Exceptions(logging.Handler):
    """Every error a stage or the finishing work logged (an exception caught by the
    processor is logged with its traceback, and answered as a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@dataclass
class Gateway:
    """The processor of one config, the log it writes and the errors it logged."""

    processor: Processor
    log: MemoryLog
    errors: Exceptions


def _config(mock: str, key_file: Path, quotas: bool) -> GatewayConfig:
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["models"] += [
        {
            "name": "sonnet-vertex",
            "provider": "vertex",
            "upstream_model": "claude-sonnet-4-5@20250929",
        },
        {"name": "gemini-flash", "provider": "vertex", "upstream_model": "google/gemini-2.5-flash"},
        {"name": GEMINI, "provider": "vertex", "upstream_model": "google/gemini-2.5-flash"},
    ]
    raw["routes"][:0] = [
        {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
    ]
    if quotas:
        raw.update(yaml.safe_load(QUOTAS))
    return with_agents(parse_config(yaml.safe_dump(raw), "gateway.yaml", {}))


@asynccontextmanager
async def _serving(config: GatewayConfig, errors: Exceptions) -> AsyncIterator[Gateway]:
    log = MemoryLog()
    services = Services(GatewayMetrics(), log, quota_store=FakeQuotaStore())  # type: ignore[arg-type]
    runtime = Runtime(config, services)
    await runtime.start()  # Bedrock's signer and Vertex's token, as at a start
    try:
        yield Gateway(Processor(lambda: runtime, default_stages()), log, errors)
    finally:
        await runtime.close()


@pytest.fixture(scope="module")
async def gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[bool, Gateway]]:
    """Every route above, without a quota rule and with a hard-capped token quota (on a
    store that admits all): a rule reads the bounds, and refused some of them only
    when one applied."""
    key_file = tmp_path_factory.mktemp("vertex") / "vertex-key.json"
    errors = Exceptions()
    logging.getLogger("extproc").addHandler(errors)
    try:
        async with (
            mock_vertex(key_file) as mock,
            _serving(_config(mock, key_file, quotas=False), errors) as plain,
            _serving(_config(mock, key_file, quotas=True), errors) as capped,
        ):
            yield {False: plain, True: capped}
    finally:
        logging.getLogger("extproc").removeHandler(errors)


async def _play(
    gateway: Gateway, shape: Shape, body: bytes, ending: str
) -> list[ext.ProcessingResponse]:
    """Send one request and, should it go on, end it as ``ending`` says."""
    gateway.log.buffer.seek(0)
    gateway.log.buffer.truncate()
    gateway.errors.seen.clear()
    messages = [request_headers(shape.path, headers=shape.headers), request_body(body)]
    # A refused request's stream ends at the refusal: what follows is never read.
    if ending == "cut after 200":
        messages.append(response_headers(200))
    elif ending == "provider error":
        messages += [response_headers(400), response_body(PROVIDER_ERROR)]
    return await run_stream(gateway.processor, messages)


def _check_error_shape(refusal: ext.ImmediateResponse, errors: str) -> None:
    status = int(refusal.status.code)
    error = orjson.loads(refusal.body)
    if errors == "jsonrpc":
        # Agent routes answer JSON-RPC errors; an access rule's refusal is HTTP 200.
        assert 200 <= status < 500 or status == 503, (status, refusal.body)
        for each in error if isinstance(error, list) else [error]:
            assert each["jsonrpc"] == "2.0" and "id" in each, error
            assert isinstance(each["error"]["code"], int) and each["error"]["message"], error
        return
    assert 400 <= status < 500 or status == 503, (status, refusal.body)
    if errors == "anthropic":
        assert error["type"] == "error", error
        assert error["error"]["type"] and error["error"]["message"], error
    elif errors == "bedrock":
        assert isinstance(error["message"], str) and error["message"], error
        set_headers = {h.header.key: h.header.raw_value for h in refusal.headers.set_headers}
        assert set_headers["x-amzn-errortype"].endswith(b"Exception"), set_headers
    elif errors == "google":
        assert error["error"]["code"] == status and error["error"]["status"], error
        assert error["error"]["message"], error
    else:
        assert error["error"]["type"] and error["error"]["message"], error


def _check(gateway: Gateway, shape: Shape, answers: list[ext.ProcessingResponse]) -> None:
    secrets = (*PROVIDER_SECRETS, shape.credential)
    assert gateway.errors.seen == [], gateway.errors.seen
    refusals = [a.immediate_response for a in answers if a.HasField("immediate_response")]
    if refusals:
        [refusal] = refusals
        _check_error_shape(refusal, shape.errors)
        shown = refusal.body.decode("utf-8", "replace")
        assert not [secret for secret in secrets if secret in shown], shown
    else:
        # Went on: Envoy is pointed at a provider's (or an agent's) cluster.
        set_headers = [
            h.header.raw_value
            for answer in answers[:2]
            for mutation in (answer.request_headers.response, answer.request_body.response)
            for h in mutation.header_mutation.set_headers
        ]
        assert any(v.startswith((b"provider_", b"agent_")) for v in set_headers), answers
    [line] = gateway.log.lines()
    written = orjson.dumps(line).decode()
    assert not [secret for secret in secrets if secret in written], written


@pytest.mark.parametrize("name", list(SHAPES))
@FUZZ
@given(data=st.data(), ending=st.sampled_from(ENDINGS), quotas=st.booleans())
async def test_a_broken_field_is_refused_in_the_apis_shape_or_sent_on(
    gateways: dict[bool, Gateway], name: str, data: st.DataObject, ending: str, quotas: bool
) -> None:
    shape = SHAPES[name]
    body = data.draw(requests(shape))
    gateway = gateways[quotas]
    _check(gateway, shape, await _play(gateway, shape, body, ending))


# The values each field of each shape gets for sure: those that broke a stage before
# (a bound of another type sent on and charged as none, a budget past 64 bits plus one).
EDGES: list[Any] = [_DROP, None, "100", 100.0, 0, -1, True, [], {}, 2**64 - 1, 2**64]


@pytest.mark.parametrize("name", list(SHAPES))
async def test_every_field_of_every_shape_with_each_edge_value(
    gateways: dict[bool, Gateway], name: str
) -> None:
    shape = SHAPES[name]
    for where in shape.fields:
        for value in [*EDGES, shape.credential]:
            for gateway in gateways.values():
                body = _broken(shape.body, where, value)
                try:
                    _check(gateway, shape, await _play(gateway, shape, body, "cut after 200"))
                except AssertionError as failed:
                    raise AssertionError(f"{where} = {value!r}: {failed}") from None


@pytest.mark.parametrize("name", list(SHAPES))
async def test_every_shape_s_own_body_is_sent_on(gateways: dict[bool, Gateway], name: str) -> None:
    """The bodies the fuzzing starts from are served: a broken field is what refuses."""
    shape = SHAPES[name]
    for gateway in gateways.values():
        answers = await _play(gateway, shape, _broken(shape.body, (), None), "cut after 200")
        assert not any(a.HasField("immediate_response") for a in answers), answers
        _check(gateway, shape, answers)


# A shape of each API the gateway serves a body on. The model list and stored responses
# take none: test_fuzz_requests_routes fuzzes their paths, methods and bodies.
SHAPE_OF_API = {
    RouteApi.OPENAI_CHAT: "chat to openai",
    RouteApi.OPENAI_COMPLETIONS: "completions",
    RouteApi.OPENAI_IMAGES: "images",
    RouteApi.OPENAI_AUDIO: "audio",
    RouteApi.OPENAI_EMBEDDINGS: "embeddings openai",
    RouteApi.OPENAI_MODERATIONS: "moderations",
    RouteApi.RERANK: "rerank",
    RouteApi.OPENAI_RESPONSES: "responses",
    RouteApi.OPENAI_RESPONSES_COMPACT: "responses compact",
    RouteApi.OPENAI_RESPONSES_INPUT_TOKENS: "responses input_tokens",
    RouteApi.ANTHROPIC_MESSAGES: "messages to anthropic",
    RouteApi.ANTHROPIC_COUNT_TOKENS: "count_tokens to anthropic",
    RouteApi.ANTHROPIC_VERTEX: "vertex client rawPredict",
    RouteApi.ANTHROPIC_VERTEX_COUNT_TOKENS: "vertex client count",
    RouteApi.BEDROCK_CONVERSE: "converse",
    RouteApi.BEDROCK_INVOKE: "invoke claude",
    RouteApi.BEDROCK_COUNT_TOKENS: "count-tokens converse",
    RouteApi.GEMINI_GENERATE_CONTENT: "gemini generateContent",
    RouteApi.GEMINI_COUNT_TOKENS: "gemini countTokens",
    RouteApi.MCP: "mcp",
    RouteApi.A2A: "a2a",
}


def test_every_api_with_a_body_is_fuzzed() -> None:
    """An API added to the gateway fails this until it has a shape above."""
    bodiless = {RouteApi.OPENAI_MODELS, RouteApi.OPENAI_RESPONSES_STORED, RouteApi.AIGW_LIMITS}
    assert set(RouteApi) - bodiless == set(SHAPE_OF_API)
    assert set(SHAPE_OF_API.values()) <= set(SHAPES)
