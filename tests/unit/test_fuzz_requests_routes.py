"""Fuzzing what clients send to the routes ``test_fuzz_requests`` leaves out.

OpenAI's Responses API (create, compact, input_tokens, and a stored response by its id
with any method), text completions, embeddings and the model list; Anthropic's token
count and its Vertex clients' paths (rawPredict, streamRawPredict, count-tokens); Bedrock
Runtime's Converse, ConverseStream, InvokeModel (Claude's bodies and others'), its
stream and CountTokens. Each gets bodies shaped like its requests with any JSON in any
field, raw bytes, and model ids in its path of any text (percent-encoded, ARNs, unicode,
very long).

The property: Envoy always gets an answer, either "go on" (the request sent to a
provider cluster) or a 4xx (503 for a store the unit tests do not run) in the error
shape of the route's API with ``content-type: application/json``; never an exception,
never a 5xx for input. With a quota rule in force, the tokens a request reserves are
never negative: a client's body cannot make its reservation give tokens back.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from extproc.config.loader import parse_config
from extproc.config.model import RouteApi
from extproc.processor import Processor
from extproc.quota.rules import Limit
from extproc.quota.store import PromptCost, Reservation
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.response_owners import ResponseOwner
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
FEW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
AUTH = {"authorization": "Bearer team1-key"}
# Alice's stored response (key team1 is her user), and Bob's.
ALICE_RESPONSE = "resp_alice0123"
BOB_RESPONSE = "resp_bob0123"


class FakeOwners:
    """The records of stored responses, in memory: Alice's and Bob's, at the mock."""

    def __init__(self) -> None:
        self.records = {
            ALICE_RESPONSE: ResponseOwner("user:alice", "mock", 12),
            BOB_RESPONSE: ResponseOwner("user:bob", "mock", 34),
        }

    async def find(self, response_id: str) -> ResponseOwner | None:
        return self.records.get(response_id)

    async def forget(self, response_id: str) -> None:
        return None


class FakeQuotaStore:
    """A quota store that admits every request and remembers what each reserved; the
    budget's remainder (``left``) decides what a hard cap leaves."""

    def __init__(self) -> None:
        self.costs: list[int] = []
        self.left = 10**9

    def now(self) -> float:
        return time.time()

    async def reserve(
        self,
        limits: list[Limit],
        cost: int,
        usd_micros: int = 0,
        room: int = 0,
        prompt: PromptCost | None = None,
    ) -> Reservation:
        self.costs.append(cost)
        reserved = [1 if limit.kind == "r" else cost for limit in limits]
        effective = [limit.limit for limit in limits]
        used = [
            limit.limit - self.left + each if limit.kind == "t" else each
            for limit, each in zip(limits, reserved, strict=True)
        ]
        return Reservation(limits, reserved, used, effective, [0] * len(limits))

    def settle(
        self,
        reservation: Reservation,
        actual_tokens: int | None,
        actual_usd_micros: int | None = None,
    ) -> None:
        return None

    def release(self, reservation: Reservation) -> None:
        return None


QUOTAS = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: cap, subject: api_key, tokens_per_day: 1000000000, hard_cap: true}
"""


def _processor(config: str, services: Services) -> Processor:
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    # Bedrock's signer resolves its (static) credentials once, as the server does at start.
    for signer in runtime.signers.values():
        asyncio.run(signer.start())
    return Processor(lambda: runtime, default_stages())


OWNERS = FakeOwners()
PROCESSOR = _processor(
    CONFIG,
    Services(GatewayMetrics(), AccessLog(stdout=False), response_owners=OWNERS),  # type: ignore[arg-type]
)
QUOTA_STORE = FakeQuotaStore()
QUOTA_PROCESSOR = _processor(
    CONFIG + QUOTAS,
    Services(GatewayMetrics(), AccessLog(stdout=False), quota_store=QUOTA_STORE),  # type: ignore[arg-type]
)

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
any_int = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.integers(-3, 5)
text = st.text(max_size=24)


def _objects(
    fields: dict[str, st.SearchStrategy[Any]],
    required: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with ``required`` and any of ``fields``: each of its own strategy (well
    formed, which gets past the checks to the stages behind them), or each of its
    strategy or any JSON."""
    required = required or {}
    shaped = st.fixed_dictionaries(required, optional=fields)
    messy = st.fixed_dictionaries(
        {},
        optional={
            name: strategy | json_values for name, strategy in {**required, **fields}.items()
        },
    )
    return _weighted(shaped, messy)


