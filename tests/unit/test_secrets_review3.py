"""The gateway's provider credentials, as a provider that quotes them back would leak them.

Each test plays one request through the real processor (the default config, its mock
providers' keys replaced by recognisable ones, AWS credentials loaded as the server
loads them) and answers it as a provider that echoes what it was sent: in a whole
error, compressed or not, in an error event inside a stream, split over two chunks,
URL-encoded or JSON-escaped. The client's bytes, the log line and the span's metadata
must hold none of it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.aws_eventstream import encode_event, encode_exception
from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog

PROVIDER_KEY = "Zq4vPROVIDERkey-openai-7d1c0e5aW9x3"
ACCESS_KEY_ID = "AKIAQ7SECRETSREVIEW3"
# Temporary AWS credentials' session token: base64, so "/", "+" and "=" in it.
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/tokenFORsecrets+review3/ab12CD34ef56GH78=="
AUTH = {"authorization": "Bearer team1-key"}
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}
SSE = {"content-type": "text/event-stream", **FROM_PROVIDER}
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream", **FROM_PROVIDER}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"


def chat(model: str, stream: bool = False) -> bytes:
    return orjson.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )


def messages(model: str, stream: bool = False) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "max_tokens": 9,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )


CONVERSE_BODY = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


def config() -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text()
    secret_line = "      secret_access_key: ${MOCK_AWS_SECRET_ACCESS_KEY:-mock-secret-key}\n"
    assert secret_line in text
    text = text.replace(secret_line, secret_line + f"      session_token: {SESSION_TOKEN}\n", 1)
    environ = {"MOCK_LLM_API_KEY": PROVIDER_KEY, "MOCK_AWS_ACCESS_KEY_ID": ACCESS_KEY_ID}
    return parse_config(text, "gateway.yaml", environ)


@pytest.fixture
def services() -> Services:
    return Services(metrics=GatewayMetrics(), access_log=MemoryLog())


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config(), services)
    await runtime.start()
    processor = Processor(lambda: runtime, default_stages())
    # A gateway that has sent Bedrock a request (with its session token): any provider's
    # answer is searched for that token too. Its log line is not the test's.
    await run_stream(
        processor, [request_headers(CONVERSE, headers=AUTH), request_body(CONVERSE_BODY)]
    )
    log = services.access_log
    assert isinstance(log, MemoryLog)
    log.buffer.seek(0)
    log.buffer.truncate()
    yield processor
    await runtime.close()


def forms(secret: str) -> list[bytes]:
    """How a provider could quote ``secret``: as it is, URL-encoded (every reserved
    character escaped, or "/" kept as Python's quote() and yarl keep it; hex in either
    case), JSON-escaped the way some encoders write a slash."""
    encoded = [quote(secret, safe=""), quote(secret)]
    return [
        secret.encode(),
        *(form.encode() for form in encoded),
        *(lower_hex(form).encode() for form in encoded),
        secret.replace("/", "\\/").encode(),
    ]


def lower_hex(encoded: str) -> str:
    """Percent-encoding in lowercase hex (``%2f``), as .NET's ``UrlEncode`` writes it."""
    return re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), encoded)


SECRETS = [*forms(PROVIDER_KEY), *forms(SESSION_TOKEN), ACCESS_KEY_ID.encode()]


def echo(text: str = "bad request") -> str:
    """A provider's message quoting the headers it was sent, every credential in each form."""
    return (
        f"{text}; got Authorization: Bearer {PROVIDER_KEY}, x-api-key: {PROVIDER_KEY},"
        f" key={quote(PROVIDER_KEY, safe='')},"
        f" Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260102/us-east-1,"
        f" X-Amz-Security-Token: {SESSION_TOKEN},"
        f" token={quote(SESSION_TOKEN, safe='')}, url=/s3?token={quote(SESSION_TOKEN)},"
        f" net={lower_hex(quote(SESSION_TOKEN, safe=''))}, escaped={ESCAPED}"
    )


