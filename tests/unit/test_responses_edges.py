"""OpenAI's Responses API at its edges, as a user of the official client meets it: streams
the provider failed after streaming much text, reasoning a provider counts beside the
output, and what each ledger then charges."""

from __future__ import annotations

import orjson

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_responses_server_tools import (
    AUTH,
    BODY,
    MODEL,
    RESPONSES,
    created,
    delta,
    event,
    message,
    response,
    terminal,
    web_search,
)

# gpt-4o-mini's prices in the default config, USD per million tokens: input, cached input,
# output.
INPUT, CACHED, OUTPUT = 0.15, 0.075, 0.60

# --- a failed stream's own count ----------------------------------------------------------------


async def test_a_failed_response_is_charged_its_usage_not_the_text_it_streamed(
    processor: Processor, services: Services
) -> None:
    # The provider streamed 400 characters (an estimate of 100 tokens), then failed the
    # response and reported what it generated: 5 output tokens, 50 of 70 input cached.
    # That count is the provider's bill, and the gateway's.
    usage = {
        "input_tokens": 70,
        "input_tokens_details": {"cached_tokens": 50},
        "output_tokens": 5,
        "total_tokens": 75,
    }
    failed = terminal("response.failed", [], usage)
    await play_sse(processor, RESPONSES, AUTH, BODY, [created(), delta(1, "x" * 400), failed])
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert (line["prompt_tokens"], line["cached_tokens"], line["completion_tokens"]) == (70, 50, 5)
    assert line["total_tokens"] == 75
    expected = (20 * INPUT + 50 * CACHED + 5 * OUTPUT) / 10**6
    assert abs(line["cost_usd"] - expected) < 1e-12


async def test_a_terminal_response_after_an_error_event_is_charged_its_usage(
    processor: Processor, services: Services
) -> None:
    # An error event, then the response as it ended, with its usage and one search: the
    # error names the failure, the usage is the bill.
    error = event({"type": "error", "code": "server_error", "message": "Boom.", "param": None})
    usage = {"input_tokens": 70, "output_tokens": 12, "total_tokens": 82}
    completed = terminal("response.completed", [web_search(1), message("Short.")], usage)
    chunks = [created(), delta(1, "y" * 200), error, completed]
    await play_sse(processor, RESPONSES, AUTH, BODY, chunks)
    line = only_line(services)
    assert line["outcome"] == "upstream_error" and line["error_message"] == "Boom."
    assert (line["prompt_tokens"], line["completion_tokens"]) == (70, 12)
    assert line["server_tool_requests"] == {"web_search": 1}


# --- reasoning counted beside the output --------------------------------------------------------

# xAI's Responses API counts reasoning beside output_tokens, in total_tokens alone
# (32 + 9 + 94 = 135), and bills it as output, as its chat completions do.
XAI_USAGE = {
    "input_tokens": 32,
    "input_tokens_details": {"cached_tokens": 6},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 94},
    "total_tokens": 135,
}


async def test_reasoning_a_provider_counts_beside_the_output_is_billed_in_a_whole_answer(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps({"model": MODEL, "input": "Why is the sky blue?"})
    answer = orjson.dumps(response("completed", [message("Rayleigh.")], XAI_USAGE))
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(answer),
        ],
    )
    line = only_line(services)
    assert (line["prompt_tokens"], line["cached_tokens"], line["completion_tokens"]) == (32, 6, 103)
    assert line["total_tokens"] == 135
    expected = (26 * INPUT + 6 * CACHED + 103 * OUTPUT) / 10**6
    assert abs(line["cost_usd"] - expected) < 1e-12


async def test_reasoning_a_provider_counts_beside_the_output_is_billed_in_a_stream(
    processor: Processor, services: Services
) -> None:
    completed = terminal("response.completed", [message("Rayleigh.")], XAI_USAGE)
    await play_sse(processor, RESPONSES, AUTH, BODY, [created(), delta(1, "Rayleigh."), completed])
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        32,
        103,
        135,
    )
    assert line["usage_reported"] is True


# --- an error in chat's shape inside a Responses stream -----------------------------------------


async def test_an_error_in_chats_shape_fails_the_stream_and_is_named(
    processor: Processor, services: Services
) -> None:
    # An OpenAI-compatible server fails the stream with chat's error object, no event type:
    # the client's SDK raises on it, and the log line names it as a provider's error.
    error = {"error": {"message": "Engine crashed.", "type": "server_error", "code": 500}}
    failed = b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    await play_sse(processor, RESPONSES, AUTH, BODY, [created(), delta(1, "abcdefgh"), failed])
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert (line["error_message"], line["error_code"]) == ("Engine crashed.", "500")
    assert line["usage_estimated"] is True and line["completion_tokens"] == 2


async def test_text_that_quotes_an_error_object_is_no_failure(
    processor: Processor, services: Services
) -> None:
    quoted = '{"error": {"message": "not found"}}'
    completed = terminal("response.completed", [message(quoted)])
    await play_sse(processor, RESPONSES, AUTH, BODY, [created(), delta(1, quoted), completed])
    line = only_line(services)
    assert line["outcome"] == "completed" and line["usage_reported"] is True
