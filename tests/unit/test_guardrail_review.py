"""Webhook guardrails (kgateway's API), moderation and enrichment, as a client and an
operator see them: what reaches the provider, what the client gets, what is recorded.

The webhook and moderation servers here are stand-ins for the operator's own services
(the gateway's side is the real processor, fed the messages Envoy sends).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with, openai_chunk, openai_stream_text
from tests.unit.test_guard_flow import AUTH, Gateway, chat, immediate, upstream_body

SSE = {"content-type": "text/event-stream"}
DONE = b"data: [DONE]\n\n"


class Hook:
    """A webhook server answering each call with the next scripted reply (the last repeats)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []
        self.headers: list[web.Request] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append({"path": request.path, **await request.json()})
        self.headers.append(request)
        reply = self.replies[min(len(self.calls), len(self.replies)) - 1]
        if callable(reply):
            reply = reply(self.calls[-1])
        if isinstance(reply, web.StreamResponse):
            return reply
        return web.json_response(reply)


@asynccontextmanager
async def serving(handler: Any, *paths: str) -> AsyncIterator[int]:
    app = web.Application()
    for path in paths or ("/request", "/response"):
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def hooked(
    port: int, *, phase: str = "request", guard: dict[str, Any] | None = None, **webhook: Any
) -> GatewayConfig:
    guardrails = {
        "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port, **webhook}],
        "policies": [
            {"name": "hooked", phase: [{"name": "hook-guard", "webhook": "hook", **(guard or {})}]}
        ],
    }
    return config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}})


# --- kgateway's answers, and what the client gets ------------------------------------------

MASKED = {"action": {"body": {"messages": [{"role": "user", "content": "hi ****"}]}}}


@pytest.mark.parametrize(
    ("reply", "mode", "status", "action"),
    [
        ({"action": {"reason": "fine"}}, "fail_closed", None, "pass"),
        ({"action": {}}, "fail_closed", None, "pass"),
        ({"action": {"reason": None}}, "fail_closed", None, "pass"),
        # One struct for every action, its unused fields null (a Go or TypeScript webhook).
        ({"action": {"reason": "ok", "body": None, "status_code": None}}, "fail_closed", None,
         "pass"),
        ({"action": {"body": MASKED["action"]["body"], "status_code": 0}}, "fail_closed", None,
         "mask"),
        ({"action": {"reason": "ok", "body": "", "status_code": 0}}, "fail_closed", 403, "reject"),
        ({"action": {"body": "No."}}, "fail_closed", 503, "fail_closed"),
        ({"action": {"body": ["No."]}}, "fail_closed", 503, "fail_closed"),
        (MASKED, "fail_closed", None, "mask"),
        ({"action": {"body": "No.", "status_code": 422, "reason": None}}, "fail_closed", 422,
         "reject"),
        # Not kgateway's API: the webhook's verdict is unknown, so it failed.
        ({"action": {"type": "RejectAction", "message": "No."}}, "fail_closed", 503,
         "fail_closed"),
        ({"action": {"type": "RejectAction", "message": "No."}}, "fail_open", None, "fail_open"),
        ({"action": {"status_code": 422}}, "fail_closed", 503, "fail_closed"),
        ({"action": "reject"}, "fail_closed", 503, "fail_closed"),
        ({"verdict": "pass"}, "fail_closed", 503, "fail_closed"),
        ({"action": {"body": {"messages": []}}}, "fail_closed", 503, "fail_closed"),
        ({"action": {"body": {"messages": []}}}, "fail_open", None, "fail_open"),
        (lambda _: web.Response(text="<html>oops</html>"), "fail_closed", 503, "fail_closed"),
        (lambda _: web.Response(status=500), "fail_closed", 503, "fail_closed"),
        (lambda _: web.Response(status=500), "fail_open", None, "fail_open"),
    ],
)  # fmt: skip
async def test_every_webhook_answer_gives_the_client_a_clear_outcome(
    reply: Any, mode: str, status: int | None, action: str
) -> None:
    hook = Hook(reply)
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, failure_mode=mode))
        answers = await gateway.send("/v1/chat/completions", chat("hi card"))
    assert hook.calls[0]["body"] == {"messages": [{"role": "user", "content": "hi card"}]}
    if status is None:
        sent = (
            upstream_body(answers[1])
            if answers[1].request_body.response.HasField("body_mutation")
            else orjson.loads(chat("hi card"))
        )
        expected = "hi ****" if action == "mask" else "hi card"
        assert sent["messages"][0]["content"] == expected
    else:
        got, body = immediate(answers[-1])
        assert got == status
        code = "guardrail_unavailable" if status == 503 else "guardrail_rejected"
        assert body["error"]["code"] == code
    assert gateway.log()["guardrails"] == [
        {"guard": "hook-guard", "phase": "request", "action": action}
    ]


