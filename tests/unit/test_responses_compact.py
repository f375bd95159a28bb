"""The Responses API's compaction (POST /v1/responses/compact) and token count
(POST /v1/responses/input_tokens) through the processor: where they go, the body checks,
what is billed (a compaction, by its usage) and what is not (a count), the quota, the
guards, and what the log line, the span and the metrics record.

The provider's answers are in OpenAI's wire format (the ``openai`` SDK's
``CompactedResponse`` and ``InputTokenCountResponse``): a compaction is
``{"id", "object": "response.compaction", "created_at", "output", "usage"}``, its usage a
response's; a count is ``{"object": "response.input_tokens", "input_tokens": N}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config.loader import ConfigError, parse_config
from extproc.headers import METADATA_NAMESPACE, metadata_key
from extproc.processor import Processor
from extproc.quota.estimate import estimate_responses_tokens
from extproc.quota.store import QuotaStore, Reservation
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    sample,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import only_line
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body
from tests.unit.test_response_path import hinted_headers, whole_answer

COMPACT = "/v1/responses/compact"
COUNT = "/v1/responses/input_tokens"
AUTH = {"authorization": "Bearer team1-key"}
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
HISTORY = [
    {"role": "user", "content": "Plan a three-day trip to Lisbon."},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Day one: Alfama and the castle."}],
    },
    {"role": "user", "content": [{"type": "input_text", "text": "Add a day trip to Sintra."}]},
]
# A compaction as OpenAI answers it: the user messages kept, then one compaction item.
COMPACTION: dict[str, Any] = {
    "id": "resp_0a1b2c",
    "object": "response.compaction",
    "created_at": 1767225600,
    "output": [
        {
            "id": "msg_01",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": "Plan a three-day trip to Lisbon."}],
        },
        {
            "id": "msg_02",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": "Add a day trip to Sintra."}],
        },
        {"id": "cmp_01", "type": "compaction", "encrypted_content": "gAAAAABpZ3Jk..."},
    ],
    "usage": {
        "input_tokens": 1200,
        "input_tokens_details": {"cached_tokens": 200},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 250},
        "total_tokens": 1500,
    },
}
COMPACTION_JSON = orjson.dumps(COMPACTION)
INPUT_TOKENS_JSON = b'{"object":"response.input_tokens","input_tokens":41}'


def compact_body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "input": HISTORY, **fields})


def mutated_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    mutation = answer.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def span(answer: ext.ProcessingResponse) -> Any:
    return answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields


async def answered(
    processor: Processor, path: str, body: bytes, answer: bytes, status: int = 200
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(body),
            response_headers(status),
            response_body(answer),
        ],
    )


# --- where they go ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        (COMPACT, "/v1/responses/compact"),
        ("/openai/v1/responses/compact", "/v1/responses/compact"),
        ("/openai/responses/compact", "/v1/responses/compact"),
        (COUNT, "/v1/responses/input_tokens"),
        ("/openai/v1/responses/input_tokens", "/v1/responses/input_tokens"),
        ("/openai/responses/input_tokens", "/v1/responses/input_tokens"),
    ],
)
async def test_each_path_reaches_the_providers_own_endpoint_with_the_providers_key(
    processor: Processor, path: str, endpoint: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(compact_body())]
    )
    mutated = mutated_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: the client's /v1 path needs no rewrite.
    assert mutated.get(":path", path) == endpoint


@pytest.mark.parametrize("path", [COMPACT, COUNT])
@pytest.mark.parametrize("model", ["claude-3-5-haiku-latest", "titan"])
async def test_a_model_of_a_provider_without_the_endpoint_is_a_400_naming_it(
    processor: Processor, services: Services, path: str, model: str
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(path, headers=AUTH), request_body(compact_body(model=model))],
    )
    status, body = immediate(answers[1])
    assert status == 400 and body["error"]["code"] == "unsupported_model_for_route"
    assert path in body["error"]["message"]
    assert only_line(services)["quota_decision"] is None  # before the quota counted it


# --- the body -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPACT, COUNT])
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": True}, "stream"),
        ({"stream": "yes"}, "stream"),
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["not an item"]}, "input[0]"),
        ({"instructions": 7}, "instructions"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ],
)
async def test_a_body_the_gateway_cannot_read_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, path: str, fields: dict[str, Any], param: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(compact_body(**fields))]
    )
    status, body = immediate(answers[1])
    assert (status, body["error"]["param"]) == (400, param)
    assert body["error"]["type"] == "invalid_request_error"
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


async def test_a_compaction_asked_to_stream_is_told_the_endpoint_does_not(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(COMPACT, headers=AUTH), request_body(compact_body(stream=True))],
    )
    _, body = immediate(answers[1])
    assert "does not stream" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "context", "served"),
    [
        (COMPACT, {"previous_response_id": "resp_1"}, True),
        (COMPACT, {"conversation": "conv_1"}, False),  # no field of the endpoint
        (COUNT, {"previous_response_id": "resp_1"}, True),
        (COUNT, {"conversation": "conv_1"}, True),
        (COUNT, {"prompt": {"id": "pmpt_1"}}, False),  # no field of the endpoint
    ],
)
async def test_only_context_the_endpoint_takes_stands_in_for_the_input(
    processor: Processor, path: str, context: dict[str, Any], served: bool
) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", **context})
    answers = await run_stream(processor, [request_headers(path, headers=AUTH), request_body(body)])
    if served:
        assert mutated_headers(answers[1])[headers.CLUSTER] == "provider_mock"
    else:
        assert immediate(answers[1])[1]["error"]["param"] == "input"


async def test_a_compaction_takes_the_lean_path_and_is_billed_from_its_one_message(
    processor: Processor, services: Services
) -> None:
    """Only OpenAI-compatible providers serve it, untranslated: no response-headers message
    (Envoy's body hints name the model; no stream asked for: one buffered body message)."""
    answers = await run_stream(
        processor,
        [
            hinted_headers(COMPACT, {"model": "gpt-4o-mini", "stream": False}),
            request_body(compact_body()),
            whole_answer(COMPACTION_JSON, 200),
        ],
    )
    mode = answers[0].mode_override
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.BUFFERED
    line = only_line(services)
    assert (line["http_status_code"], line["total_tokens"]) == (200, 1500)


# --- billing --------------------------------------------------------------------------------


async def test_a_compaction_is_billed_by_its_usage_in_every_ledger(
    processor: Processor, services: Services
) -> None:
    answers = await answered(processor, COMPACT, compact_body(), COMPACTION_JSON)
    # The client gets the provider's answer as it came.
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["route"] == "openai-responses-compact" and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        1200,
        300,
        1500,
    )
    assert line["cached_tokens"] == 200 and line["usage_reported"] is True
    # 1000 uncached and 200 cached input tokens, 300 output tokens at gpt-4o-mini's prices.
    assert line["cost_usd"] == pytest.approx((1000 * 0.15 + 200 * 0.075 + 300 * 0.60) / 1e6)
    assert line["finish_reasons"] is None  # a compaction has no status
    assert sample(services, "tokens_consumed_total", model="gpt-4o-mini") == 1500
    assert span(answers[-1])["total_tokens"].number_value == 1500