def _weighted(
    often: st.SearchStrategy[Any], seldom: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``often`` three times in four, ``seldom`` else."""
    return st.integers(0, 3).flatmap(lambda pick: seldom if pick == 0 else often)


# --- OpenAI's Responses API -------------------------------------------------------------
content_parts = st.lists(
    _objects(
        {
            "type": st.sampled_from(
                ["input_text", "output_text", "input_image", "input_file", "refusal", "text"]
            ),
            "text": text,
            "refusal": text,
            "image_url": text,
            "file_data": text,
            "annotations": st.just([]),
        }
    ),
    max_size=3,
)
ITEM_TYPES = [
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "reasoning",
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "image_generation_call",
    "code_interpreter_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "item_reference",
    "compaction",
]
input_items = st.lists(
    _weighted(
        _objects(
            {
                "type": st.sampled_from(ITEM_TYPES),
                "role": st.sampled_from(["user", "assistant", "system", "developer"]),
                "content": text | content_parts,
                "name": text,
                "arguments": text,
                "input": text,
                "output": text | content_parts,
                "call_id": text,
                "id": text,
                "summary": st.lists(_objects({"type": st.just("summary_text"), "text": text})),
                "encrypted_content": text,
                "action": _objects({"type": text, "command": st.lists(text, max_size=2)}),
                "results": json_values,
                "tools": json_values,
                "error": text,
            }
        ).filter(bool),
        json_values,
    ),
    max_size=4,
)
responses_bodies = _objects(
    required={
        "model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-0", "x"]),
        "input": text | input_items,
    },
    fields={
        "instructions": text,
        "tools": st.lists(
            _objects({"type": st.sampled_from(["function", "web_search", "mcp"]), "name": text}),
            max_size=2,
        ),
        "tool_choice": text,
        "reasoning": _objects({"effort": st.sampled_from(["low", "high"]), "summary": text}),
        "previous_response_id": st.sampled_from([ALICE_RESPONSE, BOB_RESPONSE, ""]) | text,
        "conversation": text | _objects({"id": text}),
        "include": st.lists(text, max_size=2),
        "prompt": _objects(
            {"id": text, "variables": st.dictionaries(text, text | json_values, max_size=3)}
        ),
        "max_output_tokens": any_int,
        "stream": st.booleans(),
        "store": st.booleans(),
        "background": st.booleans(),
        "text": json_values,
        "truncation": st.sampled_from(["auto", "disabled"]),
        "messages": st.nothing(),  # any JSON in the messy bodies alone
    },
)

# --- OpenAI's text completions and embeddings --------------------------------------------
token_ids = st.lists(any_int, min_size=1, max_size=4)
four_shapes = _weighted(
    text | st.lists(text, max_size=4) | token_ids | st.lists(token_ids, max_size=3), json_values
)
completions_bodies = _objects(
    required={
        "model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small", "x"]),
        "prompt": four_shapes,
    },
    fields={
        "suffix": text,
        "max_tokens": any_int,
        "n": any_int,
        "best_of": any_int,
        "echo": st.booleans(),
        "logprobs": any_int,
        "stream": st.booleans(),
        "stream_options": _objects({"include_usage": st.booleans()}),
        "messages": st.nothing(),  # any JSON in the messy bodies alone
    },
)
embeddings_bodies = _objects(
    required={
        "model": st.sampled_from(["text-embedding-3-small", "gpt-4o-mini", "titan-embed", "x"]),
        "input": four_shapes,
    },
    fields={
        "encoding_format": st.sampled_from(["float", "base64", "x"]),
        "dimensions": any_int,
        "user": text,
        "stream": st.booleans(),
    },
)

# --- Anthropic's Messages bodies (token count, Vertex, InvokeModel for Claude) -----------
anthropic_blocks = st.lists(
    _objects(
        {
            "type": st.sampled_from(
                ["text", "image", "tool_use", "tool_result", "document", "thinking"]
            ),
            "text": text,
            "id": text,
            "name": text,
            "input": json_values,
            "content": text | json_values,
            "source": json_values,
            "tool_use_id": text,
        }
    ),
    max_size=3,
)
anthropic_messages = st.lists(
    _weighted(
        _objects(
            {},
            required={
                "role": st.sampled_from(["user", "assistant"]),
                "content": text | anthropic_blocks,
            },
        ),
        json_values,
    ),
    min_size=1,
    max_size=3,
)
thinking = _objects(
    {"type": st.sampled_from(["enabled", "adaptive", "disabled"]), "budget_tokens": any_int}
)
messages_bodies = _objects(
    required={
        "model": st.sampled_from(
            ["claude-3-5-haiku-latest", "claude-sonnet-4-0", "haiku", "gpt-4o", "x"]
        ),
        "messages": anthropic_messages,
    },
    fields={
        "anthropic_version": st.sampled_from(["vertex-2023-10-16", "bedrock-2023-05-31"]),
        "service_tier": st.sampled_from(["auto", "standard_only", "priority"]),
        "anthropic_beta": st.lists(text, max_size=2),
        "system": text | anthropic_blocks,
        "max_tokens": any_int,
        "stream": st.booleans(),
        "thinking": thinking,
        "tools": st.lists(_objects({"name": text, "input_schema": json_values}), max_size=2),
        "tool_choice": json_values,
        "metadata": json_values,
    },
)

# --- Bedrock Runtime -----------------------------------------------------------------------
converse_blocks = st.lists(
    _objects(
        {
            "text": text,
            "toolUse": _objects({"toolUseId": text, "name": text, "input": json_values}),
            "toolResult": _objects(
                {"toolUseId": text, "content": st.lists(_objects({"text": text, "json": text}))}
            ),
            "reasoningContent": _objects({"reasoningText": _objects({"text": text})}),
            "image": json_values,
            "document": json_values,
            "cachePoint": json_values,
            "guardContent": json_values,
        }
    ),
    max_size=3,
)
converse_bodies = _objects(
    required={
        "messages": st.lists(
            _weighted(
                _objects(
                    {},
                    required={
                        "role": st.sampled_from(["user", "assistant"]),
                        "content": converse_blocks,
                    },
                ),
                json_values,
            ),
            min_size=1,
            max_size=3,
        ),
    },
    fields={
        "system": converse_blocks,
        "inferenceConfig": _objects(
            {"maxTokens": any_int, "temperature": json_values, "stopSequences": json_values}
        ),
        "toolConfig": _objects({"tools": json_values, "toolChoice": json_values}),
        "additionalModelRequestFields": _objects({"thinking": thinking, "top_k": any_int}),
        "promptVariables": st.dictionaries(text, _objects({"text": text}), max_size=2),
        "guardrailConfig": json_values,
        "performanceConfig": json_values,
        "requestMetadata": json_values,
    },
)
other_family_bodies = _objects(
    {
        "prompt": text,
        "max_gen_len": any_int,
        "max_tokens": any_int,
        "inputText": text,
        "textGenerationConfig": _objects({"maxTokenCount": any_int}),
        "texts": st.lists(text, max_size=2),
    }
)
invoke_bodies = messages_bodies | other_family_bodies


def _base64(body: dict[str, Any]) -> str:
    import base64

    return base64.b64encode(orjson.dumps(body)).decode("ascii")


count_tokens_bodies = _objects(
    {
        "input": _objects(
            {
                "converse": converse_bodies,
                "invokeModel": _objects(
                    {"body": invoke_bodies.map(_base64) | text | st.binary().map(repr)}
                ),
            }
        ),
    }
)


def _raw(bodies: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A route's bodies as bytes, with any JSON, raw bytes and pathological nesting."""
    return _weighted(
        bodies.map(orjson.dumps),
        json_values.map(orjson.dumps)
        | st.binary(max_size=80)
        | st.sampled_from(
            [
                b"",
                b"{",
                b"[" * 5000 + b"]" * 5000,
                b'{"a":' * 3000 + b"1" + b"}" * 3000,
                b'{"input": 1e999999}',
                b'{"input": 123456789012345678901234567890}',
                b'{"model": "gpt-4o", "model": "gpt-4o-mini", "input": "hi"}',
            ]
        ),
    )


# --- Model ids as a path names them --------------------------------------------------------
model_ids = (
    st.sampled_from(
        [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-haiku-20240307-v1%3A0",
            "haiku",
            "titan",
            "llama",
            "titan-embed",
            "cohere.embed-english-v3",
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aprompt%2FPROMPT%3A1",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "%",
            "%ZZ",
            "%00",
            "%2F%2E%2E",
            "..",
            "x" * 300,
            "a%" + "41" * 200,
            "\u00e9\u4e2d\U0001f600",
            "claude-sonnet-4-0@20250514",
            "claude-3-5-haiku-latest",
        ]
    )
    | st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"),
        min_size=1,
        max_size=40,
    ).map(lambda s: quote(s, safe=":@"))
    | st.text(alphabet="%abc:AZ09.-@", min_size=1, max_size=12)
)
BEDROCK_OPERATIONS = [
    "converse",
    "converse-stream",
    "invoke",
    "invoke-with-response-stream",
    "count-tokens",
    "converse-stream-bidirectional",
    "other",
]
VERTEX_BASE = "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/"


