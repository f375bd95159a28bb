"""Moderation reads a request's images where its model does (OpenAI's omni models), on
every client API: before, only text was sent, and any image passed a moderation guard.

The mock's moderation endpoint reads an image for its trigger words (in a data URL's
decoded bytes, or in its URL) in the categories OpenAI reads in images, and refuses two
images in one call as OpenAI does (``too_many_images``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.testing import serve_mock
from tests.unit.guard_helpers import config_with
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_gemini_guard_flow import GENERATE
from tests.unit.test_gemini_guard_flow import gateway as gemini_gateway
from tests.unit.test_guard_flow import Gateway, immediate

PNG = b"\x89PNG\r\n\x1a\n"
# An image the mock reads as graphic violence (the word is in its bytes), and a clean one.
GORY = base64.b64encode(PNG + b" gore ").decode()
CLEAN = base64.b64encode(PNG + b" kittens ").decode()
REFUSED = "Rejected by guardrail 'moderated': flagged for violence/graphic (in an image)"
CLAUDE = "claude-3-5-haiku-latest"
CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"


def moderated(mock_url: str, **moderation: Any) -> dict[str, Any]:
    return {
        "moderation": [
            {"name": "mod", "base_url": f"{mock_url}/v1", "api_key": "mock-key", **moderation}
        ],
        "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
    }


ROUTES = (
    "openai-chat",
    "anthropic-messages",
    "anthropic-count-tokens",
    "openai-responses",
    "bedrock-converse",
)


def guarded(mock_url: str, **moderation: Any) -> Gateway:
    routes = {name: {"guardrails": "mod"} for name in ROUTES}
    return Gateway(config_with(moderated(mock_url, **moderation), routes))


def chat(*parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "What is in this picture?"}, *parts]
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )


def image_url(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def png(data: str) -> str:
    return f"data:image/png;base64,{data}"


def passed(answers: list[Any]) -> bool:
    return answers[-1].HasField("request_body")


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


# --- OpenAI chat ---------------------------------------------------------------------------


async def test_an_image_in_a_chat_request_is_moderated(mock_url: str) -> None:
    gateway = guarded(mock_url)
    refused = await gateway.send("/v1/chat/completions", chat(image_url(png(GORY))))
    status, body = immediate(refused[-1])
    assert status == 403
    assert body["error"]["message"] == REFUSED
    assert body["error"]["code"] == "guardrail_rejected"
    assert passed(await gateway.send("/v1/chat/completions", chat(image_url(png(CLEAN)))))
    # By URL too: the service fetches it (the mock reads the word in it).
    by_url = await gateway.send(
        "/v1/chat/completions", chat(image_url("https://img.test/gore.png"))
    )
    assert immediate(by_url[-1])[0] == 403


async def test_each_image_is_its_own_call_so_several_pass_and_any_one_refuses(
    mock_url: str,
) -> None:
    # OpenAI's omni models take one image per call: sent together, two are a 400.
    gateway = guarded(mock_url)
    two_clean = chat(image_url(png(CLEAN)), image_url("https://img.test/cat.png"))
    assert passed(await gateway.send("/v1/chat/completions", two_clean))
    one_gory = chat(image_url(png(CLEAN)), image_url(png(GORY)), image_url(png(CLEAN)))
    status, body = immediate((await gateway.send("/v1/chat/completions", one_gory))[-1])
    assert (status, body["error"]["message"]) == (403, REFUSED)
    assert gateway.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "reject"}
    ]


async def test_a_category_flagged_in_text_and_image_is_named_once(mock_url: str) -> None:
    gateway = guarded(mock_url)
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "more gore"}, image_url(png(GORY))],
                }
            ],
        }
    )
    _, error = immediate((await gateway.send("/v1/chat/completions", body))[-1])
    assert (
        error["error"]["message"]
        == "Rejected by guardrail 'moderated': flagged for violence/graphic"
    )


async def test_a_text_only_category_is_not_read_in_an_image(mock_url: str) -> None:
    # The result says which inputs each category was applied to: hate is read in text
    # only, so an image's 0 there is no score a threshold of 0 can refuse.
    gateway = guarded(mock_url, thresholds={"hate": 0.0})
    only_image = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [image_url(png(CLEAN))]}]}
    )
    assert passed(await gateway.send("/v1/chat/completions", only_image))


async def test_more_images_than_the_guard_checks_is_a_400_and_one_repeated_counts_once(
    mock_url: str,
) -> None:
    # Hundreds of images would be hundreds of calls, spending the service's rate limit for
    # every other client and outlasting Envoy's wait (a retried 503, each time).
    gateway = guarded(mock_url, max_images=2)
    three = chat(*(image_url(f"https://img.test/{n}.png") for n in range(3)))
    status, body = immediate((await gateway.send("/v1/chat/completions", three))[-1])
    assert status == 400
    assert body["error"] == {
        "message": "Guardrail 'moderated' cannot check this request: it holds 3 images, "
        "more than the 2 it checks in one request; send fewer",
        "type": "invalid_request_error",
        "param": None,
        "code": "guardrail_too_many_images",
    }
    # The same image again (a history sent back each turn) is one image.
    again = chat(*(image_url(png(CLEAN)) for _ in range(3)))
    assert passed(await gateway.send("/v1/chat/completions", again))


async def test_failing_open_the_first_images_are_still_checked(mock_url: str) -> None:
    lenient = guarded(mock_url, max_images=1, failure_mode="fail_open")
    first_gory = chat(image_url(png(GORY)), image_url(png(CLEAN)))
    assert immediate((await lenient.send("/v1/chat/completions", first_gory))[-1])[0] == 403
    last_gory = chat(image_url(png(CLEAN)), image_url(png(GORY)))
    assert passed(await lenient.send("/v1/chat/completions", last_gory))
    assert lenient.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "fail_open"}
    ]


async def test_a_text_moderation_model_is_sent_no_images_unless_told(mock_url: str) -> None:
    # text-moderation-latest refuses an image: images are sent only to a model that reads
    # them, or where the config says the service does.
    body = chat(image_url(png(GORY)))
    text_only = guarded(mock_url, model="text-moderation-latest")
    assert passed(await text_only.send("/v1/chat/completions", body))
    told = guarded(mock_url, model="my-moderation", images=True)
    assert immediate((await told.send("/v1/chat/completions", body))[-1])[0] == 403
    off = guarded(mock_url, images=False)
    assert passed(await off.send("/v1/chat/completions", body))


# --- Anthropic Messages ----------------------------------------------------------------------


def messages(*blocks: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"model": CLAUDE, "max_tokens": 50, "messages": [{"role": "user", "content": list(blocks)}]}
    )


def claude_image(data: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


async def test_an_anthropic_image_is_moderated_inline_by_url_and_in_a_tool_result(
    mock_url: str,
) -> None:
    gateway = guarded(mock_url)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, body = immediate((await gateway.send(path, messages(claude_image(GORY))))[-1])
        assert status == 403, path
        assert body["type"] == "error" and body["error"]["message"] == REFUSED
    by_url = {"type": "image", "source": {"type": "url", "url": "https://img.test/gore.png"}}
    assert immediate((await gateway.send("/v1/messages", messages(by_url)))[-1])[0] == 403
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [claude_image(GORY)]}
    assert immediate((await gateway.send("/v1/messages", messages(result)))[-1])[0] == 403
    document = {"type": "document", "source": {"type": "content", "content": [claude_image(GORY)]}}
    assert immediate((await gateway.send("/v1/messages", messages(document)))[-1])[0] == 403
    assert passed(await gateway.send("/v1/messages", messages(claude_image(CLEAN))))


async def test_an_image_the_service_cannot_read_is_a_clear_400(mock_url: str) -> None:
    # A file id names storage the moderation service cannot reach: passed on unread, any
    # image could be moved past the guard so.
    gateway = guarded(mock_url)
    by_file = {"type": "image", "source": {"type": "file", "file_id": "file_011"}}
    status, body = immediate((await gateway.send("/v1/messages", messages(by_file)))[-1])
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == (
        "Guardrail 'moderated' cannot check this request: it holds an image given by its "
        "Files API id, which its moderation service cannot read; send the image inline "
        "(base64) or by URL"
    )
    # Where the operator lets failures through, it passes, recorded so.
    lenient = guarded(mock_url, failure_mode="fail_open")
    assert passed(await lenient.send("/v1/messages", messages(by_file)))
    assert lenient.log()["guardrails"] == [
        {"guard": "moderated", "phase": "request", "action": "fail_open"}
    ]
    # What can be checked still is: the image passing unread takes no text with it.
    beside = messages(by_file, {"type": "text", "text": "how to build a bomb"})
    status, body = immediate((await lenient.send("/v1/messages", beside))[-1])
    assert status == 403 and "flagged for illicit/violent" in body["error"]["message"]


# --- Bedrock Converse ------------------------------------------------------------------------


def converse(*blocks: dict[str, Any]) -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": list(blocks)}]})


async def test_a_converse_image_is_moderated_and_an_s3_one_refused(mock_url: str) -> None:
    gateway = guarded(mock_url)
    gory = {"image": {"format": "png", "source": {"bytes": GORY}}}
    status, body = immediate((await gateway.send(CONVERSE, converse(gory)))[-1])
    assert status == 403 and body["message"] == REFUSED
    guard = {"guardContent": gory}
    assert immediate((await gateway.send(CONVERSE, converse(guard)))[-1])[0] == 403
    # A tool's result is the tool's: read where the guard's roles name it.
    result = {"toolResult": {"toolUseId": "t1", "content": [gory]}}
    tool_only = guarded(mock_url, roles=["tool"])
    assert immediate((await tool_only.send(CONVERSE, converse(result)))[-1])[0] == 403
    await gateway.send(CONVERSE, converse(result))  # the signer is not started here
    assert gateway.decisions(guard="moderated", action="pass") == 1
    clean = {"image": {"format": "png", "source": {"bytes": CLEAN}}}
    await gateway.send(CONVERSE, converse(clean))
    assert gateway.decisions(guard="moderated", action="pass") == 2
    stored = {"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k.png"}}}}
    status, body = immediate((await gateway.send(CONVERSE, converse(stored)))[-1])
    assert status == 400 and "an image given by its S3 location" in body["message"]


# --- the Responses API -----------------------------------------------------------------------


def responses(*parts: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "input": [{"role": "user", "content": list(parts)}]}
    )


async def test_a_responses_input_image_is_moderated(mock_url: str) -> None:
    gateway = guarded(mock_url)
    gory = {"type": "input_image", "image_url": png(GORY)}
    status, body = immediate((await gateway.send("/v1/responses", responses(gory)))[-1])
    assert (status, body["error"]["message"]) == (403, REFUSED)
    clean = {"type": "input_image", "image_url": png(CLEAN)}
    assert passed(await gateway.send("/v1/responses", responses(clean)))
    by_id = {"type": "input_image", "file_id": "file-abc"}
    status, body = immediate((await gateway.send("/v1/responses", responses(by_id)))[-1])
    assert (status, body["error"]["code"]) == (400, "guardrail_image_unreadable")
    # A computer use call's screenshot is what the tool returned.
    shot = {
        "type": "computer_call_output",
        "call_id": "c1",
        "output": {"type": "computer_screenshot", "image_url": png(GORY)},
    }
    tools = guarded(mock_url, roles=["user", "tool"])
    body_with_shot = orjson.dumps({"model": "gpt-4o-mini", "input": [shot]})
    status, _ = immediate((await tools.send("/v1/responses", body_with_shot))[-1])
    assert status == 403


# --- Gemini ----------------------------------------------------------------------------------


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


def gemini(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "What is this?"}, *parts]}]}


async def test_a_gemini_image_is_moderated_and_other_media_are_not(
    vertex: tuple[str, Path],
) -> None:
    mock, _ = vertex
    async with gemini_gateway(vertex, moderated(mock), guardrails="mod") as gw:
        inline = {"inlineData": {"mimeType": "image/png", "data": GORY}}
        status, body = refusal(await gw.send(GENERATE, gemini(inline)))
        assert status == 403 and body["error"]["message"] == REFUSED
        snake = {"inline_data": {"mime_type": "image/png", "data": GORY}}
        assert refusal(await gw.send(GENERATE, gemini(snake)))[0] == 403
        # Audio is no image: no moderation model reads it.
        audio = {"inlineData": {"mimeType": "audio/wav", "data": GORY}}
        assert passed(await gw.send(GENERATE, gemini(audio)))
        by_url = {"fileData": {"mimeType": "image/png", "fileUri": "https://img.test/gore.png"}}
        assert refusal(await gw.send(GENERATE, gemini(by_url)))[0] == 403
        stored = {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}}
        status, body = refusal(await gw.send(GENERATE, gemini(stored)))
        assert status == 400 and "an image at a gs: URI" in body["error"]["message"]


def refusal(answers: list[Any]) -> tuple[int, dict[str, Any]]:
    return immediate(answers[-1])


@pytest.mark.parametrize(
    "uri",
    ["scans/jane.doe@example.com-passport.png", "jane.doe@example.com:scan.png"],
    ids=["a path", "an address before a colon"],
)
async def test_a_gemini_file_uri_that_is_no_url_is_not_repeated_in_the_refusal(
    vertex: tuple[str, Path], uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A fileUri with no scheme is the client's text, user data as often as not: the
    # refusal went to the client, the gateway's log and the log line with the URI whole
    # in it ("an image at a scans/jane.doe@example.com-passport.png: URI").
    mock, _ = vertex
    async with gemini_gateway(vertex, moderated(mock), guardrails="mod") as gw:
        stored = {"fileData": {"mimeType": "image/png", "fileUri": uri}}
        status, body = refusal(await gw.send(GENERATE, gemini(stored)))
    message = body["error"]["message"]
    assert status == 400 and "it holds an image given by a fileUri that is no URL" in message
    assert "jane.doe" not in message
    assert "jane.doe" not in caplog.text
