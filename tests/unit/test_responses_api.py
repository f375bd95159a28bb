"""OpenAI's Responses API (POST /v1/responses) through the processor: the body checks, the
provider's request, the usage read from recorded answers and streams, the quota, the
guards, and what the log line, the span and the metrics record.

The recorded answers (tests/fixtures/openai_responses) are in OpenAI's wire format: a
whole response, and streams of ``event:`` / ``data:`` pairs ending with one terminal
event (``response.completed``, ``.incomplete``, ``.failed``) and no ``[DONE]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf import struct_pb2

from extproc import headers
from extproc.config import GatewayConfig, load_config
from extproc.config.loader import parse_config
from extproc.context import Identity
from extproc.headers import BODY_HINTS_NAMESPACE, METADATA_NAMESPACE
from extproc.processor import ATTRIBUTES_KEY, Processor
from extproc.quota.estimate import (
    CHARS_PER_TOKEN,
    PER_MESSAGE_OVERHEAD,
    RESPONSES_ALLOWANCE_FIELDS,
    completion_allowance,
    estimate_responses_tokens,
)
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.model_list import usable_names
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    sample,
)
from extproc.translators import sse
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped, used_tokens
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body
from tests.unit.test_stream_cut_inside_an_event import openai_client

RESPONSES = "/v1/responses"
ROUTE = "openai-responses"
AUTH = {"authorization": "Bearer team1-key"}
RECORDED = Path("tests/fixtures/openai_responses")
TEXT_JSON = (RECORDED / "text.json").read_bytes()
FUNCTION_CALL_JSON = (RECORDED / "function_call.json").read_bytes()
TEXT_SSE = (RECORDED / "text.sse").read_bytes()
INCOMPLETE_SSE = (RECORDED / "incomplete.sse").read_bytes()
ERROR_SSE = (RECORDED / "error_mid_stream.sse").read_bytes()
# The default config's text, for tests that add a section to it.
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")


def responses(**fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "input": "Tell me a one-sentence story.", **fields}
    return orjson.dumps(body)


def error_of(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    status, body = immediate(answer)
    return status, body["error"]


def split_events(stream: bytes) -> list[bytes]:
    """A recorded stream as its events, each ending with its blank line."""
    return [event + b"\n\n" for event in stream.split(b"\n\n") if event]


def deltas_text(stream: bytes) -> str:
    texts = []
    for event in split_events(stream):
        data = orjson.loads(event.split(b"data: ", 1)[1])
        if data["type"] == "response.output_text.delta":
            texts.append(data["delta"])
    return "".join(texts)


async def whole(processor: Processor, body: bytes, answer: bytes) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(answer),
        ],
    )


# --- the request -----------------------------------------------------------------------------


async def test_a_responses_call_goes_to_the_providers_responses_endpoint(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(responses())]
    )
    mutated = {
        h.header.key: h.header.raw_value.decode()
        for h in answers[1].request_body.response.header_mutation.set_headers
    }
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: the client's path is the provider's, body untouched.
    assert ":path" not in mutated
    assert not answers[1].request_body.response.HasField("body_mutation")


async def test_the_model_is_sent_under_the_providers_name(services: Services) -> None:
    config = load_config("config/gateway.yaml", environ={})
    models = tuple(
        m.model_copy(update={"upstream_model": "gpt-4o-mini-2024-07-18"})
        if m.name == "gpt-4o-mini"
        else m
        for m in config.models
    )
    processor = processor_for(config.model_copy(update={"models": models}), services)
    answers = await run_stream(
        processor,
        [request_headers(RESPONSES, headers=AUTH), request_body(responses(stream=True))],
    )
    sent = upstream_body(answers[1])
    # Nothing else changes: a Responses stream always reports usage, nothing is asked.
    assert sent == {
        "model": "gpt-4o-mini-2024-07-18",
        "input": "Tell me a one-sentence story.",
        "stream": True,
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["just a string"]}, "input[0]"),
        ({"input": 42}, "input"),
        ({"instructions": ["a", "list"]}, "instructions"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": "100"}, "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"background": True}, "background"),
        ({"background": "yes"}, "background"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ],
)
async def test_a_body_the_gateway_cannot_count_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(responses(**fields))]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


async def test_a_background_request_is_refused_saying_why(processor: Processor) -> None:
    answers = await run_stream(
        processor,
        [request_headers(RESPONSES, headers=AUTH), request_body(responses(background=True))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_parameter"
    assert "cannot be billed" in error["message"]


async def test_too_many_input_items_are_refused_as_too_many_messages_are() -> None:
    config = parse_config(
        DEFAULT_CONFIG.replace("\nlimits:\n", "\nlimits:\n  max_messages: 2\n", 1), "t", {}
    )
    items = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
    answers = await run_stream(
        processor_for(config),
        [request_headers(RESPONSES, headers=AUTH), request_body(responses(input=items))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["param"] == "input" and "limit is 2" in error["message"]


@pytest.mark.parametrize(
    ("model", "where"),
    [
        ("text-embedding-3-small", "/v1/embeddings"),  # kind: embeddings
        ("claude-3-5-haiku-latest", "anthropic"),  # a provider without the API
        ("titan", "bedrock"),
    ],
)
async def test_a_model_the_responses_api_cannot_reach_is_refused_before_the_quota(
    processor: Processor, services: Services, model: str, where: str
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(RESPONSES, headers=AUTH), request_body(responses(model=model))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert where in error["message"]
    assert only_line(services)["quota_decision"] is None


# --- whole answers ----------------------------------------------------------------------------


async def test_a_whole_answer_is_billed_by_its_input_and_output_tokens(
    processor: Processor, services: Services
) -> None:
    answers = await whole(processor, responses(), TEXT_JSON)
    # Passed through unchanged.
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["route"] == ROUTE and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (36, 87, 123)
    assert line["cached_tokens"] == 12 and line["usage_reported"] is True
    assert line["response_model"] == "gpt-4o-mini-2024-07-18"
    assert line["service_tier"] == "default"
    assert line["finish_reasons"] == ["completed"]
    # 24 uncached and 12 cached input tokens, 87 output tokens at gpt-4o-mini's prices.
    assert line["cost_usd"] == pytest.approx((24 * 0.15 + 12 * 0.075 + 87 * 0.60) / 1e6)
    assert sample(services, "tokens_consumed_total", model="gpt-4o-mini") == 123
    # OpenTelemetry's conventions call the Responses API a chat.
    assert sample(services, "gen_ai_client_token_usage_count", gen_ai_operation_name="chat") == 2
    span = answers[-1].dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert span["operation"].string_value == "chat"
    assert span["total_tokens"].number_value == 123


async def test_a_function_call_answer_is_billed_the_same_way(
    processor: Processor, services: Services
) -> None:
    await whole(processor, responses(), FUNCTION_CALL_JSON)
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (291, 23)
    assert line["finish_reasons"] == ["completed"]


async def test_a_provider_error_passes_through_and_costs_nothing(
    processor: Processor, services: Services
) -> None:
    error = orjson.dumps(
        {"error": {"message": "No such model", "type": "invalid_request_error", "code": None}}
    )
    answers = await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=AUTH),
            request_body(responses()),
            response_headers(404),
            response_body(error),
        ],
    )
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["http_status_code"] == 404 and line["total_tokens"] == 0


# --- streams ------------------------------------------------------------------------------------


async def test_a_stream_is_billed_by_its_terminal_events_usage(
    processor: Processor, services: Services
) -> None:
    # Chunks fall anywhere: here the terminal event is cut in three.
    cut = TEXT_SSE.index(b"event: response.completed")
    chunks = [TEXT_SSE[:cut], TEXT_SSE[cut : cut + 40], TEXT_SSE[cut + 40 : -300], TEXT_SSE[-300:]]
    answers = await play_sse(processor, RESPONSES, AUTH, responses(stream=True), chunks)
    # Every byte went as it came, in whole events (an event's start waits for its end),
    # and no [DONE] added.
    assert client_body(chunks, answers[3:]) == TEXT_SSE
    assert not answers[3].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (37, 8, 45)
    assert line["usage_reported"] is True and not line["usage_estimated"]
    assert line["outcome"] == "completed" and line["finish_reasons"] == ["completed"]
    # The tier that served it, as the terminal response names it.
    assert line["service_tier"] == "flex"
    assert line["response_model"] == "gpt-4o-mini-2024-07-18"


async def test_a_client_that_hangs_up_after_the_terminal_event_was_answered_whole(
    processor: Processor, services: Services
) -> None:
    # Envoy sends no empty end of stream: the terminal event is where the answer ended.
    await play_sse(
        processor, RESPONSES, AUTH, responses(stream=True), split_events(TEXT_SSE), ended=False
    )
    line = only_line(services)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert line["total_tokens"] == 45


async def test_an_incomplete_stream_is_billed_and_says_why_it_stopped(
    processor: Processor, services: Services
) -> None:
    await play_sse(
        processor,
        RESPONSES,
        AUTH,
        responses(stream=True, max_output_tokens=16),
        split_events(INCOMPLETE_SSE),
        ended=False,
    )
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (37, 16)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert line["finish_reasons"] == ["incomplete:max_output_tokens"]


async def test_a_stream_cut_before_its_terminal_event_is_charged_the_estimate(
    processor: Processor, services: Services
) -> None:
    events = split_events(TEXT_SSE)
    deltas = [e for e in events if b"response.output_text.delta" in e]
    body = responses(stream=True)
    # The client hung up after the last delta, before any .done event or the usage.
    upto = events.index(deltas[-1]) + 1
    await play_sse(processor, RESPONSES, AUTH, body, events[:upto], ended=False)
    line = only_line(services)
    streamed = deltas_text(TEXT_SSE)
    prompt = estimate_responses_tokens(orjson.loads(body))
    completion = -(-len(streamed) // CHARS_PER_TOKEN)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, completion)
    # response.created echoed the tier asked for, "auto": no tier that served it.
    assert line["service_tier"] is None


async def test_the_deltas_are_counted_once_not_again_in_the_done_events(
    processor: Processor, services: Services
) -> None:
    """Cut after the .done events (which repeat the whole text) but before the usage: the
    completion is the deltas' text once."""
    events = split_events(TEXT_SSE)
    await play_sse(processor, RESPONSES, AUTH, responses(stream=True), events[:-1], ended=False)
    line = only_line(services)
    assert line["completion_tokens"] == -(-len(deltas_text(TEXT_SSE)) // CHARS_PER_TOKEN)


async def test_a_provider_error_mid_stream_is_the_requests_error_and_is_charged(
    processor: Processor, services: Services
) -> None:
    body = responses(stream=True)
    answers = await play_sse(processor, RESPONSES, AUTH, body, split_events(ERROR_SSE))
    # The client reads the provider's own error events: nothing rewritten.
    assert all(not a.response_body.response.HasField("body_mutation") for a in answers[3:])
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "server_error"
    assert line["error_message"].startswith("The server had an error processing your request")
    assert line["usage_estimated"] is True
    prompt = estimate_responses_tokens(orjson.loads(body))
    completion = -(-len(deltas_text(ERROR_SSE)) // CHARS_PER_TOKEN)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, completion)
    assert line["finish_reasons"] == ["failed"]
    assert (
        sample(
            services, "aigw_upstream_errors_total", model="gpt-4o-mini", status_code="stream_error"
        )
        == 1
    )


async def test_a_failed_response_that_reports_usage_is_charged_that_usage(
    processor: Processor, services: Services
) -> None:
    failed = {
        "type": "response.failed",
        "sequence_number": 9,
        "response": {
            "id": "resp_1",
            "object": "response",
            "status": "failed",
            "model": "gpt-4o-mini-2024-07-18",
            "error": {"code": "server_error", "message": "The model crashed."},
            "output": [],
            "usage": {"input_tokens": 40, "output_tokens": 3, "total_tokens": 43},
        },
    }
    stream = b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n"
    await play_sse(processor, RESPONSES, AUTH, responses(stream=True), [stream])
    line = only_line(services)
    assert line["error_code"] == "server_error" and line["error_message"] == "The model crashed."
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 3)


async def test_an_event_too_long_to_hold_ends_the_stream_with_an_error_event(
    processor: Processor, services: Services
) -> None:
    """An event whose end never comes within 32 MiB (a broken provider): the gateway stops
    holding it and fails the stream, as a provider's error event does, with an ``error``
    event the client reads last; what the provider sends after it is not shown."""
    events = split_events(TEXT_SSE)
    start = b"".join(events[:4])  # response.created ... content_part.added
    endless = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"'
    )
    mib = 1024 * 1024
    chunks = [start + endless]
    chunks += [b"a" * mib] * ((sse.MAX_EVENT_BYTES + 2 * mib) // mib)
    chunks.append(b'"}\n\n' + events[-1])  # its end at last, then response.completed
    answers = await play_sse(processor, RESPONSES, AUTH, responses(stream=True), chunks)

    shown = client_body(chunks, answers)
    last = split_events(shown)[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = orjson.loads(last.split(b"data: ", 1)[1])
    assert (error["type"], error["code"]) == ("error", "upstream_event_too_large")
    # The openai SDK raises it, rather than handing it over as one more event.
    with pytest.raises(openai.APIError) as raised:
        list(openai_client(shown).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert raised.value.code == "upstream_event_too_large"
    assert b"response.completed" not in shown
    line = only_line(services)
    assert line["outcome"] == "upstream_error" and line["usage_estimated"] is True
    assert line["error_code"] == "upstream_event_too_large"
    # Not the usage of the response.completed the client never saw.
    assert line["total_tokens"] != 45


# --- the quota ----------------------------------------------------------------------------------


def test_the_estimate_counts_instructions_input_items_and_tools() -> None:
    passage = "The quarterly report shows growth in every region. " * 40
    body = {
        "model": "gpt-4o-mini",
        "instructions": passage,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": passage}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": passage},
            {"type": "function_call_output", "call_id": "c1", "output": passage},
            {"role": "assistant", "content": [{"type": "output_text", "text": passage}]},
        ],
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }
    each = len(passage) // CHARS_PER_TOKEN
    tools = len(orjson.dumps(body["tools"])) // CHARS_PER_TOKEN
    estimate = estimate_responses_tokens(body)
    # Five copies of the passage; four items' overhead; the call's name; the tools.
    assert 5 * each + 4 * PER_MESSAGE_OVERHEAD + tools <= estimate
    assert estimate <= 5 * each + 4 * PER_MESSAGE_OVERHEAD + tools + 5
    string_input = estimate_responses_tokens({"input": passage})
    assert string_input == each + PER_MESSAGE_OVERHEAD


def test_the_completion_allowance_is_max_output_tokens_alone() -> None:
    assert completion_allowance({"max_output_tokens": 300}, 4096, RESPONSES_ALLOWANCE_FIELDS) == 300
    # max_tokens is no Responses API field: the default allowance applies.
    assert completion_allowance({"max_tokens": 10}, 4096, RESPONSES_ALLOWANCE_FIELDS) == 4096


async def test_a_hard_cap_lowers_max_output_tokens_never_max_tokens(
    quota_store: QuotaStore,
) -> None:
    processor, _ = capped(quota_store, 300)
    body = responses(max_output_tokens=5000)
    prompt = estimate_responses_tokens(orjson.loads(body))
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(body)]
    )
    sent = upstream_body(answers[1])
    assert sent["max_output_tokens"] == 300 - prompt
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent

    # A body naming no allowance gets max_output_tokens, the one field the API reads. Sent
    # by the other key: the client above left before its answer, charged team1 its estimate.
    processor, _ = capped(quota_store, 300)
    other_key = {"authorization": "Bearer team2-key"}
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=other_key), request_body(responses())]
    )
    sent = upstream_body(answers[1])
    assert "max_output_tokens" in sent and "max_completion_tokens" not in sent


