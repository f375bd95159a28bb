"""A guardrail webhook that refuses what it was sent (a 400, 413 or 422: a prompt too
large for it, a shape it does not take) would refuse the same request again. Before, a
request guard failing closed turned it into a 503 ``guardrail_unavailable``, which the
openai and anthropic SDKs retry (twice by default), each retry calling the webhook for
the same refusal, while a moderation service's refusal was already a 400
``guardrail_input_refused``. Webhooks now answer as moderation does: the same code, the
webhook's status named and never its body, ``failure_mode`` still deciding.

The webhook servers here stand in for the operator's own; the gateway's side is the
real processor, fed the messages Envoy sends.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.testing import response_body, response_headers
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guard_webhook_rate_limit import ANSWER, HOOK_TOKEN, webhooked
from tests.unit.test_guardrail_gaps import messages_body
from tests.unit.test_guardrail_review import Hook, serving

PROMPT = "the quarterly numbers of project falcon"


def refusing(status: int) -> Any:
    """A webhook refusing the payload, quoting it in its body as servers do."""

    def reply(call: dict[str, Any]) -> web.Response:
        quoted = call["body"]["messages"][0]["content"] if "messages" in call["body"] else ""
        return web.json_response({"detail": f"payload too large: {quoted}"}, status=status)

    return reply


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_refused_input_is_a_400_not_a_retried_503(status: int) -> None:
    hook = Hook(refusing(status))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    code, body = immediate(answers[-1])
    assert code == 400
    assert body["error"] == {
        "message": "Guardrail 'civility-guard' cannot check this request: its webhook "
        f"refused the input (HTTP {status}), as it would again",
        "type": "invalid_request_error",
        "param": None,
        "code": "guardrail_input_refused",
    }
    line = gateway.log()
    assert line["http_status_code"] == 400
    assert line["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_closed"}
    ]
    # Refused before the provider: nothing reserved or charged.
    assert line["total_tokens"] == 0
    # Neither the webhook's body (it quotes the prompt) nor its token go anywhere.
    shown = orjson.dumps([body, line]).decode()
    assert "payload too large" not in shown and HOOK_TOKEN not in shown
    assert len(hook.calls) == 1


async def test_anthropic_clients_get_their_invalid_request_error() -> None:
    hook = Hook(refusing(413))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, route="anthropic-messages"))
        answers = await gateway.send("/v1/messages", messages_body({"type": "text", "text": "hi"}))
    code, body = immediate(answers[-1])
    assert code == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "its webhook refused the input (HTTP 413)" in body["error"]["message"]


async def test_a_refused_input_failing_open_passes() -> None:
    hook = Hook(refusing(413))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, mode="fail_open"))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    assert answers[-1].HasField("request_body")
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_open"}
    ]


@pytest.mark.parametrize("status", [401, 404, 409])
async def test_other_client_errors_of_the_webhook_stay_an_outage(status: int) -> None:
    """A wrong token or path is the operator's to mend, not the client's input."""
    hook = Hook(lambda _: web.Response(status=status, text="no"))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    code, body = immediate(answers[-1])
    assert (code, body["error"]["code"]) == (503, "guardrail_unavailable")


async def test_a_response_webhook_refusing_the_answer_stays_unavailable() -> None:
    """What it refused is the provider's answer, not the client's input: the client
    cannot change it, and a new attempt gets a new answer (docs/guardrails.md)."""
    hook = Hook(lambda _: web.Response(status=413, text="answer too large"))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, phase="response"))
        answers = await gateway.send(
            "/v1/chat/completions",
            chat(PROMPT),
            response_headers(200),
            response_body(orjson.dumps(ANSWER)),
        )
    code, body = immediate(answers[-1])
    assert (code, body["error"]["code"]) == (503, "guardrail_unavailable")
    assert "answer too large" not in orjson.dumps(body).decode()
