"""Faults with real processes: a paused store, a hung, reset or babbling upstream, a client
that hangs up mid-stream, and the gateway killed under load.

The stack has a Valkey of its own (paused with SIGSTOP, resumed with SIGCONT),
a provider with a short timeout, and token quotas, so each fault is checked
where users notice it (the answer, within its timeout) and where operators do
(the log line, the usage rollup, the quota counters: no reservation is left
behind, no usage is lost). A stopped and restarted store is in
``test_store_outage``, an invalid reload in ``test_lifecycle``, a JWKS URL
going down in the JWT verifier's unit tests.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest

from extproc.config import load_config
from extproc.devstack import DEFAULT_CONFIG, LocalStack, envoy_binary, free_port
from extproc.envoy_bootstrap import envoy_command, render_bootstrap_yaml
from extproc.management.client import QuotaClient
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)
from tests.integration.test_store_outage import OwnValkey

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a fault?"}]}
KEYS = {
    "fault": "fault-key-0f1e2d3c",
    "closed": "closed-key-4b5a6978",
    "open": "open-key-8c7d6e5f",
    # Only the no-usage test's: its metric delta must see no other request's late count.
    "nousage": "nousage-key-2a3b4c5d",
}
EXTRA = """
  - name: slow
    base_url: http://${MOCK_LLM_ADDRESS}/v1
    api_key: slow-provider-key
    timeout_s: 2
"""
QUOTAS = """
quotas:
  rules:
    - {name: fault-tokens, subject: api_key, match: fault, tokens_per_day: 100000000}
    - {name: nousage-tokens, subject: api_key, match: nousage, tokens_per_day: 100000000}
    - {name: open-tokens, subject: api_key, match: open, tokens_per_day: 100000000,
       on_store_failure: fail_open}
    - {name: closed-requests, subject: api_key, match: closed, requests_per_day: 100000000,
       on_store_failure: fail_closed}
"""


def fault_config(workdir: Path) -> Path:
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    text = text.replace("\nproviders:\n", "\nproviders:" + EXTRA, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n  - {name: slow-model, provider: slow}\n", 1)
    # Envoy's wait for each gateway answer, short so the paused-gateway test is quick.
    text = text.replace("\nenvoy:\n", "\nenvoy:\n  message_timeout_ms: 2000\n", 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTAS)
    return config


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    server = OwnValkey(tmp_path_factory.mktemp("fault-valkey"))
    server.start()
    yield server
    if server._server is not None and server._server._process is not None:
        os.kill(server._server._process.pid, signal.SIGCONT)  # never leave it paused
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, valkey: OwnValkey) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("faults")
    env = {"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"}
    with running_stack(workdir, fault_config(workdir), extra_env=env) as running:
        yield running


def chat(
    stack: LocalStack, key: str, model: str = "gpt-4o-mini", fault: str = "", **fields: object
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "a fault?"}], **fields}
    headers = {"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"}
    if fault:
        headers["x-mock-fault"] = fault
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers=headers,
        timeout=30.0,
    )


def tokens_used(stack: LocalStack, key: str) -> int:
    """The key's token counter in the store, as the management API reads it."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as client:
        state = client.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def logged_tokens(stack: LocalStack, key: str) -> int:
    return sum(
        line["total_tokens"]
        for line in GatewayLog(stack.gateway_log).lines()
        if line.get("api_key_id") == key
    )


def assert_nothing_left_reserved(stack: LocalStack, key: str) -> None:
    """Every reservation of ``key`` was settled with the usage its log lines record."""
    settled = wait_for(lambda: tokens_used(stack, key) == logged_tokens(stack, key), 10)
    assert settled, (tokens_used(stack, key), logged_tokens(stack, key))


def valkey_signal(valkey: OwnValkey, signum: signal.Signals) -> None:
    assert valkey._server is not None
    os.kill(valkey._server._process.pid, signum)


def test_a_paused_store_answers_within_the_timeout_and_loses_no_usage(
    stack: LocalStack, valkey: OwnValkey
) -> None:
    assert chat(stack, "closed").status_code == 200
    valkey_signal(valkey, signal.SIGSTOP)
    try:
        # The store accepts connections but answers nothing: each rule fails its way,
        # bounded by store.timeout_ms, not by the client's patience.
        refused = chat(stack, "closed")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "quota_store_unavailable"
        served = [chat(stack, "open") for _ in range(2)]
        assert [answer.status_code for answer in served] == [200, 200]
        during = sum(answer.json()["usage"]["total_tokens"] for answer in served)
    finally:
        valkey_signal(valkey, signal.SIGCONT)
    assert chat(stack, "closed").status_code == 200

    # Writes that timed out while paused may still have landed after SIGCONT;
    # replayed from the spool they must count once, not twice.
    def rollup() -> dict[str, object] | None:
        return usage_rows(stack, "api_key").get("open")

    row = wait_for(lambda: (r := rollup()) is not None and r["requests"] >= 2 and r, 30)
    assert row and row["requests"] == 2
    assert row["prompt_tokens"] + row["completion_tokens"] == during


