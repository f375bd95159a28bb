"""Guardrails and enrichment on a gemini_generate_content route, through the processor
(real ext_proc messages) to the mock's Vertex AI: what Vertex gets, what the client gets,
in Google's shape, and the decisions and usage of the log line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex, vertex_provider
from tests.unit.test_guard_flow import webhook_server

KEY = {"x-goog-api-key": "team1-key"}
MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
COUNT = f"/v1beta/models/{MODEL}:countTokens"
EMAIL = "jane@example.com"
USAGE = {"promptTokenCount": 6, "candidatesTokenCount": 4, "totalTokenCount": 10}
FROM_VERTEX = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
SSE_FROM_VERTEX = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}

POLICIES = {
    "policies": [
        {
            "name": "pii",
            "request": [
                {"name": "secrets", "literals": ["hunter2"], "action": "reject"},
                {"name": "emails", "builtins": ["EMAIL"], "action": "mask"},
            ],
            "response": [
                {"name": "answer-secrets", "literals": ["hunter2"], "status": 422},
                {"name": "answer-emails", "builtins": ["EMAIL"], "action": "mask"},
            ],
        }
    ]
}


def user(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def answer(text: str) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
    return {"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": MODEL}


def event(text: str, finish: bool = False) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    usage: dict[str, int] = {"promptTokenCount": 6, "candidatesTokenCount": 1}
    if finish:
        candidate["finishReason"] = "STOP"
        usage = USAGE
    chunk = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": MODEL}
    return b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


class Gateway:
    def __init__(self, processor: Processor, services: Services) -> None:
        self.processor = processor
        self.services = services

    async def send(self, path: str, body: dict[str, Any], *more: Any) -> list[Any]:
        messages = [request_headers(path, headers=KEY), request_body(orjson.dumps(body)), *more]
        return await run_stream(self.processor, messages)

    def log(self) -> dict[str, Any]:
        lines: list[dict[str, Any]] = self.services.access_log.lines()  # type: ignore[attr-defined]
        return lines[-1]


def gemini_config(
    vertex: tuple[str, Path], section: dict[str, Any], route: dict[str, Any]
) -> GatewayConfig:
    """The default config with the mock's Vertex, Gemini on it, and a gemini route with
    ``route``'s fields (its policies, its enrichment); ``section`` is its ``guardrails``."""
    mock, key_file = vertex
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["models"].append({"name": MODEL, "provider": "vertex", "upstream_model": f"google/{MODEL}"})
    raw["routes"].insert(
        0,
        {
            "name": "gemini",
            "path_prefix": "/v1beta/models",
            "api": "gemini_generate_content",
            **route,
        },
    )
    raw["guardrails"] = section
    return parse_config(yaml.safe_dump(raw), "test", {})


@asynccontextmanager
async def gateway(
    vertex: tuple[str, Path], section: dict[str, Any], **route: Any
) -> AsyncIterator[Gateway]:
    """A processor serving ``gemini_config``, its runtime started (Vertex's token)."""
    services = Services(GatewayMetrics(), MemoryLog())
    runtime = Runtime(gemini_config(vertex, section, route), services)
    await runtime.start()
    try:
        yield Gateway(Processor(lambda: runtime, default_stages()), services)
    finally:
        await runtime.close()


def upstream(answers: list[Any]) -> dict[str, Any]:
    """The body the gateway sent Vertex."""
    result: dict[str, Any] = orjson.loads(answers[1].request_body.response.body_mutation.body)
    return result


def refusal(answer: Any) -> tuple[int, dict[str, Any]]:
    error = answer.immediate_response
    body: dict[str, Any] = orjson.loads(error.body)
    return error.status.code, body


# --- requests ----------------------------------------------------------------------------


async def test_a_masked_prompt_reaches_vertex_masked(vertex: tuple[str, Path]) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": f"Owner: {EMAIL}"}]},
        **user(f"Write to {EMAIL}"),
    }
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(GENERATE, body)
        sent = upstream(answers)
        assert sent["systemInstruction"]["parts"] == [{"text": "Owner: <EMAIL>"}]
        assert sent["contents"][0]["parts"] == [{"text": "Write to <EMAIL>"}]
        assert gw.log()["guardrails"][:2] == [
            {"guard": "secrets", "phase": "request", "action": "pass"},
            {"guard": "emails", "phase": "request", "action": "mask"},
        ]


