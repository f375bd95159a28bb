"""Telemetry review, third pass, through the real Envoy, gateway, Valkey and mock provider.

An operator who keeps few keys sets `telemetry.metrics.max_label_values` low (2 here):
the statuses the shipped error-rate alert selects (`status_code=~"5..|aborted"`) must
still show as themselves on /metrics, not under `other`. And a body too large for
Envoy's buffer is refused by Envoy before the gateway sees it: Envoy's access log is
where it shows, as docs/logging.md says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_access_line,
    metric,
    running_stack,
    scrape,
    wait_for,
    write_config,
)

AUTH = {"authorization": "Bearer team1-key"}
CAP = 2


@pytest.fixture(scope="module")
def low_cap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("telemetry-review-3")
    config = default_config()
    config["telemetry"] = {"metrics": {"max_label_values": CAP}}
    with running_stack(workdir, write_config(workdir, config)) as stack:
        yield stack


def chat(stack: LocalStack, path: str = "/v1/chat/completions", **extra: Any) -> httpx.Response:
    headers = {**AUTH, **extra.pop("headers", {})}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}
    with httpx.stream("POST", f"{stack.base_url}{path}", json=body, headers=headers,
                      timeout=30.0) as response:  # fmt: skip
        # A stream the provider reset: the client saw it cut.
        with contextlib.suppress(httpx.RemoteProtocolError):
            response.read()
        return response


def test_a_low_label_cap_keeps_the_statuses_the_error_alert_selects(low_cap: LocalStack) -> None:
    assert chat(low_cap).status_code == 200
    assert chat(low_cap, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert chat(low_cap, model="no-such-model").status_code == 404
    assert chat(low_cap, headers={"x-mock-fault": "status=500"}).status_code == 500
    # Anthropic's 529, as an OpenAI client gets it: a 503.
    overloaded = chat(low_cap, "/anthropic/v1/chat/completions", model="claude-3-5-haiku-latest",
                      headers={"x-mock-fault": "status=529"})  # fmt: skip
    assert overloaded.status_code == 503
    # A stream the provider resets after its first chunk: the client saw it cut.
    chat(low_cap, stream=True, headers={"x-mock-fault": "reset_after=1"})

    def counted() -> dict[Any, float]:
        found = scrape(low_cap.metrics_url)
        return found if metric(found, "aigw_requests_total") >= 6 else {}

    samples = wait_for(counted)
    statuses = {
        dict(labels)["status_code"] for (name, labels) in samples if name == "aigw_requests_total"
    }
    assert statuses == {"200", "401", "404", "500", "503", "aborted"}
    upstream = {
        dict(labels)["status_code"]
        for (name, labels) in samples
        if name == "aigw_upstream_errors_total"
    }
    assert upstream == {"500", "529"}
    assert metric(samples, "aigw_requests_total", route="anthropic", status_code="503") == 1


def test_a_body_too_large_for_envoys_buffer_is_in_envoys_access_log(low_cap: LocalStack) -> None:
    """Envoy buffers the body (to read its model) before the gateway sees the request:
    past `limits.max_request_body_bytes` + 64 KiB it answers the 413 itself. The
    gateway writes no line and counts nothing; Envoy's line has the refusal."""
    big = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a" * 1_200_000}]}
    )
    response = httpx.post(f"{low_cap.base_url}/v1/chat/completions", content=big,
                          headers={**AUTH, "content-type": "application/json"},
                          timeout=30.0)  # fmt: skip
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    request_id = response.headers["x-request-id"]
    line = wait_for(lambda: envoy_access_line(low_cap, request_id))
    assert line["response_code"] == 413
    assert line["response_code_details"] == "request_payload_too_large"
    assert line["route"] is None
    assert GatewayLog(low_cap.gateway_log).for_request(request_id, timeout_s=1.0) == []