async def test_a_compaction_is_its_own_operation_in_the_span_and_the_token_histogram(
    processor: Processor, services: Services
) -> None:
    """Needs the OPERATIONS entry in telemetry/span_attributes.py (see the report)."""
    answers = await answered(processor, COMPACT, compact_body(), COMPACTION_JSON)
    assert span(answers[-1])["operation"].string_value == "compact"
    histogram = "gen_ai_client_token_usage_count"
    assert sample(services, histogram, gen_ai_operation_name="compact") == 2
    assert sample(services, histogram, gen_ai_operation_name="chat") == 0


async def test_a_compaction_answer_without_usage_is_charged_its_estimate(
    processor: Processor, services: Services
) -> None:
    """Needs the compaction in cut_answer's _GENERATES and context's estimates (the report)."""
    uncounted = orjson.dumps({**COMPACTION, "usage": None})
    await answered(processor, COMPACT, compact_body(), uncounted)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["prompt_tokens"] == estimate_responses_tokens(orjson.loads(compact_body()))
    assert sample(services, "tokens_consumed_total", model="gpt-4o-mini") == line["total_tokens"]


async def test_a_token_count_passes_through_and_is_never_billed(
    processor: Processor, services: Services
) -> None:
    answers = await answered(processor, COUNT, compact_body(), INPUT_TOKENS_JSON)
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["route"] == "openai-responses-input-tokens" and line["http_status_code"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0)
    assert line["usage_reported"] is False and line["usage_estimated"] is False
    assert sample(services, "tokens_consumed_total") == 0
    assert sample(services, "gen_ai_client_token_usage_count") == 0
    assert sample(services, "aigw_requests_total", route="openai-responses-input-tokens") == 1


