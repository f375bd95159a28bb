"""A third review of the accounting of answers that did not complete normally, with the real
Envoy, Valkey and the mock provider, for every client API the gateway serves.

Each case is one request of an API key of its own, broken one way (the client hangs up
mid-stream, the provider resets the connection, sends its error event, or ends without its
usage report), and reads what an operator reconciles: exactly one log line, holding the
provider's count or an estimate marked ``usage_estimated``; ``tokens_consumed_total`` and
the usage rollup grown by the same tokens; the key's quota counter settled at them (no
reservation left behind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from tests.integration.conftest import (
    GatewayLog,
    metric,
    scrape,
    usage_rows,
    wait_for,
)
from tests.integration.mock_vertex import GEMINI_ON_VERTEX, stack_serving, vertex_config

USER = [{"role": "user", "content": "tell me a long story about the sea"}]
GEMINI_CONTENTS = [{"role": "user", "parts": [{"text": "tell me a long story about the sea"}]}]
CLAUDE = "claude-3-5-haiku-latest"
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
# Streams long enough to hang up in, quick enough to finish.
LONG = "chunks=30;interval=0.02"


@dataclass(frozen=True)
class Call:
    """One client API call: where it goes, how its key is sent, what it asks."""

    path: str
    body: dict[str, Any]
    key_header: str = "authorization"
    headers: dict[str, str] = field(default_factory=dict)


def openai_call(path: str, **body: Any) -> Call:
    return Call(path, body)


def anthropic_call(model: str) -> Call:
    body = {"model": model, "max_tokens": 500, "stream": True, "messages": USER}
    return Call("/v1/messages", body, key_header="x-api-key")


CALLS: dict[str, Call] = {
    "chat": openai_call("/v1/chat/completions", model="gpt-4o-mini", stream=True, messages=USER),
    "chat to anthropic": openai_call(
        "/anthropic/chat/completions", model=CLAUDE, stream=True, messages=USER
    ),
    "chat to bedrock": openai_call(
        "/bedrock/haiku/chat/completions", model="haiku", stream=True, messages=USER
    ),
    "responses": openai_call("/v1/responses", model="gpt-4o-mini", stream=True, input=USER),
    "completions": openai_call(
        "/v1/completions", model="gpt-4o-mini", stream=True, prompt="tell me a long story"
    ),
    "messages": anthropic_call(CLAUDE),
    "messages to bedrock": anthropic_call(BEDROCK_CLAUDE),
    "converse stream": Call(
        f"/model/{BEDROCK_CLAUDE}/converse-stream",
        {"messages": [{"role": "user", "content": [{"text": "tell me a long story"}]}]},
    ),
    "invoke stream": Call(
        f"/model/{BEDROCK_CLAUDE}/invoke-with-response-stream",
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 500, "messages": USER},
    ),
    "invoke stream llama": Call(
        "/model/meta.llama3-8b-instruct-v1:0/invoke-with-response-stream",
        {"prompt": "tell me a long story about the sea", "max_gen_len": 500},
    ),
    "gemini stream": Call(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": GEMINI_CONTENTS},
        key_header="x-goog-api-key",
    ),
}
# How each case breaks the answer: a fault for the mock, and whether the client hangs up
# after the first bytes of the body.
BREAKS: dict[str, tuple[str, bool]] = {
    "client hangs up": (LONG, True),
    "provider resets": (f"{LONG};reset_after=3", False),
    "provider error event": (f"{LONG};error_after=3", False),
}
# The APIs whose mock can leave its usage report out of a stream that ends cleanly.
NO_USAGE = ("chat", "responses", "completions", "invoke stream llama", "gemini stream")
# Of those, the ones whose model counts its tokens in its own chunks, which are the bill.
COUNTS_IN_BODY = ("invoke stream llama",)
CASES = [(api, kind) for api in CALLS for kind in BREAKS] + [
    (api, "no usage report") for api in NO_USAGE
]


def key_id(api: str, kind: str) -> str:
    return f"r3-{api}-{kind}".replace(" ", "-")


def review_config() -> dict[str, Any]:
    """The default config, Gemini on the mock's Vertex AI, a key per case, a token budget
    for every key."""
    raw = vertex_config({"gemini-2.5-flash": GEMINI_ON_VERTEX})
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
    )
    raw["auth"]["api_keys"] += [
        {"id": key_id(api, kind), "key": f"{key_id(api, kind)}-secret"} for api, kind in CASES
    ] + [{"id": "r3-gemini-json", "key": "r3-gemini-json-secret"}]
    raw["quotas"] = {"rules": [{"name": "r3-day", "subject": "api_key", "tokens_per_day": 10**9}]}
    return raw


stack = stack_serving(review_config, "accounting-review3")


def send(stack: LocalStack, call: Call, key: str, fault: str, hang_up: bool) -> str:
    """Send ``call`` with ``key``; with ``hang_up``, close the connection once the body's
    first bytes came. The request id."""
    secret = f"{key}-secret"
    value = f"Bearer {secret}" if call.key_header == "authorization" else secret
    headers = {
        call.key_header: value,
        "content-type": "application/json",
        "x-mock-fault": fault,
        **call.headers,
    }
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream(
            "POST", f"{stack.base_url}{call.path}", content=orjson.dumps(call.body), headers=headers
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-request-id"]
        try:
            for _ in response.iter_bytes():
                if hang_up:
                    break  # closing the stream closes the connection
        except httpx.RemoteProtocolError:
            pass  # the provider's reset, as the client sees it
    return request_id


def tokens_used(stack: LocalStack, key: str) -> int:
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as quotas:
        state = quotas.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def assert_ledgers_agree(stack: LocalStack, key: str, request_id: str) -> dict[str, Any]:
    """One log line for the request; the metric, the rollup and the quota hold its tokens."""
    log = GatewayLog(stack.gateway_log)
    [line] = log.for_request(request_id)
    tokens = (line["prompt_tokens"], line["completion_tokens"])
    assert line["total_tokens"] == sum(tokens)
    if sum(tokens):
        # Counted by the provider, or estimated and marked so.
        assert line["usage_reported"] or line["usage_estimated"], line

    def metered() -> tuple[int, int]:
        samples = scrape(stack.metrics_url)
        return (
            int(metric(samples, "tokens_consumed_total", api_key_id=key, token_type="prompt")),
            int(metric(samples, "tokens_consumed_total", api_key_id=key, token_type="completion")),
        )

    assert wait_for(lambda: metered() == tokens, 10), (metered(), line)

    def rolled() -> tuple[int, int]:
        row = usage_rows(stack, "api_key").get(key)
        return (row["prompt_tokens"], row["completion_tokens"]) if row else (0, 0)

    assert wait_for(lambda: rolled() == tokens, 15), (rolled(), line)
    # The reservation was settled at the line's tokens, not left reserved, not released.
    assert wait_for(lambda: tokens_used(stack, key) == sum(tokens), 10), (
        tokens_used(stack, key),
        line,
    )
    assert [each for each in log.lines() if each.get("request_id") == request_id] == [line]
    return line


@pytest.mark.parametrize(("api", "kind"), CASES, ids=[f"{a}: {k}" for a, k in CASES])
def test_a_broken_answer_is_in_every_ledger_alike(stack: LocalStack, api: str, kind: str) -> None:
    if kind == "no usage report":
        fault, hang_up = "no_usage=1", False
    else:
        fault, hang_up = BREAKS[kind]
    key = key_id(api, kind)
    request_id = send(stack, CALLS[api], key, fault, hang_up)
    line = assert_ledgers_agree(stack, key, request_id)
    # The prompt reached the provider and an answer started: something is billed.
    assert line["prompt_tokens"] > 0, line
    if kind == "no usage report" and api in COUNTS_IN_BODY:
        # Without Bedrock's metrics, Llama's chunks counted the prompt and the output.
        assert line["usage_reported"] is True and line["usage_estimated"] is False, line
    elif kind == "no usage report":
        assert line["usage_estimated"] is True and line["completion_tokens"] > 0, line


def test_a_gemini_answer_without_its_count_is_charged_its_text(stack: LocalStack) -> None:
    """generateContent answered whole without usageMetadata: charged the prompt estimate
    and its text, marked estimated, in every ledger; the quota had kept the whole
    reservation while the line, the metric and the rollup said 0."""
    call = Call(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": GEMINI_CONTENTS},
        key_header="x-goog-api-key",
    )
    request_id = send(stack, call, "r3-gemini-json", "no_usage=1", False)
    line = assert_ledgers_agree(stack, "r3-gemini-json", request_id)
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