async def test_a_hard_cap_that_leaves_fewer_than_16_tokens_refuses_with_a_429(
    quota_store: QuotaStore,
) -> None:
    body = responses()
    prompt = estimate_responses_tokens(orjson.loads(body))
    # Room for 10 output tokens: OpenAI refuses a max_output_tokens under 16.
    processor, services = capped(quota_store, prompt + 10)
    answers = await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(body)]
    )
    status, error = error_of(answers[1])
    assert status == 429 and error["code"] == "insufficient_quota"
    assert only_line(services)["quota_decision"] == "rejected"


async def test_the_reservation_is_settled_with_the_providers_count(
    quota_store: QuotaStore,
) -> None:
    processor, _ = capped(quota_store, 100_000)
    await whole(processor, responses(max_output_tokens=500), TEXT_JSON)
    await quota_store.flush()
    assert await used_tokens(quota_store, 100_000) == 123


# --- guardrails -----------------------------------------------------------------------------


def guarded(**routes: dict[str, Any]) -> Gateway:
    return Gateway(config_with(WORKSHOP, {ROUTE: {"guardrails": "workshop"}, **routes}))


async def test_a_reject_guard_refuses_a_prompt_in_the_input_string() -> None:
    gateway = guarded()
    answers = await gateway.send(RESPONSES, responses(input="List some credit card numbers"))
    status, error = error_of(answers[-1])
    assert status == 403 and error["message"] == "Sorry, I cannot talk about credit cards."
    assert gateway.log()["quota_decision"] is None