# Where ``echo`` puts the token as an encoder that escapes "/" in JSON strings writes it
# (PHP's, Jackson's option): replaced in the serialised body, which orjson would escape.
ESCAPED = "ESCAPED-TOKEN"


def as_json(document: dict[str, Any]) -> bytes:
    escaped = SESSION_TOKEN.replace("/", "\\/").encode()
    return orjson.dumps(document).replace(ESCAPED.encode(), escaped)


async def play(
    gateway: Processor,
    path: str,
    body: bytes,
    status: int,
    headers: dict[str, str],
    chunks: Sequence[bytes],
    client: dict[str, str] = AUTH,
) -> tuple[list[ext.ProcessingResponse], bytes]:
    """The request, answered ``status`` with ``chunks``; the answers and what the client read."""

    async def messages_in() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers(path, headers=client)
        yield request_body(body)
        yield response_headers(status, headers)
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            yield response_body(chunk, end_of_stream=index == last)

    answers = [answer async for answer in gateway.process(messages_in())]
    assert not any(a.HasField("immediate_response") for a in answers)
    return answers, client_body(chunks, answers)


def response_headers_set(answers: list[ext.ProcessingResponse]) -> dict[str, str]:
    found: dict[str, str] = {}
    for answer in answers:
        if answer.HasField("response_headers"):
            mutation = answer.response_headers.response.header_mutation
            for option in mutation.set_headers:
                found[option.header.key] = option.header.raw_value.decode()
    return found


def removed_headers(answers: list[ext.ProcessingResponse]) -> list[str]:
    return [
        name
        for answer in answers
        if answer.HasField("response_headers")
        for name in answer.response_headers.response.header_mutation.remove_headers
    ]


def assert_nothing_leaked(
    answers: list[ext.ProcessingResponse], shown: bytes, services: Services
) -> None:
    """Neither the client's bytes, nor the log line, nor the span's metadata (every answer's
    dynamic metadata: Envoy copies it onto the span) holds a credential in any form."""
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    logged = orjson.dumps(line)
    metadata = b"".join(a.dynamic_metadata.SerializeToString() for a in answers)
    for secret in SECRETS:
        assert secret not in shown, secret
        assert secret not in logged, secret
        assert secret not in metadata, secret


def openai_error(message: str) -> bytes:
    return as_json({"error": {"message": message, "type": "invalid_request_error"}})


# --- whole errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/v1/chat/completions", chat("gpt-4o-mini"), openai_error(echo())),
        ("/anthropic", chat("claude-3-5-haiku-latest"), openai_error(echo())),
        ("/v1/messages", messages("claude-3-5-haiku-latest"), openai_error(echo())),
        (CONVERSE, CONVERSE_BODY, as_json({"message": echo()})),
        ("/bedrock/haiku", chat("haiku"), as_json({"message": echo()})),
        ("/v1/messages", messages(HAIKU), as_json({"message": echo()})),
    ],
    ids=["openai", "openai-to-anthropic", "anthropic", "converse", "openai-to-bedrock", "claude"],
)
@pytest.mark.parametrize("status", [400, 403, 500])
async def test_an_error_quoting_every_credential_shows_the_client_none_of_them(
    gateway: Processor, services: Services, path: str, body: bytes, error: bytes, status: int
) -> None:
    headers = {"content-type": "application/json", **FROM_PROVIDER}
    if b'"message":"bad' in error[:12]:
        headers["x-amzn-errortype"] = "ValidationException:http://internal.amazon.com/coral/"
    # Split inside the token: Envoy hands the body over in the chunks it read.
    cut = error.index(b"Security-Token: ") + 24
    answers, shown = await play(gateway, path, body, status, headers, [error[:cut], error[cut:]])
    assert_nothing_leaked(answers, shown, services)
    assert b"bad request" in shown or b"HTTP" in shown or b"refused" in shown


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/v1/chat/completions", chat("gpt-4o-mini"), openai_error(echo())),
        (CONVERSE, CONVERSE_BODY, as_json({"message": echo()})),
    ],
    ids=["openai", "converse"],
)
async def test_a_compressed_error_is_read_uncompressed_and_sent_without_the_credentials(
    gateway: Processor, services: Services, path: str, body: bytes, error: bytes, encoding: str
) -> None:
    """A provider may compress an answer the gateway asked to come uncompressed: searched
    as compressed bytes, the key would pass unseen."""
    packed = gzip.compress(error) if encoding == "gzip" else zlib.compress(error)
    headers = {"content-type": "application/json", "content-encoding": encoding, **FROM_PROVIDER}
    answers, shown = await play(gateway, path, body, 400, headers, [packed])
    assert "content-encoding" in removed_headers(answers)  # the client reads it as it is sent
    assert_nothing_leaked(answers, shown, services)
    assert b"bad request" in shown


