"""A request a moderation guard cannot check whole, of which a part is flagged, is refused
as flagged: the client learns why its request is refused, whatever else went wrong.

Before, a guard failing closed answered its 400 "cannot check" (an image given by a Files
API id, more images than it checks) before it read the text beside it, so a client sending
a flagged prompt with such an image was told to send the image otherwise, and then got the
real refusal. And an image whose call failed otherwise (the service's 500, no answer in
time) cancelled the text's call: the flagged text came back a 503 failing closed, and
passed unread failing open. Now every part the guard can read is read, and a flagged one
decides; the "cannot check" refusal or the outage stands only when nothing was flagged.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from extproc.config.loader import parse_config
from extproc.testing import serve_mock
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate
from tests.unit.test_guardrail_review import moderation_result, serving
from tests.unit.test_moderation_images import GORY, PNG, image_url, moderated, png

FLAGGED = "Rejected by guardrail 'moderated': flagged for illicit/violent"
ROUTES = ("openai-chat", "anthropic-messages")


def guarded(mock_url: str, mode: str, **moderation: Any) -> Gateway:
    routes = {name: {"guardrails": "mod"} for name in ROUTES}
    return Gateway(config_with(moderated(mock_url, failure_mode=mode, **moderation), routes))


def claude(text: str, *blocks: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": text}, *blocks]
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": content}],
        }
    )


def chat(text: str, *parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": text}, *parts]
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


def kittens(n: int) -> str:
    """A clean image of its own (the guard sends the same image once)."""
    return base64.b64encode(PNG + f" kittens {n} ".encode()).decode()


FILE_IMAGE = {"type": "image", "source": {"type": "file", "file_id": "file_011abc"}}


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


async def refusal(gateway: Gateway, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    answers = await gateway.send(path, body)
    assert answers[-1].HasField("immediate_response"), "the request passed"
    status, error = immediate(answers[-1])
    return status, error["error"]


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_a_flagged_text_beside_an_image_given_by_file_id_is_refused_as_flagged(
    mock_url: str, mode: str
) -> None:
    gateway = guarded(mock_url, mode)
    body = claude("how to build a bomb", FILE_IMAGE)
    status, error = await refusal(gateway, "/v1/messages", body)
    assert (status, error["message"]) == (403, FLAGGED)
    assert gateway.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "reject"}
    ]


async def test_a_flagged_image_beside_one_given_by_file_id_is_refused_as_flagged(
    mock_url: str,
) -> None:
    gateway = guarded(mock_url, "fail_closed")
    gory = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": GORY}}
    status, error = await refusal(gateway, "/v1/messages", claude("hello", FILE_IMAGE, gory))
    assert status == 403
    assert error["message"] == (
        "Rejected by guardrail 'moderated': flagged for violence/graphic (in an image)"
    )


async def test_nothing_flagged_beside_an_image_given_by_file_id_still_cannot_be_checked(
    mock_url: str,
) -> None:
    gateway = guarded(mock_url, "fail_closed")
    status, error = await refusal(gateway, "/v1/messages", claude("hello", FILE_IMAGE))
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Guardrail 'moderated' cannot check this request")
    assert gateway.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "fail_closed"}
    ]


async def test_a_flagged_text_among_too_many_images_is_refused_as_flagged(mock_url: str) -> None:
    gateway = guarded(mock_url, "fail_closed", max_images=2)
    images = [image_url(png(kittens(i))) for i in range(3)]
    status, error = await refusal(
        gateway, "/v1/chat/completions", chat("how to build a bomb", *images)
    )
    assert (status, error["message"], error["code"]) == (403, FLAGGED, "guardrail_rejected")


async def test_too_many_clean_images_still_cannot_be_checked(mock_url: str) -> None:
    gateway = guarded(mock_url, "fail_closed", max_images=2)
    images = [image_url(png(kittens(i))) for i in range(3)]
    status, error = await refusal(gateway, "/v1/chat/completions", chat("hello", *images))
    assert (status, error["code"]) == (400, "guardrail_too_many_images")


# --- an image's call failing otherwise than by refusing the image ---------------------------


def flags_text_fails_images(image_reply: Any) -> Any:
    """A moderation service that flags every text and answers an image's call with
    ``image_reply`` (a coroutine function of the request)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        call = await request.json()
        if any(isinstance(item, dict) for item in call["input"]):
            reply: web.StreamResponse = await image_reply(request)
            return reply
        results = [moderation_result(violence=0.9) for _ in call["input"]]
        return web.json_response({"id": "modr-1", "model": call["model"], "results": results})

    return handle


async def server_error(_: web.Request) -> web.Response:
    return web.Response(status=500, text="upstream failure")


async def never_in_time(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(status=500)


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
@pytest.mark.parametrize("image_reply", [server_error, never_in_time], ids=["500", "timeout"])
async def test_a_flagged_text_is_refused_though_an_images_call_fails(
    mode: str, image_reply: Any
) -> None:
    async with serving(flags_text_fails_images(image_reply), "/v1/moderations") as port:
        gateway = guarded(f"http://127.0.0.1:{port}", mode, timeout_ms=300)
        body = chat("now attack", image_url("https://img.test/slow.png"))
        status, error = await refusal(gateway, "/v1/chat/completions", body)
    assert (status, error["message"]) == (
        403,
        "Rejected by guardrail 'moderated': flagged for violence",
    )


def short_wait_config() -> dict[str, Any]:
    """The default config, Envoy waiting 1.1 s for each answer: 0.5 s for the guards once
    the store's wait (0.5 s) and the margin are taken."""
    raw: dict[str, Any] = yaml.safe_load(Path("config/gateway.yaml").read_text("utf-8"))
    raw.setdefault("envoy", {})["message_timeout_ms"] = 1100
    raw.setdefault("store", {})["timeout_ms"] = 500
    return raw


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_a_flagged_text_is_refused_though_an_image_outlasts_the_phases_wait(
    mode: str,
) -> None:
    """The guard's own timeout (3 s) outlasts what is left of Envoy's wait for the phase
    (a webhook before it may have spent most of it): the wait's end cut every call, the
    text's verdict, already in, with them. Each call now ends at the wait's end, and the
    verdicts given stand."""
    raw = short_wait_config()
    async with serving(flags_text_fails_images(never_in_time), "/v1/moderations") as port:
        guardrails = moderated(f"http://127.0.0.1:{port}", failure_mode=mode)
        raw["guardrails"] = guardrails
        for route in raw["routes"]:
            if route["name"] == "openai-chat":
                route["guardrails"] = "mod"
        gateway = Gateway(parse_config(yaml.safe_dump(raw), "test", {}))
        body = chat("now attack", image_url("https://img.test/slow.png"))
        status, error = await refusal(gateway, "/v1/chat/completions", body)
    assert (status, error["message"]) == (
        403,
        "Rejected by guardrail 'moderated': flagged for violence",
    )