async def test_masks_rewrite_instructions_parts_and_tool_outputs_before_the_provider() -> None:
    gateway = guarded()
    body = responses(
        instructions="Answer ops@example.com",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "card 4111 1111 1111 1111"}],
            },
            {"type": "function_call_output", "call_id": "c1", "output": "mail jane@example.com"},
            {
                "type": "function_call",
                "call_id": "c2",
                "name": "f",
                "arguments": '{"to": "a@b.io"}',
            },
        ],
    )
    answers = await gateway.send(RESPONSES, body)
    sent = upstream_body(answers[1])
    assert sent["instructions"] == "Answer <EMAIL>"
    assert sent["input"][0]["content"][0]["text"] == "card <CREDIT_CARD>"
    assert sent["input"][1]["output"] == "mail <EMAIL>"
    assert orjson.loads(sent["input"][2]["arguments"]) == {"to": "<EMAIL>"}


async def test_a_custom_tool_calls_json_input_is_read_as_json_as_on_chat_routes() -> None:
    # A tool that decodes its JSON input reads the escape as the address it spells.
    gateway = guarded()
    call = {"type": "custom_tool_call", "call_id": "c1", "name": "mail"}
    body = responses(input=[{**call, "input": '{"to": "jane\\u0040example.com"}'}])
    answers = await gateway.send(RESPONSES, body)
    sent = upstream_body(answers[1])
    assert orjson.loads(sent["input"][0]["input"]) == {"to": "<EMAIL>"}