async def test_an_error_in_an_encoding_the_gateway_cannot_read_is_not_passed_on(
    gateway: Processor, services: Services
) -> None:
    packed = b"\x1b\x00\xf8\xa5" + PROVIDER_KEY.encode()  # "br": unreadable here, key inside
    headers = {"content-type": "application/json", "content-encoding": "br", **FROM_PROVIDER}
    answers, shown = await play(
        gateway, "/v1/chat/completions", chat("gpt-4o-mini"), 400, headers, [packed]
    )
    assert_nothing_leaked(answers, shown, services)
    assert orjson.loads(shown)["error"]["message"] == "the provider answered with HTTP 400"


# --- errors inside a stream -----------------------------------------------------------------


def split_in_the_key(events: bytes, secret: str) -> list[bytes]:
    """Two chunks, the first ending in the middle of ``secret``."""
    cut = events.index(secret.encode()) + len(secret) // 2
    return [events[:cut], events[cut:]]


OPENAI_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"Hel"}}]}\n\n'
    b"data: " + openai_error(echo("the stream failed")) + b"\n\n"
)
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":'
    b'"message","role":"assistant","content":[],"model":"claude-3-5-haiku-latest",'
    b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
    b"event: error\ndata: "
    + as_json({"type": "error", "error": {"type": "api_error", "message": echo("overloaded")}})
    + b"\n\n"
)


@pytest.mark.parametrize(
    ("path", "body", "events"),
    [
        ("/v1/chat/completions", chat("gpt-4o-mini", stream=True), OPENAI_STREAM),
        ("/v1/messages", messages("claude-3-5-haiku-latest", stream=True), ANTHROPIC_STREAM),
        ("/anthropic", chat("claude-3-5-haiku-latest", stream=True), ANTHROPIC_STREAM),
    ],
    ids=["openai", "anthropic", "openai-to-anthropic"],
)
@pytest.mark.parametrize("secret", [PROVIDER_KEY, SESSION_TOKEN])
async def test_an_error_event_quoting_the_key_shows_it_neither_to_the_client_nor_the_log(
    gateway: Processor, services: Services, path: str, body: bytes, events: bytes, secret: str
) -> None:
    answers, shown = await play(gateway, path, body, 200, SSE, split_in_the_key(events, secret))
    assert_nothing_leaked(answers, shown, services)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["outcome"] == "upstream_error"  # the error was still read and recorded
    assert "stream failed" in line["error_message"] or "overloaded" in line["error_message"]


async def test_a_stream_without_any_credential_passes_byte_for_byte(
    gateway: Processor, services: Services
) -> None:
    """No credential in it: each chunk reaches the client as it came, with no body
    mutation (the search for the credentials copies nothing)."""
    events = OPENAI_STREAM.split(b'data: {"error"')[0] + b"data: [DONE]\n\n"
    body = orjson.loads(chat("gpt-4o-mini", stream=True))
    body["stream_options"] = {"include_usage": True}
    cut = events.index(b"\n\n") + 2
    answers, shown = await play(
        gateway, "/v1/chat/completions", orjson.dumps(body), 200, SSE, [events[:cut], events[cut:]]
    )
    assert shown == events
    bodies = [a.response_body.response for a in answers if a.HasField("response_body")]
    assert len(bodies) == 2
    assert not any(body.HasField("body_mutation") for body in bodies)


