"""A guardrail webhook that is rate limited (HTTP 429) tells the client when to retry.

A fail_closed guard whose webhook answered 429 refused the request with a 503
``guardrail_unavailable``: clients reported an outage (and retried at once) where
the webhook had said when it would take calls again. Like a rate-limited
moderation service, it is now a 429 ``guardrail_rate_limited`` with the webhook's
own ``retry-after``, before the provider is called (request guards) and for a
buffered answer (response guards). A stream whose 200 has left can only end with
an error event: it names the wait in its message.

The webhook servers here stand in for the operator's own; the gateway's side is the
real processor, fed the messages Envoy sends.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.config import GatewayConfig
from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_chunk, openai_stream_text
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guardrail_gaps import in_a_minute, messages_body
from tests.unit.test_guardrail_review import Hook, serving, stream_through

DONE = b"data: [DONE]\n\n"
HOOK_TOKEN = "hook-s3cret-token"
ANSWER = {
    "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "code 1234"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}  # fmt: skip


def webhooked(
    port: int, *, phase: str = "request", route: str = "openai-chat", mode: str = "fail_closed"
) -> GatewayConfig:
    guardrails = {
        "webhooks": [{"name": "civility", "host": "127.0.0.1", "port": port,
                      "headers": {"x-webhook-token": HOOK_TOKEN}, "failure_mode": mode}],
        "policies": [{"name": "civil", phase: [{"name": "civility-guard",
                                                "webhook": "civility"}]}],
    }  # fmt: skip
    return config_with(guardrails, {route: {"guardrails": "civil"}})


def rate_limited(headers: dict[str, str]) -> Any:
    def reply(_: Any) -> web.Response:
        return web.json_response({"detail": "Too many requests"}, status=429, headers=headers)

    return reply


def shown_headers(answer: Any) -> dict[str, str]:
    response = answer.immediate_response
    return {h.header.key: h.header.raw_value.decode() for h in response.headers.set_headers}


def wait_message(seconds: int) -> str:
    return (
        f"Guardrail 'civility-guard' is rate limited by its webhook; "
        f"try again in {seconds} second{'' if seconds == 1 else 's'}"
    )


@pytest.mark.parametrize(
    ("given", "retry_after"),
    [
        ({"retry-after": "20"}, 20),
        ({"retry-after": "0.3"}, 1),
        ({"retry-after-ms": "2500"}, 3),
        ({}, 1),
        ({"retry-after": "later"}, 1),
    ],
)
async def test_a_rate_limited_request_webhook_tells_the_client_when_to_retry(
    given: dict[str, str], retry_after: int
) -> None:
    hook = Hook(rate_limited(given))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, error = immediate(answers[-1])
    assert status == 429
    assert shown_headers(answers[-1])["retry-after"] == str(retry_after)
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["code"] == "guardrail_rate_limited"
    assert error["error"]["message"] == wait_message(retry_after)
    line = gateway.log()
    assert line["http_status_code"] == 429
    assert line["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_closed"}
    ]
    # Refused before the provider: nothing reserved or charged.
    assert (line["prompt_tokens"], line["total_tokens"]) == (0, 0)
    assert HOOK_TOKEN not in orjson.dumps(line).decode()


async def test_a_retry_after_date_from_the_webhook_becomes_seconds() -> None:
    hook = Hook(rate_limited({"retry-after": in_a_minute()}))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert immediate(answers[-1])[0] == 429
    assert 55 <= int(shown_headers(answers[-1])["retry-after"]) <= 61


async def test_anthropic_clients_get_their_rate_limit_error_from_a_webhook() -> None:
    hook = Hook(rate_limited({"retry-after": "7"}))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, route="anthropic-messages"))
        body = messages_body({"type": "text", "text": "hello"})
        answers = await gateway.send("/v1/messages", body)
    status, error = immediate(answers[-1])
    assert status == 429
    assert shown_headers(answers[-1])["retry-after"] == "7"
    assert error == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": wait_message(7)},
    }


async def test_a_rate_limited_response_webhook_refuses_the_buffered_answer_with_a_429() -> None:
    hook = Hook(rate_limited({"retry-after": "12"}))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, phase="response"))
        answers = await gateway.send(
            "/v1/chat/completions",
            chat("code?"),
            response_headers(200),
            response_body(orjson.dumps(ANSWER)),
        )
    status, error = immediate(answers[-1])
    assert status == 429
    assert shown_headers(answers[-1])["retry-after"] == "12"
    assert error["error"]["code"] == "guardrail_rate_limited"
    assert b"1234" not in answers[-1].immediate_response.body
    line = gateway.log()
    assert line["guardrails"] == [
        {"guard": "civility-guard", "phase": "response", "action": "fail_closed"}
    ]
    # The provider produced the answer: its tokens are charged, as for any refused answer.
    assert line["completion_tokens"] == 3


async def test_a_stream_whose_webhook_is_rate_limited_ends_with_an_error_naming_the_wait() -> None:
    """The 200 has left: no status or header can change, so the error event says it all."""
    hook = Hook({"action": {}}, rate_limited({"retry-after": "20"}))
    chunks = [openai_chunk("Fine. "), openai_chunk("more text"), openai_chunk("and more"),
              openai_chunk(None, "stop"), DONE]  # fmt: skip
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "Fine. "
    error = orjson.loads(got.split(b"\n\n")[-3][6:])
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["code"] == "guardrail_rate_limited"
    assert error["error"]["message"] == wait_message(20)
    assert got.endswith(DONE)
    assert len(hook.calls) == 2  # the stream ended: nothing more is checked
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "response", "action": "fail_closed"}
    ]


async def test_a_rate_limited_webhook_failing_open_lets_the_prompt_through() -> None:
    hook = Hook(rate_limited({"retry-after": "20"}))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, mode="fail_open"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert answers[1].HasField("request_body")
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_open"}
    ]


async def test_a_webhook_error_other_than_429_is_still_a_503() -> None:
    hook = Hook(lambda _: web.Response(status=503, headers={"retry-after": "5"}))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, error = immediate(answers[-1])
    assert status == 503
    assert error["error"]["code"] == "guardrail_unavailable"
    assert "retry-after" not in shown_headers(answers[-1])