def test_a_hung_upstream_is_a_504_at_the_provider_timeout(stack: LocalStack) -> None:
    answer = chat(stack, "fault", model="slow-model", fault="delay=20")
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert line["total_tokens"] == 0
    assert_nothing_left_reserved(stack, "fault")


def stream_lines(
    stack: LocalStack, key: str, fault: str, keep: int | None = None
) -> tuple[str, list[bytes]]:
    """Stream a chat; with ``keep``, hang up after that many events. (request id, events)"""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    headers = {
        "authorization": f"Bearer {KEYS[key]}",
        "content-type": "application/json",
        "x-mock-fault": fault,
    }
    events: list[bytes] = []
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream(
            "POST", f"{stack.base_url}/v1/chat/completions", content=orjson.dumps(body),
            headers=headers,
        ) as response,
    ):  # fmt: skip
        request_id = response.headers["x-request-id"]
        try:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(line.encode())
                    if keep is not None and len(events) >= keep:
                        break  # the client hangs up: the connection is closed
        except httpx.RemoteProtocolError:
            pass  # the upstream reset: the client sees its stream cut
    return request_id, events


def test_a_client_hanging_up_mid_stream_releases_the_reservation_and_records_usage(
    stack: LocalStack,
) -> None:
    request_id, events = stream_lines(stack, "fault", "chunks=40;interval=0.1", keep=4)
    assert len(events) == 4
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert line["outcome"] == "aborted"
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] >= 1
    # The reservation (prompt + 1024 completion tokens) became the estimate.
    assert_nothing_left_reserved(stack, "fault")
    assert chat(stack, "fault").status_code == 200


def test_an_upstream_reset_mid_stream_ends_the_stream_and_is_accounted(
    stack: LocalStack,
) -> None:
    request_id, events = stream_lines(stack, "fault", "chunks=20;reset_after=3;interval=0.05")
    assert 1 <= len(events) < 20
    assert b"[DONE]" not in b"".join(events)
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert line["outcome"] == "aborted"
    assert line["usage_estimated"] is True
    assert_nothing_left_reserved(stack, "fault")


def test_an_upstream_babbling_garbage_in_a_stream_breaks_nothing(stack: LocalStack) -> None:
    request_id, _ = stream_lines(stack, "fault", "garbage=1")
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert line["usage_reported"] is False
    # Charged its prompt, as the log line says, not its whole reservation.
    assert (line["usage_estimated"], line["completion_tokens"]) == (True, 0)
    assert_nothing_left_reserved(stack, "fault")
    assert chat(stack, "fault").status_code == 200


def test_a_provider_ignoring_include_usage_is_charged_what_it_streamed(
    stack: LocalStack,
) -> None:
    """The bill, the token metric and the quota agree on the estimate: not 0 tokens in the
    log line while the quota keeps the whole reservation. A key of its own: the metric of
    the previous test's last request may grow after that request's client had its answer."""
    before = scrape(stack.metrics_url)
    request_id, events = stream_lines(stack, "nousage", "no_usage=1")
    assert events[-1] == b"data: [DONE]"
    assert not any(b'"usage"' in event for event in events)
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["outcome"], line["usage_reported"], line["usage_estimated"]) == (
        "completed",
        False,
        True,
    )
    assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0
    assert_nothing_left_reserved(stack, "nousage")
    after = scrape(stack.metrics_url)
    grown = {
        kind: metric(after, "tokens_consumed_total", api_key_id="nousage", token_type=kind)
        - metric(before, "tokens_consumed_total", api_key_id="nousage", token_type=kind)
        for kind in ("prompt", "completion")
    }
    assert grown == {"prompt": line["prompt_tokens"], "completion": line["completion_tokens"]}


def test_a_frozen_gateway_costs_a_request_no_more_than_envoys_message_timeout(
    stack: LocalStack,
) -> None:
    gateway = stack.process("gateway")
    gateway.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = chat(stack, "open")
        waited = time.monotonic() - started
    finally:
        gateway.send_signal(signal.SIGCONT)
    # envoy.message_timeout_ms is 2 s here; the client would have waited 30.
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "gateway_timeout"
    assert waited < 20
    assert wait_for(lambda: chat(stack, "open").status_code == 200, 20)


