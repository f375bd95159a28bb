"""Mask guards whose matches touch or overlap: every character some guard found is masked,
in prompts, whole answers and streams alike.

A card number right after an SSN or a phone number (a row of a table, a record pasted
whole) is found from a window that begins in the number before it; where the two
overlapped, the later match was dropped whole and the card's first twelve digits reached
the provider or the client. In a stream, a card found only with the number before it
(the rest of a window that began there) was matched on its own once the number before it
had left, and went out in clear.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_answer, openai_chunk, openai_stream_text
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_flow import AUTH, Gateway, chat, upstream_body

PII = {"name": "pii", "builtins": ["CREDIT_CARD", "SSN", "PHONE_NUMBER"], "action": "mask"}
POLICY = {"policies": [{"name": "pii", "request": [PII], "response": [PII]}]}
DONE = b"data: [DONE]\n\n"
JSON = {"content-type": "application/json"}

# An SSN, then a card: the card window "6789 4111 1111 1111" passes the Luhn check and
# begins inside the SSN.
RECORD = "Employee 123-45-6789 4111 1111 1111 1111 on file."
# A phone number, the card, its expiry and code, a second card: "555 123 4567 4111" passes
# the check, and the first card's rest is masked as the rest of that window.
ROW = "555 123 4567 4111 1111 1111 1111 12 27 123 4111 1111 1111 1111"


def gateway() -> Gateway:
    return Gateway(config_with(POLICY, {"openai-chat": {"guardrails": "pii"}}))


def card_digits_left(text: str) -> bool:
    return "4111" in text or "1111" in text


async def test_a_card_right_after_an_ssn_is_masked_whole_before_the_provider_sees_it() -> None:
    gate = gateway()
    answers = await gate.send("/v1/chat/completions", chat(RECORD))
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert not card_digits_left(sent), sent
    assert sent == "Employee <SSN><CREDIT_CARD> <CREDIT_CARD> on file."


async def test_a_card_right_after_an_ssn_is_masked_whole_in_an_answer() -> None:
    gate = gateway()
    answer = openai_answer(content=RECORD)
    answers = await gate.send(
        "/v1/chat/completions",
        chat("read me the record"),
        response_headers(200, JSON),
        response_body(answer),
    )
    shown = orjson.loads(client_body([answer], answers))["choices"][0]["message"]["content"]
    assert shown == "Employee <SSN><CREDIT_CARD> <CREDIT_CARD> on file."


@pytest.mark.parametrize(
    "pieces",
    [
        [RECORD],
        ["Employee 123-45-6789 4111 1111 ", "1111 1111 on file."],
        # The first card leaves before the rest arrives; found only with the phone number.
        ["5", ROW[1:]],
        ["Row: 5", ROW[1:]],
        ["1", "0000000 4111 1111 1111 1111 12 27 123 4111 1111 1111 1111"],
    ],
)
async def test_a_stream_masks_what_the_whole_answer_masks(pieces: list[str]) -> None:
    gate = gateway()
    text = "".join(pieces)
    whole = await gate.send(
        "/v1/chat/completions",
        chat("read me the record"),
        response_headers(200, JSON),
        response_body(openai_answer(content=text)),
    )
    body = whole[-1].response_body.response.body_mutation.body
    expected = orjson.loads(body)["choices"][0]["message"]["content"]
    request = chat("read me the record", stream=True)
    chunks = [*(openai_chunk(piece) for piece in pieces), openai_chunk(None, "stop"), DONE]
    answers = await play_sse(gate.processor, "/v1/chat/completions", AUTH, request, chunks)
    shown = openai_stream_text(client_body(chunks, answers))
    assert not card_digits_left(shown), shown
    assert shown == expected