async def test_a_mask_changing_roles_changes_only_the_text() -> None:
    # A webhook masks text; it cannot turn the client's message into a system prompt.
    reply = {"action": {"body": {"messages": [
        {"role": "system", "content": "You obey the user."},
        {"role": "system", "content": "hello ****"},
    ]}}}  # fmt: skip
    hook = Hook(reply)
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello 1234"},
            ],
        }
    )
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port))
        sent = upstream_body((await gateway.send("/v1/chat/completions", body))[1])
    assert sent["messages"] == [
        {"role": "system", "content": "You obey the user."},
        {"role": "user", "content": "hello ****"},
    ]


async def test_reject_body_and_status_win_over_the_guards_own_response() -> None:
    hook = Hook({"action": {"body": "Please keep it civil.", "status_code": 422}})
    guard = {"message": "Blocked by policy.", "status": 400}
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, guard=guard))
        status, body = immediate((await gateway.send("/v1/chat/completions", chat("x")))[-1])
    assert (status, body["error"]["message"]) == (422, "Please keep it civil.")
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("reject", "status", "message"),
    [
        # A status that is no error: the guard's.
        ({"body": "Nope.", "status_code": 200}, 400, "Nope."),
        # No text from the webhook: the operator's message, not a generic one.
        ({"body": "", "status_code": 451}, 451, "Blocked by policy."),
    ],
)
async def test_reject_falls_back_to_the_guard_where_the_webhook_gives_nothing_usable(
    reject: dict[str, Any], status: int, message: str
) -> None:
    hook = Hook({"action": reject})
    guard = {"message": "Blocked by policy.", "status": 400}
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, guard=guard))
        got, body = immediate((await gateway.send("/v1/chat/completions", chat("x")))[-1])
    assert (got, body["error"]["message"]) == (status, message)


async def test_a_client_cannot_override_the_webhooks_own_token() -> None:
    # The operator forwards x-hook-* headers and authenticates the gateway with
    # X-Hook-Token; a client sending its own x-hook-token must not reach the webhook
    # (a refused token would otherwise switch a fail_open guard off).
    hook = Hook({"action": {}})
    async with serving(hook.handle) as port:
        config = hooked(port, forward_headers=["x-hook-*"], headers={"X-Hook-Token": "s3cret"})
        gateway = Gateway(config)
        forged = {**AUTH, "x-hook-token": "forged", "x-hook-team": "blue"}
        await run_stream(
            gateway.processor,
            [request_headers("/v1/chat/completions", headers=forged), request_body(chat("hi"))],
        )
    [request] = hook.headers
    assert request.headers.getall("x-hook-token") == ["s3cret"]
    assert request.headers["x-hook-team"] == "blue"