def _bedrock_body(operation: str) -> st.SearchStrategy[bytes]:
    if operation.startswith("invoke"):
        return _raw(invoke_bodies)
    if operation == "count-tokens":
        return _raw(count_tokens_bodies)
    return _raw(converse_bodies)


# (paths, body strategy, error shape) of each API.
ROUTES: dict[str, tuple[list[str], st.SearchStrategy[bytes], str]] = {
    "responses": (
        ["/v1/responses", "/openai/v1/responses", "/openai/responses"],
        _raw(responses_bodies),
        "openai",
    ),
    "responses compact": (
        ["/v1/responses/compact", "/openai/v1/responses/compact"],
        _raw(responses_bodies),
        "openai",
    ),
    "responses input_tokens": (
        ["/v1/responses/input_tokens", "/openai/responses/input_tokens"],
        _raw(responses_bodies),
        "openai",
    ),
    "completions": (
        ["/v1/completions", "/openai/v1/completions", "/openai/completions"],
        _raw(completions_bodies),
        "openai",
    ),
    "embeddings": (
        ["/v1/embeddings", "/openai/v1/embeddings", "/openai/embeddings"],
        _raw(embeddings_bodies),
        "openai",
    ),
    "anthropic count_tokens": (["/v1/messages/count_tokens"], _raw(messages_bodies), "anthropic"),
}


