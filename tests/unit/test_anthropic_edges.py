"""Edges of Anthropic's answers as the bill and the client see them.

Each test plays one request through the real processor (the default config, Claude model
``claude-3-5-haiku-latest`` on the ``mock-anthropic`` provider) on both client routes:
``/v1/messages`` (passed through) and ``/v1/chat/completions`` (translated to OpenAI's
shape). The two read the same Anthropic stream, so they must bill it alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from tests.unit.test_review_s36_anthropic import (
    CHAT,
    PROMPT,
    ROUTES,
    START_USAGE,
    assert_client_agrees,
    body,
    logged,
    message_delta,
    message_start,
    message_stop,
    play,
    text_block,
)

SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}


# --- a malformed count in message_delta ------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "malformed",
    [
        {"input_tokens": -5},
        {"cache_read_input_tokens": -1},
        {"cache_creation_input_tokens": True},
    ],
    ids=["negative-input", "negative-cache-read", "true-cache-write"],
)
async def test_a_malformed_count_in_message_delta_keeps_what_message_start_reported(
    processor: Processor, services: Services, path: str, malformed: dict[str, Any]
) -> None:
    """A count that is no count (negative, ``true``) keeps the one reported before it, as
    docs/providers.md says. The translated route took it in place of message_start's:
    its prompt fell back to the gateway's estimate (the cache reads and writes lost) and
    the OpenAI client that asked for usage got none."""
    usage = {**malformed, "output_tokens": 20}
    chunks = [
        message_start(START_USAGE),
        *text_block(0, "hi"),
        message_delta(usage),
        message_stop(),
    ]
    shown = await play(processor, path, body(path, True), SSE, chunks)

    line = logged(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 20)
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (1000, 100)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    if path == CHAT:
        assert_client_agrees(line, shown)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("output", [None, -3], ids=["null", "negative"])
async def test_a_message_delta_without_a_readable_output_count_is_no_report(
    processor: Processor, services: Services, path: str, output: Any
) -> None:
    """message_start's ``output_tokens`` is a placeholder (1), not Anthropic's count. A
    ``message_delta`` whose own count is unreadable reports nothing: the answer is billed
    as one without a count (the text streamed, estimated), on both routes. The translated
    route billed, and showed the client, the placeholder as Anthropic's count."""
    usage = {"input_tokens": 10, "output_tokens": output}
    text = "x" * 40
    chunks = [
        message_start(START_USAGE),
        *text_block(0, text),
        message_delta(usage),
        message_stop(),
    ]
    shown = await play(processor, path, body(path, True), SSE, chunks)

    line = logged(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 10)
    if path == CHAT:
        assert b'"completion_tokens":1,' not in shown
