"""The request's span carries its prompt-cache reads and writes under the GenAI names.

OpenTelemetry's GenAI conventions name a prompt cache's counts
``gen_ai.usage.cache_read.input_tokens`` and ``gen_ai.usage.cache_creation.input_tokens``
(both part of ``gen_ai.usage.input_tokens``). Before, the span had the reads only, as
``aigw.usage.cached_input_tokens``, and the writes not at all: a GenAI-aware tracing
backend showed no cache use, and an operator could not see from a trace why a Claude
call with a 3,000-token cache write cost 3x its input price. Envoy's custom tags are
rendered from ``SPAN_ATTRIBUTES``, so what the span shows is that table applied to the
``io.aigw`` metadata Envoy holds when the request ends.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.span_attributes import SPAN_ATTRIBUTES
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_audio_token_log import span_metadata
from tests.unit.test_cache_write_ttl import (
    ANTHROPIC_AUTH,
    PATHS,
    SONNET,
    gateway,
    message,
    messages_body,
)
from tests.unit.test_envoy_tracing import tags

__all__ = ["gateway"]  # the processor over the default config

JSON = {"content-type": "application/json"}
READ = "gen_ai.usage.cache_read.input_tokens"
WRITTEN = "gen_ai.usage.cache_creation.input_tokens"


def span_attributes(answers: list[Any]) -> dict[str, str]:
    """The attributes Envoy's custom tags give the span: strings, a number as its JSON."""
    metadata = span_metadata(answers)
    return {name: _tag(metadata[key]) for name, key in SPAN_ATTRIBUTES if key in metadata}


def _tag(value: Any) -> str:
    # A Struct holds every number as a double; Envoy writes a whole one without ".0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize(
    ("path", "headers", "body", "answer_headers", "answer"),
    [case[:5] for case in PATHS.values()],
    ids=list(PATHS),
)
async def test_cache_writes_are_on_the_span_on_every_path(
    gateway: Processor,
    path: str,
    headers: dict[str, str],
    body: bytes,
    answer_headers: dict[str, str],
    answer: bytes,
) -> None:
    # Every answer: 100 uncached input tokens, 3000 written to the cache, 50 output.
    answers = await run_stream(gateway, [
        request_headers(path, headers=headers), request_body(body),
        response_headers(200, answer_headers), response_body(answer),
    ])  # fmt: skip

    attributes = span_attributes(answers)
    assert attributes["gen_ai.usage.input_tokens"] == "3100"
    assert (attributes[WRITTEN], attributes[READ]) == ("3000", "0")


async def test_cache_reads_and_writes_are_parts_of_the_input_tokens(
    gateway: Processor, services: Services
) -> None:
    usage = {
        "input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 500,
        "output_tokens": 50,
    }
    answers = await run_stream(gateway, [
        request_headers("/v1/messages", headers=ANTHROPIC_AUTH),
        request_body(messages_body(SONNET, stream=False)),
        response_headers(200, JSON), response_body(orjson.dumps(message(usage))),
    ])  # fmt: skip

    attributes = span_attributes(answers)
    # Anthropic's input_tokens counts neither; the conventions' input tokens count both.
    assert attributes["gen_ai.usage.input_tokens"] == "2600"
    assert (attributes[READ], attributes[WRITTEN]) == ("2000", "500")
    # The name spans had before stays, for searches saved against it.
    assert attributes["aigw.usage.cached_input_tokens"] == "2000"
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (2000, 500)


def test_the_rendered_bootstrap_tags_both_cache_counts() -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": [{"name": "anthropic", "type": "anthropic",
                           "base_url": "https://api.anthropic.com/v1"}],
            "models": [{"name": SONNET, "provider": "anthropic"}],
            "telemetry": {"tracing": {"enabled": True, "otlp_endpoint": "jaeger:4317"}},
        }
    )  # fmt: skip

    found = tags(render_bootstrap(config))

    assert found[READ] == ["io.aigw", "cached_tokens"]
    assert found[WRITTEN] == ["io.aigw", "cache_write_tokens"]
