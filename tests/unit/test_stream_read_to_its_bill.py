"""A client that stops reading an OpenAI-compatible stream once it has the usage.

OpenAI sends the usage-only chunk (``choices: []``) after every choice's finish reason,
then ``data: [DONE]``, often in a chunk of its own. A client that asked for usage has
all it wants at the usage chunk and may close there (a loop that breaks once
``chunk.usage`` is set); one that did not never sees that chunk. Envoy then resets the
ext_proc stream before the ``[DONE]`` chunk reaches the gateway. The answer and its
bill were whole, yet the request was logged ``aborted`` and counted
``aigw_requests_total{status_code="aborted"}``. Each test plays the stream through the
processor with real ext_proc messages and resets it as Envoy does.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import load_config
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream_reset,
)
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import SSE, only_line
from tests.unit.test_accounting_review_streams import chat_chunk, chat_usage, data, sample

AUTH = {"authorization": "Bearer team1-key"}
USER = [{"role": "user", "content": "x" * 40}]
CONFIG = load_config("config/gateway.yaml", environ={})


def completion_chunk(text: str, finish: str | None = None, index: int = 0) -> bytes:
    choice = {"index": index, "text": text, "finish_reason": finish}
    return data({"id": "c1", "object": "text_completion", "model": "gpt-4o-mini",
                 "choices": [choice]})  # fmt: skip


# Each API's path, request and answer up to (not including) its usage-only chunk.
APIS: dict[str, tuple[str, dict[str, Any], list[bytes]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": USER},
        [chat_chunk({"content": "Hello there"}), chat_chunk({}, "stop")],
    ),
    "completions, two prompts": (
        "/v1/completions",
        {"model": "gpt-4o-mini", "prompt": ["x" * 20, "y" * 20]},
        [
            completion_chunk("Hello", "stop", 0),
            completion_chunk("there", None, 1),
            completion_chunk("", "length", 1),
        ],
    ),
}


async def reset_after(
    api: str, chunks: list[bytes], *, include_usage: bool
) -> tuple[dict[str, Any], Services]:
    """``api``'s stream answered with ``chunks``, each its own body message; Envoy resets
    the ext_proc stream after the last, before ``[DONE]`` and its end of stream."""
    path, fields, _ = APIS[api]
    body: dict[str, Any] = {**fields, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    services = Services(GatewayMetrics(), MemoryLog())
    await run_stream_reset(
        processor_for(CONFIG, services),
        [
            request_headers(path, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(200, SSE),
            *(response_body(chunk, end_of_stream=False) for chunk in chunks),
        ],
    )
    return only_line(services), services


@pytest.mark.parametrize("include_usage", [True, False], ids=["asked", "hidden"])
@pytest.mark.parametrize("api", APIS)
async def test_a_stream_left_at_its_usage_chunk_is_completed(api: str, include_usage: bool) -> None:
    line, services = await reset_after(
        api, [*APIS[api][2], chat_usage(20, 8)], include_usage=include_usage
    )
    assert line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 8)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert sample(services, "aigw_requests_total", status_code="200") == 1
    assert sample(services, "aigw_requests_total", status_code="aborted") == 0


@pytest.mark.parametrize("api", APIS)
async def test_a_stream_left_before_its_usage_chunk_is_still_aborted(api: str) -> None:
    # Every choice had finished, but the bill had not come: cut, and estimated as before.
    line, services = await reset_after(api, APIS[api][2], include_usage=True)
    assert line["outcome"] == "aborted"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert sample(services, "aigw_requests_total", status_code="aborted") == 1


async def test_a_usage_chunk_before_the_last_choice_finished_is_no_end() -> None:
    # Two prompts: the usage-only chunk came while the second still streamed (no
    # provider does so, but nothing in the stream forbids it): the answer was not whole.
    first = APIS["completions, two prompts"][2][0]
    line, _ = await reset_after(
        "completions, two prompts", [first, chat_usage(20, 8)], include_usage=True
    )
    assert line["outcome"] == "aborted"