async def _answers(
    processor: Processor,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    method: str = "POST",
) -> list[ext.ProcessingResponse]:
    messages = [request_headers(path, method=method, headers=headers, end_of_stream=body is None)]
    if body is not None:
        messages.append(request_body(body))
    return await run_stream(processor, messages)


def _check_refusal(answer: ext.ProcessingResponse, shape: str) -> int:
    """A refusal must be a 4xx (or 503) with the route's error JSON; returns the status."""
    refusal = answer.immediate_response
    status = int(refusal.status.code)
    assert 400 <= status < 500 or status == 503, (status, refusal.body)
    error = orjson.loads(refusal.body)
    if shape == "anthropic":
        assert error["type"] == "error" and error["error"]["message"], error
        assert error["error"]["type"], error
    elif shape == "bedrock":
        assert isinstance(error["message"], str) and error["message"], error
    else:
        assert error["error"]["message"] and error["error"]["type"], error
    set_headers = {h.header.key: h.header.raw_value for h in refusal.headers.set_headers}
    content_types = [
        h.header.raw_value for h in refusal.headers.set_headers if h.header.key == "content-type"
    ]
    assert content_types == [b"application/json"]
    if shape == "bedrock":
        assert set_headers["x-amzn-errortype"].endswith(b"Exception")
    return status


