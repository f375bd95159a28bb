"""Review s36: OpenAI's Responses API through the gateway, as a user of the official
client meets it: streams cut or failed at each point, incomplete and failed answers,
background mode, reasoning tokens, built-in tool calls, token counts, and the owner
checks of stored responses (another key must not read or continue them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_responses_tokens
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import ResponseOwner, ResponseOwners
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_guard_flow import immediate
from tests.unit.test_response_owners import ALICE, BOB, CREATED, gateway
from tests.unit.test_responses_api import TEXT_JSON
from tests.unit.test_responses_server_tools import (
    AUTH,
    BODY,
    MODEL,
    RESPONSES,
    USAGE,
    call_events,
    created,
    delta,
    event,
    message,
    response,
    terminal,
    web_search,
)
from tests.unit.test_stored_responses import guarding_answers

UPSTREAM = {"x-envoy-upstream-service-time": "12"}


@pytest.fixture
async def owners(quota_store: QuotaStore, valkey: EmbeddedValkey) -> AsyncIterator[ResponseOwners]:
    client = connect(valkey.url, 2.0)
    yield ResponseOwners(client, "test:", 30)
    await client.aclose()


def prompt_estimate(body: bytes = BODY) -> int:
    return estimate_responses_tokens(orjson.loads(body))


def tokens_of(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


async def whole(
    processor: Processor, body: bytes, answer: bytes, status: int = 200, path: str = RESPONSES
) -> list[Any]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(body),
            response_headers(status, UPSTREAM),
            response_body(answer),
        ],
    )


# --- streams cut or failed ----------------------------------------------------------------


async def test_a_stream_cut_right_after_response_created_is_charged_the_prompt_alone(
    processor: Processor, services: Services
) -> None:
    await play_sse(processor, RESPONSES, AUTH, BODY, [created()], ended=False)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt_estimate(), 0)
    assert line["server_tool_requests"] in ({}, None)


async def test_a_stream_cut_mid_reasoning_summary_counts_the_summary_deltas(
    processor: Processor, services: Services
) -> None:
    summary = "Thinking about the act and what changed in it this week."
    reasoning = event(
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": summary,
            "obfuscation": "abcdefghij",
        }
    )
    await play_sse(processor, RESPONSES, AUTH, BODY, [created(), reasoning], ended=False)
    line = only_line(services)
    assert line["completion_tokens"] == tokens_of(summary)


async def test_an_incomplete_whole_answer_is_billed_and_says_why(
    processor: Processor, services: Services
) -> None:
    answer = {
        **response("incomplete", [message("Once upon")], USAGE),
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    body = orjson.dumps({"model": MODEL, "input": "Tell me a story", "max_output_tokens": 16})
    await whole(processor, body, orjson.dumps(answer))
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 9)
    assert line["usage_reported"] is True
    assert line["finish_reasons"] == ["incomplete:max_output_tokens"]


async def test_reasoning_tokens_are_billed_inside_output_tokens_once(
    processor: Processor, services: Services
) -> None:
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 900,
        "output_tokens_details": {"reasoning_tokens": 850},
        "total_tokens": 940,
    }
    chunks = [created(), delta(1, "Yes."), terminal("response.completed", [message()], usage)]
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        40,
        900,
        940,
    )


async def test_an_error_event_then_response_failed_with_usage_bills_the_providers_count(
    processor: Processor, services: Services
) -> None:
    error = event({"type": "error", "code": "server_error", "message": "Boom.", "param": None})
    failed = terminal("response.failed", [web_search(1)], {"input_tokens": 70, "output_tokens": 5})
    chunks = [created(), call_events(0, web_search(1)), delta(1, "abcd"), error, failed]
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (70, 5)
    assert line["server_tool_requests"] == {"web_search": 1}


# --- what is refused before the quota ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"background": True}, {"background": True, "stream": True}, {"background": "true"}],
)
async def test_background_mode_is_refused_before_the_provider_and_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any]
) -> None:
    body = orjson.dumps({"model": MODEL, "input": "Hi", **fields})
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(body)]
    )
    status, error = immediate(answers[-1])
    assert status == 400 and error["error"]["param"] == "background"
    line = only_line(services)
    assert line["total_tokens"] == 0 and line["quota_decision"] is None


async def test_a_claude_model_on_the_responses_route_is_refused(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": "claude-sonnet-4-5", "input": "Hi"})
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(body)]
    )
    status, error = immediate(answers[-1])
    assert status in (400, 404), error
    assert only_line(services)["total_tokens"] == 0


async def test_a_token_count_is_never_billed(processor: Processor, services: Services) -> None:
    body = orjson.dumps({"model": MODEL, "input": "Count me"})
    answer = b'{"object":"response.input_tokens","input_tokens":41}'
    await whole(processor, body, answer, path="/v1/responses/input_tokens")
    line = only_line(services)
    assert line["total_tokens"] == 0 and not line["usage_estimated"]
    assert line["cost_usd"] in (0, 0.0, None)


# --- stored responses belong to their creator ----------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/responses/{CREATED}",
        f"/v1/responses/{CREATED.upper()}",
        f"/v1/responses/{CREATED}/input_items",
        f"/v1/responses/{CREATED}%2Finput_items",
        f"/v1/responses/{CREATED}/",
        f"/v1/responses//{CREATED}",
        f"/openai/responses/{CREATED}/input_items?limit=100",
        f"/v1/responses/x/../{CREATED}",
    ],
)
async def test_another_key_cannot_read_a_stored_response_by_any_spelling_of_its_path(
    owners: ResponseOwners, path: str
) -> None:
    await owners.record(CREATED, ResponseOwner("user:alice", "mock", 45))
    processor, services = gateway(owners)
    answers = await run_stream(
        processor, [request_headers(path, method="GET", headers=BOB, end_of_stream=True)]
    )
    status, _ = immediate(answers[0])
    assert status in (404, 405)
    assert only_line(services)["provider"] is None


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_another_key_cannot_cancel_or_delete_a_stored_response(
    owners: ResponseOwners, method: str
) -> None:
    await owners.record(CREATED, ResponseOwner("user:alice", "mock", 45))
    processor, _ = gateway(owners)
    path = f"/v1/responses/{CREATED}" + ("/cancel" if method == "POST" else "")
    answers = await run_stream(
        processor, [request_headers(path, method=method, headers=BOB, end_of_stream=True)]
    )
    status, _ = immediate(answers[0])
    assert status == 404
    assert await owners.find(CREATED) is not None


@pytest.mark.parametrize("path", ["/v1/responses/compact", "/v1/responses/input_tokens"])
async def test_another_key_cannot_compact_or_count_a_stored_response(
    owners: ResponseOwners, path: str
) -> None:
    await owners.record(CREATED, ResponseOwner("user:alice", "mock", 45))
    processor, _ = gateway(owners)
    body = orjson.dumps({"model": MODEL, "previous_response_id": CREATED})
    answers = await run_stream(processor, [request_headers(path, headers=BOB), request_body(body)])
    status, error = immediate(answers[-1])
    assert (status, error["error"]["code"]) == (400, "previous_response_not_found")


async def test_a_stream_cut_after_response_created_is_recorded_for_its_creator_alone(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    first = {**response("in_progress", [], None), "id": CREATED}
    stream = event({"type": "response.created", "response": first})
    await play_sse(processor, RESPONSES, ALICE, BODY, [stream], ended=False)
    await owners.close()
    found = await owners.find(CREATED)
    assert found is not None and found.owner == "user:alice"


# --- a continuation of a guarded answer carries that answer in its input items ------------

CONTINUED = "resp_0123456789abcdef0123456789abcdef0123456789abcdef"


async def test_a_guarded_answer_is_not_read_back_through_a_continuations_input_items(
    owners: ResponseOwners,
) -> None:
    """Alice's answer came masked through /v1/responses, whose guards mask answers; the
    provider stores it unmasked, so it is not served by its id (its input items included).
    Continued from /openai/v1/responses (same provider, no answer guards), the new
    response's input items hold that earlier answer as the provider stored it: reading
    them must be refused as reading the first one is."""
    processor, _ = guarding_answers(owners)
    await run_stream(
        processor,
        [
            request_headers("/v1/responses", headers=ALICE),
            request_body(orjson.dumps({"model": MODEL, "input": "A story?"})),
            response_headers(200, UPSTREAM),
            response_body(TEXT_JSON),
        ],
    )
    found = await owners.find(CREATED)
    assert found is not None and found.guarded
    continuation = orjson.dumps(
        {"model": MODEL, "input": "And then?", "previous_response_id": CREATED}
    )
    processor, _ = guarding_answers(owners)
    answers = await run_stream(
        processor,
        [
            request_headers("/openai/v1/responses", headers=ALICE),
            request_body(continuation),
            response_headers(200, UPSTREAM),
            response_body(TEXT_JSON.replace(CREATED.encode(), CONTINUED.encode())),
        ],
    )
    assert answers[1].WhichOneof("response") == "request_body"  # continued, as documented
    processor, _ = guarding_answers(owners)
    path = f"/v1/responses/{CONTINUED}/input_items"
    answers = await run_stream(
        processor, [request_headers(path, method="GET", headers=ALICE, end_of_stream=True)]
    )
    assert answers[0].WhichOneof("response") == "immediate_response", (
        "the guarded answer went to the provider to be read back unmasked"
    )
    status, body = immediate(answers[0])
    assert (status, body["error"]["code"]) == (403, "stored_response_guarded")


async def test_a_response_recorded_after_a_failed_stream_keeps_its_tokens(
    owners: ResponseOwners,
) -> None:
    """OpenAI stores a failed response too; a continuation of it reserves the recorded
    tokens as its stored context (docs/quotas.md), so they must be the 75 billed, not 0."""
    processor, services = gateway(owners)
    first = {**response("in_progress", [], None), "id": CREATED}
    failed = {
        **response("failed", [], {"input_tokens": 70, "output_tokens": 5}),
        "id": CREATED,
        "error": {"code": "server_error", "message": "Boom."},
    }
    chunks = [
        event({"type": "response.created", "response": first}),
        delta(0, "abcd"),
        event({"type": "response.failed", "response": failed}),
    ]
    await play_sse(processor, RESPONSES, ALICE, BODY, chunks)
    await owners.close()
    assert only_line(services)["total_tokens"] == 75
    assert await owners.find(CREATED) == ResponseOwner("user:alice", "mock", 75)
