"""A review of the answer guards on Claude's InvokeModel streams, read as an AWS SDK reads
them: boto3 decodes the gateway's frames with Bedrock Runtime's own model of the stream
(``ResponseStream``), so what a user sees is what botocore parses, CRCs checked.

The guard-level tests drive ``FramedStreamGuard`` as the guard stage does (split, render,
reframe per body chunk); the processor-level ones play one guarded
``invoke-with-response-stream`` call through the default stages, webhooks included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import botocore.session
import orjson
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_event, encode_exception, encode_message
from extproc.config import GatewayConfig
from extproc.errors import anthropic_error_body
from extproc.guardrails.framed_stream import FramedStreamGuard
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import (
    AUTH,
    BODY,
    HAIKU,
    STREAM_HEADERS,
    signing_processor,
)
from tests.unit.test_guard_framed_stream import (
    NO_SECRETS,
    PII,
    claude_stream,
    frame,
    guard_of,
    read,
)
from tests.unit.test_guardrail_review import Hook, serving
from tests.unit.test_telemetry_review import with_telemetry

_OPERATION = (
    botocore.session.get_session()
    .get_service_model("bedrock-runtime")
    .operation_model("InvokeModelWithResponseStream")
)
REFUSAL = "refused: secret"


class _Body:
    """The HTTP body botocore's EventStream reads: all the frames in one piece."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self) -> Iterator[bytes]:
        yield self._data

    def close(self) -> None:
        pass


def boto3_reads(frames: bytes) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
    """Claude's events as boto3's ``invoke_model_with_response_stream`` yields them, and
    the error it raises at the end (None: the stream ended cleanly)."""
    stream = EventStream(
        _Body(frames),
        _OPERATION.get_event_stream_output(),
        EventStreamJSONParser(),
        _OPERATION.name,
    )
    events: list[dict[str, Any]] = []
    try:
        for event in stream:
            events.append(orjson.loads(event["chunk"]["bytes"]))
    except EventStreamError as raised:
        return events, dict(raised.response["Error"])
    return events, None


def text_in(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["delta"].get("text", "") for event in events if event["type"] == "content_block_delta"
    )


def chunked(guard: FramedStreamGuard, chunks: Sequence[bytes]) -> bytes:
    """What the client gets when Envoy passes the provider's bytes in ``chunks``, the last
    one with end_of_stream (often empty: the provider's end comes on its own)."""
    out = []
    for index, data in enumerate(chunks):
        last = index == len(chunks) - 1
        events = guard.split(data, last)
        sse = guard.render(events, last, lambda _: anthropic_error_body(REFUSAL, 403))
        out.append(guard.reframe(sse))
    return b"".join(out)


# --- a refusal the SDK can read -----------------------------------------------------------


def test_a_reject_guards_refusal_reaches_boto3_with_its_name_and_message() -> None:
    stream = b"".join(frame(event) for event in claude_stream("the password is hunter2", "!"))

    events, raised = boto3_reads(chunked(guard_of(NO_SECRETS), [stream, b""]))

    assert "hunter2" not in text_in(events)
    # Bedrock's stream models no accessDeniedException: boto3 read an unmodeled name as an
    # error with neither code nor message, and the user never saw why the answer stopped.
    assert raised is not None
    assert raised["Message"] == REFUSAL and raised["Code"]


# --- exception frames: as Bedrock sent them, where Bedrock sent them ----------------------


THROTTLED = encode_exception("throttlingException", b'{"message":"slow down"}')