def test_a_frozen_gateway_is_a_timeout_error_to_an_anthropic_client(stack: LocalStack) -> None:
    """Envoy's own 504 in Anthropic's shape names Anthropic's type for a 504,
    ``timeout_error`` (it said ``api_error``, a fault inside the API)."""
    client = anthropic.Anthropic(
        base_url=stack.base_url, api_key=KEYS["open"], max_retries=0, timeout=30.0
    )
    gateway = stack.process("gateway")
    gateway.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(anthropic.GatewayTimeoutError) as raised:
            client.messages.create(
                model="claude-3-5-haiku-latest",
                max_tokens=16,
                messages=[{"role": "user", "content": "a fault?"}],
            )
    finally:
        gateway.send_signal(signal.SIGCONT)
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "the gateway did not answer in time"},
    }
    assert wait_for(lambda: chat(stack, "open").status_code == 200, 20)


def test_the_gateway_killed_under_load_fails_requests_fast_and_recovers(
    stack: LocalStack,
) -> None:
    """failure_mode_allow is false (the default): while no gateway answers, Envoy
    refuses requests with an OpenAI-shaped 503 (`gateway_unavailable`, worth retrying)
    at once; none waits for a timeout."""
    results: list[tuple[int, float, bytes]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30.0) as client:
            while not stop.is_set():
                started = time.monotonic()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                answer = client.post(
                    f"{stack.base_url}/v1/chat/completions",
                    content=orjson.dumps(body),
                    headers={"authorization": f"Bearer {KEYS['open']}"},
                )
                results.append((answer.status_code, time.monotonic() - started, answer.content))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        assert wait_for(lambda: len(results) >= 5, 20)
        fail_open = fail_open_envoy(stack)
        stack.process("gateway").kill()
        stack.process("gateway").wait(10)
        refused_at = len(results)
        assert wait_for(lambda: any(s == 503 for s, _, _ in results[refused_at:]), 20)
        refused = [orjson.loads(c) for s, _, c in results[refused_at:] if s == 503]
        assert refused[0]["error"]["code"] == "gateway_unavailable"
        # failure_mode_allow: true lets the request past the dead gateway, but only the
        # gateway routes to a provider: it meets the catch-all 404, never a provider.
        before = len(mock_requests(stack))
        passed = httpx.post(
            f"{fail_open}/v1/chat/completions",
            content=orjson.dumps(CHAT),
            headers={"authorization": f"Bearer {KEYS['open']}", "x-aigw-cluster": "provider_mock"},
            timeout=30.0,
        )
        assert passed.status_code == 404
        assert passed.json()["error"]["code"] == "route_not_found"
        assert len(mock_requests(stack)) == before
        restart_gateway(stack)
        recovered_at = len(results)
        assert wait_for(lambda: any(s == 200 for s, _, _ in results[recovered_at:]), 60)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    statuses = {status for status, _, _ in results}
    assert statuses <= {200, 500, 503}, statuses  # 500: a stream cut by the kill
    for status, _, content in results:
        if status != 200:
            error = orjson.loads(content)["error"]
            assert error["type"] and error["message"]
    # message_timeout is 5 s: nothing may take close to a client's 30 s.
    assert max(seconds for _, seconds, _ in results) < 25


def fail_open_envoy(stack: LocalStack) -> str:
    """A second Envoy in front of the same gateway, rendered with failure_mode_allow: true."""
    config = load_config(stack.config_path, stack.env)
    envoy = config.envoy.model_copy(
        update={"failure_mode_allow": True, "listener_port": free_port(), "admin_port": free_port()}
    )
    config = config.model_copy(update={"envoy": envoy})
    bootstrap = stack.workdir / "envoy-fail-open.yaml"
    bootstrap.write_text(render_bootstrap_yaml(config))
    argv = envoy_command(config, str(bootstrap), envoy_binary())
    stack._spawn("envoy-fail-open", argv, stack.env)
    admin = f"http://127.0.0.1:{envoy.admin_port}/ready"
    assert wait_for(lambda: _answers(admin), 30)
    return f"http://127.0.0.1:{envoy.listener_port}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def restart_gateway(stack: LocalStack) -> None:
    """Start the gateway again on the same ports and store, as a supervisor would."""
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(stack.config_path)]
    stack._processes[:] = [(n, p) for n, p in stack._processes if p.poll() is None]
    stack._spawn("gateway", argv, stack.env, stdout=stack.gateway_log)
    stack.wait_ready(60)
