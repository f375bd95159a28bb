"""Guardrail edge cases, through the real processor (cards, phones, Predicted Outputs, audio).

- CREDIT_CARD took, in a run of digit groups, the longest Luhn-valid window from the
  first group that starts one and went on after it: when the number before a card
  (an account or customer number) and the card's first groups happened to pass the
  Luhn check together, that window was masked and the rest of the real card reached
  the provider and the client in clear ("Account <CREDIT_CARD> 1111 1111").
- PHONE_NUMBER: a North American number after a number ending in "1" ("Room 21
  555-123-4567") was matched from that "1" (the optional country code), refused as not
  standing alone, and the search went on after it: the phone number itself, which stands
  alone, was never tried and reached the provider in clear.
- OpenAI's Predicted Outputs (``prediction.content``, most often the very file the
  prompt asks to edit, which the model reads) was not read by request guards: a masked
  address went to the provider in clear there, a refused word past the refusal.
- PHONE_NUMBER took any ten digits for a North American number, a Unix time too
  (``1717171717``, every one from 2001 to 2033): an answer's "Logged at 1717171717" became
  "Logged at <PHONE_NUMBER>", and a tool call's integer argument ``{"since": 1717171717}``
  a string ``"<PHONE_NUMBER>"`` its schema refuses. No North American area code begins
  with 0 or 1.
- Audio answers (chat's ``modalities: ["text", "audio"]``): the answer's text is then
  ``message.audio.transcript`` (``content`` is null) and the audio speaks it; response
  guards read neither, so a route masking cards in answers let an audio answer carry
  the card to the client whole (transcript and speech), buffered or streamed.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_answer, openai_chunk, openai_stream_text
from tests.unit.test_guard_flow import Gateway, chat, upstream_body
from tests.unit.test_guardrail_review import stream_through
from tests.unit.test_review_s36_guards import exchange, guarded

DONE = b"data: [DONE]\n\n"
PII = {"policies": [{"name": "pii",
    "request": [{"name": "pii", "builtins": ["CREDIT_CARD"], "action": "mask"}],
    "response": [{"name": "pii-out", "builtins": ["CREDIT_CARD"], "action": "mask"}]}]}  # fmt: skip

# "10000000 4111 1111" (16 digits) passes the Luhn check too, as does the card.
BESIDE = [
    ("Account 10000000 4111 1111 1111 1111 charged", "4111 1111 1111 1111"),
]


def _digits_left(text: str, card: str) -> list[str]:
    """The groups of the card the client can still read."""
    return [group for group in card.split() if group in text.split()]


@pytest.mark.parametrize(("said", "card"), BESIDE)
async def test_a_card_after_a_number_is_masked_whole_in_the_prompt(said: str, card: str) -> None:
    gateway = Gateway(config_with(PII, {"openai-chat": {"guardrails": "pii"}}))
    answers = await gateway.send("/v1/chat/completions", chat(said))
    prompt = upstream_body(answers[1])["messages"][0]["content"]
    assert "<CREDIT_CARD>" in prompt
    assert _digits_left(prompt, card) == [], f"the provider read part of the card: {prompt!r}"


@pytest.mark.parametrize(("said", "card"), BESIDE)
async def test_a_card_after_a_number_is_masked_whole_in_a_stream(said: str, card: str) -> None:
    gateway = Gateway(config_with(PII, {"openai-chat": {"guardrails": "pii"}}))
    words = said.split(" ")
    chunks = [openai_chunk(word + " ") for word in words]
    chunks += [openai_chunk(None, "stop"), DONE]
    shown, _ = await stream_through(gateway, chunks)
    text = openai_stream_text(shown)
    assert "<CREDIT_CARD>" in text
    assert _digits_left(text, card) == [], f"the client read part of the card: {text!r}"


# --- Predicted Outputs ----------------------------------------------------------------------

EMAIL_OUT = {"policies": [{"name": "pii", "request": [
    {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    {"name": "no-falcon", "literals": ["project falcon"], "action": "reject"}]}]}  # fmt: skip
CODE = 'ADMIN = "ops@example.com"  # project falcon'


@pytest.mark.parametrize(
    "prediction",
    [
        {"type": "content", "content": CODE},
        {"type": "content", "content": [{"type": "text", "text": CODE}]},
    ],
)
async def test_a_prediction_is_guarded_as_the_prompt_it_repeats(prediction: object) -> None:
    """OpenAI's Predicted Outputs: the file being edited goes in the prompt and again in
    ``prediction.content``, which the model reads. A reject guard must refuse it there too,
    and a mask must not be undone by the copy sent in the prediction."""
    gateway = Gateway(config_with(EMAIL_OUT, {"openai-chat": {"guardrails": "pii"}}))
    body = orjson.dumps({"model": "gpt-4o-mini", "prediction": prediction,
                         "messages": [{"role": "user", "content": "Rename ADMIN"}]})  # fmt: skip
    answers = await gateway.send("/v1/chat/completions", body)
    assert answers[1].WhichOneof("response") == "immediate_response", (
        "a literal refused in the prediction reached the provider"
    )
    status = answers[1].immediate_response.status.code
    error = orjson.loads(answers[1].immediate_response.body)["error"]
    assert status == 403
    assert error["code"] == "guardrail_rejected"


async def test_an_email_in_a_prediction_is_masked() -> None:
    gateway = Gateway(config_with(EMAIL_OUT, {"openai-chat": {"guardrails": "pii"}}))
    body = orjson.dumps({"model": "gpt-4o-mini",
                         "prediction": {"type": "content", "content": 'A = "ops@example.com"'},
                         "messages": [{"role": "user", "content": "Rename A"}]})  # fmt: skip
    answers = await gateway.send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])
    assert sent["prediction"]["content"] == 'A = "<EMAIL>"', "the provider read the address"


# --- PHONE_NUMBER after a number ending in 1 ------------------------------------------------

PHONE = {"policies": [{"name": "pii", "request": [
    {"name": "pii", "builtins": ["PHONE_NUMBER"], "action": "mask"}]}]}  # fmt: skip


@pytest.mark.parametrize(
    ("said", "sent"),
    [
        ("Room 21 555-123-4567", "Room 21 <PHONE_NUMBER>"),
        ("Apt 11 (555) 123-4567", "Apt 11 <PHONE_NUMBER>"),
        ("ids 2021 555.123.4567", "ids 2021 <PHONE_NUMBER>"),
    ],
)
async def test_a_phone_number_after_a_number_ending_in_one_is_masked(said: str, sent: str) -> None:
    gateway = Gateway(config_with(PHONE, {"openai-chat": {"guardrails": "pii"}}))
    answers = await gateway.send("/v1/chat/completions", chat(said))
    prompt = upstream_body(answers[1])["messages"][0]["content"]
    assert prompt == sent, "the provider read the phone number"


# --- audio answers ---------------------------------------------------------------------------

AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
SPOKEN = "Your card is 4111 1111 1111 1111."


async def test_an_audio_answer_does_not_carry_a_masked_card_to_the_client() -> None:
    """gpt-4o-audio answers in ``message.audio``: its ``transcript`` is the answer's text,
    its ``data`` the same words spoken. The route masks cards in answers."""
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-audio-preview",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": None, "refusal": None,
            "audio": {"id": "audio_1", "expires_at": 1, "data": "UklGRg==",
                      "transcript": SPOKEN}}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
    }  # fmt: skip
    body = chat("read me my card", **AUDIO)
    refused, got = await exchange(
        guarded(), "/v1/chat/completions", body, [orjson.dumps(answer)], stream=False
    )
    if refused is not None:
        assert refused == 400  # refused before the provider: nothing to leak
        return
    assert b"4111 1111" not in got, "the client got the card in the audio answer"


async def test_a_streamed_audio_answer_does_not_carry_a_masked_card_to_the_client() -> None:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "gpt-4o-audio-preview",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(event) + b"\n\n"

    chunks = [
        chunk({"role": "assistant", "content": None}),
        *(
            chunk({"audio": {"id": "audio_1", "transcript": part}})
            for part in ["Your card is ", "4111 1111 ", "1111 1111."]
        ),
        chunk({}, "stop"),
        DONE,
    ]
    body = chat("read me my card", stream=True, **AUDIO)
    refused, got = await exchange(guarded(), "/v1/chat/completions", body, chunks, stream=True)
    if refused is not None:
        assert refused == 400
        return
    transcript = ""
    for event in got.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:]).get("choices") or ():
                transcript += ((choice.get("delta") or {}).get("audio") or {}).get("transcript", "")
    assert "4111" not in transcript, f"the client read the card: {transcript!r}"


# --- PHONE_NUMBER and Unix times ------------------------------------------------------------

PHONE_OUT = {"policies": [{"name": "pii", "response": [
    {"name": "pii-out", "builtins": ["PHONE_NUMBER"], "action": "mask"}]}]}  # fmt: skip


async def test_a_unix_time_in_an_answer_is_no_phone_number() -> None:
    gateway = Gateway(config_with(PHONE_OUT, {"openai-chat": {"guardrails": "pii"}}))
    call = {"id": "call_1", "type": "function",
            "function": {"name": "events", "arguments": '{"since": 1717171717}'}}  # fmt: skip
    answer = openai_answer(content="Logged at 1717171717; call (555) 123-4567.", tool_calls=[call])
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("when?"),
        response_headers(200, {"content-length": str(len(answer))}),
        response_body(answer),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body or answer)
    message = shown["choices"][0]["message"]
    assert message["content"] == "Logged at 1717171717; call <PHONE_NUMBER>."
    arguments = orjson.loads(message["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"since": 1717171717}, "the tool got a string for its integer"