async def test_a_rejected_prompt_is_refused_in_googles_shape(vertex: tuple[str, Path]) -> None:
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(GENERATE, user("my password is hunter2"))
        status, body = refusal(answers[-1])
        assert status == 403
        assert body == {
            "error": {
                "code": 403,
                "message": "Rejected by guardrail 'secrets'",
                "status": "PERMISSION_DENIED",
            }
        }
        line = gw.log()
        assert line["http_status_code"] == 403 and line["total_tokens"] == 0


async def test_a_token_count_is_guarded_as_the_request_it_counts(vertex: tuple[str, Path]) -> None:
    wrapped = {"generateContentRequest": {"model": f"models/{MODEL}", **user(f"I am {EMAIL}")}}
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        masked = upstream(await gw.send(COUNT, wrapped))
        refused = await gw.send(COUNT, user("hunter2"))
    # Vertex's own form of the count, the masked text in it.
    assert masked == {"contents": [{"role": "user", "parts": [{"text": "I am <EMAIL>"}]}]}
    assert refusal(refused[-1])[0] == 403


async def test_enrichment_reaches_vertex_in_geminis_shape(vertex: tuple[str, Path]) -> None:
    enrichment = {
        "prepend": [
            {"role": "system", "content": "You answer for {group_id}."},
            {"role": "user", "content": "Context first."},
        ],
        "append": [{"role": "user", "content": "Be brief."}],
    }
    body = {"system_instruction": {"parts": [{"text": "Client's own."}]}, **user("Hi")}
    async with gateway(vertex, {}, enrichment=enrichment) as gw:
        sent = upstream(await gw.send(GENERATE, body))
        counted = upstream(await gw.send(COUNT, user("Hi")))
    assert sent["system_instruction"]["parts"][1:] == [{"text": "Client's own."}]
    assert sent["system_instruction"]["parts"][0]["text"].startswith("You answer for ")
    assert "systemInstruction" not in sent
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Context first."}]},
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "user", "parts": [{"text": "Be brief."}]},
    ]
    # The count counts the prompt generateContent sends.
    assert counted["contents"] == sent["contents"]
    assert counted["systemInstruction"]["parts"][0] == sent["system_instruction"]["parts"][0]


async def test_a_webhook_sees_geminis_text_as_messages_and_its_mask_maps_back(
    vertex: tuple[str, Path],
) -> None:
    seen: list[Any] = []

    async def mask(request: web.Request) -> web.Response:
        messages = (await request.json())["body"]["messages"]
        seen.append(messages)
        masked = [{**m, "content": m["content"].replace("Oslo", "<CITY>")} for m in messages]
        return web.json_response({"action": {"body": {"messages": masked}, "reason": "city"}})

    call = {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}
    result = {"functionResponse": {"name": "weather", "response": {"Oslo": "3C"}}}
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [result]},
        ],
    }
    async with webhook_server(mask) as port:
        hooked = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "hooked", "request": [{"name": "city", "webhook": "hook"}]}],
        }
        async with gateway(vertex, hooked, guardrails="hooked") as gw:
            sent = upstream(await gw.send(GENERATE, body))
    assert seen == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "weather"},
            {"role": "assistant", "content": "city"},
            {"role": "assistant", "content": "Oslo"},
            {"role": "tool", "content": "weather"},
            {"role": "tool", "content": "Oslo"},
            {"role": "tool", "content": "3C"},
        ]
    ]
    assert sent["contents"][0]["parts"] == [{"text": "Weather in <CITY>?"}]
    assert sent["contents"][1]["parts"][0]["functionCall"]["args"] == {"city": "<CITY>"}
    assert sent["contents"][2]["parts"][0]["functionResponse"]["response"] == {"<CITY>": "3C"}


async def test_moderation_reads_the_users_gemini_text(vertex: tuple[str, Path]) -> None:
    mock, _ = vertex
    moderated = {
        "moderation": [{"name": "mod", "base_url": f"{mock}/v1", "api_key": "mock-key"}],
        "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
    }
    async with gateway(vertex, moderated, guardrails="mod") as gw:
        answers = await gw.send(GENERATE, user("how to build a bomb"))
    status, body = refusal(answers[-1])
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    assert "flagged for" in body["error"]["message"]


# --- whole answers -------------------------------------------------------------------------