async def test_a_response_guard_masks_a_whole_answers_output_text() -> None:
    gateway = guarded()
    answer = orjson.loads(TEXT_JSON)
    answer["output"][0]["content"][0]["text"] = "Use 4111 1111 1111 1111."
    answers = await gateway.send(
        RESPONSES, responses(), response_headers(200), response_body(orjson.dumps(answer))
    )
    shown = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert shown["output"][0]["content"][0]["text"] == "Use <CREDIT_CARD>."
    assert gateway.log()["total_tokens"] == 123


async def test_a_route_that_guards_answers_refuses_to_stream_them() -> None:
    gateway = guarded()
    answers = await gateway.send(RESPONSES, responses(stream=True))
    status, error = error_of(answers[-1])
    assert (status, error["param"], error["code"]) == (400, "stream", "stream_not_guarded")
    assert gateway.log()["quota_decision"] is None
    # Request guards alone do not stop a stream.
    requests_only = {"policies": [{**WORKSHOP["policies"][0], "response": []}]}
    gateway = Gateway(config_with(requests_only, {ROUTE: {"guardrails": "workshop"}}))
    answers = await gateway.send(RESPONSES, responses(stream=True))
    assert answers[-1].WhichOneof("response") == "request_body"


async def test_a_guarded_route_refuses_a_stream_the_provider_sent_unasked() -> None:
    """The request asked for one whole answer, which the route guards; a provider that
    streams it anyway would get its text past the guard (a Responses stream repeats it
    outside its deltas). It is refused unread, in OpenAI's shape, and charged as the
    whole answer the provider billed, never sent on."""
    gateway = guarded()
    answer = TEXT_SSE.replace(b"peaceful", b"4111 1111 1111 1111")
    assert answer != TEXT_SSE
    answers = await gateway.send(
        RESPONSES,
        responses(),
        response_headers(200, {"content-type": "text/event-stream"}),
        response_body(answer),
    )
    status, error = error_of(answers[2])
    assert (status, error["code"]) == (502, "stream_not_guarded")
    assert b"4111" not in b"".join(a.SerializeToString() for a in answers)
    line = gateway.log()
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


