"""An answer compressed in an encoding the gateway cannot read, on a route that guards
answers: refused unread, never sent on unguarded.

The gateway drops the client's accept-encoding, and a request without one lets a server
choose any encoding. gzip and deflate are read uncompressed (``answer_encoding``); an
answer in br or zstd passed as it came, past every response guard (its text unread),
and the client's SDK decoded it: a card number the route masks reached the client.
"""

from __future__ import annotations

import gzip

import orjson
import pytest

from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_answer, openai_chunk
from tests.unit.test_guard_flow import Gateway, chat, immediate

CARD = "4111 1111 1111 1111"
PII = {"name": "pii", "builtins": ["CREDIT_CARD"], "action": "mask"}
POLICY = {"policies": [{"name": "pii", "response": [PII]}]}
SSE = "text/event-stream"
JSON = "application/json"


def brotli_stored(data: bytes) -> bytes:
    """``data`` as a brotli stream of one uncompressed meta-block (RFC 7932, 9.2): what a
    brotli encoder writes for text it cannot shrink, the text in it as it is."""
    # WBITS 16 (a 0 bit), ISLAST 0, MNIBBLES 4 (00), MLEN - 1 in 16 bits, ISUNCOMPRESSED 1.
    bits = [0, 0, 0, 0, *(((len(data) - 1) >> i) & 1 for i in range(16)), 1]
    header = sum(bit << i for i, bit in enumerate(bits)).to_bytes(3, "little")
    return header + data + b"\x03"  # then an empty last meta-block: ISLAST, ISLASTEMPTY


def answer(streamed: bool) -> bytes:
    if streamed:
        return openai_chunk(f"card {CARD}") + openai_chunk(None, "stop") + b"data: [DONE]\n\n"
    return openai_answer(content=f"card {CARD}")


def headers(streamed: bool, encoding: str) -> dict[str, str]:
    return {"content-type": SSE if streamed else JSON, "content-encoding": encoding}


def guarded(route: str = "openai-chat", policy: str | None = "pii") -> Gateway:
    return Gateway(config_with(POLICY, {route: {"guardrails": policy}} if policy else {}))


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br"])
async def test_an_answer_in_an_encoding_the_gateway_cannot_read_is_refused_unread(
    encoding: str, streamed: bool
) -> None:
    gateway = guarded()
    body = brotli_stored(answer(streamed))
    assert CARD.encode() in body  # what the client would decode
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("my card?", stream=streamed),
        response_headers(200, headers(streamed, encoding)),
        response_body(body),
    )
    status, error = immediate(answers[-1])
    assert (status, error["error"]["code"]) == (502, "encoding_not_guarded")
    assert "guards answers" in error["error"]["message"]
    assert CARD.encode() not in b"".join(a.SerializeToString() for a in answers)
    # The provider generated the answer and billed it: charged as one the gateway did not
    # read, never as nothing.
    line = gateway.log()
    assert (line["outcome"], line["http_status_code"], line["usage_estimated"]) == (
        "upstream_error",
        502,
        True,
    )
    assert line["completion_tokens"] > 0


async def test_an_anthropic_client_gets_the_refusal_in_its_shape() -> None:
    gateway = guarded("anthropic-messages")
    request = orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "max_tokens": 50,
         "messages": [{"role": "user", "content": "my card?"}]}
    )  # fmt: skip
    message = orjson.dumps(
        {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
         "content": [{"type": "text", "text": f"card {CARD}"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 5, "output_tokens": 7}}
    )  # fmt: skip
    answers = await gateway.send(
        "/v1/messages",
        request,
        response_headers(200, {"content-type": JSON, "content-encoding": "br"}),
        response_body(brotli_stored(message)),
    )
    status, error = immediate(answers[-1])
    assert status == 502
    assert error["type"] == "error" and "guards answers" in error["error"]["message"]


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_gzip_answer_is_still_read_and_masked(streamed: bool) -> None:
    gateway = guarded()
    body = gzip.compress(answer(streamed))
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("my card?", stream=streamed),
        response_headers(200, headers(streamed, "gzip")),
        response_body(body),
    )
    shown = client_body([body], answers)
    assert CARD.encode() not in shown and b"<CREDIT_CARD>" in shown


async def test_a_route_without_response_guards_passes_such_an_answer_as_it_came() -> None:
    gateway = guarded(policy=None)
    body = brotli_stored(answer(False))
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("my card?"),
        response_headers(200, {"content-type": JSON, "content-encoding": "br"}),
        response_body(body),
    )
    assert answers[-1].WhichOneof("response") == "response_body"
    assert client_body([body], answers) == body
