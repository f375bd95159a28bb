"""A review of request guards on reasoning sent back, as a client's odd or mixed history
meets them.

- A content block whose ``type`` is no string (a list, an object) after signed thinking a
  mask drops does not fail the gateway: the thinking goes, the block goes on for the
  provider to refuse, and the client never gets a 500.
- Reasoning without a signature (DeepSeek's on Converse) that a drop removes with the
  signed block before it is gone from what Bedrock gets: no guard refuses the request for
  its text, and no later webhook is sent it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, signing_processor
from tests.unit.test_guard_flow import Gateway, upstream_body, webhook_server
from tests.unit.test_guardrails_reasoning_sent_back import converse_body, thinking

CARD = "4111 1111 1111 1111"
MASK_PII = {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"}
REJECT_SECRET = {"name": "no-secrets", "literals": ["project-zebra"], "action": "reject"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"


async def test_a_block_whose_type_is_no_string_after_dropped_thinking_is_no_500() -> None:
    policy = {"policies": [{"name": "p", "request": [MASK_PII]}]}
    gw = Gateway(config_with(policy, {"anthropic-messages": {"guardrails": "p"}}))
    for odd in (["text"], {"kind": "text"}):
        earlier = [thinking(f"card {CARD}"), {"type": odd}, {"type": "text", "text": "A"}]
        body = orjson.dumps(
            {
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 64,
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": earlier},
                    {"role": "user", "content": "second"},
                ],
            }
        )
        answers = await gw.send("/v1/messages", body)
        assert not answers[-1].HasField("immediate_response"), answers[-1].immediate_response
        sent = upstream_body(answers[1])["messages"][1]["content"]
        assert sent == [{"type": odd}, {"type": "text", "text": "A"}]


def converse_history(later_reasoning: str) -> dict[str, Any]:
    """A closed turn whose signed reasoning holds a card, then one whose reasoning (another
    model's, unsigned) a drop of the first takes with it."""
    return converse_body(f"card {CARD}", later_reasoning)


async def converse_through(policy: dict[str, Any], body: dict[str, Any], services: Services) -> Any:
    config = config_with(policy, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        return await run_stream(
            processor,
            [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))],
        )


async def test_reasoning_dropped_with_a_signed_block_before_it_is_not_refused(
    services: Services,
) -> None:
    policy = {"policies": [{"name": "p", "request": [MASK_PII, REJECT_SECRET]}]}
    answers = await converse_through(policy, converse_history("plan: project-zebra"), services)
    refused = [a for a in answers if a.HasField("immediate_response")]
    assert not refused, "refused for reasoning Bedrock never gets"
    sent = upstream_body(answers[1])["messages"]
    assert sent[1]["content"] == [{"text": "A"}]
    assert sent[3]["content"] == [{"text": "B"}]


async def test_a_webhook_after_a_drop_is_not_sent_the_reasoning_dropped(
    services: Services,
) -> None:
    seen: list[list[str]] = []

    async def first(request: web.Request) -> web.Response:
        messages = (await request.json())["body"]["messages"]
        masked = [{**m, "content": m["content"].replace(CARD, "<CARD>")} for m in messages]
        return web.json_response({"action": {"body": {"messages": masked}}})

    async def second(request: web.Request) -> web.Response:
        messages = (await request.json())["body"]["messages"]
        seen.append([m["content"] for m in messages])
        return web.json_response({"action": {}})

    async with webhook_server(first) as one, webhook_server(second) as two:
        policy = {
            "webhooks": [
                {"name": "masker", "host": "127.0.0.1", "port": one},
                {"name": "auditor", "host": "127.0.0.1", "port": two},
            ],
            "policies": [
                {
                    "name": "p",
                    "request": [
                        {"name": "mask", "webhook": "masker"},
                        {"name": "audit", "webhook": "auditor"},
                    ],
                }
            ],
        }
        answers = await converse_through(policy, converse_history("saw bob@example.com"), services)
    assert not any(a.HasField("immediate_response") for a in answers)
    [texts] = seen
    assert texts == ["first", "A", "second", "B", "third"]