def _check_served(answer: ext.ProcessingResponse) -> None:
    """Served: the request goes to a provider cluster, its body in that provider's API."""
    mutation = answer.request_body.response
    assert mutation.clear_route_cache
    clusters = [h.header.raw_value for h in mutation.header_mutation.set_headers]
    assert any(value.startswith(b"provider_") for value in clusters)


def _event(name: str) -> None:
    """Count what became of a drawn request (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(name)


def _check(answers: list[ext.ProcessingResponse], shape: str) -> None:
    assert answers, "no answer"
    last = answers[-1]
    if last.HasField("immediate_response"):
        status = _check_refusal(last, shape)
        _event(f"refused {status}: {orjson.loads(last.immediate_response.body)}"[:90])
    else:
        assert len(answers) == 2
        _check_served(last)
        _event("served")


@pytest.mark.parametrize("route", list(ROUTES))
@FUZZ
@given(data=st.data())
async def test_any_body_on_any_api_is_served_or_refused_cleanly(
    route: str, data: st.DataObject
) -> None:
    paths, bodies, shape = ROUTES[route]
    path = data.draw(st.sampled_from(paths))
    body = data.draw(bodies)
    _check(await _answers(PROCESSOR, path, AUTH, body), shape)


@FUZZ
@given(
    model=model_ids,
    operation=st.sampled_from(BEDROCK_OPERATIONS),
    prefix=st.sampled_from(["/model/", "/model//", "/model/x/model/"]),
    data=st.data(),
)
async def test_bedrock_runtime_paths_and_bodies(
    model: str, operation: str, prefix: str, data: st.DataObject
) -> None:
    body = data.draw(_bedrock_body(operation))
    # The AWS SDKs send the gateway key as a bearer token (AWS_BEARER_TOKEN_BEDROCK).
    answers = await _answers(PROCESSOR, f"{prefix}{model}/{operation}", AUTH, body)
    _check(answers, "bedrock")


VERTEX_OPERATIONS = [":rawPredict", ":streamRawPredict", ":predict", "", ":rawPredict:x"]


@FUZZ
@given(
    model=_weighted(
        st.sampled_from(["claude-sonnet-4-0@20250514", "claude-3-5-haiku-latest", "haiku"])
        | st.just("count-tokens"),
        model_ids,
    ),
    operation=_weighted(st.sampled_from(VERTEX_OPERATIONS[:2]), st.sampled_from(VERTEX_OPERATIONS)),
    base=_weighted(
        st.just(VERTEX_BASE),
        st.sampled_from(
            [
                VERTEX_BASE,
                "/vertex/projects/p/locations/global/publishers/anthropic/models/",
                "/vertex/projects/p/locations/global/publishers/google/models/",
                "/vertex/projects//locations/global/publishers/anthropic/models/",
                "/vertex/publishers/anthropic/models/",
                "/vertex/",
            ]
        ),
    ),
    body=_raw(messages_bodies),
)
async def test_anthropic_vertex_paths_and_bodies(
    model: str, operation: str, base: str, body: bytes
) -> None:
    answers = await _answers(PROCESSOR, f"{base}{model}{operation}", AUTH, body)
    _check(answers, "anthropic")


STORED_PREFIXES = ["/v1/responses/", "/openai/v1/responses/", "/openai/responses/"]
response_ids = (
    st.sampled_from([ALICE_RESPONSE, BOB_RESPONSE, "resp_unknown", "", "%2e%2e", "a" * 300])
    | model_ids
)


@FUZZ
@given(
    prefix=st.sampled_from(STORED_PREFIXES),
    response_id=response_ids,
    action=st.sampled_from(["", "/input_items", "/cancel", "/", "/x", "/input_items/x"]),
    query=st.sampled_from(["", "?limit=5", "?include[]=x&after=%ZZ", "?" + "a" * 500]),
    method=st.sampled_from(["GET", "DELETE", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    body=st.none() | _raw(responses_bodies),
)
async def test_stored_responses_any_path_and_method(
    prefix: str, response_id: str, action: str, query: str, method: str, body: bytes | None
) -> None:
    path = f"{prefix}{response_id}{action}{query}"
    answers = await _answers(PROCESSOR, path, AUTH, body, method=method)
    assert answers
    first = answers[0]
    if first.HasField("immediate_response"):
        _check_refusal(first, "openai")
        return
    # Passed to the provider that stores it: Alice's own response only.
    mutation = first.request_headers.response
    assert mutation.clear_route_cache
    set_headers = {h.header.key: h.header.raw_value for h in mutation.header_mutation.set_headers}
    assert set_headers[":path"].startswith(b"/v1/responses/" + ALICE_RESPONSE.encode())
    assert any(value.startswith(b"provider_") for value in set_headers.values())


@FEW
@given(
    prefix=st.sampled_from(["/v1/models", "/openai/v1/models", "/openai/models"]),
    suffix=st.sampled_from(["", "/", "?limit=3", "/gpt-4o", "/%ZZ", "?" + "x" * 300]),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT"]),
    body=st.none() | st.binary(max_size=40),
)
async def test_model_list_any_method_and_body(
    prefix: str, suffix: str, method: str, body: bytes | None
) -> None:
    answers = await _answers(PROCESSOR, prefix + suffix, AUTH, body, method=method)
    first = answers[0]
    # The list and each of its models (`<list>/{model}`) are the gateway's to answer.
    assert first.HasField("immediate_response")
    status = int(first.immediate_response.status.code)
    if status == 200:
        answered = orjson.loads(first.immediate_response.body)
        assert answered["object"] == ("model" if suffix == "/gpt-4o" else "list")
    else:
        _check_refusal(first, "openai")


# --- The quota's reservation ---------------------------------------------------------------
QUOTA_ROUTES: dict[str, tuple[str, st.SearchStrategy[bytes], str]] = {
    "responses": ("/v1/responses", _raw(responses_bodies), "openai"),
    "compact": ("/v1/responses/compact", _raw(responses_bodies), "openai"),
    "completions": ("/v1/completions", _raw(completions_bodies), "openai"),
    "embeddings": ("/v1/embeddings", _raw(embeddings_bodies), "openai"),
    "converse": (
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        _raw(converse_bodies),
        "bedrock",
    ),
    "converse, another model": ("/model/llama/converse", _raw(converse_bodies), "bedrock"),
    "invoke claude": (
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
        _raw(invoke_bodies),
        "bedrock",
    ),
    "invoke llama": ("/model/llama/invoke", _raw(invoke_bodies), "bedrock"),
    "invoke titan": ("/model/titan/invoke-with-response-stream", _raw(invoke_bodies), "bedrock"),
    "vertex": (VERTEX_BASE + "claude-sonnet-4-0:rawPredict", _raw(messages_bodies), "anthropic"),
}


@pytest.mark.parametrize("route", list(QUOTA_ROUTES))
@FEW
@given(body=st.data(), left=st.sampled_from([10**9, 5000, 1100, 20, 0]))
async def test_reservations_are_never_negative(route: str, body: st.DataObject, left: int) -> None:
    path, bodies, shape = QUOTA_ROUTES[route]
    QUOTA_STORE.costs.clear()
    QUOTA_STORE.left = left
    answers = await _answers(QUOTA_PROCESSOR, path, AUTH, body.draw(bodies))
    _check(answers, shape)
    assert all(isinstance(cost, int) and cost >= 0 for cost in QUOTA_STORE.costs), QUOTA_STORE.costs


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            {
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "additionalModelRequestFields": {
                    "thinking": {"type": "enabled", "budget_tokens": -(10**6)}
                },
            },
        ),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
            {
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "additionalModelRequestFields": {
                    "thinking": {"type": "enabled", "budget_tokens": -(2**62)}
                },
            },
        ),
    ],
)
async def test_a_negative_thinking_budget_reserves_no_negative_tokens(
    path: str, body: dict[str, Any]
) -> None:
    """Converse reserves ``quotas.default_max_tokens`` plus Claude's thinking budget when
    ``maxTokens`` is unset: a negative budget (which Bedrock refuses, after the
    reservation) must not make the reservation negative, which would take tokens off the
    subject's counters until the refusal settles it, room for other requests meanwhile."""
    QUOTA_STORE.costs.clear()
    QUOTA_STORE.left = 10**9
    answers = await _answers(QUOTA_PROCESSOR, path, AUTH, orjson.dumps(body))
    assert QUOTA_STORE.costs and all(cost >= 0 for cost in QUOTA_STORE.costs), QUOTA_STORE.costs
    last = answers[-1]
    if last.HasField("immediate_response"):
        _check_refusal(last, "bedrock")


