"""Failover chain checks, reviewed: the order against the quota.

A body the chain's translated primary cannot be sent is the client's 400, as without
fallbacks; it used to be refused by the stage that plans the attempts, after the quota
had counted the request: a key allowed one request a minute lost it to a 400 that never
reached a provider, and a key already at its limit got a 429 for a body no member of
the chain could be sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.test_bedrock_invoke_review import signing_processor
from tests.unit.test_bedrock_translation_gaps import ONE_REQUEST_A_MINUTE
from tests.unit.test_failover_chain_checks import CLIENT, PROMPT, config


@pytest.fixture
async def claude_failing_over_to_gpt(quota_store: QuotaStore) -> AsyncIterator[Processor]:
    """Claude on Anthropic falling back to gpt-4o, each key allowed one request a minute."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    text = config("claude-3-5-haiku-latest", "[gpt-4o]") + ONE_REQUEST_A_MINUTE
    async with signing_processor(parse_config(text, "gateway.yaml", {}), services) as processor:
        yield processor


async def answer(processor: Processor, **body: object) -> tuple[str, int]:
    """What the downstream filter answers a chat completion for Claude with ``body``."""
    sent = orjson.dumps({"model": "claude-3-5-haiku-latest", "messages": PROMPT, **body})
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=CLIENT), request_body(sent)],
    )
    last = answers[-1]
    kind = last.WhichOneof("response")
    if kind == "immediate_response":
        return kind, last.immediate_response.status.code
    return kind, 200


async def test_a_body_the_primary_cannot_take_does_not_use_up_the_keys_request(
    claude_failing_over_to_gpt: Processor,
) -> None:
    processor = claude_failing_over_to_gpt
    # Claude answers one choice per request: the client's 400.
    assert await answer(processor, n=2) == ("immediate_response", 400)
    # The key's one request of the minute is still there for the corrected body.
    assert await answer(processor, n=1) == ("request_body", 200)
    # Now spent: a body no member can take is still its 400, not a 429.
    assert await answer(processor, n=2) == ("immediate_response", 400)
