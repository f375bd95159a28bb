"""The last model of a failover chain fails, where the gateway translates its answer: the
log line and ``aigw_upstream_errors_total`` record that error as they do without failover.

An OpenAI client asks for a model whose primary refuses connections, so Envoy's second
attempt goes to its fallback, Claude on the stack's mock Anthropic provider, which fails
as the request's ``x-mock-fault`` says (the primary never sees it). The per-attempt filter
translates that failure to the client's API, and the downstream filter, which logs and
counts, saw only the translation: an overloaded_error in a 200 was logged as a plain 503
with no error named and counted ``status_code="503"``, Anthropic's 529 as a 503, a
refusal of the gateway's key (401) as a 502. The same request to Claude directly is the
reference: both lines and counters must say the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    default_config,
    metric,
    running_stack,
    scrape,
    write_config,
)
from tests.integration.failover_support import log_line

FALLBACK = "claude-3-5-haiku-latest"
CHAIN = "claude-behind-a-dead-primary"
# What the log line says of an error, compared between the chain and the model alone.
RECORDED = (
    "provider",
    "upstream_model",
    "http_status_code",
    "upstream_status_code",
    "outcome",
    "error_type",
    "error_code",
    "error_message",
    "total_tokens",
    "cost_usd",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("failover-last-member")
    raw = default_config()
    raw["providers"].append(
        {"name": "dead", "base_url": f"http://127.0.0.1:{REFUSED_PORT}/v1", "api_key": "dead-key"}
    )
    raw["models"].append({"name": CHAIN, "provider": "dead", "fallbacks": [FALLBACK]})
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def failing(
    stack: LocalStack, model: str, fault: str, stream: bool = False
) -> tuple[int, dict[str, Any], str]:
    """The client's status, the request's log line and the status_code label its
    aigw_upstream_errors_total grew by."""
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0, timeout=30
    )
    before = scrape(stack.metrics_url)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "fail please"}],
            max_tokens=20,
            stream=stream,
            extra_headers={"x-mock-fault": fault},
        )
    response = raised.value.response
    # What the attempt reported (and who answered) is the gateway's, never the client's.
    assert not [name for name in response.headers if name.startswith("x-aigw-")]
    line = log_line(stack, response.headers["x-request-id"])
    after = scrape(stack.metrics_url)
    grown = {
        labels["status_code"]
        for (name, key), value in after.items()
        if name == "aigw_upstream_errors_total"
        and (labels := dict(key))["model"] == model
        and value != before.get((name, key), 0.0)
    }
    [label] = grown
    assert (
        metric(after, "aigw_upstream_errors_total", model=model)
        - metric(before, "aigw_upstream_errors_total", model=model)
        == 1
    )
    return response.status_code, line, label


@pytest.mark.parametrize(
    ("fault", "status", "label"),
    [
        # Anthropic's overloaded_error in a 200: the provider's words in the log line.
        pytest.param("error_body=anthropic", 503, "error_body", id="error-in-a-200"),
        # Anthropic's own status, which the OpenAI client gets as a 503.
        pytest.param("status=529", 503, "529", id="overloaded-529"),
        # Anthropic refused the gateway's key: the client's 502, the provider's 401.
        pytest.param("status=401", 502, "401", id="key-refused"),
        # A 200 the translation cannot read: the gateway's 502, named.
        pytest.param("garbage=1", 502, "502", id="unreadable-answer"),
    ],
)
def test_the_last_models_translated_error_is_recorded_as_without_failover(
    stack: LocalStack, fault: str, status: int, label: str
) -> None:
    chained_status, chained, chained_label = failing(stack, CHAIN, fault)
    alone_status, alone, alone_label = failing(stack, FALLBACK, fault)
    assert (chained_status, chained_label) == (alone_status, alone_label) == (status, label)
    assert {field: chained[field] for field in RECORDED} == {
        field: alone[field] for field in RECORDED
    }


@pytest.mark.parametrize(
    ("fault", "status", "label"),
    [
        # Claude answered JSON, its error in a 200, to a request for a stream.
        pytest.param("error_body=anthropic", 503, "error_body", id="error-in-a-200"),
        pytest.param("status=529", 503, "529", id="overloaded-529"),
    ],
)
def test_the_same_for_a_stream_whose_last_model_answered_no_stream(
    stack: LocalStack, fault: str, status: int, label: str
) -> None:
    chained_status, chained, chained_label = failing(stack, CHAIN, fault, stream=True)
    alone_status, alone, alone_label = failing(stack, FALLBACK, fault, stream=True)
    assert (chained_status, chained_label) == (alone_status, alone_label) == (status, label)
    assert {field: chained[field] for field in RECORDED} == {
        field: alone[field] for field in RECORDED
    }
