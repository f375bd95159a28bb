"""``reasoning_effort`` sent to Claude, as a client sees it: the thought of a model that
hides it unless asked (Opus 4.7 and later) comes back as ``reasoning_content``, and what
Claude refuses beside thinking is a 400 that no request limit counts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.loader import parse_config
from extproc.mock_llm.anthropic_api import THOUGHT, build_reply, parse_messages_request
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators.openai_anthropic import (
    CompletionTranslator,
    StreamTranslator,
    translate_request,
)
from extproc.translators.openai_bedrock import translate_request as converse_request
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

ASK = {"role": "user", "content": "What is 17 * 23?"}
TOOLS = [{"type": "function", "function": {"name": "multiply", "parameters": {}}}]


def chat(model: str = "claude-sonnet", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [ASK], "reasoning_effort": "high", **fields}


# --- the thought of a model that hides it unless asked -----------------------------------


def answer_of(upstream_model: str, *, stream: bool) -> bytes:
    """What the client reads when Anthropic's (mock) Claude answers the translated request."""
    sent = translate_request(chat(), upstream_model, stream=stream)
    reply = build_reply(parse_messages_request(Body.parse(orjson.dumps(sent))), Fault())
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": upstream_model,
        "content": reply.content("msg_1"),
        "stop_reason": reply.stop_reason,
        "usage": {**reply.input_usage(), "output_tokens": reply.output_tokens},
    }
    if not stream:
        translator = CompletionTranslator(request_id="r1", created=1)
        return translator.feed(orjson.dumps(message), True) or b""
    events = [{"type": "message_start", "message": {**message, "content": []}}]
    for index, (start, deltas) in enumerate(reply.blocks("msg_1")):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": reply.stop_reason}})
    events.append({"type": "message_stop"})
    sse = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)
    return StreamTranslator(include_usage=False, request_id="r1", created=1).feed(sse, True)


def streamed_thought(sse: bytes) -> str:
    chunks = [orjson.loads(line[6:]) for line in sse.split(b"\n\n") if line[6:7] == b"{"]
    return "".join(
        choice["delta"].get("reasoning_content", "") for c in chunks for choice in c["choices"]
    )


@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-mythos-preview", "claude-opus-4-6"])
def test_the_client_reads_the_thought_of_every_adaptive_model(model: str) -> None:
    whole = orjson.loads(answer_of(model, stream=False))
    assert whole["choices"][0]["message"]["reasoning_content"] == THOUGHT

    assert streamed_thought(answer_of(model, stream=True)) == THOUGHT


def test_a_model_that_shows_its_thought_already_is_sent_no_display() -> None:
    sent = translate_request(chat(), "claude-sonnet-4-6", stream=False)

    assert sent["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize(
    ("model_id", "display"),
    [("us.anthropic.claude-opus-4-7", "summarized"), ("anthropic.claude-opus-4-6-v1", None)],
)
def test_bedrock_asks_the_same_display_of_claude(model_id: str, display: str | None) -> None:
    fields = converse_request(chat(), model_id=model_id)["additionalModelRequestFields"]

    assert fields["thinking"].get("display") == display


# --- 400s before the quota counts the request --------------------------------------------

ONE_A_DAY = """
quotas:
  rules:
    - {name: one-a-day, subject: api_key, requests_per_day: 1}
"""


async def answer(runtime: Runtime, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answers = await run_stream(
        Processor(lambda: runtime, default_stages()),
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(orjson.dumps(body)),
        ],
    )
    last = answers[-1]
    if last.WhichOneof("response") != "immediate_response":
        return 200, {}
    return last.immediate_response.status.code, orjson.loads(last.immediate_response.body)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 0.2}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ],
)
async def test_a_thinking_400_uses_none_of_the_request_limit(
    quota_store: QuotaStore, fields: dict[str, Any], param: str
) -> None:
    config = parse_config(DEFAULT_CONFIG + ONE_A_DAY, "t", {})
    runtime = Runtime(config, Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store))
    await runtime.start()
    try:
        # claude-sonnet-4-0 thinks with a fixed budget, on Anthropic's API.
        status, body = await answer(runtime, chat("claude-sonnet-4-0", **fields))
        assert status == 400
        assert body["error"]["param"] == param

        # The key's one request a day is still there for the corrected request.
        status, _ = await answer(runtime, chat("claude-sonnet-4-0"))
        assert status == 200
    finally:
        await runtime.close()