def test_text_held_at_an_exception_goes_out_before_it_when_the_end_comes_empty() -> None:
    # "Hello" is held (it could begin an address) when Bedrock's stream breaks off with an
    # exception frame; Envoy's end of stream comes after, in an empty chunk of its own.
    provider = b"".join(frame(event) for event in claude_stream("Hello")[:3]) + THROTTLED

    got = chunked(guard_of(PII), [provider, b""])

    assert [kind for kind, _ in read(got)][-1] == "throttlingException"
    events, raised = boto3_reads(got)
    # boto3 raises at the exception frame: text framed after it never reaches the user.
    assert raised == {"Code": "throttlingException", "Message": "slow down"}
    assert text_in(events) == "Hello"


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        # An error message (AWS's other in-stream failure): boto3 names it by its headers.
        (
            {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"},
            b"",
        ),
        # Bedrock's model error carries the model's own status for the SDKs that read it.
        (
            {
                ":exception-type": "modelStreamErrorException",
                ":content-type": "application/json",
                ":message-type": "exception",
            },
            b'{"message":"bad","originalStatusCode":424,"originalMessage":"upstream"}',
        ),
    ],
    ids=["error message", "model stream error"],
)
def test_a_providers_failure_frame_reaches_the_client_as_bedrock_sent_it(
    headers: dict[str, str], payload: bytes
) -> None:
    provider = frame(claude_stream("Hi")[0]) + encode_message(headers, payload)

    got = chunked(guard_of(PII), [provider, b""])

    # boto3 raises what it raises reading Bedrock itself...
    assert boto3_reads(got)[1] == boto3_reads(provider)[1]
    # ...and SDKs that read more of the frame (originalStatusCode) find all of it.
    buffer = EventStreamBuffer()
    buffer.add_data(got)
    failure = list(buffer)[-1]
    assert (failure.headers, failure.payload) == (headers, payload)


def test_a_broken_provider_frame_ends_the_clients_stream_with_an_error_it_raises() -> None:
    good = b"".join(frame(event) for event in claude_stream("Hello")[:3])
    broken = bytearray(frame(claude_stream("Hello")[-1]))
    broken[-1] ^= 0xFF  # its CRC no longer holds

    events, raised = boto3_reads(chunked(guard_of(PII), [good + bytes(broken), b""]))

    # Without the gateway boto3 raises at the broken frame; the guard must not turn a broken
    # answer into one that looks whole (no message_stop, no error), nor drop the held text.
    assert raised is not None and raised["Code"]
    assert text_in(events) == "Hello"


# --- what the guard must keep doing -------------------------------------------------------


def pretty_frame(event: dict[str, Any]) -> bytes:
    """A chunk whose event JSON is written with newlines and indentation."""
    encoded = base64.b64encode(json.dumps(event, indent=2).encode()).decode()
    return encode_event("chunk", orjson.dumps({"bytes": encoded}))


@pytest.mark.parametrize("step", [1, 5, 1_000_000])
def test_an_address_in_pretty_printed_events_is_masked_however_the_bytes_fall(step: int) -> None:
    stream = b"".join(pretty_frame(e) for e in claude_stream("Mail bob@exa", "mple.com today."))
    chunks = [stream[at : at + step] for at in range(0, len(stream), step)] + [b""]

    events, raised = boto3_reads(chunked(guard_of(PII), chunks))

    assert raised is None and events[-1]["type"] == "message_stop"
    assert text_in(events) == "Mail <EMAIL> today."


# --- through the processor: telemetry and webhooks -----------------------------------------

PATH = f"/model/{quote(HAIKU, safe='')}/invoke-with-response-stream"
PII_OUT = {"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}
HOOK_GUARD = {"name": "hook-guard", "webhook": "hook"}


def guarded(*response: dict[str, Any], hook_port: int | None = None) -> GatewayConfig:
    """The default config, its Bedrock Runtime route guarding answers with ``response``."""
    guardrails: dict[str, Any] = {"policies": [{"name": "guarded", "response": list(response)}]}
    if hook_port is not None:
        guardrails["webhooks"] = [{"name": "hook", "host": "127.0.0.1", "port": hook_port}]
    return config_with(guardrails, {"bedrock-converse": {"guardrails": "guarded"}})


def sent_to_client(chunks: Sequence[bytes], answers: list[ext.ProcessingResponse]) -> bytes:
    """The body the client got: each chunk as the processor rewrote (or cleared) it."""
    at_body = [a for a in answers if a.WhichOneof("response") == "response_body"]
    out = []
    for chunk, answer in zip(chunks, at_body, strict=True):
        mutation = answer.response_body.response.body_mutation
        kind = mutation.WhichOneof("mutation")
        out.append(mutation.body if kind == "body" else b"" if kind == "clear_body" else chunk)
    return b"".join(out)


async def invoke(config: GatewayConfig, services: Services, chunks: Sequence[bytes]) -> bytes:
    """One streamed InvokeModel call, Bedrock's answer in ``chunks`` (the last ends it)."""
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers(PATH, headers=AUTH),
                request_body(orjson.dumps(BODY)),
                response_headers(200, STREAM_HEADERS),
                *(
                    response_body(chunk, end_of_stream=index == len(chunks) - 1)
                    for index, chunk in enumerate(chunks)
                ),
            ],
        )
    return sent_to_client(chunks, answers)


