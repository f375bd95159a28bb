"""A review of Bedrock billing and content capture, as an operator meets them: each test
plays one request through the processor (the default config's ``bedrock-converse``
route, AWS credentials loaded) and reads the log line or what the client got."""

from __future__ import annotations

from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_bedrock_invoke_review import AUTH, BODY, log_line, signing_processor
from tests.unit.test_bedrock_operations_review import HAIKU, TOKEN_HEADERS, path
from tests.unit.test_guard_framed_stream import converse_frames
from tests.unit.test_guard_framed_stream_review import (
    HOOK_GUARD,
    PII_OUT,
    guarded,
    sent_to_client,
)
from tests.unit.test_guardrail_review import Hook, serving
from tests.unit.test_telemetry_review import with_telemetry

CONVERSE_STREAM = "/model/haiku/converse-stream"
CONVERSE_BODY = {"messages": [{"role": "user", "content": [{"text": "Write to Bob"}]}]}
STREAM_HEADERS = {
    "content-type": "application/vnd.amazon.eventstream",
    "x-envoy-upstream-service-time": "4",
}


async def test_a_whole_claude_answer_without_readable_usage_is_billed_by_bedrocks_headers(
    config: GatewayConfig, services: Services
) -> None:
    # Bedrock counted the answer in its token headers (12 in, 5 out) and bills those;
    # Claude's body came whole but its usage could not be read. The headers bill a
    # Message cut before its body, and another family's answer always: so must they here,
    # not an estimate from the text.
    message: dict[str, Any] = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi"}],
        "usage": {"input_tokens": "12"},
    }
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path(HAIKU, "invoke"), headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, TOKEN_HEADERS),
                response_body(orjson.dumps(message), end_of_stream=True),
            ],
        )
    line = log_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 5)
    assert line["usage_reported"] is True and line["usage_estimated"] is False


async def test_a_guarded_converse_stream_logs_the_masked_text(
    config: GatewayConfig, services: Services
) -> None:
    logging = with_telemetry(guarded(PII_OUT), log={"include_content": True})
    stream = converse_frames("Mail bob@exa", "mple.com", " today.")
    chunks = [stream[at : at + 37] for at in range(0, len(stream), 37)] + [b""]
    async with signing_processor(logging, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(CONVERSE_STREAM, headers=AUTH),
                request_body(orjson.dumps(CONVERSE_BODY)),
                response_headers(200, STREAM_HEADERS),
                *(
                    response_body(chunk, end_of_stream=index == len(chunks) - 1)
                    for index, chunk in enumerate(chunks)
                ),
            ],
        )
    assert log_line(services)["completion"] == "Mail <EMAIL> today."


async def test_a_webhooks_refusal_ends_a_converse_stream_with_an_exception_frame(
    config: GatewayConfig, services: Services
) -> None:
    hook = Hook({"action": {"body": "No addresses here.", "status_code": 403}})
    chunks = [converse_frames("Mail bob@example.com today."), b""]
    async with serving(hook.handle) as port:
        refusing = guarded(HOOK_GUARD, hook_port=port)
        async with signing_processor(refusing, services) as processor:
            answers = await run_stream(
                processor,
                [
                    request_headers(CONVERSE_STREAM, headers=AUTH),
                    request_body(orjson.dumps(CONVERSE_BODY)),
                    response_headers(200, STREAM_HEADERS),
                    *(
                        response_body(chunk, end_of_stream=index == len(chunks) - 1)
                        for index, chunk in enumerate(chunks)
                    ),
                ],
            )
    frames = EventStreamBuffer()
    frames.add_data(sent_to_client(chunks, answers))
    read = list(frames)
    assert b"bob@" not in b"".join(frame.payload for frame in read)
    last = read[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "validationException"
    assert orjson.loads(last.payload) == {"message": "No addresses here."}
    assert log_line(services)["guardrails"] is not None
