"""Content parts that OpenAI-compatible providers read, guarded as OpenAI's own parts are.

vLLM takes a bare string among a message's content parts as a text part (its part type
includes ``str``), and Mistral's reasoning models send their reasoning back as a
``thinking`` part holding text chunks. The guards read neither: a card number or a
refused word written that way reached such a provider past every request guard, and the
log line said ``pass``.

Mistral's reasoning models answer that way too: ``content`` is a list of parts, whole and
streamed, the reasoning in ``thinking`` parts and the answer in ``text`` parts. Response
guards read only a string: such an answer reached the client unmasked and unrefused, its
decisions logged ``pass``.

vLLM also reads the Responses API's ``input_text`` and ``output_text`` parts in a chat
message as text parts; the guards read only ``text`` parts, so those passed unread too.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_answer, openai_delta, openai_deltas
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_flow import AUTH, Gateway, immediate, upstream_body, webhook_server

POLICIES = {
    "policies": [
        {
            "name": "p",
            "request": [
                {"name": "falcon", "literals": ["project falcon"], "case_insensitive": True},
                {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"},
            ],
        }
    ]
}
CARD = "4111 1111 1111 1111"
CHAT = "/v1/chat/completions"
DONE = b"data: [DONE]\n\n"


def guarded() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "p"}}))


def chat(*messages: dict[str, Any]) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": list(messages)})


def mistral_turn(thought: str, answer: str) -> dict[str, Any]:
    """An assistant turn as a Mistral reasoning model answered it, sent back as it came."""
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": thought}]}
    return {"role": "assistant", "content": [thinking, {"type": "text", "text": answer}]}


USER = {"role": "user", "content": "Go on."}


@pytest.mark.parametrize("role", ["system", "user", "tool"])
async def test_a_card_in_a_bare_string_part_reaches_vllm_masked(role: str) -> None:
    gateway = guarded()
    message = {"role": role, "content": ["Pay with", f"card {CARD}."]}
    if role == "tool":
        message["tool_call_id"] = "call_1"
    answers = await gateway.send(CHAT, chat(message, USER))
    sent = upstream_body(answers[1])
    assert sent["messages"][0]["content"] == ["Pay with", "card <CREDIT_CARD>."]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]


async def test_a_refused_word_in_a_bare_string_part_is_refused() -> None:
    gateway = guarded()
    question = {"role": "user", "content": ["Status of Project Falcon?"]}
    answers = await gateway.send(CHAT, chat(question))
    status, body = immediate(answers[-1])
    assert status == 403
    assert body["error"]["code"] == "guardrail_rejected"
    refused = {"guard": "falcon", "phase": "request", "action": "reject"}
    assert gateway.log()["guardrails"][0] == refused


@pytest.mark.parametrize("kind", ["input_text", "output_text"])
async def test_a_card_in_a_responses_style_part_reaches_vllm_masked(kind: str) -> None:
    # vLLM's chat API reads the Responses API's part types as text parts; OpenAI refuses
    # them. Unread, a card written in one reached such a provider whole.
    gateway = guarded()
    message = {"role": "user", "content": [{"type": kind, "text": f"Pay with {CARD}."}]}
    answers = await gateway.send(CHAT, chat(message))
    sent = upstream_body(answers[1])
    assert sent["messages"][0]["content"] == [{"type": kind, "text": "Pay with <CREDIT_CARD>."}]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]


async def test_a_refused_word_in_an_input_text_part_is_refused() -> None:
    gateway = guarded()
    question = {"role": "user", "content": [{"type": "input_text", "text": "Project Falcon?"}]}
    status, body = immediate((await gateway.send(CHAT, chat(question)))[-1])
    assert status == 403
    assert body["error"]["code"] == "guardrail_rejected"


async def test_mistral_reasoning_sent_back_is_masked_in_place() -> None:
    gateway = guarded()
    body = chat(USER, mistral_turn("The user is jane@example.com.", "Done."), USER)
    answers = await gateway.send(CHAT, body)
    sent = upstream_body(answers[1])
    # No signature covers Mistral's reasoning: the text is masked where it stands, and
    # the turn keeps its shape.
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "The user is <EMAIL>."}]},
        {"type": "text", "text": "Done."},
    ]


async def test_a_refused_word_in_mistral_reasoning_sent_back_is_refused() -> None:
    gateway = guarded()
    body = chat(USER, mistral_turn("This is about project falcon.", "Done."), USER)
    status, _ = immediate((await gateway.send(CHAT, body))[-1])
    assert status == 403


async def test_a_webhook_gets_and_masks_bare_string_parts() -> None:
    seen: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        messages = (await request.json())["body"]["messages"]
        seen.extend(messages)
        masked = [{**m, "content": m["content"].replace("secret", "[x]")} for m in messages]
        return web.json_response({"action": {"body": {"messages": masked}}})

    async with webhook_server(hook) as port:
        section = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "p", "request": [{"name": "hooked", "webhook": "hook"}]}],
        }
        gateway = Gateway(config_with(section, {"openai-chat": {"guardrails": "p"}}))
        answers = await gateway.send(CHAT, chat({"role": "user", "content": ["a secret"]}))
    assert {"role": "user", "content": "a secret"} in seen
    assert upstream_body(answers[1])["messages"][0]["content"] == ["a [x]"]


# --- answers: Mistral's reasoning models answer with content as a list of parts ---------

ANSWER_POLICIES = {
    "policies": [
        {
            "name": "p",
            "response": [
                {"name": "falcon", "literals": ["project falcon"], "case_insensitive": True},
                {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"},
            ],
        }
    ]
}
QUESTION = orjson.dumps({"model": "gpt-4o-mini", "messages": [USER]})
STREAMED = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [USER]})


def answers_guarded() -> Gateway:
    return Gateway(config_with(ANSWER_POLICIES, {"openai-chat": {"guardrails": "p"}}))


def thinking(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


async def answered(gateway: Gateway, content: list[dict[str, Any]]) -> tuple[int, Any]:
    """The status and body the client gets for a whole answer whose content is parts."""
    answer = openai_answer(content=content)
    answers = await gateway.send(CHAT, QUESTION, response_headers(200), response_body(answer))
    if answers[-1].HasField("immediate_response"):
        return immediate(answers[-1])
    return 200, orjson.loads(client_body([answer], answers[3:]))


async def test_a_whole_answer_of_parts_is_masked_in_its_text_and_its_reasoning() -> None:
    gateway = answers_guarded()
    content = [thinking("They are jane@example.com."), text(f"Charge card {CARD}.")]
    status, body = await answered(gateway, content)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == [
        thinking("They are <EMAIL>."),
        text("Charge card <CREDIT_CARD>."),
    ]
    assert gateway.log()["guardrails"] == [
        {"guard": "falcon", "phase": "response", "action": "pass"},
        {"guard": "pii", "phase": "response", "action": "mask"},
    ]


@pytest.mark.parametrize("where", ["text", "thinking"])
async def test_a_refused_word_in_a_whole_answer_of_parts_refuses_it(where: str) -> None:
    said = "It is Project Falcon."
    content = [thinking(said), text("Done.")] if where == "thinking" else [text(said)]
    status, body = await answered(answers_guarded(), content)
    assert status == 403
    assert body["error"]["code"] == "guardrail_rejected"


def part_chunk(*parts: dict[str, Any]) -> bytes:
    return openai_delta({"content": list(parts)})


def streamed_text(body: bytes) -> tuple[str, str]:
    """What a client assembling a streamed answer of parts shows: its reasoning, its text."""
    reasoning, answer = [], []
    for delta in openai_deltas(body):
        content = delta.get("content")
        parts = [text(content)] if isinstance(content, str) else content or []
        for part in parts:
            if part["type"] == "text":
                answer.append(part["text"])
            else:
                reasoning.extend(chunk["text"] for chunk in part["thinking"])
    return "".join(reasoning), "".join(answer)


async def streamed(gateway: Gateway, chunks: list[bytes]) -> bytes:
    answers = await play_sse(gateway.processor, CHAT, AUTH, STREAMED, chunks)
    return client_body(chunks, answers[3:])


async def test_a_streamed_answer_of_parts_is_masked_across_its_chunks() -> None:
    gateway = answers_guarded()
    chunks = [
        part_chunk(thinking("Mail jane.d")),
        part_chunk(thinking("oe@exam")),
        part_chunk(thinking("ple.com first.")),
        part_chunk(text("Card 4111 1111 ")),
        part_chunk(text("1111 1111, done.")),
        openai_delta({}, "stop") + DONE,
    ]
    received = await streamed(gateway, chunks)
    assert streamed_text(received) == ("Mail <EMAIL> first.", "Card <CREDIT_CARD>, done.")
    assert b"jane" not in received and b"4111" not in received
    # The reasoning held back leaves before the answer's first text, as the client
    # shows them: reasoning, then the answer.
    kinds = [
        part["type"]
        for delta in openai_deltas(received)
        if isinstance(delta.get("content"), list)
        for part in delta["content"]
        if part.get("text") or part.get("thinking")
    ]
    assert kinds == sorted(kinds, reverse=True)  # every "thinking" before any "text"
    assert {"guard": "pii", "phase": "response", "action": "mask"} in gateway.log()["guardrails"]


async def test_a_refused_word_cut_over_streamed_parts_ends_the_stream() -> None:
    gateway = answers_guarded()
    chunks = [
        part_chunk(text("This is Project Fal")),
        part_chunk(text("con, as asked.")),
        openai_delta({}, "stop") + DONE,
    ]
    received = await streamed(gateway, chunks)
    assert b"Fal" not in received
    assert b"guardrail_rejected" in received
    line = gateway.log()
    assert (line["outcome"], line["error_code"]) == ("rejected", "guardrail_rejected")
