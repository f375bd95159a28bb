"""Review of trace correlation and the rendered tracer, as an operator with a collector sees
them: the log line names no trace a W3C tracer would have ignored, and a client cannot
make Envoy export a span for each of its requests past ``sampling_percent``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
COMPLETION = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


async def logged_trace_id(processor: Processor, services: Services, traceparent: str) -> Any:
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers={**AUTH, "traceparent": traceparent}),
            request_body(
                orjson.dumps(
                    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
                )
            ),
            response_headers(),
            response_body(COMPLETION),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line["trace_id"]


@pytest.mark.parametrize(
    "traceparent",
    [
        # An all-zero parent id: W3C says to ignore the whole header (Envoy's tracer does).
        pytest.param(f"00-{TRACE_ID}-0000000000000000-01", id="zero-parent-id"),
        # Version 00 is exactly 55 characters; more makes it invalid.
        pytest.param(f"{VALID}-what", id="version-00-with-an-extra-field"),
        pytest.param(f"{VALID}1", id="version-00-with-a-stray-digit"),
        # Two traceparent headers (joined by a comma): W3C says neither counts.
        pytest.param(f"{VALID},00-{'1' * 32}-{PARENT_ID}-01", id="two-headers"),
        # A later version may add fields, but only after a "-".
        pytest.param(f"cc-{TRACE_ID}-{PARENT_ID}-01x", id="future-version-without-dash"),
    ],
)
async def test_the_log_line_names_no_trace_from_an_invalid_traceparent(
    processor: Processor, services: Services, traceparent: str
) -> None:
    assert await logged_trace_id(processor, services, traceparent) is None


@pytest.mark.parametrize(
    "traceparent",
    [
        pytest.param(VALID, id="version-00"),
        pytest.param(
            f"cc-{TRACE_ID}-{PARENT_ID}-01-future-field", id="future-version-with-a-field"
        ),
        pytest.param(f"cc-{TRACE_ID}-{PARENT_ID}-01", id="future-version"),
        pytest.param(VALID.upper(), id="upper-case"),
    ],
)
async def test_the_log_line_names_the_trace_of_a_valid_traceparent(
    processor: Processor, services: Services, traceparent: str
) -> None:
    assert await logged_trace_id(processor, services, traceparent) == TRACE_ID


def test_a_clients_x_client_trace_id_does_not_force_a_span_past_sampling_percent() -> None:
    # Envoy traces a request carrying x-client-trace-id at client_sampling percent, whatever
    # random_sampling decided (its default: 100): any client could have every request
    # exported at sampling_percent 1. Checked against Envoy with an OTLP receiver: at
    # sampling_percent 0, such a request was exported before, and is not now.
    config = GatewayConfig.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
            "telemetry": {"tracing": {"enabled": True, "sampling_percent": 1}},
        }
    )
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    tracing = listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]
    assert tracing["random_sampling"] == {"value": 1.0}
    assert tracing["client_sampling"] == {"value": 0.0}
