"""The mock's OpenAI Responses API (``POST /v1/responses``), read with the official openai client
and, for what the client hides (the SSE wire, bodies it refuses to send), with raw httpx.

Usage follows the rules in docs/mock-llm.md: ``instructions`` is one more message before the
input, each message costs its tokens (``\\w+|[^\\w\\s]``) + 4, the request 2 more; output
tokens are the reply's pieces. That is what the gateway bills, so the tests predict it exactly.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseStreamEvent

from extproc.mock_llm import count_tokens

AUTH = {"Authorization": "Bearer sk-test"}
MODEL = "gpt-4o-mini"
QUESTION = "Say hello, mock!"
REPLY = "Mock reply to: " + QUESTION
REPLY_TOKENS = count_tokens(REPLY)  # one piece per token: 9
# One user message: 5 tokens + 4, + 2 for the request.
QUESTION_INPUT_TOKENS = count_tokens(QUESTION) + 4 + 2
LONG_QUESTION = " ".join(f"word{i}" for i in range(30))  # a reply longer than 16 tokens

EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * REPLY_TOKENS,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def usage_of(input_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    """The SSE events of a body as (event name, parsed data); asserts every event has both."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        events.append((name_line.removeprefix("event: "), orjson.loads(data_line[6:])))
    return events


async def post(http: httpx.AsyncClient, doc: Any, **headers: str) -> httpx.Response:
    return await http.post("/v1/responses", json=doc, headers={**AUTH, **headers})


async def streamed(client: AsyncOpenAI, **kwargs: Any) -> list[ResponseStreamEvent]:
    stream = await client.responses.create(stream=True, **kwargs)
    return [event async for event in stream]


def final_response(events: list[ResponseStreamEvent]) -> Response:
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    return last.response


def deltas(events: list[ResponseStreamEvent]) -> list[str]:
    return [e.delta for e in events if e.type == "response.output_text.delta"]


# --- Answers with the official client ---------------------------------------------------------


async def test_json_answer_has_the_reply_and_usage(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.responses.create(model=MODEL, input=QUESTION)

    assert answer.output_text == REPLY
    assert answer.status == "completed"
    assert answer.incomplete_details is None
    assert answer.id.startswith("resp_")
    assert answer.model == MODEL
    (message,) = answer.output
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.status == "completed"
    assert answer.usage is not None
    assert answer.usage.to_dict() == usage_of(QUESTION_INPUT_TOKENS, REPLY_TOKENS)


async def test_instructions_and_input_items_count_as_chat_messages(
    openai_client: AsyncOpenAI,
) -> None:
    # Typed loosely: the client's TypedDicts cannot tell these mixed items apart.
    items: list[Any] = [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "First question?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "First answer.", "annotations": []}],
        },
        # Not a message: accepted, counts for nothing.
        {"type": "function_call_output", "call_id": "call_1", "output": "42 degrees"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Second"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
                {"type": "input_text", "text": "question?"},
            ],
        },
    ]
    answer = await openai_client.responses.create(
        model=MODEL, instructions="Be brief.", input=items
    )

    # Instructions first, then each message; the last one's text parts joined with a space.
    texts = [
        "Be brief.",
        "Answer in English.",
        "First question?",
        "First answer.",
        "Second question?",
    ]
    expected_input = sum(count_tokens(t) + 4 for t in texts) + 2
    assert answer.usage is not None
    assert answer.usage.input_tokens == expected_input
    # The reply quotes the last user message.
    assert answer.output_text == "Mock reply to: Second question?"
    assert answer.instructions == "Be brief."


async def test_stream_events_rebuild_the_json_answer(openai_client: AsyncOpenAI) -> None:
    whole = await openai_client.responses.create(model=MODEL, input=QUESTION)
    events = await streamed(openai_client, model=MODEL, input=QUESTION)

    assert [e.type for e in events] == EVENT_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas(events)) == whole.output_text
    final = final_response(events)
    assert final.status == "completed"
    assert final.output_text == whole.output_text
    assert final.usage == whole.usage
    # Until the end the response carries no usage, as OpenAI's does.
    assert events[0].type == "response.created"
    assert events[0].response.usage is None
    assert events[0].response.id == final.id


async def test_stream_helper_accumulates_the_final_response(openai_client: AsyncOpenAI) -> None:
    async with openai_client.responses.stream(model=MODEL, input=QUESTION) as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()

    assert "".join(texts) == REPLY
    assert final.output_text == REPLY
    assert final.usage is not None
    assert final.usage.total_tokens == QUESTION_INPUT_TOKENS + REPLY_TOKENS