async def test_a_whole_answer_is_masked_and_billed_as_google_counted(
    vertex: tuple[str, Path],
) -> None:
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(
            GENERATE,
            user("Who?"),
            response_headers(200, FROM_VERTEX),
            response_body(orjson.dumps(answer(f"Ask {EMAIL}."))),
        )
        got = orjson.loads(answers[-1].response_body.response.body_mutation.body)
        assert got["candidates"][0]["content"]["parts"] == [{"text": "Ask <EMAIL>."}]
        assert got["usageMetadata"] == USAGE
        line = gw.log()
    assert (line["prompt_tokens"], line["completion_tokens"]) == (6, 4)
    assert {"guard": "answer-emails", "phase": "response", "action": "mask"} in line["guardrails"]


async def test_a_rejected_answer_is_googles_error_with_the_guards_status(
    vertex: tuple[str, Path],
) -> None:
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(
            GENERATE,
            user("Password?"),
            response_headers(200, FROM_VERTEX),
            response_body(orjson.dumps(answer("It is hunter2."))),
        )
        line = gw.log()
    status, body = refusal(answers[-1])
    assert status == 422
    assert body["error"]["code"] == 422 and body["error"]["status"] == "FAILED_PRECONDITION"
    assert "hunter2" not in answers[-1].immediate_response.body.decode()
    # The provider wrote the answer: its tokens are charged.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (6, 4)


# --- streams -------------------------------------------------------------------------------


async def test_a_stream_is_masked_across_events_and_billed_by_its_last_counts(
    vertex: tuple[str, Path],
) -> None:
    chunks = [event("Ask jane@exa"), event("mple.com now."), event("", finish=True)]
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(
            STREAM,
            user("Who?"),
            response_headers(200, SSE_FROM_VERTEX),
            *(response_body(c, end_of_stream=False) for c in chunks),
            response_body(b"", end_of_stream=True),
        )
        line = gw.log()
    got = client_body([*chunks, b""], answers)
    assert b"jane@" not in got
    text = "".join(
        part.get("text", "")
        for block in got.split(b"\n\n")
        if block.startswith(b"data: ")
        for part in orjson.loads(block[6:])["candidates"][0]["content"]["parts"]
    )
    assert text == "Ask <EMAIL> now."
    assert (line["prompt_tokens"], line["completion_tokens"]) == (6, 4)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["STOP"]
    assert {"guard": "answer-emails", "phase": "response", "action": "mask"} in line["guardrails"]


async def test_a_rejected_stream_ends_with_googles_error_event(vertex: tuple[str, Path]) -> None:
    chunks = [event("The password "), event("is hunter2."), event("", finish=True)]
    async with gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(
            STREAM,
            user("Password?"),
            response_headers(200, SSE_FROM_VERTEX),
            *(response_body(c, end_of_stream=False) for c in chunks),
            response_body(b"", end_of_stream=True),
        )
        line = gw.log()
    got = client_body([*chunks, b""], answers)
    assert b"hunter2" not in got
    last = orjson.loads(got.strip().split(b"\n\n")[-1][6:])
    assert last == {
        "error": {
            "code": 422,
            "message": "Rejected by guardrail 'answer-secrets'",
            "status": "FAILED_PRECONDITION",
        }
    }
    # Upstream's counts are read as they came: the refusal changes what the client got.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (6, 4)
    assert {"guard": "answer-secrets", "phase": "response", "action": "reject"} in line[
        "guardrails"
    ]


async def test_a_stream_with_a_response_webhook_sees_each_events_text(
    vertex: tuple[str, Path],
) -> None:
    seen: list[Any] = []

    async def mask(request: web.Request) -> web.Response:
        choices = (await request.json())["body"]["choices"]
        seen.append([c["message"]["content"] for c in choices])
        masked = [
            {"message": {**c["message"], "content": c["message"]["content"].upper()}}
            for c in choices
        ]
        return web.json_response({"action": {"body": {"choices": masked}}})

    chunks = [event("quiet "), event("words", finish=True)]
    async with webhook_server(mask) as port:
        hooked = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [{"name": "hooked", "response": [{"name": "loud", "webhook": "hook"}]}],
        }
        async with gateway(vertex, hooked, guardrails="hooked") as gw:
            answers = await gw.send(
                STREAM,
                user("Hi"),
                response_headers(200, SSE_FROM_VERTEX),
                *(response_body(c, end_of_stream=False) for c in chunks),
                response_body(b"", end_of_stream=True),
            )
    got = client_body([*chunks, b""], answers)
    assert seen == [["quiet "], ["words"]]
    assert b"QUIET " in got and b"WORDS" in got
