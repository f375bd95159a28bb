"""Guards read what the first reasoning change left unread.

- An OpenAI answer's ``message.refusal`` (a structured-output refusal) and a stream's
  ``delta.refusal`` are text the client shows: response guards mask and refuse there.
- Reasoning a client sends back in its history reaches the provider: OpenAI-compatible
  ``reasoning_content`` / ``reasoning`` and Gemini thoughts are masked in place; signed
  reasoning (Anthropic's ``thinking``, Converse's signed ``reasoningText``) cannot change,
  so a mask drops it from a closed turn (the provider lets earlier turns go without their
  thinking) and refuses it in the open one, naming the guard and the kind of data.
- A stream refused by a guard names the kind of data it found, as a whole answer does.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.content import drop_reasoning, request_slots
from extproc.guardrails.converse_text import drop_reasoning as drop_converse_reasoning
from extproc.guardrails.converse_text import request_slots as converse_request_slots
from extproc.guardrails.gemini_text import request_slots as gemini_request_slots
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.guardrails.stream import StreamGuard
from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import (
    anthropic_event,
    config_with,
    openai_answer,
    openai_delta,
    openai_deltas,
    play,
)
from tests.unit.test_guard_flow import Gateway, chat, immediate, upstream_body, webhook_server

CARD = "4111 1111 1111 1111"
MASK_PII = {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"}
REJECT_CARDS = {"name": "no-cards", "builtins": ["CREDIT_CARD"], "action": "reject"}


def policy(phase: str, guard: dict[str, Any]) -> dict[str, Any]:
    return {"policies": [{"name": "p", phase: [guard]}]}


def gateway(route: str, phase: str, guard: dict[str, Any]) -> Gateway:
    return Gateway(config_with(policy(phase, guard), {route: {"guardrails": "p"}}))


def matchers(*configs: dict[str, Any]) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig.model_validate(c), 256) for c in configs))


def masked(slots: list[Any], guards: Matchers) -> None:
    for slot in slots:
        _, hits, _ = guards.scan(slot.text, json_text=slot.is_json)
        slot.write(apply(slot.text, hits))


# --- 1. an OpenAI answer's refusal ----------------------------------------------------------


async def answered(gw: Gateway, answer: bytes) -> Any:
    answers = await gw.send(
        "/v1/chat/completions",
        chat("hi"),
        response_headers(200, {"content-length": "9"}),
        response_body(answer),
    )
    return answers[-1]


async def test_an_address_in_a_structured_output_refusal_is_masked() -> None:
    gw = gateway("openai-chat", "response", MASK_PII)
    last = await answered(gw, openai_answer(content=None, refusal="Ask jane@example.com."))
    shown = orjson.loads(last.response_body.response.body_mutation.body)
    assert shown["choices"][0]["message"]["refusal"] == "Ask <EMAIL>."
    assert {"guard": "pii", "phase": "response", "action": "mask"} in gw.log()["guardrails"]


async def test_a_reject_guard_refuses_an_answer_whose_refusal_holds_a_card() -> None:
    gw = gateway("openai-chat", "response", REJECT_CARDS)
    last = await answered(gw, openai_answer(content=None, refusal=f"I won't use {CARD}."))
    status, body = immediate(last)
    assert status == 403 and body["error"]["code"] == "guardrail_rejected"
    assert body["error"]["message"] == "Rejected by guardrail 'no-cards': it contains CREDIT_CARD"
    assert "4111" not in orjson.dumps(body).decode()


def test_an_address_split_over_streamed_refusal_deltas_is_masked() -> None:
    chunks = [
        openai_delta({"role": "assistant", "content": None, "refusal": None}),
        openai_delta({"refusal": "Write to jane@exa"}),
        openai_delta({"refusal": "mple.com inst"}),
        openai_delta({"refusal": "ead"}),
        openai_delta({}, "stop"),
        b"data: [DONE]\n\n",
    ]
    out = play(StreamGuard(matchers(MASK_PII), anthropic=False), chunks)
    assert b"jane@" not in out
    refusal = "".join(d.get("refusal") or "" for d in openai_deltas(out))
    assert refusal == "Write to <EMAIL> instead"


def test_a_refusal_held_at_the_finish_goes_out_masked_before_the_finish_chunk() -> None:
    # The address ends the delta: it could still grow, so it waits for the finish.
    chunks = [openai_delta({"refusal": "Mail jane@example.com"}), openai_delta({}, "stop")]
    out = play(StreamGuard(matchers(MASK_PII), anthropic=False), chunks)
    assert "".join(d.get("refusal") or "" for d in openai_deltas(out)) == "Mail <EMAIL>"
    finish = [orjson.loads(b[6:]) for b in out.split(b"\n\n") if b.startswith(b"data: {")][-1]
    assert finish["choices"][0]["finish_reason"] == "stop"


def test_a_reject_guard_ends_a_stream_whose_refusal_holds_a_card() -> None:
    guard = StreamGuard(matchers(REJECT_CARDS), anthropic=False)
    out = play(
        guard,
        [openai_delta({"refusal": "Card 4111 1111 "}), openai_delta({"refusal": "1111 1111"})],
    )
    assert b"4111" not in out and guard.rejected_by == 0


# --- 2. reasoning sent back in a request ----------------------------------------------------


async def test_reasoning_an_openai_client_sends_back_is_masked_before_the_provider() -> None:
    gw = gateway("openai-chat", "request", MASK_PII)
    earlier = {
        "role": "assistant",
        "content": "Done.",
        "reasoning_content": "They wrote from jane@example.com",
        "reasoning": f"card {CARD}",
    }
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "hi"},
                earlier,
                {"role": "user", "content": "and?"},
            ],
        }
    )
    answers = await gw.send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])["messages"][1]
    assert sent["reasoning_content"] == "They wrote from <EMAIL>"
    assert sent["reasoning"] == "card <CREDIT_CARD>"


async def test_a_reject_guard_refuses_a_request_whose_reasoning_sent_back_holds_a_card() -> None:
    gw = gateway("openai-chat", "request", REJECT_CARDS)
    earlier = {"role": "assistant", "content": "ok", "reasoning_content": f"use {CARD}"}
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}, earlier]}
    )
    answers = await gw.send("/v1/chat/completions", body)
    status, error = immediate(answers[-1])
    assert status == 403 and "CREDIT_CARD" in error["error"]["message"]


def thinking(text: str, signature: str = "c2ln") -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def anthropic_request(*messages: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "max_tokens": 64, "messages": list(messages)}
    )


async def test_a_mask_in_thinking_of_a_closed_turn_drops_it_and_the_thinking_after_it() -> None:
    gw = gateway("anthropic-messages", "request", MASK_PII)
    use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "found"}
    body = anthropic_request(
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [thinking(f"card {CARD}"), {"type": "text", "text": "A"}]},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": [thinking("clean, later"), {"type": "text", "text": "B"}]},
        {"role": "user", "content": "third"},
        {"role": "assistant", "content": [thinking("the open turn's"), use]},
        {"role": "user", "content": [result]},
    )
    answers = await gw.send("/v1/messages", body)
    sent = upstream_body(answers[1])["messages"]
    assert "4111" not in orjson.dumps(sent).decode()
    assert sent[1]["content"] == [{"type": "text", "text": "A"}]
    # Left out between others, a later block would fail Claude's prefix check: it goes too.
    assert sent[3]["content"] == [{"type": "text", "text": "B"}]
    # The tool loop still running keeps its thinking, as Anthropic requires.
    assert sent[5]["content"][0] == thinking("the open turn's")
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gw.log()["guardrails"]


async def test_a_mask_in_thinking_of_the_open_turn_refuses_naming_guard_and_kind() -> None:
    gw = gateway("anthropic-messages", "request", MASK_PII)
    use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "found"}
    body = anthropic_request(
        {"role": "user", "content": "pay"},
        {"role": "assistant", "content": [thinking(f"use card {CARD}"), use]},
        {"role": "user", "content": [result]},
    )
    answers = await gw.send("/v1/messages", body)
    assert answers[-1].HasField("immediate_response"), "a changed signed block reached Claude"
    status, error = immediate(answers[-1])
    assert status == 403 and error["type"] == "error"
    assert error["error"]["message"] == (
        "Rejected by guardrail 'pii': signed reasoning sent back contains CREDIT_CARD, "
        "which cannot be masked"
    )
    assert "4111" not in orjson.dumps(error).decode()
    assert {"guard": "pii", "phase": "request", "action": "reject"} in gw.log()["guardrails"]


async def test_a_reject_guard_refuses_a_card_in_thinking_sent_back() -> None:
    gw = gateway("anthropic-messages", "request", REJECT_CARDS)
    body = anthropic_request(
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [thinking(f"card {CARD}"), {"type": "text", "text": "A"}]},
        {"role": "user", "content": "second"},
    )
    answers = await gw.send("/v1/messages", body)
    status, error = immediate(answers[-1])
    assert status == 403 and "CREDIT_CARD" in error["error"]["message"]


def test_a_thinking_only_message_is_not_emptied_by_a_drop() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [thinking(f"card {CARD}")]},
            {"role": "user", "content": "second"},
        ]
    }
    [slot] = [s for s in request_slots(body) if s.signed]
    assert drop_reasoning(body, slot.block) is None, "an empty message Anthropic refuses"
    assert body["messages"][1]["content"] == [thinking(f"card {CARD}")]


def converse_body(
    signed_text: str = "mail jane@example.com", unsigned_text: str = "R1 saw bob@example.com"
) -> dict[str, Any]:
    """Two closed Converse turns: the first's reasoning signed, the second's (another
    model's) not."""
    signed = {"reasoningText": {"text": signed_text, "signature": "c2ln"}}
    unsigned = {"reasoningText": {"text": unsigned_text}}
    return {
        "messages": [
            {"role": "user", "content": [{"text": "first"}]},
            {"role": "assistant", "content": [{"reasoningContent": signed}, {"text": "A"}]},
            {"role": "user", "content": [{"text": "second"}]},
            {"role": "assistant", "content": [{"reasoningContent": unsigned}, {"text": "B"}]},
            {"role": "user", "content": [{"text": "third"}]},
        ]
    }


def test_converse_reasoning_sent_back_is_read_signed_only_with_a_signature() -> None:
    slots = converse_request_slots(converse_body())
    reasoning = [(s.text, s.signed) for s in slots if "@" in s.text]
    assert reasoning == [("mail jane@example.com", True), ("R1 saw bob@example.com", False)]


def test_a_converse_signed_reasoning_block_of_a_closed_turn_can_be_dropped() -> None:
    body = converse_body()
    [signed] = [s for s in converse_request_slots(body) if s.signed]
    assert drop_converse_reasoning(body, signed.block) is not None
    assert body["messages"][1]["content"] == [{"text": "A"}]
    # The reasoning after it in the closed turns goes with it (the prefix check).
    assert body["messages"][3]["content"] == [{"text": "B"}]


def test_a_gemini_thought_sent_back_is_masked_in_place_and_keeps_its_signature() -> None:
    thought = {"text": "they said amy@example.com", "thought": True, "thoughtSignature": "c2ln"}
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [thought, {"text": "Noted."}]},
        ]
    }
    masked(gemini_request_slots(body), matchers(MASK_PII))
    assert thought == {"text": "they said <EMAIL>", "thought": True, "thoughtSignature": "c2ln"}