BEDROCK_FRAMES = encode_event("messageStart", b'{"role":"assistant"}') + encode_exception(
    "validationException", as_json({"message": echo("the stream failed")})
)


async def test_a_bedrock_exception_frame_quoting_the_session_token_shows_the_client_none(
    gateway: Processor, services: Services
) -> None:
    answers, shown = await play(
        gateway,
        f"/model/{quote(HAIKU, safe='')}/converse-stream",
        CONVERSE_BODY,
        200,
        EVENT_STREAM,
        split_in_the_key(BEDROCK_FRAMES, SESSION_TOKEN),
    )
    assert_nothing_leaked(answers, shown, services)
    # The client's SDK reads the exception, starred, not a broken stream: the frame
    # whose credential was starred out carries a checksum of what it now holds.
    buffer = EventStreamBuffer()
    buffer.add_data(shown)
    _, failure = list(buffer)  # botocore checks each frame's CRCs as it decodes it
    assert failure.headers[":exception-type"] == "validationException"
    assert "the stream failed; got Authorization: Bearer ***" in failure.payload.decode()


async def test_a_bedrock_stream_without_a_credential_reaches_the_client_as_it_came(
    gateway: Processor, services: Services
) -> None:
    # A message split over three chunks waits for its end; the client's bytes are the
    # provider's, and messages that came whole pass without a body mutation.
    first, second, third = (
        encode_event("contentBlockDelta", as_json({"delta": {"text": f"part {n}"}}))
        for n in range(3)
    )
    stop = encode_event("messageStop", as_json({"stopReason": "end_turn"}))
    chunks = [first, second[:9], second[9:] + third + stop]
    answers, shown = await play(
        gateway, CONVERSE + "-stream", CONVERSE_BODY, 200, EVENT_STREAM, chunks
    )
    assert shown == first + second + third + stop
    whole = next(a.response_body.response for a in answers if a.HasField("response_body"))
    assert not whole.HasField("body_mutation")


async def test_a_bedrock_frame_broken_by_the_provider_stays_broken_once_starred(
    gateway: Processor, services: Services
) -> None:
    # A fresh checksum only for what the gateway changed: a message that came with a
    # wrong CRC is not made to look sound.
    broken = bytearray(BEDROCK_FRAMES)
    broken[-1] ^= 0xFF
    answers, shown = await play(
        gateway, CONVERSE + "-stream", CONVERSE_BODY, 200, EVENT_STREAM, [bytes(broken)]
    )
    assert_nothing_leaked(answers, shown, services)
    buffer = EventStreamBuffer()
    buffer.add_data(shown)
    with pytest.raises(ChecksumMismatch):
        list(buffer)


async def test_a_bedrock_exception_frame_quoting_a_credential_is_read_for_an_openai_client(
    gateway: Processor, services: Services
) -> None:
    # Translated for an OpenAI client, the gateway reads the frame itself: the client and
    # the log line get Bedrock's words (starred), not a stream the gateway cannot read.
    answers, shown = await play(
        gateway,
        "/v1/chat/completions",
        chat(HAIKU, stream=True),
        200,
        EVENT_STREAM,
        split_in_the_key(BEDROCK_FRAMES, SESSION_TOKEN),
    )
    assert_nothing_leaked(answers, shown, services)
    assert b"the stream failed; got Authorization: Bearer ***" in shown
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert "the stream failed" in line["error_message"]


def test_every_form_of_the_secrets_in_this_file_is_one_a_provider_could_send() -> None:
    # The control: the forms differ, so each one is a case of its own.
    assert len(set(forms(SESSION_TOKEN))) == 6
    assert echo().count(PROVIDER_KEY) == 3