async def test_a_token_count_is_a_count_tokens_operation_in_the_span(processor: Processor) -> None:
    """Needs the OPERATIONS entry in telemetry/span_attributes.py (see the report)."""
    answers = await answered(processor, COUNT, compact_body(), INPUT_TOKENS_JSON)
    assert span(answers[-1])["operation"].string_value == "count_tokens"


# --- the quota ------------------------------------------------------------------------------

QUOTA = """
quotas:
  default_max_tokens: 1000
  rules:
    - {name: team-tokens, subject: api_key, tokens_per_day: %d, hard_cap: %s}
"""


def with_quota(
    quota_store: QuotaStore, budget: int, hard_cap: bool = False
) -> tuple[Processor, Services]:
    text = DEFAULT_CONFIG + QUOTA % (budget, "true" if hard_cap else "false")
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(text, "t", {}), services)
    return Processor(lambda: runtime, default_stages()), services


async def tokens_used(quota_store: QuotaStore, budget: int) -> int:
    """The key's token counter, once every settlement reached the store."""
    await quota_store.flush()
    runtime = Runtime(
        parse_config(DEFAULT_CONFIG + QUOTA % (budget, "false"), "t", {}),
        Services(GatewayMetrics(), AccessLog(stdout=False)),
    )
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
    reservation = await quota_store.reserve(limits, 0)
    assert isinstance(reservation, Reservation)
    return reservation.used[0]


def remaining_tokens(answer: ext.ProcessingResponse) -> int:
    """What the x-ratelimit-remaining-tokens header will say: left after the reservation."""
    value = span(answer)[metadata_key("x-ratelimit-remaining-tokens")].string_value
    return int(value)


async def test_a_compaction_reserves_its_estimate_and_the_default_allowance_then_settles(
    quota_store: QuotaStore,
) -> None:
    """Needs context's estimate and quota's allowance fields for compactions (the report):
    the API has no allowance, so a max_output_tokens the body carries is not one."""
    processor, _ = with_quota(quota_store, 100_000)
    body = compact_body(max_output_tokens=5)
    answers = await answered(processor, COMPACT, body, COMPACTION_JSON)
    estimate = estimate_responses_tokens(orjson.loads(body))
    assert remaining_tokens(answers[1]) == 100_000 - (estimate + 1000)
    assert await tokens_used(quota_store, 100_000) == 1500  # the provider's count


async def test_a_failed_compaction_gives_its_reservation_back(quota_store: QuotaStore) -> None:
    processor, services = with_quota(quota_store, 100_000)
    error = b'{"error":{"message":"boom","type":"server_error","code":null}}'
    await answered(processor, COMPACT, compact_body(), error, status=500)
    line = only_line(services)
    assert line["quota_decision"] == "allowed" and line["http_status_code"] == 500
    assert line["total_tokens"] == 0
    assert await tokens_used(quota_store, 100_000) == 0


async def test_a_hard_cap_never_writes_an_allowance_into_a_compaction(
    quota_store: QuotaStore,
) -> None:
    """Needs quota's hard cap to leave compactions' bodies alone (the report): the API has
    no allowance field, so one written there is the provider's 400."""
    processor, services = with_quota(quota_store, 100_000, hard_cap=True)
    answers = await run_stream(
        processor, [request_headers(COMPACT, headers=AUTH), request_body(compact_body())]
    )
    assert mutated_headers(answers[1])[headers.CLUSTER] == "provider_mock"
    assert not answers[1].request_body.response.HasField("body_mutation")
    assert only_line(services)["quota_decision"] == "allowed"


