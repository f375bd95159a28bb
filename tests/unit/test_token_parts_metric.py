"""The parts of a request's tokens that its log line and the usage report count apart are
metrics too: ``aigw_token_parts_total{token_type}``, beside ``tokens_consumed_total``.

A log line counts, beside its prompt and completion, the prompt tokens read from and
written to the provider's cache (Anthropic ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, its 1-hour writes apart, Bedrock's, OpenAI's
``prompt_tokens_details.cached_tokens``) and the audio of the prompt, of its cached part
and of the completion (OpenAI's ``audio_tokens``, Gemini's ``AUDIO`` entries), each
billed at a price of its own; the rollups and ``extproc usage report`` carry them too.
``tokens_consumed_total`` had the prompt and completion alone: no dashboard could show a
cache's hit rate or what audio cost, and docs/chargeback.md's reconciliation of the
metrics with the log lines was short of six counts. They are parts of the prompt and
completion, so they are counted on a metric of their own: as token types of
``tokens_consumed_total`` they would be counted twice by every query that sums its types
(the shipped dashboard's top users, tokens per group and model). Through the processor,
each answer's parts equal its log line's counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.context import ImageGeneration, Usage
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.stages.accounting import token_parts
from extproc.telemetry.metrics import TOKEN_PARTS, GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_cache_write_ttl import PATHS, gateway
from tests.unit.test_gemini_audio_pricing import USAGE as GEMINI_USAGE
from tests.unit.test_gemini_audio_pricing import generate as gemini_generate
from tests.unit.test_gemini_review import vertex as vertex
from tests.unit.test_openai_audio_pricing import AUDIO_USAGE, OPENAI_AUTH, body, spoken_answer
from tests.unit.test_openai_audio_pricing import config as audio_config

__all__ = ["gateway", "vertex"]  # the cache tests' processor, the Gemini tests' Vertex
# The log line's name of each part (TOKEN_PARTS, less "_tokens" but for the audio ones).
LOGGED = {
    "cached": "cached_tokens",
    "cache_write": "cache_write_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "prompt_audio": "prompt_audio_tokens",
    "cached_audio": "cached_audio_tokens",
    "completion_audio": "completion_audio_tokens",
    "completion_image": "completion_image_tokens",
    "prompt_image": "prompt_image_tokens",
    "image_generation_input": "image_generation_input_tokens",
    "image_generation_input_image": "image_generation_input_image_tokens",
    "image_generation_output": "image_generation_output_tokens",
    "image_generation_output_image": "image_generation_output_image_tokens",
}


def _counted(services: Services, line: dict[str, Any]) -> dict[str, float]:
    """Each token type's series of the line's identity, model and provider (0: none)."""
    labels = {
        "api_key_id": line["api_key_id"] or "",
        "user_id": line["user_id"] or "",
        "group_id": line["group_id"] or "",
        "model": line["model"] or "",
        "provider": line["provider"] or "",
    }
    registry = services.metrics.registry
    counted = {
        name: registry.get_sample_value("aigw_token_parts_total", {**labels, "token_type": name})
        or 0.0
        for name in TOKEN_PARTS
    }
    for name in ("prompt", "completion"):
        counted[name] = (
            registry.get_sample_value("tokens_consumed_total", {**labels, "token_type": name})
            or 0.0
        )
    return counted


def _logged(line: dict[str, Any]) -> dict[str, float]:
    found = {name: float(line[field]) for name, field in LOGGED.items()}
    found["prompt"], found["completion"] = line["prompt_tokens"], line["completion_tokens"]
    return found


@pytest.mark.parametrize(
    ("path", "headers", "body", "answer_headers", "answer"),
    [case[:5] for case in PATHS.values()],
    ids=list(PATHS),
)
async def test_cache_writes_are_counted_as_the_log_line_counts_them(
    gateway: Processor,
    services: Services,
    path: str,
    headers: dict[str, str],
    body: bytes,
    answer_headers: dict[str, str],
    answer: bytes,
) -> None:
    await run_stream(gateway, [
        request_headers(path, headers=headers), request_body(body),
        response_headers(200, answer_headers), response_body(answer),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    # 3,000 prompt tokens written to Claude's cache, 2,000 of them for an hour.
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (3000, 2000)
    assert _counted(services, line) == _logged(line)


async def test_openai_s_cached_and_audio_tokens_are_counted_as_the_log_line_counts_them(
    services: Services,
) -> None:
    usage = {
        **AUDIO_USAGE,
        "prompt_tokens_details": {"cached_tokens": 400, "audio_tokens": 1_000},
    }
    await run_stream(processor_for(audio_config(), services), [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(spoken_answer(usage)),
    ])  # fmt: skip
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    counted = _counted(services, line)
    assert counted == _logged(line)
    assert (counted["cached"], counted["prompt_audio"], counted["completion_audio"]) == (
        400, 1_000, 250
    )  # fmt: skip


async def test_gemini_s_cached_audio_is_counted_as_the_log_line_counts_it(
    vertex: tuple[str, Path],
) -> None:
    services = Services(GatewayMetrics(), MemoryLog())
    line = await gemini_generate(vertex, GEMINI_USAGE, services=services)
    counted = _counted(services, line)
    assert counted == _logged(line)
    assert (counted["prompt_audio"], counted["cached_audio"]) == (8_000, 3_000)


def test_every_part_is_a_count_of_the_log_line() -> None:
    # One name per count, and a series only for a part a request had: at most six series
    # per label set beside tokens_consumed_total's two, within the same label budget.
    assert tuple(LOGGED) == TOKEN_PARTS
    assert set(token_parts(Usage())) == set(TOKEN_PARTS)


def test_a_request_without_the_image_tool_has_its_parts_at_zero() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120, cached_tokens=40)
    usage.audio_tokens = 7

    parts = token_parts(usage)

    assert tuple(parts) == TOKEN_PARTS
    assert {name: count for name, count in parts.items() if count} == {
        "cached": 40,
        "prompt_audio": 7,
    }


def test_the_image_tools_counts_are_its_parts_each_under_its_own_name() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=2_000, total_tokens=2_100)
    usage.image_generation = ImageGeneration("gpt-image-1", 100, 30, 1_056, 1_000)

    parts = token_parts(usage)

    assert tuple(parts) == TOKEN_PARTS
    assert {name: count for name, count in parts.items() if count} == {
        "image_generation_input": 100,
        "image_generation_input_image": 30,
        "image_generation_output": 1_056,
        "image_generation_output_image": 1_000,
    }