async def test_enrichment_adds_messages_around_the_input() -> None:
    enrichment = {"prepend": [{"role": "system", "content": "You help the {group_id} team."}]}
    gateway = Gateway(config_with({}, {ROUTE: {"enrichment": enrichment}}))
    answers = await gateway.send(RESPONSES, responses(input="hi"))
    assert upstream_body(answers[1])["input"] == [
        {"role": "system", "content": "You help the engineering team."},
        {"role": "user", "content": "hi"},
    ]


# --- the model list, the lean path, content capture -------------------------------------------


def test_the_model_list_offers_openai_chat_models_to_a_caller_of_the_responses_route(
    config: GatewayConfig,
) -> None:
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    names = usable_names(runtime, Identity("api_key", "r", allowed_routes=(ROUTE,)))
    assert {"gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"} <= set(names)
    # Not Anthropic's or Bedrock's models (no Responses API), not embedding models.
    assert not {"claude-3-5-haiku-latest", "titan", "text-embedding-3-small"} & set(names)


async def test_a_non_streamed_request_takes_the_lean_path_whole(
    processor: Processor, services: Services
) -> None:
    message = request_headers(RESPONSES, headers=AUTH)
    hints = {"model": "gpt-4o-mini", "stream": False}
    message.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(hints)
    first = response_body(TEXT_JSON)
    attributes = struct_pb2.Struct()
    attributes.update({"response.code": 200, "response.code_details": "via_upstream"})
    first.attributes[ATTRIBUTES_KEY].CopyFrom(attributes)
    answers = await run_stream(processor, [message, request_body(responses()), first])
    mode = answers[0].mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.BUFFERED
    assert only_line(services)["total_tokens"] == 123