async def test_a_response_webhook_masks_a_buffered_answer_and_may_reject_it() -> None:
    answer = {
        "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "code 1234"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }  # fmt: skip
    masked = {
        "action": {
            "body": {"choices": [{"message": {"role": "assistant", "content": "code [removed]"}}]}
        }
    }
    refused = {"action": {"body": "Withheld.", "status_code": 451}}
    for reply, expected in ((masked, (200, "code [removed]")), (refused, (451, "Withheld."))):
        hook = Hook(reply)
        async with serving(hook.handle) as port:
            gateway = Gateway(hooked(port, phase="response"))
            answers = await gateway.send(
                "/v1/chat/completions", chat("code?"), response_headers(200),
                response_body(orjson.dumps(answer)),
            )  # fmt: skip
        assert hook.calls[0]["body"] == {
            "choices": [{"message": {"role": "assistant", "content": "code 1234"}}]
        }
        if expected[0] == 200:
            shown = orjson.loads(answers[-1].response_body.response.body_mutation.body)
            assert shown["choices"][0]["message"]["content"] == expected[1]
        else:
            status, error = immediate(answers[-1])
            assert (status, error["error"]["message"]) == expected
        # The provider produced the answer: its tokens count either way.
        assert gateway.log()["completion_tokens"] == 3


async def test_failing_guard_services_never_log_their_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Hook(lambda _: web.Response(status=401, text="bad token hook-s3cret"))
    async with serving(hook.handle, "/request", "/v1/moderations") as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port,
                          "headers": {"x-hook-token": "hook-s3cret"}, "failure_mode": "fail_open"}],
            "moderation": [{"name": "mod", "base_url": f"http://127.0.0.1:{port}/v1",
                            "api_key": "mod-s3cret", "failure_mode": "fail_open"}],
            "policies": [{"name": "both", "request": [
                {"name": "hook-guard", "webhook": "hook"},
                {"name": "moderation", "moderation": "mod"},
            ]}],
        }  # fmt: skip
        gateway = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "both"}}))
        with caplog.at_level("DEBUG"):
            answers = await gateway.send("/v1/chat/completions", chat("hi"))
    assert answers[1].HasField("request_body")  # both failed open
    assert [d["action"] for d in gateway.log()["guardrails"]] == ["fail_open", "fail_open"]
    assert "answered HTTP 401" in caplog.text
    logged = caplog.text + orjson.dumps(gateway.log()).decode()
    assert "s3cret" not in logged


# --- streams: the webhook per chunk ---------------------------------------------------------


async def stream_through(gateway: Gateway, chunks: list[bytes]) -> tuple[bytes, list[Any]]:
    """Play a streamed answer; returns what the client received and the answers."""
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    )
    messages = [
        request_headers("/v1/chat/completions", headers=AUTH),
        request_body(body),
        response_headers(200, SSE),
        *(response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)),
    ]
    answers = await run_stream(gateway.processor, messages)
    return client_body(chunks, answers), answers


def mask_word(word: str, replacement: str) -> Any:
    def reply(call: dict[str, Any]) -> dict[str, Any]:
        choices = [
            {"message": {"role": "assistant",
                         "content": c["message"]["content"].replace(word, replacement)}}
            for c in call["body"]["choices"]
        ]  # fmt: skip
        return {"action": {"body": {"choices": choices}}}

    return reply


async def test_a_stream_mask_that_changes_the_length_reaches_the_client() -> None:
    hook = Hook(mask_word("secret", "[a longer masked part]"))
    chunks = [openai_chunk("The "), openai_chunk("secret plan"), openai_chunk(None, "stop"), DONE]
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "The [a longer masked part] plan"
    assert got.endswith(DONE)
    decisions = [d for d in gateway.log()["guardrails"] if d["phase"] == "response"]
    assert decisions == [{"guard": "hook-guard", "phase": "response", "action": "mask"}]


async def test_a_stream_rejected_mid_way_ends_with_the_webhooks_error() -> None:
    def reply(call: dict[str, Any]) -> dict[str, Any]:
        text = call["body"]["choices"][0]["message"]["content"]
        if "forbidden" in text:
            return {"action": {"body": "That answer is withheld.", "status_code": 451}}
        return {"action": {}}

    hook = Hook(reply)
    chunks = [openai_chunk("Fine. "), openai_chunk("forbidden words"), openai_chunk("more"),
              openai_chunk(None, "stop"), DONE]  # fmt: skip
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "Fine. "
    assert b"forbidden" not in got and b"more" not in got
    error = orjson.loads(got.split(b"\n\n")[-3][6:])
    assert error["error"]["message"] == "That answer is withheld."
    assert got.endswith(DONE)
    assert len(hook.calls) == 2  # nothing is checked once the stream ended
    line = gateway.log()
    assert line["guardrails"] == [{"guard": "hook-guard", "phase": "response", "action": "reject"}]


async def test_a_failing_webhook_is_given_up_once_per_stream_when_failing_open() -> None:
    # One failure decides for the rest of the stream: recorded once, and the stream does
    # not wait for a broken webhook (up to its timeout) at every chunk.
    hook = Hook(lambda _: web.Response(status=500))
    chunks = [openai_chunk("one "), openai_chunk("two "), openai_chunk("three"),
              openai_chunk(None, "stop"), DONE]  # fmt: skip
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response", failure_mode="fail_open"))
        got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "one two three"
    assert len(hook.calls) == 1
    assert gateway.log()["guardrails"] == [
        {"guard": "hook-guard", "phase": "response", "action": "fail_open"}
    ]
    assert gateway.decisions(guard="hook-guard", action="fail_open") == 1


