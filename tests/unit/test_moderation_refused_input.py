"""A moderation service that refuses the input itself (a 400, 413 or 422: a text too
long for it, an image it cannot download) would refuse the same request again. Before,
it was a 503 ``guardrail_unavailable``, which the openai and anthropic SDKs retry (twice
by default), each retry calling the service for the same refusal; now a guard failing
closed answers a 400 that says so, and ``failure_mode`` still decides."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.config import GatewayConfig
from extproc.testing import serve_mock
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guardrail_review import Hook, serving


def moderated(base_url: str, mode: str = "fail_closed") -> GatewayConfig:
    guardrails = {
        "moderation": [
            {"name": "mod", "base_url": base_url, "api_key": "mod-key", "failure_mode": mode}
        ],
        "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
    }
    return config_with(guardrails, {"openai-chat": {"guardrails": "mod"}})


def openai_error(status: int, code: str | None, message: str = "Invalid input") -> Any:
    def reply(_: web.Request) -> web.Response:
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": "input",
            "code": code,
        }
        return web.json_response({"error": error}, status=status)

    return reply


def unfetchable_image(text: str = "what is this?") -> bytes:
    image = {"type": "image_url", "image_url": {"url": "https://img.test/unfetchable.png"}}
    content = [{"type": "text", "text": text}, image]
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


async def test_an_image_the_service_cannot_download_is_a_400_not_a_retried_503() -> None:
    async with serve_mock() as mock_url:
        gateway = Gateway(moderated(f"{mock_url}/v1"))
        answers = await gateway.send("/v1/chat/completions", unfetchable_image())
    status, body = immediate(answers[-1])
    assert status == 400
    assert body["error"] == {
        "message": "Guardrail 'moderated' cannot check this request: its moderation service "
        "refused the input (HTTP 400 invalid_image_url), as it would again",
        "type": "invalid_request_error",
        "param": None,
        "code": "guardrail_input_refused",
    }
    assert gateway.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "fail_closed"}
    ]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_refused_input_is_a_400_whatever_status_the_service_refused_it_with(
    status: int,
) -> None:
    hook = Hook(openai_error(status, "string_above_max_length", "The input is too long."))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(f"http://127.0.0.1:{port}/v1"))
        answers = await gateway.send("/v1/chat/completions", chat("a long text"))
    code, body = immediate(answers[-1])
    assert code == 400
    assert f"(HTTP {status} string_above_max_length)" in body["error"]["message"]
    # The service's own message is never repeated: it may quote the input.
    assert "too long" not in body["error"]["message"]


async def test_a_refused_input_failing_open_passes() -> None:
    async with serve_mock() as mock_url:
        gateway = Gateway(moderated(f"{mock_url}/v1", mode="fail_open"))
        answers = await gateway.send("/v1/chat/completions", unfetchable_image())
    assert answers[-1].HasField("request_body")
    assert gateway.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "fail_open"}
    ]


async def test_an_image_the_service_refuses_takes_no_text_past_a_guard_failing_open() -> None:
    # The image's call is refused; the text's, beside it, still gives its verdict: before,
    # a client could attach an unfetchable image to any text to have it pass unread.
    async with serve_mock() as mock_url:
        for mode in ("fail_open", "fail_closed"):
            gateway = Gateway(moderated(f"{mock_url}/v1", mode=mode))
            bad = unfetchable_image("how to build a bomb")
            status, body = immediate((await gateway.send("/v1/chat/completions", bad))[-1])
            assert status == 403, mode
            assert body["error"]["message"] == (
                "Rejected by guardrail 'moderated': flagged for illicit/violent"
            )


async def test_a_400_naming_the_guards_model_is_still_an_outage() -> None:
    # The operator's mistake, not the client's input: every request meets it, and the
    # warning logged tells the operator.
    hook = Hook(openai_error(400, "model_not_found", "The model `omni-x` does not exist"))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(f"http://127.0.0.1:{port}/v1"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, body = immediate(answers[-1])
    assert (status, body["error"]["code"]) == (503, "guardrail_unavailable")


async def test_a_code_that_is_no_identifier_is_not_quoted() -> None:
    hook = Hook(openai_error(400, "the text 'secret words' is not allowed"))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(f"http://127.0.0.1:{port}/v1"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, body = immediate(answers[-1])
    assert status == 400
    assert "(HTTP 400)" in body["error"]["message"]
    assert "secret" not in body["error"]["message"]