async def test_content_capture_logs_the_conversation_and_the_streamed_answer() -> None:
    text = DEFAULT_CONFIG.replace(
        "include_content: ${AIGW_LOG_CONTENT:-false}", "include_content: true"
    )
    services = Services(GatewayMetrics(), MemoryLog())
    processor = processor_for(parse_config(text, "t", {}), services)
    body = responses(stream=True, instructions="Be brief.", input="Tell me a story.")
    await play_sse(processor, RESPONSES, AUTH, body, split_events(TEXT_SSE))
    line = only_line(services)
    assert line["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story."},
    ]
    assert line["completion"] == deltas_text(TEXT_SSE)


async def test_a_whole_answer_in_chunks_then_an_empty_end_still_says_why_it_stopped(
    processor: Processor, services: Services
) -> None:
    """The lean path's STREAMED mode (or a large answer) brings a JSON answer in pieces,
    and Envoy's end of stream may come empty after them."""
    half = len(TEXT_JSON) // 2
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=AUTH),
            request_body(responses()),
            response_headers(200),
            response_body(TEXT_JSON[:half], end_of_stream=False),
            response_body(TEXT_JSON[half:], end_of_stream=False),
            response_body(b"", end_of_stream=True),
        ],
    )
    line = only_line(services)
    assert line["total_tokens"] == 123 and line["finish_reasons"] == ["completed"]


async def test_content_capture_logs_a_whole_answers_text_and_function_calls() -> None:
    text = DEFAULT_CONFIG.replace(
        "include_content: ${AIGW_LOG_CONTENT:-false}", "include_content: true"
    )
    services = Services(GatewayMetrics(), MemoryLog())
    processor = processor_for(parse_config(text, "t", {}), services)
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Boston?"}]},
        {"type": "function_call_output", "call_id": "c0", "output": "sunny"},
    ]
    await whole(processor, responses(input=items), FUNCTION_CALL_JSON)
    line = only_line(services)
    assert line["prompt"] == [
        {"role": "user", "content": "Weather in Boston?"},
        {"role": "tool", "content": "sunny"},
    ]
    assert line["completion"] == (
        '[tool_call get_current_weather] {"location":"Boston, MA","unit":"celsius"}'
    )
