"""Content parts that OpenAI-compatible providers read, guarded as OpenAI's own parts are.

vLLM takes a bare string among a message's content parts as a text part (its part type
includes ``str``), and Mistral's reasoning models send their reasoning back as a
``thinking`` part holding text chunks. The guards read neither: a card number or a
refused word written that way reached such a provider past every request guard, and the
log line said ``pass``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body, webhook_server

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