# --- 3. a refused stream names the kind of data --------------------------------------------


def thinking_stream(*pieces: str) -> bytes:
    def delta(payload: dict[str, Any]) -> bytes:
        return anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": payload}
        )

    block = {"type": "thinking", "thinking": "", "signature": ""}
    message = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [],
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    return b"".join(
        [
            anthropic_event("message_start", {"type": "message_start", "message": message}),
            anthropic_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            *(delta({"type": "thinking_delta", "thinking": piece}) for piece in pieces),
            delta({"type": "signature_delta", "signature": "c2ln"}),
            anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            anthropic_event("message_stop", {"type": "message_stop"}),
        ]
    )


async def test_a_stream_refused_on_signed_thinking_names_the_kind_of_data() -> None:
    gw = gateway("anthropic-messages", "response", MASK_PII)
    stream = thinking_stream("The card is 4111 11", "11 1111 1111, noted.")
    chunks = [stream[i : i + 64] for i in range(0, len(stream), 64)]
    request = orjson.loads(anthropic_request({"role": "user", "content": "hi"}))
    answers = await gw.send(
        "/v1/messages",
        orjson.dumps({**request, "stream": True}),
        response_headers(200, {"content-type": "text/event-stream"}),
        *(response_body(c, i == len(chunks) - 1) for i, c in enumerate(chunks)),
    )
    shown = client_body(chunks, answers)
    assert b"4111" not in shown
    error = orjson.loads(shown.rstrip().split(b"\n\n")[-1].split(b"data: ", 1)[1])
    assert error["error"]["message"] == (
        "Rejected by guardrail 'pii': the model's signed reasoning contains CREDIT_CARD, "
        "which cannot be masked"
    )


