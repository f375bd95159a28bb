"""Failover: the primary provider fails before the first byte; the request succeeds on the
fallback, translated and signed for the fallback's provider."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import free_port
from tests.exported_metrics import DASHBOARD, dashboard_expressions
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    mock_answers,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
)

REPLY = "Mock reply to: fail over please"
# A second mock provider that answers every request with a 503, on a port picked as it
# starts (a port picked when the module is imported may be another stack's by then).
_flaky_port = 0


def flaky_requests() -> list[dict[str, Any]]:
    """What the failing mock provider received, oldest first."""
    found: list[dict[str, Any]] = httpx.get(f"http://127.0.0.1:{_flaky_port}/_mock/requests").json()
    return found


class BlackHole:
    """Accepts connections and never answers: a provider that times out."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.server.close()
        for connection in self.held:
            connection.close()


@pytest.fixture(scope="module")
def failover_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("failover")
    global _flaky_port
    flaky_port = _flaky_port = free_port()
    dead_port = REFUSED_PORT
    flaky = subprocess.Popen(
        [sys.executable, "-m", "extproc", "mock-llm", "--port", str(flaky_port), "--fault",
         "status=503"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    hole = BlackHole()
    providers = f"""
  - {{name: dead, base_url: "http://127.0.0.1:{dead_port}/v1", api_key: dead-key-123}}
  - {{name: flaky, base_url: "http://127.0.0.1:{flaky_port}/v1", api_key: flaky-key-123}}
  - {{name: slow, base_url: "http://127.0.0.1:{hole.port}/v1", api_key: slow-key-123,
      timeout_s: 1}}
  - {{name: flaky-anthropic, type: anthropic, base_url: "http://127.0.0.1:{flaky_port}/v1",
      api_key: flaky-anthropic-key-123}}
"""
    models = """
  - {name: primary-dead, provider: dead, fallbacks: [claude-3-5-haiku-latest]}
  - {name: primary-flaky, provider: flaky, fallbacks: [gpt-4.1-nano]}
  - {name: primary-slow, provider: slow, fallbacks: [claude-3-5-haiku-latest]}
  - {name: primary-translated, provider: flaky-anthropic, upstream_model: claude-x,
     fallbacks: [gpt-4.1-nano]}
  - {name: primary-mock, provider: mock, upstream_model: gpt-4o,
     fallbacks: [claude-3-5-haiku-latest]}
"""
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + models, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    try:
        with running_stack(workdir, config) as running:
            # A stack can be up before this mock (its gateway and mock are forked from a
            # process that imported them; this one imports on its own): wait for it.
            flaky_url = f"http://127.0.0.1:{flaky_port}"
            answers = wait_for(lambda: flaky.poll() is not None or mock_answers(flaky_url), 30)
            assert answers and flaky.poll() is None, "the failing mock provider could not start"
            yield running
    finally:
        flaky.terminate()
        flaky.wait(10)
        hole.close()


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)


MESSAGES = [{"role": "user", "content": "fail over please"}]


@pytest.mark.parametrize(
    ("model", "answered_by", "upstream_path"),
    [
        ("primary-dead", "mock-anthropic", "/v1/messages"),  # connection refused
        ("primary-flaky", "mock", "/v1/chat/completions"),  # 503
        ("primary-slow", "mock-anthropic", "/v1/messages"),  # timeout
    ],
)
def test_a_failing_provider_fails_over_with_the_fallbacks_translation(
    failover_stack: LocalStack, model: str, answered_by: str, upstream_path: str
) -> None:
    before = scrape(failover_stack.metrics_url)
    raw = client(failover_stack).chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == REPLY
    assert reply.usage is not None and reply.usage.total_tokens > 0
    upstream = mock_requests(failover_stack)[-1]
    assert upstream["path"] == upstream_path
    assert "team1-key" not in orjson.dumps(upstream).decode()
    [line] = GatewayLog(failover_stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert line["provider"] == answered_by
    assert line["model"] == model
    assert line["total_tokens"] == reply.usage.total_tokens
    assert "x-aigw-provider" not in raw.headers
    after = scrape(failover_stack.metrics_url)
    assert (
        metric(after, "aigw_failovers_total", model=model)
        - metric(before, "aigw_failovers_total", model=model)
        == 1
    )


def test_a_stream_fails_over_before_its_first_byte(failover_stack: LocalStack) -> None:
    with client(failover_stack).chat.completions.with_streaming_response.create(
        model="primary-dead",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    [line] = GatewayLog(failover_stack.gateway_log).for_request(request_id)
    assert line["provider"] == "mock-anthropic" and line["completion_tokens"] > 0


def test_a_stream_that_already_started_does_not_fail_over(failover_stack: LocalStack) -> None:
    before = len([r for r in mock_requests(failover_stack) if r["path"] == "/v1/messages"])
    received: list[str] = []
    stream = client(failover_stack).chat.completions.create(
        model="primary-mock",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        # Spaced chunks: the first ones reach the client before the provider breaks.
        extra_headers={"x-mock-fault": "reset_after=3;interval=0.2"},
    )
    with pytest.raises(Exception):  # noqa: B017 - the client sees its stream break
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert received  # bytes had reached the client: too late to fail over
    after = len([r for r in mock_requests(failover_stack) if r["path"] == "/v1/messages"])
    assert after == before


def test_the_primary_answers_when_it_can(failover_stack: LocalStack) -> None:
    raw = client(failover_stack).chat.completions.with_raw_response.create(
        model="primary-mock",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    assert mock_requests(failover_stack)[-1]["json"]["model"] == "gpt-4o"
    [line] = GatewayLog(failover_stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert line["provider"] == "mock"
    assert httpx.get(failover_stack.metrics_url).status_code == 200


def test_each_attempt_starts_from_the_clients_own_body(failover_stack: LocalStack) -> None:
    """The first attempt translates the body to Anthropic's API (and fails with a 503);
    the fallback, an OpenAI model, must get the client's OpenAI body, not that one."""
    reply = client(failover_stack).chat.completions.create(
        model="primary-translated",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY
    upstream = mock_requests(failover_stack)[-1]
    assert upstream["path"] == "/v1/chat/completions"
    assert upstream["json"] == {"model": "gpt-4.1-nano", "messages": MESSAGES}
    assert "x-api-key" not in upstream["headers"]  # the first attempt's credential
    first = flaky_requests()[-1]
    assert first["path"] == "/v1/messages"  # the first attempt really was translated
    assert first["json"]["model"] == "claude-x"


def test_failover_attempts_are_envoys_retries_on_the_chain_the_dashboard_selects(
    failover_stack: LocalStack,
) -> None:
    # Envoy counts a failover route's retries (and its response times) on the chain's
    # aggregate cluster, whichever provider answered: the dashboard's Envoy panels must
    # select it, as they select the provider clusters (tests/unit/test_dashboard_envoy_clusters).
    page = httpx.get(f"{failover_stack.envoy_admin_url}/stats/prometheus").text
    before = envoy_counter(page, "envoy_cluster_upstream_rq_retry", "failover_primary_flaky")

    reply = client(failover_stack).chat.completions.create(
        model="primary-flaky",
        messages=MESSAGES,  # type: ignore[arg-type]
    )

    assert reply.choices[0].message.content == REPLY
    page = httpx.get(f"{failover_stack.envoy_admin_url}/stats/prometheus").text
    after = envoy_counter(page, "envoy_cluster_upstream_rq_retry", "failover_primary_flaky")
    assert after - before == 1
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    [retries] = [e for e in dashboard_expressions(dashboard) if "upstream_rq_retry" in e]
    [selected] = re.findall(r'envoy_cluster_name=~"([^"]*)"', retries)
    assert re.fullmatch(selected, "failover_primary_flaky"), retries


def envoy_counter(page: str, name: str, cluster: str) -> float:
    """One cluster's counter on Envoy's /stats/prometheus page (0 before it is set)."""
    found = re.search(rf'^{name}{{envoy_cluster_name="{re.escape(cluster)}"}} (\S+)$', page, re.M)
    return float(found.group(1)) if found else 0.0