async def test_a_hard_cap_without_room_for_the_default_allowance_refuses_a_compaction(
    quota_store: QuotaStore,
) -> None:
    """Needs quota's hard cap to ask a compaction for the whole default allowance (the
    report): it cannot be lowered, so a compaction that does not fit is a 429."""
    estimate = estimate_responses_tokens(orjson.loads(compact_body()))
    processor, services = with_quota(quota_store, estimate + 999, hard_cap=True)
    answers = await run_stream(
        processor, [request_headers(COMPACT, headers=AUTH), request_body(compact_body())]
    )
    status, body = immediate(answers[1])
    assert status == 429 and body["error"]["code"] == "insufficient_quota"
    assert only_line(services)["quota_decision"] == "rejected"
    assert await tokens_used(quota_store, estimate + 999) == 0


async def test_a_token_count_reserves_nothing_even_on_a_spent_budget(
    quota_store: QuotaStore,
) -> None:
    """A count generates nothing: no token budget applies to it, spent or not."""
    processor, services = with_quota(quota_store, 10, hard_cap=True)
    answers = await answered(processor, COUNT, compact_body(), INPUT_TOKENS_JSON)
    assert not answers[1].HasField("immediate_response")
    assert not answers[1].request_body.response.HasField("body_mutation")  # no allowance
    assert only_line(services)["quota_decision"] == "none"  # only token rules: none apply
    assert await tokens_used(quota_store, 10) == 0


# --- guards, enrichment, capture --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [(COMPACT, "openai-responses-compact"), (COUNT, "openai-responses-input-tokens")],
)
async def test_a_reject_guard_reads_the_input_before_the_provider(path: str, route: str) -> None:
    gateway = Gateway(config_with(WORKSHOP, {route: {"guardrails": "workshop"}}))
    history = [*HISTORY, {"role": "user", "content": "And my credit card number?"}]
    answers = await gateway.send(path, compact_body(input=history))
    status, _ = immediate(answers[-1])
    assert status == 403
    assert gateway.log()["quota_decision"] is None


async def test_a_response_guard_masks_the_user_messages_a_compaction_keeps() -> None:
    gateway = Gateway(
        config_with(WORKSHOP, {"openai-responses-compact": {"guardrails": "workshop"}})
    )
    kept = {
        "id": "msg_03",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "card 4111 1111 1111 1111"}],
    }
    answer = orjson.dumps({**COMPACTION, "output": [kept, *COMPACTION["output"]]})
    answers = await gateway.send(
        COMPACT, compact_body(), response_headers(200), response_body(answer)
    )
    sent = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert "4111" not in sent["output"][0]["content"][0]["text"]
    assert sent["output"][-1] == COMPACTION["output"][-1]  # the compaction item as it came
    assert gateway.log()["prompt_tokens"] == 1200  # still billed


def test_a_compaction_route_takes_no_enrichment() -> None:
    enrichment = "\n    enrichment: {prepend: [{role: system, content: Be kind.}]}"
    text = DEFAULT_CONFIG.replace(
        "    path: /v1/responses/compact\n", "    path: /v1/responses/compact" + enrichment + "\n"
    )
    with pytest.raises(ConfigError, match="compacted window"):
        parse_config(text, "t", {})


async def test_a_token_count_is_enriched_as_the_call_it_counts() -> None:
    enrichment = {"prepend": [{"role": "system", "content": "Answer in French."}]}
    gateway = Gateway(
        config_with(WORKSHOP, {"openai-responses-input-tokens": {"enrichment": enrichment}})
    )
    answers = await gateway.send(COUNT, compact_body(input="Bonjour"))
    sent = upstream_body(answers[1])
    assert sent["input"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bonjour"},
    ]


async def test_content_capture_logs_the_history_and_marks_the_compaction() -> None:
    config = parse_config(DEFAULT_CONFIG, "t", {"AIGW_LOG_CONTENT": "true"})
    services = Services(GatewayMetrics(), MemoryLog())
    processor = Processor(lambda: Runtime(config, services), default_stages())
    await answered(processor, COMPACT, compact_body(instructions="Keep dates."), COMPACTION_JSON)
    line = only_line(services)
    assert line["prompt"][0] == {"role": "system", "content": "Keep dates."}
    assert line["prompt"][-1] == {"role": "user", "content": "Add a day trip to Sintra."}
    assert line["completion"].endswith("[compaction]")
    assert "gAAAAA" not in line["completion"]
