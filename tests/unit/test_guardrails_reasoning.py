"""Response guards read the model's reasoning as they read its answer.

Reasoning reaches clients in every API's shape: OpenAI-compatible providers' (and the
gateway's own translation of Claude's thinking) ``reasoning_content`` / ``reasoning`` /
``reasoning_details``, whole and streamed; Anthropic's ``thinking`` blocks and
``thinking_delta`` events; Converse's ``reasoningContent``; Gemini's thought parts; the
Responses API's reasoning items. A policy keeping card numbers from the client was
bypassed whenever the model wrote one while thinking.

Unsigned reasoning is masked in place, as answer text is. Signed reasoning (Anthropic's
``thinking``, Converse's ``reasoningText``) cannot be changed: the provider refuses the
block when the client sends it back, every later turn of the conversation with it. A
``MASK`` match there refuses the answer, as a ``REJECT`` does.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from aiohttp import web
from botocore.eventstream import EventStreamBuffer

from extproc.aws_eventstream import encode_event
from extproc.config.guard_model import GuardConfig
from extproc.errors import anthropic_error_body, google_error_body
from extproc.guardrails.content import anthropic_answer_slots, openai_answer_slots
from extproc.guardrails.converse_text import answer_slots as converse_answer_slots
from extproc.guardrails.framed_stream import ConverseStreamGuard, FramedStreamGuard
from extproc.guardrails.gemini_stream import GeminiStreamGuard
from extproc.guardrails.gemini_text import answer_slots as gemini_answer_slots
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.responses_text import answer_slots as responses_answer_slots
from extproc.guardrails.stream import StreamGuard
from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import (
    ERROR,
    anthropic_event,
    config_with,
    openai_answer,
    openai_delta,
    openai_deltas,
    play,
)
from tests.unit.test_guard_flow import Gateway, chat, immediate, webhook_server

CARD = "4111 1111 1111 1111"
PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")
NO_CARDS = GuardConfig(name="no-cards", builtins=["CREDIT_CARD"], action="reject")


def matchers(*configs: GuardConfig) -> Matchers:
    return Matchers(tuple(MatcherGuard(c, 256) for c in configs))


# --- which shapes the slots read (whole answers) ----------------------------------------


def test_an_openai_answers_reasoning_fields_are_read_after_its_answer() -> None:
    message = {
        "role": "assistant",
        "content": "Done.",
        "reasoning_content": "DeepSeek style",
        "reasoning": "OpenRouter style",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "detail text", "signature": "s", "index": 0},
            {"type": "reasoning.summary", "summary": "detail summary", "index": 1},
            {"type": "reasoning.encrypted", "data": "b3BhcXVl", "index": 2},
        ],
    }
    slots = openai_answer_slots({"choices": [{"index": 0, "message": message}]})
    assert [(s.role, s.text) for s in slots] == [
        ("assistant", "Done."),
        ("assistant", "DeepSeek style"),
        ("assistant", "OpenRouter style"),
        ("assistant", "detail text"),
        ("assistant", "detail summary"),
    ]
    assert not any(slot.signed for slot in slots), "an OpenAI client sends none of it back signed"


def test_anthropic_thinking_is_read_signed_and_redacted_thinking_is_not() -> None:
    answer = {
        "content": [
            {"type": "thinking", "thinking": "let me think", "signature": "sig"},
            {"type": "redacted_thinking", "data": "b3BhcXVl"},
            {"type": "text", "text": "Done."},
        ]
    }
    slots = anthropic_answer_slots(answer)
    assert [(s.text, s.signed) for s in slots] == [("Done.", False), ("let me think", True)]


def test_converse_reasoning_text_is_read_signed() -> None:
    reasoning = {"reasoningText": {"text": "hmm", "signature": "sig"}}
    answer = {"output": {"message": {"content": [{"reasoningContent": reasoning}, {"text": "ok"}]}}}
    slots = converse_answer_slots(answer)
    assert [(s.text, s.signed) for s in slots] == [("ok", False), ("hmm", True)]


def test_gemini_thoughts_of_an_answer_are_read() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "a thought", "thought": True}, {"text": "Done."}],
                }
            }
        ]
    }
    slots = gemini_answer_slots(answer)
    assert [(s.text, s.signed) for s in slots] == [("Done.", False), ("a thought", False)]


def test_responses_reasoning_summaries_and_text_are_read() -> None:
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "summary"}],
        "content": [{"type": "reasoning_text", "text": "raw"}],
        "encrypted_content": "b3BhcXVl",
    }
    slots = responses_answer_slots({"output": [reasoning]})
    assert [s.text for s in slots] == ["summary", "raw"]


# --- whole answers through the processor -------------------------------------------------


def policy(*response: dict[str, Any]) -> dict[str, Any]:
    return {"policies": [{"name": "p", "response": list(response)}]}


MASK_PII = {"name": "pii", "builtins": ["CREDIT_CARD", "SSN"], "action": "mask"}
REJECT_CARDS = {"name": "no-cards", "builtins": ["CREDIT_CARD"], "action": "reject"}


async def answer_through(route: str, path: str, body: bytes, answer: bytes, guard: Any) -> Any:
    gateway = Gateway(config_with(policy(guard), {route: {"guardrails": "p"}}))
    answers = await gateway.send(
        path, body, response_headers(200, {"content-length": "9"}), response_body(answer)
    )
    return gateway, answers[-1]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_a_card_in_an_openai_answers_reasoning_is_masked(field: str) -> None:
    answer = openai_answer(
        content="Here you go.", **{field: f"The card is {CARD}, SSN 123-45-6789"}
    )
    gateway, last = await answer_through(
        "openai-chat", "/v1/chat/completions", chat("hi"), answer, MASK_PII
    )
    shown = orjson.loads(last.response_body.response.body_mutation.body)
    message = shown["choices"][0]["message"]
    assert message[field] == "The card is <CREDIT_CARD>, SSN <SSN>"
    assert message["content"] == "Here you go."
    assert {"guard": "pii", "phase": "response", "action": "mask"} in gateway.log()["guardrails"]


async def test_a_card_in_an_openai_answers_reasoning_details_is_masked() -> None:
    details = [{"type": "reasoning.text", "text": f"card {CARD}", "format": "unknown"}]
    answer = openai_answer(content="ok", reasoning_details=details)
    _, last = await answer_through(
        "openai-chat", "/v1/chat/completions", chat("hi"), answer, MASK_PII
    )
    shown = orjson.loads(last.response_body.response.body_mutation.body)
    assert shown["choices"][0]["message"]["reasoning_details"][0]["text"] == "card <CREDIT_CARD>"


async def test_a_reject_guard_refuses_an_answer_whose_reasoning_holds_a_card() -> None:
    answer = openai_answer(content="Nothing here.", reasoning_content=f"maybe {CARD}")
    gateway, last = await answer_through(
        "openai-chat", "/v1/chat/completions", chat("hi"), answer, REJECT_CARDS
    )
    status, body = immediate(last)
    assert status == 403 and body["error"]["code"] == "guardrail_rejected"
    assert "4111" not in orjson.dumps(body).decode()
    assert gateway.log()["guardrails"] == [
        {"guard": "no-cards", "phase": "response", "action": "reject"}
    ]


def anthropic_request() -> bytes:
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )


def anthropic_answer(thinking: str, text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-latest",
            "content": [
                {"type": "thinking", "thinking": thinking, "signature": "c2ln"},
                {"type": "text", "text": text},
            ],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 9},
        }
    )


async def test_a_mask_in_anthropic_thinking_refuses_the_answer_since_the_block_is_signed() -> None:
    answer = anthropic_answer(f"The card is {CARD}.", "I cannot share that.")
    gateway, last = await answer_through(
        "anthropic-messages", "/v1/messages", anthropic_request(), answer, MASK_PII
    )
    status, body = immediate(last)
    assert status == 403
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert "reasoning" in body["error"]["message"] and "CREDIT_CARD" in body["error"]["message"]
    assert "4111" not in orjson.dumps(body).decode()
    assert {"guard": "pii", "phase": "response", "action": "reject"} in gateway.log()["guardrails"]


async def test_anthropic_answer_text_is_still_masked_when_its_thinking_is_clean() -> None:
    answer = anthropic_answer("Nothing sensitive.", f"Use {CARD}.")
    _, last = await answer_through(
        "anthropic-messages", "/v1/messages", anthropic_request(), answer, MASK_PII
    )
    shown = orjson.loads(last.response_body.response.body_mutation.body)
    assert shown["content"][0] == {
        "type": "thinking",
        "thinking": "Nothing sensitive.",
        "signature": "c2ln",
    }
    assert shown["content"][1]["text"] == "Use <CREDIT_CARD>."


async def test_the_response_webhook_is_sent_reasoning_as_further_choices() -> None:
    seen: list[Any] = []

    async def check(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"reason": "fine"})

    async with webhook_server(check) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "p", "response": [{"name": "out", "webhook": "hook"}]}],
        }
        gateway = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "p"}}))
        answer = openai_answer(content="Done.", reasoning_content="thinking it over")
        await gateway.send(
            "/v1/chat/completions",
            chat("hi"),
            response_headers(200, {"content-length": "9"}),
            response_body(answer),
        )
    assert seen[-1] == {
        "body": {
            "choices": [
                {"message": {"role": "assistant", "content": "Done."}},
                {"message": {"role": "assistant", "content": "thinking it over"}},
            ]
        }
    }


# --- OpenAI streams -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_card_split_over_streamed_reasoning_deltas_is_masked(field: str) -> None:
    chunks = [
        openai_delta({field: "The card 4111 11"}),
        openai_delta({field: "11 1111 1"}),
        openai_delta({field: "111 is on file."}),
        openai_delta({"content": "Sure."}),
        openai_delta({}, "stop"),
        b"data: [DONE]\n\n",
    ]
    out = play(StreamGuard(matchers(PII), anthropic=False), chunks)
    assert b"4111" not in out
    got = openai_deltas(out)
    assert "".join(d.get(field) or "" for d in got) == "The card <CREDIT_CARD> is on file."
    assert "".join(d.get("content") or "" for d in got) == "Sure."


def test_held_reasoning_goes_out_before_the_answer_begins() -> None:
    chunks = [
        openai_delta({"reasoning_content": "Mail jane@exam"}),
        openai_delta({"reasoning_content": "ple.com"}),
        openai_delta({"content": "Done."}),
        openai_delta({}, "stop"),
        b"data: [DONE]\n\n",
    ]
    got = openai_deltas(play(StreamGuard(matchers(PII), anthropic=False), chunks))
    fields = [name for d in got for name, value in d.items() if value]
    # A client showing reasoning, then the answer, reads them in that order.
    assert fields == ["reasoning_content", "reasoning_content", "content"]
    assert "".join(d.get("reasoning_content") or "" for d in got) == "Mail <EMAIL>"


def test_a_reject_guard_ends_a_stream_whose_reasoning_holds_a_card() -> None:
    chunks = [
        openai_delta({"reasoning_content": "The card 4111 1111 "}),
        openai_delta({"reasoning_content": "1111 1111 it is."}),
        openai_delta({"content": "Sure."}),
        b"data: [DONE]\n\n",
    ]
    guard = StreamGuard(matchers(NO_CARDS), anthropic=False)
    out = play(guard, chunks)
    assert b"4111" not in out and ERROR in out
    assert guard.rejected_by == 0
    assert b"Sure." not in out


def test_streamed_reasoning_details_are_masked() -> None:
    detail = {"type": "reasoning.text", "format": "unknown", "index": 0}
    chunks = [
        openai_delta({"reasoning_details": [{**detail, "text": "mail jane@exam"}]}),
        openai_delta({"reasoning_details": [{**detail, "text": "ple.com now"}]}),
        openai_delta({"content": "ok"}, "stop"),
        b"data: [DONE]\n\n",
    ]
    out = play(StreamGuard(matchers(PII), anthropic=False), chunks)
    assert b"jane@" not in out
    text = "".join(
        item.get("text", "")
        for d in openai_deltas(out)
        for item in d.get("reasoning_details") or ()
    )
    assert text == "mail <EMAIL> now"


# --- Anthropic streams (signed thinking) --------------------------------------------------


def thinking_stream(*pieces: str) -> list[bytes]:
    def delta(piece: str) -> bytes:
        payload = {"type": "thinking_delta", "thinking": piece}
        return anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": payload}
        )

    block = {"type": "thinking", "thinking": "", "signature": ""}
    signature = {"type": "signature_delta", "signature": "c2ln"}
    return [
        anthropic_event("message_start", {"type": "message_start", "message": {"id": "m"}}),
        anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        *(delta(piece) for piece in pieces),
        anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": signature}
        ),
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]


def test_a_mask_in_streamed_thinking_ends_the_stream_and_no_digit_of_the_card_leaves() -> None:
    guard = StreamGuard(matchers(PII), anthropic=True)
    out = play(guard, thinking_stream("Card 4111 11", "11 1111 1111 noted."))
    assert b"4111" not in out
    assert out.endswith(b"event: error\ndata: " + ERROR + b"\n\n")
    assert guard.rejected_by == 0


def test_clean_streamed_thinking_goes_out_whole_before_its_signature() -> None:
    guard = StreamGuard(matchers(PII), anthropic=True)
    out = play(guard, thinking_stream("The user's mail is jane", " and nothing else."))
    events = [orjson.loads(b.split(b"data: ", 1)[1]) for b in out.split(b"\n\n") if b]
    kinds = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    assert kinds[-1] == "signature_delta", "what was held leaves before the signature"
    thinking = "".join(e["delta"].get("thinking", "") for e in events if "delta" in e)
    assert thinking == "The user's mail is jane and nothing else."


def test_claude_thinking_in_invoke_model_frames_is_refused_on_a_mask() -> None:
    def frame(event: bytes) -> bytes:
        data = event.split(b"data: ", 1)[1].strip()
        encoded = base64.b64encode(data).decode()
        return encode_event("chunk", orjson.dumps({"bytes": encoded}))

    stream = b"".join(frame(e) for e in thinking_stream("Card 4111 1111 1111 1111 ok"))
    guard = FramedStreamGuard(matchers(PII))
    events = guard.split(stream, True)
    refusal = anthropic_error_body("refused", 403)
    out = guard.reframe(guard.render(events, True, lambda _: refusal))
    buffer = EventStreamBuffer()
    buffer.add_data(out)
    messages = list(buffer)
    assert messages[-1].headers[":exception-type"] == "validationException"
    assert all(b"4111" not in m.payload for m in messages)


# --- Converse streams ---------------------------------------------------------------------


def converse_reasoning_frames(*pieces: str) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    for piece in pieces:
        delta = {"reasoningContent": {"text": piece}}
        events.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta}))
    signature = {"reasoningContent": {"signature": "c2ln"}}
    events.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": signature}))
    events.append(("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Done."}}))
    events.append(("contentBlockStop", {"contentBlockIndex": 1}))
    events.append(("messageStop", {"stopReason": "end_turn"}))
    return b"".join(encode_event(kind, orjson.dumps(payload)) for kind, payload in events)


def run_converse(stream: bytes) -> list[tuple[str, Any]]:
    guard = ConverseStreamGuard(matchers(PII))
    refusal = anthropic_error_body("refused", 403)
    out = b""
    for start in range(0, len(stream), 17):
        last = start + 17 >= len(stream)
        events = guard.split(stream[start : start + 17], last)
        out += guard.reframe(guard.render(events, last, lambda _: refusal))
    buffer = EventStreamBuffer()
    buffer.add_data(out)
    return [
        (m.headers.get(":event-type") or m.headers[":exception-type"], orjson.loads(m.payload))
        for m in buffer
    ]


def test_a_converse_streams_reasoning_is_refused_on_a_mask() -> None:
    messages = run_converse(converse_reasoning_frames("Card 4111 11", "11 1111 1111 ok"))
    assert messages[-1][0] == "validationException"
    assert all("4111" not in orjson.dumps(p).decode() for _, p in messages)


def test_a_converse_streams_clean_reasoning_keeps_its_shape() -> None:
    messages = run_converse(converse_reasoning_frames("Thinking about jane", " and the plan."))
    reasoning = [
        p["delta"]["reasoningContent"]
        for kind, p in messages
        if kind == "contentBlockDelta" and "reasoningContent" in p["delta"]
    ]
    assert "".join(r.get("text", "") for r in reasoning) == "Thinking about jane and the plan."
    assert reasoning[-1] == {"signature": "c2ln"}
    assert [k for k, _ in messages][-1] == "messageStop"


# --- Gemini streams -----------------------------------------------------------------------


def gemini_event(part: dict[str, Any], finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return b"data: " + orjson.dumps({"candidates": [candidate]}) + b"\r\n\r\n"


def test_a_gemini_thought_split_over_events_is_masked_and_stays_a_thought() -> None:
    chunks = [
        gemini_event({"text": "They wrote jane@exam", "thought": True}),
        gemini_event({"text": "ple.com earlier.", "thought": True}),
        gemini_event({"text": "Done."}, "STOP"),
    ]
    guard = GeminiStreamGuard(matchers(PII))
    refusal = google_error_body("refused", 403)
    out = b"".join(
        guard.render(guard.split(c, i == len(chunks) - 1), i == len(chunks) - 1, lambda _: refusal)
        for i, c in enumerate(chunks)
    )
    parts = [
        part
        for block in out.replace(b"\r\n", b"\n").split(b"\n\n")
        if block.startswith(b"data: ")
        for part in orjson.loads(block[6:])["candidates"][0]["content"]["parts"]
    ]
    thoughts = "".join(p["text"] for p in parts if p.get("thought"))
    answer = "".join(p["text"] for p in parts if not p.get("thought"))
    assert thoughts == "They wrote <EMAIL> earlier." and answer == "Done."


# --- buffered answers through the processor, a stream cut anywhere ------------------------


async def test_an_openai_stream_through_the_processor_masks_reasoning() -> None:
    gateway = Gateway(config_with(policy(MASK_PII), {"openai-chat": {"guardrails": "p"}}))
    stream = (
        openai_delta({"reasoning_content": "card 4111 1111 "})
        + openai_delta({"reasoning_content": "1111 1111 fine"})
        + openai_delta({"content": "ok"}, "stop")
        + b"data: [DONE]\n\n"
    )
    chunks = [stream[i : i + 40] for i in range(0, len(stream), 40)]
    answers = await gateway.send(
        "/v1/chat/completions",
        chat("hi", stream=True),
        response_headers(200, {"content-type": "text/event-stream"}),
        *(response_body(c, i == len(chunks) - 1) for i, c in enumerate(chunks)),
    )
    shown = client_body(chunks, answers)
    assert b"4111" not in shown
    text = "".join(d.get("reasoning_content") or "" for d in openai_deltas(shown))
    assert text == "card <CREDIT_CARD> fine"
