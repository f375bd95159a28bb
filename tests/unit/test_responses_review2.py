"""OpenAI's Responses API reviewed again, as a user of the official client meets it: a
token count of a response a fallback answered, and the cache writes a Responses usage
reports, which every ledger must read as the chat path reads them."""

from __future__ import annotations

from typing import Any

import orjson

from extproc import headers
from extproc.config.model import cluster_name
from extproc.store.response_owners import ResponseOwner
from extproc.testing import processor_for, request_body, request_headers, run_stream
from extproc.translators.openai_openai import usage_from_object
from extproc.translators.openai_responses import (
    EventStreamReader,
    ResponseReader,
    usage_from_responses,
)
from tests.unit.test_openai_failover import (
    ALICE,
    CLIENT,
    PROMPT,
    STORED,
    Owners,
    config,
    with_owners,
)

# --- a token count of a continuation, where a fallback stores the response -----------------


async def test_a_token_count_continuing_a_response_a_fallback_answered_is_counted_there() -> None:
    # Alice asked gpt-main; its primary failed and gpt-eu (provider mock-eu) answered and
    # stores the response. Continuing it with gpt-main goes to mock-eu (a pinned route);
    # counting the continuation's input tokens, as Codex does before each turn, must too,
    # not be refused with "continue it with a model of its own provider".
    owners = Owners({STORED: ResponseOwner(ALICE, "mock-eu", 10)})
    body = {"model": "gpt-main", "input": PROMPT, "previous_response_id": STORED}
    answers = await run_stream(
        processor_for(config(), with_owners(owners)),
        [
            request_headers("/v1/responses/input_tokens", headers=CLIENT),
            request_body(orjson.dumps(body)),
        ],
    )
    last = answers[-1]
    assert last.WhichOneof("response") == "request_body", last.immediate_response.body
    mutation = last.request_body.response
    set_headers = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }
    assert set_headers[headers.CLUSTER] == cluster_name(config().provider("mock-eu"))
    assert set_headers[":path"] == "/eu/v1/responses/input_tokens"
    assert set_headers["authorization"] == "Bearer eu-key"
    # Under the name mock-eu gives the model, and as the client asked otherwise.
    sent: dict[str, Any] = orjson.loads(mutation.body_mutation.body)
    assert sent == {**body, "model": "gpt-4o-mini"}


# --- cache writes in a Responses usage ------------------------------------------------------

# A usage with cache writes, as OpenAI's SDK (ResponseUsage.input_tokens_details.
# cache_write_tokens) and OpenAI-compatible providers fronting Claude report it.
RESPONSES_USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 600},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 1050,
}
# The same call's usage on chat completions, which the gateway reads cache writes from.
CHAT_USAGE = {
    "prompt_tokens": 1000,
    "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 600},
    "completion_tokens": 50,
    "total_tokens": 1050,
}


def test_a_responses_usage_reads_its_cache_writes_as_the_chat_usage_does() -> None:
    chat = usage_from_object(CHAT_USAGE)
    responses = usage_from_responses(RESPONSES_USAGE)
    assert chat is not None and responses is not None
    assert chat.cache_write_tokens == 600
    assert responses.cache_write_tokens == chat.cache_write_tokens
    assert responses == chat


def test_cache_writes_are_never_more_than_the_input_not_read_from_the_cache() -> None:
    details = {"cached_tokens": 900, "cache_write_tokens": 600}
    usage = usage_from_responses({**RESPONSES_USAGE, "input_tokens_details": details})
    assert usage is not None and (usage.cached_tokens, usage.cache_write_tokens) == (900, 100)
    for odd in (None, -3, True, "600"):
        details = {"cached_tokens": 0, "cache_write_tokens": odd}
        usage = usage_from_responses({**RESPONSES_USAGE, "input_tokens_details": details})
        assert usage is not None and usage.cache_write_tokens == 0


def test_a_whole_answer_and_a_stream_bill_the_cache_writes_they_report() -> None:
    response = {"id": "resp_1", "object": "response", "status": "completed", "output": []}
    answer = orjson.dumps({**response, "usage": RESPONSES_USAGE})
    reader = ResponseReader()
    reader.feed(answer, True)
    assert reader.usage is not None and reader.usage.cache_write_tokens == 600

    completed = {"type": "response.completed", "response": {**response, "usage": RESPONSES_USAGE}}
    stream = EventStreamReader()
    stream.feed(b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n", True)
    assert stream.usage is not None and stream.usage.cache_write_tokens == 600


def test_a_failed_stream_keeps_the_cache_writes_its_provider_reported() -> None:
    failed = {
        "type": "response.failed",
        "response": {
            "id": "resp_1",
            "status": "failed",
            "error": {"code": "server_error", "message": "boom"},
            "output": [],
            "usage": RESPONSES_USAGE,
        },
    }
    stream = EventStreamReader()
    stream.feed(b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n", True)
    assert stream.failure is not None
    assert (stream.failure.prompt_tokens, stream.failure.cache_write_tokens) == (1000, 600)
