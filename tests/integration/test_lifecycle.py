"""The serving process as an operator sees it: probes, gRPC health, reload, provider down,
graceful shutdown. A stack of its own, because these tests change its config and stop it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    metric,
    running_stack,
    scrape,
    wait_for,
)

DOWN_PROVIDER = """
  - name: down
    base_url: http://127.0.0.1:{port}/v1
    api_key: down-key
"""
DOWN_MODEL = """
  - name: down-model
    provider: down
"""


def config_text(extra_model: str = "", unix_socket: Path | None = None) -> str:
    text = DEFAULT_CONFIG.read_text()
    if unix_socket is not None:
        # Envoy reaches this gateway over a Unix socket, as a sidecar would.
        text = text.replace("\nserver:\n", f"\nserver:\n  unix_socket: {unix_socket}\n")
    text = text.replace("\nproviders:\n", "\nproviders:" + DOWN_PROVIDER.format(port=REFUSED_PORT))
    return text.replace("\nmodels:\n", "\nmodels:" + DOWN_MODEL + extra_model)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("lifecycle")
    config = workdir / "gateway.yaml"
    config.write_text(config_text(unix_socket=workdir / "extproc.sock"))
    with running_stack(workdir, config) as running:
        yield running


def chat(stack: LocalStack, model: str = "gpt-4o-mini", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={
            "content-type": "application/json",
            "authorization": "Bearer team1-key",
            **headers,
        },
        timeout=30.0,
    )


def reloads(stack: LocalStack, result: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_config_reloads_total", result=result)


def test_probes_answer(own_stack: LocalStack) -> None:
    base = f"http://127.0.0.1:{own_stack.ports.http}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_grpc_health_and_reflection(own_stack: LocalStack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{own_stack.ports.grpc}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {service.name for service in answer.list_services_response.service}
    assert "envoy.service.ext_proc.v3.ExternalProcessor" in names
    assert "grpc.health.v1.Health" in names


def test_envoy_reaches_the_gateway_over_its_unix_socket(own_stack: LocalStack) -> None:
    clusters = httpx.get(f"{own_stack.envoy_admin_url}/clusters").text
    assert f"extproc::{own_stack.workdir / 'extproc.sock'}" in clusters.replace("unix://", "")
    assert chat(own_stack).status_code == 200


def test_unreachable_provider_is_an_openai_shaped_503(own_stack: LocalStack) -> None:
    response = chat(own_stack, model="down-model")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "service_unavailable"
    assert "down-key" not in response.text


def last_reload_ok(stack: LocalStack) -> float:
    return metric(scrape(stack.metrics_url), "aigw_config_last_reload_successful")


def test_invalid_reload_keeps_the_old_config_serving(own_stack: LocalStack) -> None:
    failures = reloads(own_stack, "failure")
    assert last_reload_ok(own_stack) == 1
    own_stack.config_path.write_text("providers: [\n")
    assert wait_for(lambda: reloads(own_stack, "failure") > failures)
    assert chat(own_stack).status_code == 200
    # What the alert reads: the file on disk is not the config serving.
    assert last_reload_ok(own_stack) == 0


def test_valid_reload_on_file_change_takes_effect(own_stack: LocalStack) -> None:
    assert chat(own_stack, model="gpt-4o-reloaded").status_code == 404
    successes = reloads(own_stack, "success")
    extra = "  - name: gpt-4o-reloaded\n    provider: ${LLM_PROVIDER:-mock}\n"
    own_stack.config_path.write_text(config_text(extra, own_stack.workdir / "extproc.sock"))
    assert wait_for(lambda: reloads(own_stack, "success") > successes)
    assert chat(own_stack, model="gpt-4o-reloaded").status_code == 200
    assert last_reload_ok(own_stack) == 1


def test_sighup_reloads(own_stack: LocalStack) -> None:
    successes = reloads(own_stack, "success")
    own_stack.process("gateway").send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads(own_stack, "success") > successes)


def test_sigterm_lets_an_open_request_finish(own_stack: LocalStack, tmp_path: Path) -> None:
    gateway = own_stack.process("gateway")
    results: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: results.append(chat(own_stack, **{"x-mock-fault": "delay=1.5"}))
    )
    slow.start()
    # Wait until the request is inside the gateway (the mock has it), then stop.
    assert wait_for(
        lambda: any(
            r["headers"].get("x-mock-fault") == "delay=1.5"
            for r in httpx.get(f"{own_stack.mock_url}/_mock/requests").json()
        )
    )
    gateway.send_signal(signal.SIGTERM)
    slow.join(30)
    assert results and results[0].status_code == 200
    assert results[0].json()["usage"]["total_tokens"] > 0
    assert gateway.wait(30) == 0
    [line] = GatewayLog(own_stack.gateway_log).for_request(results[0].headers["x-request-id"])
    assert line["total_tokens"] == results[0].json()["usage"]["total_tokens"]
