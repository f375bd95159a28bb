"""A guard's refusal with a status SDKs retry (a webhook's RejectAction with 503 or 429,
a matcher configured with 429): the status stays as given, but the SDKs are told not to
retry, since the same text meets the same verdict. A guard's service in trouble (its own
429, its 5xx) stays retryable: that passes."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with, openai_answer
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guardrail_review import Hook, hooked, serving


def headers_of(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        h.header.key: h.header.raw_value.decode()
        for h in answer.immediate_response.headers.set_headers
    }


@pytest.mark.parametrize(
    ("status", "retried"),
    [(503, False), (500, False), (429, False), (409, False), (422, None), (403, None)],
)
async def test_a_webhook_refusal_is_not_retried_by_sdks(status: int, retried: bool | None) -> None:
    hook = Hook({"action": {"body": "No, and asking again will not change it.",
                            "status_code": status}})  # fmt: skip
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port))
        answers = await gateway.send("/v1/chat/completions", chat("hi"))
    got, body = immediate(answers[-1])
    # kgateway's API: the webhook's status and body reach the client as given.
    assert (got, body["error"]["message"]) == (status, "No, and asking again will not change it.")
    assert body["error"]["code"] == "guardrail_rejected"
    headers = headers_of(answers[-1])
    expected = None if retried is None else "false"
    assert headers.get("x-should-retry") == expected
    assert "retry-after" not in headers
    assert gateway.log()["guardrails"][0]["action"] == "reject"


async def test_an_answer_refused_with_503_is_not_asked_for_again() -> None:
    # The answer was generated and is charged: a retry by the SDK would generate and
    # charge another, to be refused the same way.
    hook = Hook({"action": {"body": "Withheld.", "status_code": 503}})
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response"))
        answers = await gateway.send(
            "/v1/chat/completions",
            chat("hi"),
            response_headers(200),
            response_body(openai_answer(content="an answer")),
        )
    assert immediate(answers[-1])[0] == 503
    assert headers_of(answers[-1])["x-should-retry"] == "false"
    assert gateway.log()["completion_tokens"] == 3


async def test_a_matcher_configured_with_429_is_not_retried_either() -> None:
    policy = {"name": "p", "request": [{"name": "no-secrets", "patterns": ["secret"],
                                        "status": 429}]}  # fmt: skip
    gateway = Gateway(config_with({"policies": [policy]}, {"openai-chat": {"guardrails": "p"}}))
    answers = await gateway.send("/v1/chat/completions", chat("a secret"))
    assert immediate(answers[-1])[0] == 429
    assert headers_of(answers[-1])["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("reply", "status", "headers"),
    [
        # The webhook at its own rate limit: waiting passes, so the SDK waits and retries.
        (lambda _: web.json_response({}, status=429, headers={"retry-after": "3"}), 429,
         {"retry-after": "3"}),
        # The webhook down: a retry may meet it up again.
        (lambda _: web.Response(status=503), 503, {}),
    ],
)  # fmt: skip
async def test_a_guard_service_in_trouble_stays_retryable(
    reply: Any, status: int, headers: dict[str, str]
) -> None:
    async with serving(Hook(reply).handle) as port:
        answers = await Gateway(hooked(port)).send("/v1/chat/completions", chat("hi"))
    assert immediate(answers[-1])[0] == status
    got = headers_of(answers[-1])
    assert "x-should-retry" not in got
    assert {k: got[k] for k in headers} == headers
