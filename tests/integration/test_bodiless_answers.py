"""A provider's answer without a body (a bodiless 200, 429 or 500, as a proxy or a load
balancer in front of a model server may send), through the real Envoy.

Envoy sends the gateway no body message for an answer that ended with its headers, so
the gateway reads the empty body in its answer to the headers. Before, an OpenAI client
of Claude got an empty 200 that the log line called completed and charged the whole
completion allowance, and a bodiless 429 with no error its SDK could read.

The provider is a stand-in written here, speaking for an Anthropic-type provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    running_stack_calling,
    scrape,
)

MODEL = "claude-bodiless"


class Bodiless(BaseHTTPRequestHandler):
    """Answers every call with the status the test names, and no body."""

    protocol_version = "HTTP/1.1"
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(int(self.headers.get("x-test-status", "200")))
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def bodiless_config(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["providers"].append(
        {"name": "bodiless", "type": "anthropic", "base_url": f"http://127.0.0.1:{port}/v1",
         "api_key": "bodiless-provider-key"}
    )  # fmt: skip
    raw["models"].append({"name": MODEL, "provider": "bodiless"})
    return raw


@pytest.fixture(scope="module")
def bodiless_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("bodiless")
    with running_stack_calling(Bodiless, workdir, bodiless_config) as running:
        yield running


def ask(stack: LocalStack, status: int, stream: bool = False) -> openai.APIStatusError:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            stream=stream,
            extra_headers={"x-test-status": str(status)},
        )
    return failed.value


@pytest.mark.parametrize("stream", [False, True])
def test_a_bodiless_200_is_a_502_the_client_reads_and_nobody_is_billed(
    bodiless_stack: LocalStack, stream: bool
) -> None:
    error = ask(bodiless_stack, 200, stream)
    assert error.status_code == 502
    assert error.code == "invalid_upstream_response"
    [line] = GatewayLog(bodiless_stack.gateway_log).for_request(
        error.response.headers["x-request-id"]
    )
    assert line["http_status_code"] == 502
    assert line["upstream_status_code"] == 200
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "invalid_upstream_response"
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost_usd"]) == (0, 0, 0.0)


def test_a_bodiless_429_reaches_the_client_as_an_error_it_can_read(
    bodiless_stack: LocalStack,
) -> None:
    before = scrape(bodiless_stack.metrics_url)
    error = ask(bodiless_stack, 429)
    assert isinstance(error, openai.RateLimitError)
    assert error.type == "rate_limit_error"
    [line] = GatewayLog(bodiless_stack.gateway_log).for_request(
        error.response.headers["x-request-id"]
    )
    assert (line["http_status_code"], line["outcome"]) == (429, "upstream_error")
    after = scrape(bodiless_stack.metrics_url)
    labels = {"provider": "bodiless", "model": MODEL, "status_code": "429"}
    upstream = "aigw_upstream_errors_total"
    assert metric(after, upstream, **labels) - metric(before, upstream, **labels) == 1
