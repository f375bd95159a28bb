"""The service tier that priced a request reaches Envoy: its access log and the request's span.

The gateway tells Envoy about a request in the dynamic metadata of its answers (namespace
``io.aigw``); Envoy's access log prints it and its tracer tags the request's span with it
(``aigw.service_tier``). The tier that priced the request (docs/chargeback.md, "Service
tiers") goes there beside the tokens: with the last answer, and for a stream also with the
answers that carry its usage (its first chunk's, its usage report's), so that a stream the
client left early is tagged with the tier it was billed at. A request that names no tier
carries no such key: Envoy's access log then prints null and the span has no attribute.
"""

from __future__ import annotations

import pytest

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.stages import telemetry
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_envoy_tracing import hcm, tags
from tests.unit.test_service_tier_pricing import (
    ANTHROPIC_AUTH,
    MINI,
    OPENAI_AUTH,
    OPENAI_USAGE,
    SONNET,
    anthropic_events,
    ask_openai,
    chat_body,
    chunk_event,
    completion,
    messages_body,
    openai_stream,
)
from tests.unit.test_stream_span_usage import as_envoy_holds_it, metadata

TIER_KEY = "service_tier"


@pytest.fixture(autouse=True)
def every_chunk_refreshes(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process the chunks come microseconds apart: refresh the running counts at each,
    as a stream whose chunks come RUNNING_USAGE_INTERVAL_S apart does."""
    monkeypatch.setattr(telemetry, "RUNNING_USAGE_INTERVAL_S", 0.0)


async def test_a_flex_answer_tells_envoy_the_tier_it_was_billed_at(
    processor: Processor, services: Services
) -> None:
    answers = await ask_openai(
        processor, "/v1/chat/completions", chat_body(MINI), completion("flex")
    )
    held = as_envoy_holds_it(answers)
    assert held[TIER_KEY] == "flex"
    # The access log and the span say what the gateway's log line says.
    line = only_line(services)
    assert line["service_tier"] == "flex" and held["cost_usd"] == line["cost_usd"]


async def test_an_answer_that_names_no_tier_leaves_the_key_out(
    processor: Processor, services: Services
) -> None:
    answer = completion(with_tier=False)
    answers = await ask_openai(processor, "/v1/chat/completions", chat_body(MINI), answer)
    held = as_envoy_holds_it(answers)
    assert TIER_KEY not in held and "total_tokens" in held
    assert only_line(services)["service_tier"] is None


async def test_a_stream_the_client_left_is_tagged_with_the_tier_it_was_billed_at(
    processor: Processor, services: Services
) -> None:
    # The client hangs up after two chunks: Envoy closes the span at once and reads no
    # later answer. The first chunk named the tier that prices the estimate.
    answers = await play_sse(
        processor, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True),
        openai_stream("flex")[:2], ended=False,
    )  # fmt: skip
    assert metadata(answers[3])[TIER_KEY] == "flex"  # the answer to the first chunk
    assert as_envoy_holds_it(answers)[TIER_KEY] == only_line(services)["service_tier"] == "flex"


async def test_a_tier_named_by_the_usage_chunk_reaches_envoy_before_the_stream_ends(
    processor: Processor, services: Services
) -> None:
    # A provider that names the tier in its usage chunk only; the client reads [DONE] and
    # hangs up, so Envoy drops the answer to the empty end of stream. The answer to the
    # usage chunk, which Envoy applied, carried the tier with the usage.
    chunks = [chunk_event(None, {"role": "assistant", "content": ""}), chunk_event(None, {}),
              chunk_event("priority", None, OPENAI_USAGE), b"data: [DONE]\n\n"]  # fmt: skip
    answers = await play_sse(
        processor, "/v1/chat/completions", OPENAI_AUTH, chat_body(MINI, stream=True), chunks,
        ended=False,
    )  # fmt: skip
    held = as_envoy_holds_it(answers)
    assert held[TIER_KEY] == only_line(services)["service_tier"] == "priority"
    assert int(held["total_tokens"]) == OPENAI_USAGE["total_tokens"]


async def test_an_anthropic_stream_tells_envoy_the_tier_of_its_message_start(
    processor: Processor, services: Services
) -> None:
    answers = await play_sse(
        processor, "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=True),
        anthropic_events("priority")[:2], ended=False,
    )  # fmt: skip
    assert metadata(answers[3])[TIER_KEY] == "priority"
    assert only_line(services)["service_tier"] == "priority"


def test_envoy_prints_the_tier_in_its_access_log_and_tags_the_span_with_it() -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
            "telemetry": {"tracing": {"enabled": True}},
        }
    )
    bootstrap = render_bootstrap(config)
    assert tags(bootstrap)["aigw.service_tier"] == [METADATA_NAMESPACE, TIER_KEY]
    fields = hcm(bootstrap)["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert fields[TIER_KEY] == f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{TIER_KEY})%"