def test_the_routes_fuzzed_are_the_config_s() -> None:
    """Every API this file fuzzes is one the config serves."""
    config = parse_config(CONFIG, "gateway.yaml", {})
    apis = {route.api for route in config.routes}
    for api in (
        RouteApi.OPENAI_RESPONSES,
        RouteApi.OPENAI_RESPONSES_COMPACT,
        RouteApi.OPENAI_RESPONSES_INPUT_TOKENS,
        RouteApi.OPENAI_RESPONSES_STORED,
        RouteApi.OPENAI_COMPLETIONS,
        RouteApi.OPENAI_EMBEDDINGS,
        RouteApi.OPENAI_MODELS,
        RouteApi.ANTHROPIC_COUNT_TOKENS,
        RouteApi.ANTHROPIC_VERTEX,
        RouteApi.BEDROCK_CONVERSE,
    ):
        assert api in apis, api


HI = [{"role": "user", "content": "hi"}]
# Bodies the fuzzing above found failing the gateway (a 500), each on its route.
FOUND: dict[str, tuple[str, dict[str, Any], str]] = {
    # converse_api.check_converse_body: a role of a list or an object looked up in a set.
    "converse, a list for a role": (
        "/model/haiku/converse",
        {"messages": [{"role": [], "content": []}]},
        "bedrock",
    ),
    "converse-stream, an object for a role": (
        "/model/llama/converse-stream",
        {"messages": [{"role": {"a": 1}, "content": [{"text": "hi"}]}]},
        "bedrock",
    ),
    "count-tokens, a list for a role": (
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/count-tokens",
        {"input": {"converse": {"messages": [{"role": ["user"], "content": []}]}}},
        "bedrock",
    ),
    # translators.anthropic_bedrock.translate_request: a service_tier of a list or an
    # object looked up in a set, for Claude on Bedrock.
    "vertex to bedrock, an object for a service_tier": (
        VERTEX_BASE + "haiku:rawPredict",
        {
            "anthropic_version": "vertex-2023-10-16",
            "messages": HI,
            "max_tokens": 5,
            "service_tier": {},
        },
        "anthropic",
    ),
    "vertex stream to bedrock, a list for a service_tier": (
        VERTEX_BASE + "haiku:streamRawPredict",
        {"messages": HI, "max_tokens": 5, "stream": True, "service_tier": ["auto"]},
        "anthropic",
    ),
    "invoke, a list for a service_tier": (
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
        {
            "anthropic_version": "bedrock-2023-05-31",
            "messages": HI,
            "max_tokens": 5,
            "service_tier": [],
        },
        "bedrock",
    ),
}


@pytest.mark.parametrize("case", list(FOUND))
async def test_bodies_found_failing_are_served_or_refused_cleanly(case: str) -> None:
    path, body, shape = FOUND[case]
    _check(await _answers(PROCESSOR, path, AUTH, orjson.dumps(body)), shape)