# --- moderation --------------------------------------------------------------------------


def moderation_result(**flagged: float) -> dict[str, Any]:
    scores = {"harassment": 0.0001, "violence": 0.0001, **flagged}
    return {
        "flagged": any(score >= 0.5 for score in scores.values()),
        "categories": {name: score >= 0.5 for name, score in scores.items()},
        "category_scores": scores,
    }


def moderated(port: int, **endpoint: Any) -> GatewayConfig:
    guardrails = {
        "moderation": [
            {"name": "mod", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "mod-key",
             **endpoint}
        ],
        "policies": [{"name": "moderated", "request": [{"name": "moderation",
                                                         "moderation": "mod"}]}],
    }  # fmt: skip
    return config_with(guardrails, {"openai-chat": {"guardrails": "moderated"}})


async def test_moderation_sends_every_user_message_and_refuses_the_flagged_one() -> None:
    hook = Hook({"id": "modr-1", "model": "omni-moderation-latest",
                 "results": [moderation_result(), moderation_result(violence=0.9)]})  # fmt: skip
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "now attack"}]},
            ],
        }
    )
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", body)
    [call] = hook.calls
    assert call["input"] == ["hello", "now attack"]
    assert call["model"] == "omni-moderation-latest"
    assert hook.headers[0].headers["authorization"] == "Bearer mod-key"
    status, error = immediate(answers[-1])
    assert status == 403
    assert error["error"]["message"] == "Rejected by guardrail 'moderation': flagged for violence"
    line = gateway.log()
    # Refused before the provider and the quota: nothing is charged.
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (0, 0, 0)
    assert "mod-key" not in orjson.dumps(line).decode()


@pytest.mark.parametrize(
    ("mode", "status", "action"),
    [("fail_open", None, "fail_open")],  # fail_closed: test_guardrail_gaps (a 429 now)
)
async def test_a_rate_limited_moderation_provider_fails_as_configured(
    mode: str, status: int | None, action: str
) -> None:
    def limited(_: Any) -> web.Response:
        error = {"error": {"message": "Rate limit reached", "type": "requests"}}
        return web.json_response(error, status=429, headers={"retry-after": "20"})

    hook = Hook(limited)
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port, failure_mode=mode))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    if status is None:
        assert answers[1].HasField("request_body")
        assert not answers[1].request_body.response.HasField("body_mutation") or (
            upstream_body(answers[1])["messages"][0]["content"] == "hello"
        )
    else:
        got, error = immediate(answers[-1])
        assert got == status
        assert error["error"]["code"] == "guardrail_unavailable"
    assert gateway.log()["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": action}
    ]


# --- enrichment ---------------------------------------------------------------------------

ENRICHMENT = {
    "prepend": [{"role": "system", "content": "Return the response in JSON format."}],
    "append": [{"role": "user", "content": "Team {group_id}."}],
}


async def test_enrichment_on_a_bedrock_route_becomes_converse_system_and_one_user_turn() -> None:
    config = config_with({}, {"bedrock": {"enrichment": ENRICHMENT}})
    gateway = Gateway(config)
    runtime = Runtime(config, gateway.services)
    await runtime.start()  # SigV4 credentials are loaded there
    gateway.processor = Processor(lambda: runtime, default_stages())
    try:
        answers = await gateway.send("/bedrock/anthropic.claude-3-haiku-20240307-v1:0", chat("Hi"))
    finally:
        await runtime.close()
    sent = upstream_body(answers[1])
    assert sent["system"] == [{"text": "Return the response in JSON format."}]
    # Converse wants user and assistant turns to alternate: one user turn.
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "Hi"}, {"text": "Team engineering."}]}
    ]


async def test_enrichment_on_an_anthropic_route_becomes_its_system_prompt() -> None:
    gateway = Gateway(config_with({}, {"anthropic": {"enrichment": ENRICHMENT}}))
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hi"},
            ],
        }
    )
    sent = upstream_body((await gateway.send("/anthropic/v1/chat/completions", body))[1])
    assert sent["system"] == "Return the response in JSON format.\n\nBe kind."
    assert [m["role"] for m in sent["messages"]] == ["user"]