async def test_sse_wire_names_every_event_and_sends_no_done(http: httpx.AsyncClient) -> None:
    response = await post(http, {"model": MODEL, "input": QUESTION, "stream": True})

    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in response.content
    events = sse_events(response.content)
    assert [name for name, _ in events] == EVENT_ORDER
    assert all(data["type"] == name for name, data in events)
    added = events[2][1]
    assert added["item"] == {
        "id": added["item"]["id"],
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    completed = events[-1][1]["response"]
    assert completed["object"] == "response"
    assert completed["usage"] == usage_of(QUESTION_INPUT_TOKENS, REPLY_TOKENS)


# --- max_output_tokens ------------------------------------------------------------------------


async def test_max_output_tokens_cuts_the_reply_and_marks_it_incomplete(
    openai_client: AsyncOpenAI,
) -> None:
    full = await openai_client.responses.create(model=MODEL, input=LONG_QUESTION)
    cut = await openai_client.responses.create(
        model=MODEL, input=LONG_QUESTION, max_output_tokens=16
    )

    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    (message,) = cut.output
    assert message.type == "message"
    assert message.status == "incomplete"
    assert full.output_text.startswith(cut.output_text)
    assert count_tokens(cut.output_text) == 16 < count_tokens(full.output_text)
    assert cut.usage is not None
    assert cut.usage.output_tokens == 16
    assert cut.max_output_tokens == 16


async def test_a_cut_stream_ends_with_response_incomplete(openai_client: AsyncOpenAI) -> None:
    whole = await openai_client.responses.create(
        model=MODEL, input=LONG_QUESTION, max_output_tokens=16
    )
    events = await streamed(openai_client, model=MODEL, input=LONG_QUESTION, max_output_tokens=16)

    # OpenAI ends such a stream with response.incomplete, never response.completed.
    assert [e.type for e in events][-2:] == ["response.output_item.done", "response.incomplete"]
    assert len(deltas(events)) == 16
    final = final_response(events)
    assert final.status == "incomplete"
    assert final.output_text == whole.output_text
    assert final.usage == whole.usage


async def test_max_output_tokens_below_16_is_refused_as_openai_does(
    openai_client: AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=10)

    assert caught.value.param == "max_output_tokens"
    assert caught.value.code == "integer_below_min_value"
    assert "Expected a value >= 16, but got 10 instead." in caught.value.message


# --- Request fields accepted as OpenAI accepts them -------------------------------------------


async def test_background_is_answered_queued_without_usage(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.responses.create(model=MODEL, input=QUESTION, background=True)

    assert answer.status == "queued"
    assert answer.background is True
    assert answer.output == []
    assert answer.usage is None


async def test_store_and_previous_response_id_are_accepted_and_echoed(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.responses.create(
        model=MODEL, input=QUESTION, store=False, previous_response_id="resp_earlier"
    )

    assert answer.output_text == REPLY
    assert answer.previous_response_id == "resp_earlier"
    assert answer.to_dict()["store"] is False


async def test_a_stored_prompt_stands_in_for_the_input_read_as_its_variables(
    openai_client: AsyncOpenAI,
) -> None:
    """The mock stores no prompts: it reads one as a user message of its variables' text."""
    prompt: Any = {
        "id": "pmpt_1",
        "variables": {
            "name": "Jane",
            "topic": {"type": "input_text", "text": "lighthouses"},
            "photo": {"type": "input_image", "image_url": "https://example.com/a.png"},
        },
    }
    answer = await openai_client.responses.create(model=MODEL, prompt=prompt)

    assert answer.output_text == "Mock reply to: Jane lighthouses"
    assert answer.usage is not None
    assert answer.usage.input_tokens == count_tokens("Jane lighthouses") + 4 + 2


async def test_a_turn_of_a_stored_conversation_needs_no_input(http: httpx.AsyncClient) -> None:
    response = await post(http, {"model": MODEL, "previous_response_id": "resp_earlier"})

    assert response.status_code == 200
    assert response.json()["usage"]["input_tokens"] == 2


async def test_service_tier_is_echoed_until_done_then_the_tier_served(
    openai_client: AsyncOpenAI,
) -> None:
    events = await streamed(openai_client, model=MODEL, input=QUESTION, service_tier="auto")
    whole = await openai_client.responses.create(model=MODEL, input=QUESTION, service_tier="flex")

    assert events[0].type == "response.created"
    assert events[0].response.service_tier == "auto"
    assert final_response(events).service_tier == "default"
    assert whole.service_tier == "flex"


async def test_text_format_json_schema_answers_json(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.responses.create(
        model=MODEL,
        input=QUESTION,
        text={
            "format": {
                "type": "json_schema",
                "name": "greeting",
                "schema": {"type": "object", "properties": {"greeting": {"type": "string"}}},
            }
        },
    )

    assert orjson.loads(answer.output_text) == {"greeting": REPLY}
    assert answer.usage is not None
    assert answer.usage.output_tokens == count_tokens(answer.output_text)


async def test_scripted_reply_is_streamed_as_those_pieces(openai_client: AsyncOpenAI) -> None:
    pieces = ["Card ", "4111 1111", " 1111 1111"]
    events = await streamed(
        openai_client,
        model=MODEL,
        input=QUESTION,
        extra_headers={"x-mock-reply": orjson.dumps(pieces).decode()},
    )

    assert deltas(events) == pieces
    final = final_response(events)
    assert final.output_text == "".join(pieces)
    assert final.usage is not None
    assert final.usage.output_tokens == len(pieces)


# --- Invalid requests: OpenAI-shaped 400s -----------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"input": QUESTION}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": 42}, "input"),
        ({"model": MODEL, "input": ["not an item"]}, "input[0]"),
        ({"model": MODEL, "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"model": MODEL, "input": [{"role": "user"}]}, "input[0].content"),
        ({"model": MODEL, "input": [{"role": "user", "content": 7}]}, "input[0].content"),
        ({"model": MODEL, "input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
        ({"model": MODEL, "input": QUESTION, "instructions": ["x"]}, "instructions"),
        ({"model": MODEL, "input": QUESTION, "stream": "yes"}, "stream"),
        ({"model": MODEL, "input": QUESTION, "background": 1}, "background"),
        ({"model": MODEL, "input": QUESTION, "max_output_tokens": True}, "max_output_tokens"),
        ({"model": MODEL, "input": QUESTION, "max_output_tokens": "64"}, "max_output_tokens"),
        ({"model": MODEL, "input": QUESTION, "previous_response_id": 3}, "previous_response_id"),
        ({"model": MODEL, "prompt": "pmpt_1"}, "prompt"),
        ({"model": MODEL, "prompt": {"id": "pmpt_1", "variables": ["x"]}}, "prompt.variables"),
        ({"model": MODEL, "prompt": {"id": "p", "variables": {"n": 4}}}, "prompt.variables.n"),
        ({"model": MODEL, "input": QUESTION, "service_tier": "gold"}, "service_tier"),
        ({"model": MODEL, "input": QUESTION, "text": {"format": "json"}}, "text.format"),
    ],
)
async def test_invalid_bodies_get_openai_400s_naming_the_param(
    http: httpx.AsyncClient, doc: dict[str, Any], param: str
) -> None:
    response = await post(http, doc)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_a_body_that_is_not_json_gets_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/responses", content=b"{not json", headers=AUTH)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_request_without_a_key_gets_401(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/responses", json={"model": MODEL, "input": QUESTION})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- Faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, openai.RateLimitError), (500, openai.InternalServerError)],
)
async def test_fault_status_raises_the_clients_error(
    openai_client: AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error):
        await openai_client.responses.create(
            model=MODEL, input=QUESTION, extra_headers={"x-mock-fault": f"status={status}"}
        )


async def test_fault_no_usage_leaves_the_answer_without_usage(openai_client: AsyncOpenAI) -> None:
    fault = {"x-mock-fault": "no_usage=1"}
    whole = await openai_client.responses.create(model=MODEL, input=QUESTION, extra_headers=fault)
    events = await streamed(openai_client, model=MODEL, input=QUESTION, extra_headers=fault)

    assert whole.output_text == REPLY
    assert whole.usage is None
    assert final_response(events).output_text == REPLY
    assert final_response(events).usage is None


async def test_fault_cached_reports_cached_input_tokens(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.responses.create(
        model=MODEL, input=QUESTION, extra_headers={"x-mock-fault": "cached=5"}
    )

    assert answer.usage is not None
    assert answer.usage.to_dict() == usage_of(QUESTION_INPUT_TOKENS, REPLY_TOKENS, cached=5)


async def test_fault_chunks_streams_exactly_that_many_deltas(openai_client: AsyncOpenAI) -> None:
    events = await streamed(
        openai_client, model=MODEL, input=QUESTION, extra_headers={"x-mock-fault": "chunks=40"}
    )

    assert len(deltas(events)) == 40
    final = final_response(events)
    assert final.usage is not None
    assert final.usage.output_tokens == 40
    assert final.output_text == "".join(deltas(events))


async def test_fault_reset_after_cuts_the_stream_before_it_completes(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_headers={"x-mock-fault": "reset_after=2"}
    )
    received: list[ResponseStreamEvent] = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        async for event in stream:
            received.append(event)

    assert len(deltas(received)) == 2
    assert all(e.type != "response.completed" for e in received)


async def test_fault_reset_after_drops_a_json_request(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await post(http, {"model": MODEL, "input": QUESTION}, **{"x-mock-fault": "reset_after=0"})


async def test_fault_error_after_fails_the_stream_as_openai_does(
    openai_client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    fault = {"x-mock-fault": "error_after=2"}
    stream = await openai_client.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_headers=fault
    )
    received: list[ResponseStreamEvent] = []
    # The live API nests the error's fields under "error"; the client raises on it.
    with pytest.raises(openai.APIError) as caught:
        async for event in stream:
            received.append(event)
    raw = await post(http, {"model": MODEL, "input": QUESTION, "stream": True}, **fault)

    assert len(deltas(received)) == 2
    assert "server had an error" in caught.value.message
    events = sse_events(raw.content)
    (error_name, error), (failed_name, failed) = events[-2:]
    assert error_name == "error"
    assert error["error"]["code"] == "server_error"
    assert failed_name == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["usage"] is None
    assert all(name != "response.completed" for name, _ in events)


async def test_fault_garbage_sends_bodies_that_are_not_json(http: httpx.AsyncClient) -> None:
    fault = {"x-mock-fault": "garbage=1"}
    whole = await post(http, {"model": MODEL, "input": QUESTION}, **fault)
    stream = await post(http, {"model": MODEL, "input": QUESTION, "stream": True}, **fault)

    assert whole.status_code == stream.status_code == 200
    with pytest.raises(ValueError):
        whole.json()
    assert stream.content.startswith(b"event: response.created\ndata: {this is not json")


# --- Built-in tool calls (x-mock-server-tool-use) ----------------------------------------------

TOOL_CALLS = {"x-mock-server-tool-use": "web_search=2; file_search=1"}
CALL_TYPES = ["web_search_call", "web_search_call", "file_search_call"]


async def test_asked_tool_calls_come_before_the_message_in_a_json_answer(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.responses.create(
        model=MODEL, input=QUESTION, tools=[{"type": "web_search"}], extra_headers=TOOL_CALLS
    )

    assert [item.type for item in answer.output] == [*CALL_TYPES, "message"]
    assert all(item.status == "completed" for item in answer.output)
    searches = [item for item in answer.output if item.type == "web_search_call"]
    assert all(item.action.type == "search" for item in searches)
    assert len({item.id for item in answer.output}) == 4
    # Calls cost per call, not tokens: the usage is a plain answer's.
    assert answer.output_text == REPLY
    assert answer.usage is not None
    assert answer.usage.to_dict() == usage_of(QUESTION_INPUT_TOKENS, REPLY_TOKENS)


async def test_a_stream_shows_each_call_then_the_whole_output(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": QUESTION, "stream": True}
    events = sse_events((await post(http, body, **TOOL_CALLS)).content)

    names = [name for name, _ in events]
    search = [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    file_search = [name.replace("web_search", "file_search") for name in search]
    assert names == [
        "response.created",
        "response.in_progress",
        *search,
        *search,
        *file_search,
        *EVENT_ORDER[2:],
    ]
    done = [data for name, data in events if name == "response.output_item.done"]
    assert [(d["output_index"], d["item"]["type"]) for d in done] == list(
        enumerate([*CALL_TYPES, "message"])
    )
    delta = next(data for name, data in events if name == "response.output_text.delta")
    assert delta["output_index"] == 3
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == [*CALL_TYPES, "message"]


async def test_a_failed_stream_still_shows_the_calls_made(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": QUESTION, "stream": True}
    raw = await post(http, body, **TOOL_CALLS, **{"x-mock-fault": "error_after=1"})
    failed = sse_events(raw.content)[-1][1]["response"]
    assert [item["type"] for item in failed["output"]] == [*CALL_TYPES, "message"]


@pytest.mark.parametrize("spec", ["web_fetch=1", "web_search=many"])
async def test_a_tool_call_the_mock_cannot_show_is_refused_naming_the_header(
    http: httpx.AsyncClient, spec: str
) -> None:
    response = await post(
        http, {"model": MODEL, "input": QUESTION}, **{"x-mock-server-tool-use": spec}
    )
    assert response.status_code == 400
    assert "x-mock-server-tool-use" in response.json()["error"]["message"]