async def test_a_stream_refused_by_a_reject_guard_names_the_kind_as_a_whole_answer_does() -> None:
    gw = gateway("openai-chat", "response", REJECT_CARDS)
    stream = (
        openai_delta({"content": "Card 4111 1111 "})
        + openai_delta({"content": "1111 1111 ok"})
        + openai_delta({}, "stop")
        + b"data: [DONE]\n\n"
    )
    answers = await gw.send(
        "/v1/chat/completions",
        chat("hi", stream=True),
        response_headers(200, {"content-type": "text/event-stream"}),
        response_body(stream, True),
    )
    shown = client_body([stream], answers)
    assert b"4111" not in shown
    error = [orjson.loads(b[6:]) for b in shown.split(b"\n\n") if b.startswith(b"data: {")][-1]
    assert error["error"]["message"] == "Rejected by guardrail 'no-cards': it contains CREDIT_CARD"


async def test_a_request_webhooks_mask_of_closed_turn_thinking_drops_the_block() -> None:
    async def check(request: web.Request) -> web.Response:
        messages = (await request.json())["body"]["messages"]
        masked = [{**m, "content": m["content"].replace(CARD, "<CARD>")} for m in messages]
        return web.json_response({"action": {"body": {"messages": masked}}})

    async with webhook_server(check) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "p", "request": [{"name": "in", "webhook": "hook"}]}],
        }
        gw = Gateway(config_with(guardrails, {"anthropic-messages": {"guardrails": "p"}}))
        body = anthropic_request(
            {"role": "user", "content": "first"},
            {
                "role": "assistant",
                "content": [thinking(f"card {CARD}"), {"type": "text", "text": "A"}],
            },
            {"role": "user", "content": f"and {CARD}?"},
        )
        answers = await gw.send("/v1/messages", body)
    sent = upstream_body(answers[1])["messages"]
    assert sent[1]["content"] == [{"type": "text", "text": "A"}]
    assert sent[2]["content"] == "and <CARD>?"
