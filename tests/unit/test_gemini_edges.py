"""Edges of Gemini's own API (google-genai, Gemini CLI) through the processor: the bounds
Google sets on a request, the text a request carries outside its ``text`` parts, and what
the quota and the guards make of both."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.gemini_api import estimate_prompt_tokens
from extproc.guardrails.gemini_text import request_slots
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.mock_vertex import mock_vertex
from tests.unit.test_gemini_guard_flow import POLICIES, upstream
from tests.unit.test_gemini_guard_flow import gateway as guarded_gateway
from tests.unit.test_gemini_route import gemini_config

KEY = {"x-goog-api-key": "team1-key"}
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
COUNT = "/v1beta/models/gemini-2.5-flash:countTokens"
EMAIL = "jane@example.com"
TOKENS = {"rules": [{"name": "daily", "subject": "api_key", "tokens_per_day": 100_000}]}


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


def body(*parts: dict[str, Any], **config: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"contents": [{"role": "user", "parts": list(parts)}]}
    if config:
        request["generationConfig"] = config
    return request


def inline_text(text: str, mime_type: str = "text/plain") -> dict[str, Any]:
    """A text file sent inline, as google-genai sends ``Part.from_bytes``."""
    data = base64.b64encode(text.encode()).decode()
    return {"inlineData": {"mimeType": mime_type, "data": data}}


async def send(
    vertex: tuple[str, Path],
    services: Services,
    *bodies: dict[str, Any],
    path: str = GENERATE,
    **tail: Any,
) -> list[list[Any]]:
    """Each body as one request to ``path`` (no answer), in turn."""
    mock, key_file = vertex
    runtime = Runtime(gemini_config(key_file, mock, tail), services)
    await runtime.start()
    try:
        processor = Processor(lambda: runtime, default_stages())
        return [
            await run_stream(
                processor,
                [request_headers(path, headers=KEY), request_body(orjson.dumps(each))],
            )
            for each in bodies
        ]
    finally:
        await runtime.close()


def refused(answers: list[Any]) -> tuple[int, dict[str, Any]] | None:
    """The gateway's own answer (status, body), or None: the request went on."""
    if answers[-1].WhichOneof("response") != "immediate_response":
        return None
    immediate = answers[-1].immediate_response
    return immediate.status.code, orjson.loads(immediate.body)


# --- candidateCount: Gemini generates at most 8 candidates -------------------------------


@pytest.mark.parametrize("count", [9, 1_000_000_000])
async def test_more_candidates_than_gemini_generates_is_a_400_that_reserves_nothing(
    vertex: tuple[str, Path], quota_store: QuotaStore, count: int
) -> None:
    # Each candidate reserves its maxOutputTokens: a billion of them took the subject's
    # whole daily budget, and its next request, a plain one, was refused as over quota.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    many, plain = body({"text": "Hi"}, candidateCount=count), body({"text": "Hi"})
    first, second = await send(vertex, services, many, plain, quotas=TOKENS)
    found = refused(first)
    assert found is not None
    status, error = found
    assert (status, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "generationConfig.candidateCount" in error["error"]["message"]
    assert refused(second) is None, "the refused request reserved nothing"


# --- a text file sent inline: text the model reads ---------------------------------------


def test_a_text_file_sent_inline_counts_in_the_prompt_estimate() -> None:
    # Google reads a text/plain file as text and bills its tokens as prompt tokens: a
    # 40,000-character file reserved nothing, past every budget and hard cap.
    bare = estimate_prompt_tokens(body({"text": "Summarise this file."}))
    with_file = body({"text": "Summarise this file."}, inline_text("word " * 8_000))
    assert estimate_prompt_tokens(with_file) >= bare + 40_000 // 4
    image = {"inlineData": {"mimeType": "image/png", "data": "A" * 40_000}}
    assert estimate_prompt_tokens(body({"text": "Summarise this file."}, image)) == bare


async def test_a_hard_cap_counts_a_text_file_sent_inline(
    vertex: tuple[str, Path], quota_store: QuotaStore
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    rules = {
        "rules": [{"name": "cap", "subject": "api_key", "tokens_per_day": 1_000, "hard_cap": True}]
    }
    large = body({"text": "Summarise this file."}, inline_text("word " * 8_000))
    [answers] = await send(vertex, services, large, quotas=rules)
    found = refused(answers)
    assert found is not None, "a prompt of about 10,000 tokens went past a 1,000-token cap"
    # Larger than the whole cap: refused for good, FAILED_PRECONDITION (400) to a Gemini
    # client, not a 429 it would retry.
    assert found[0] == 400


def test_the_guards_read_a_text_file_sent_inline_and_mask_it_encoded() -> None:
    part = inline_text(f"Contact: {EMAIL}\n")
    slots = request_slots(body({"text": "Read this."}, part))
    assert [(slot.role, slot.text) for slot in slots] == [
        ("user", "Read this."),
        ("user", f"Contact: {EMAIL}\n"),
    ]
    slots[1].write(slots[1].text.replace(EMAIL, "<EMAIL>"))
    assert base64.b64decode(part["inlineData"]["data"]) == b"Contact: <EMAIL>\n"
    assert part["inlineData"]["mimeType"] == "text/plain"


async def test_a_text_file_sent_inline_meets_the_request_guards(vertex: tuple[str, Path]) -> None:
    # In URL-safe base64 without padding, as proto3's JSON reader also takes it.
    secret = base64.urlsafe_b64encode(b"the password is hunter2 ??>").decode().rstrip("=")
    hidden = {"inlineData": {"mimeType": "text/plain", "data": secret}}
    async with guarded_gateway(vertex, POLICIES, guardrails="pii") as gw:
        masked = upstream(await gw.send(GENERATE, body(inline_text(f"Mail {EMAIL}"))))
        rejected = refused(await gw.send(GENERATE, body({"text": "Read it."}, hidden)))
    data = masked["contents"][0]["parts"][0]["inlineData"]["data"]
    assert base64.b64decode(data) == b"Mail <EMAIL>"
    assert rejected is not None and rejected[0] == 403


# --- limits.max_messages: a conversation's length, whichever API sends it ---------------


async def test_more_contents_than_limits_max_messages_is_a_400(vertex: tuple[str, Path]) -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    turns = [{"role": "user", "parts": [{"text": f"Turn {n}"}]} for n in range(4)]
    wrapped = {"generateContentRequest": {"contents": turns}}
    limits = {"max_messages": 3}
    [long] = await send(vertex, services, {"contents": turns}, limits=limits)
    [counted] = await send(vertex, services, wrapped, path=COUNT, limits=limits)
    for answers in (long, counted):
        found = refused(answers)
        assert found is not None
        status, error = found
        assert (status, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
        assert "the limit is 3" in error["error"]["message"]
    [short] = await send(vertex, services, {"contents": turns[:3]}, limits=limits)
    assert refused(short) is None
