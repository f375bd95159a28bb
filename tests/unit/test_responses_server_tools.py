"""The Responses API's built-in tools billed per call on top of tokens: web search and file
search.

OpenAI shows each call of its built-in tools as an item of the response's ``output``: a
``web_search_call`` (its ``action``: ``search``, ``open_page`` or ``find_in_page``) or a
``file_search_call``; a stream shows each item in ``response.output_item.added`` and
``.done`` events, then the whole ``output`` in its terminal event. The gateway bills a web
search for each ``web_search_call`` that searched (its action ``search``, or no action:
older answers), a file search for each ``file_search_call``; a call whose ``status`` is
``failed`` is not billed (docs/chargeback.md). The default config prices web search at
$10 per 1,000 calls.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_responses_tokens
from extproc.runtime import Services
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import openai_responses
from tests.unit.sse_play import only_line, play_sse

RESPONSES = "/v1/responses"
AUTH = {"authorization": "Bearer team1-key"}
MODEL = "gpt-4o-mini"
BODY = orjson.dumps(
    {
        "model": MODEL,
        "input": "What changed this week?",
        "stream": True,
        "tools": [{"type": "web_search"}],
    }
)
# gpt-4o-mini's prices in the default config, USD per million tokens; a web search's price.
INPUT, OUTPUT = Decimal("0.15"), Decimal("0.60")
PER_SEARCH = Decimal("0.01")
PER_FILE_SEARCH = Decimal("0.0025")
USAGE = {"input_tokens": 40, "output_tokens": 9, "total_tokens": 49}
ANSWER_TEXT = "This week the act changed."


# --- OpenAI's output items and events ---------------------------------------------------------


def web_search(
    call: int, status: str = "completed", action: str | None = "search"
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"ws_{call}", "type": "web_search_call", "status": status}
    if action is not None:
        item["action"] = {"type": action, "query": f"query {call}"}
    return item


def file_search(call: int, status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"fs_{call}",
        "type": "file_search_call",
        "status": status,
        "queries": [f"query {call}"],
        "results": None,
    }


def message(text: str = ANSWER_TEXT) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": content}  # fmt: skip


def response(status: str, output: list[dict[str, Any]], usage: Any = USAGE) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": status, "model": MODEL,
            "service_tier": "default", "output": output, "usage": usage, "error": None}  # fmt: skip


def event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def created() -> bytes:
    return event({"type": "response.created", "response": response("in_progress", [], None)})


def item_added(index: int, item: dict[str, Any]) -> bytes:
    # OpenAI shows a call first in progress, its outcome only in the .done event.
    shown = {**item, "status": "in_progress"}
    return event({"type": "response.output_item.added", "output_index": index, "item": shown})


def item_done(index: int, item: dict[str, Any]) -> bytes:
    return event({"type": "response.output_item.done", "output_index": index, "item": item})


def call_events(index: int, item: dict[str, Any]) -> bytes:
    """One tool call as OpenAI streams it: added, its progress events, done."""
    kind = item["type"]
    ids = {"output_index": index, "item_id": item["id"]}
    progress = b"".join(
        event({"type": f"response.{kind}.{step}", **ids})
        for step in ("in_progress", "searching", "completed")
    )
    return item_added(index, item) + progress + item_done(index, item)


def delta(index: int, text: str) -> bytes:
    return event({"type": "response.output_text.delta", "item_id": "msg_1",
                  "output_index": index, "content_index": 0, "delta": text})  # fmt: skip


def terminal(kind: str, output: list[dict[str, Any]], usage: Any = USAGE) -> bytes:
    status = kind.removeprefix("response.")
    return event({"type": kind, "response": response(status, output, usage)})


def whole_answer(output: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(response("completed", output))


def token_cost(line: dict[str, Any]) -> Decimal:
    return (line["prompt_tokens"] * INPUT + line["completion_tokens"] * OUTPUT) / 10**6


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def estimate(streamed_text: str) -> tuple[int, int]:
    """The prompt and completion tokens charged to a stream cut short."""
    prompt = estimate_responses_tokens(orjson.loads(BODY))
    return prompt, -(-len(streamed_text) // CHARS_PER_TOKEN)


async def whole(processor: Processor, answer: bytes) -> None:
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=AUTH),
            request_body(orjson.dumps({"model": MODEL, "input": "What changed this week?"})),
            response_headers(200),
            response_body(answer),
        ],
    )


# Two searches that happened, one page opened (not a search), one search that failed.
SEARCHED = [web_search(1), web_search(2, action=None), web_search(3, action="open_page"),
            web_search(4, status="failed")]  # fmt: skip


# --- the translator --------------------------------------------------------------------------


def test_a_whole_answer_counts_its_searches_that_happened() -> None:
    reader = openai_responses.ResponseReader()
    reader.feed(whole_answer([*SEARCHED, file_search(5), message()]), True)
    assert reader.usage is not None
    assert reader.usage.server_tool_requests == {"web_search": 2, "file_search": 1}
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (40, 9)


def test_an_answer_without_tool_calls_counts_none() -> None:
    reader = openai_responses.ResponseReader()
    reader.feed(whole_answer([message()]), True)
    assert reader.usage is not None and reader.usage.server_tool_requests == {}


def test_a_stream_counts_the_calls_of_its_terminal_response() -> None:
    reader = openai_responses.EventStreamReader()
    output = [*SEARCHED, file_search(5), message()]
    stream = created() + b"".join(call_events(i, item) for i, item in enumerate(output[:-1]))
    stream += delta(5, ANSWER_TEXT) + terminal("response.completed", output)
    reader.feed(stream, True)
    assert reader.usage is not None
    assert reader.usage.server_tool_requests == {"web_search": 2, "file_search": 1}


def test_text_that_quotes_an_item_type_is_no_call() -> None:
    reader = openai_responses.EventStreamReader()
    quoted = 'The item was {"type":"web_search_call","status":"completed"}'
    reader.feed(created() + delta(0, quoted), False)
    assert openai_responses.server_tool_calls_counted(reader) == {}


def test_a_cut_stream_counts_the_calls_its_events_showed() -> None:
    reader = openai_responses.EventStreamReader()
    stream = created() + call_events(0, web_search(1)) + call_events(1, web_search(2))
    # A third search under way when the stream was cut: it was made.
    stream += item_added(2, web_search(3))
    reader.feed(stream, False)
    assert reader.usage is None
    assert openai_responses.server_tool_calls_counted(reader) == {"web_search": 3}


def test_a_cut_stream_does_not_count_failed_calls_or_pages_opened() -> None:
    reader = openai_responses.EventStreamReader()
    stream = created() + call_events(0, web_search(1, status="failed"))
    stream += call_events(1, web_search(2, action="open_page")) + call_events(2, file_search(3))
    reader.feed(stream, False)
    assert openai_responses.server_tool_calls_counted(reader) == {"file_search": 1}


# --- the bill ------------------------------------------------------------------------------------


async def test_a_whole_answers_searches_are_logged_and_billed(
    processor: Processor, services: Services
) -> None:
    await whole(processor, whole_answer([*SEARCHED, message()]))
    line = only_line(services)
    assert line["server_tool_requests"] == {"web_search": 2}
    assert cost(line) == token_cost(line) + 2 * PER_SEARCH
    assert line["cost_priced"] is True and line["usage_reported"] is True


async def test_a_whole_answer_without_usage_is_billed_its_searches_with_the_estimate(
    processor: Processor, services: Services
) -> None:
    # As a stream whose terminal response has no usage is: the calls its output shows
    # happened, and are billed per call on top of the estimated tokens.
    answer = orjson.dumps(response("completed", [*SEARCHED, file_search(5), message()], None))
    await whole(processor, answer)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["completion_tokens"] > 0
    assert line["server_tool_requests"] == {"web_search": 2, "file_search": 1}
    assert cost(line) == token_cost(line) + 2 * PER_SEARCH + PER_FILE_SEARCH


async def test_file_searches_are_billed_at_the_price_tables_file_search_price(
    config: GatewayConfig, services: Services
) -> None:
    prices = {**config.pricing.server_tools_per_thousand, "file_search": Decimal("2.50")}
    pricing = config.pricing.model_copy(update={"server_tools_per_thousand": prices})
    processor = processor_for(config.model_copy(update={"pricing": pricing}), services)
    await whole(processor, whole_answer([web_search(1), file_search(2), file_search(3), message()]))
    line = only_line(services)
    assert line["server_tool_requests"] == {"web_search": 1, "file_search": 2}
    assert cost(line) == token_cost(line) + PER_SEARCH + 2 * PER_FILE_SEARCH
    assert line["cost_priced"] is True


@pytest.mark.parametrize("kind", ["response.completed", "response.incomplete"])
async def test_a_streams_searches_are_billed_from_its_terminal_event(
    processor: Processor, services: Services, kind: str
) -> None:
    output = [web_search(1), web_search(2), message()]
    chunks = [created(), call_events(0, output[0]), call_events(1, output[1]),
              delta(2, ANSWER_TEXT), terminal(kind, output)]  # fmt: skip
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    # Counted once: the terminal response's output, not again the events that showed it.
    assert line["usage_reported"] is True and line["outcome"] == "completed"
    assert line["server_tool_requests"] == {"web_search": 2}
    assert cost(line) == token_cost(line) + 2 * PER_SEARCH


async def test_a_stream_cut_after_its_searches_is_billed_them_with_the_estimate(
    processor: Processor, services: Services
) -> None:
    """The client hung up while the answer streamed: no terminal event, no usage. The
    searches were made and OpenAI bills them, so the gateway does too."""
    chunks = [created(), call_events(0, web_search(1)), call_events(1, web_search(2)),
              call_events(2, web_search(3, status="failed")), delta(3, ANSWER_TEXT)]  # fmt: skip
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks, ended=False)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == estimate(ANSWER_TEXT)
    assert line["server_tool_requests"] == {"web_search": 2}
    assert cost(line) == token_cost(line) + 2 * PER_SEARCH


async def test_a_stream_the_provider_failed_after_a_search_is_billed_the_search(
    processor: Processor, services: Services
) -> None:
    error = event({"type": "error", "code": "server_error", "message": "Boom.", "param": None})
    chunks = [created(), call_events(0, web_search(1)), delta(1, ANSWER_TEXT), error]
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    assert line["outcome"] == "upstream_error" and line["usage_estimated"] is True
    assert line["server_tool_requests"] == {"web_search": 1}
    assert cost(line) == token_cost(line) + PER_SEARCH


async def test_a_failed_response_is_billed_the_searches_its_output_shows(
    processor: Processor, services: Services
) -> None:
    output = [web_search(1), web_search(2), message("This week")]
    failed = terminal("response.failed", output, {"input_tokens": 40, "output_tokens": 3})
    chunks = [created(), call_events(0, output[0]), failed]
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    # The terminal response's output is the whole list: two searches, not the one streamed.
    assert line["server_tool_requests"] == {"web_search": 2}
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 3)
    assert cost(line) == token_cost(line) + 2 * PER_SEARCH


async def test_a_stream_whose_terminal_response_has_no_usage_is_billed_its_searches(
    processor: Processor, services: Services
) -> None:
    output = [web_search(1), web_search(2), message()]
    chunks = [created(), call_events(0, output[0]), call_events(1, output[1]),
              delta(2, ANSWER_TEXT), terminal("response.completed", output, None)]  # fmt: skip
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == estimate(ANSWER_TEXT)
    assert line["server_tool_requests"] == {"web_search": 2}