def log_line(services: Services) -> dict[str, Any]:
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    return lines[-1]


STREAM = [frame(event) for event in claude_stream("Mail bob@exa", "mple.com today.")] + [b""]


async def test_the_log_captures_the_masked_text_and_bills_claudes_counts(
    config: GatewayConfig, services: Services
) -> None:
    logging = with_telemetry(guarded(PII_OUT), log={"include_content": True})

    events, raised = boto3_reads(await invoke(logging, services, STREAM))

    assert raised is None and text_in(events) == "Mail <EMAIL> today."
    line = log_line(services)
    assert line["completion"] == "Mail <EMAIL> today."
    assert line["finish_reasons"] == ["end_turn"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 3)
    assert line["usage_reported"] is True and line["outcome"] == "completed"


async def test_a_webhooks_mask_reaches_the_client_in_frames(
    config: GatewayConfig, services: Services
) -> None:
    def masked(call: dict[str, Any]) -> dict[str, Any]:
        texts = [c["message"]["content"] for c in call["body"]["choices"]]
        choices = [
            {"message": {"role": "assistant", "content": text.replace("today", "[DAY]")}}
            for text in texts
        ]
        return {"action": {"body": {"choices": choices}}}

    hook = Hook(masked)
    async with serving(hook.handle) as port:
        got = await invoke(guarded(HOOK_GUARD, PII_OUT, hook_port=port), services, STREAM)

    events, raised = boto3_reads(got)
    assert raised is None and text_in(events) == "Mail <EMAIL> [DAY]."


async def test_a_webhooks_refusal_reaches_boto3_with_its_message(
    config: GatewayConfig, services: Services
) -> None:
    hook = Hook({"action": {"body": "No addresses here.", "status_code": 403}})
    async with serving(hook.handle) as port:
        got = await invoke(guarded(HOOK_GUARD, hook_port=port), services, STREAM)

    events, raised = boto3_reads(got)

    assert "bob@" not in text_in(events)
    assert raised is not None
    assert raised["Message"] == "No addresses here." and raised["Code"]
    assert log_line(services)["guardrails"] == [
        {"guard": "hook-guard", "phase": "response", "action": "reject"}
    ]


async def test_a_webhook_down_ends_the_stream_with_an_error_boto3_reads(
    config: GatewayConfig, services: Services
) -> None:
    async with serving(Hook({}).handle) as port:
        pass  # the port is closed again: nothing listens there

    events, raised = boto3_reads(
        await invoke(guarded(HOOK_GUARD, hook_port=port), services, STREAM)
    )

    assert "bob@" not in text_in(events)
    assert raised is not None and raised["Code"] == "serviceUnavailableException"
    assert "hook-guard" in raised["Message"]


async def test_masks_made_before_a_broken_frame_are_in_the_log_line(services: Services) -> None:
    events = claude_stream("Mail bob@example.com today.")
    broken = bytearray(frame(events[-1]))
    broken[-1] ^= 0xFF  # its CRC no longer holds
    chunks = [b"".join(frame(event) for event in events[:-1]), bytes(broken), b""]
    await invoke(guarded(PII_OUT), services, chunks)
    decisions = {(d["guard"], d["action"]) for d in log_line(services)["guardrails"] or ()}
    assert ("pii-out", "mask") in decisions
