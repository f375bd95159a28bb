"""Guards that stop answering, through real Envoy: however many a route calls one after
the other, the client gets what their failure_mode says (through, or the gateway's 503),
never Envoy's own 504 for a gateway that answered too late."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    JsonStandIn,
    default_config,
    running_stack_calling,
)

# Envoy waits 1.5 s for each gateway answer; the store may take 0.5 s of it (defaults).
MESSAGE_TIMEOUT_MS = 1500
# Each webhook may take 1.2 s, within Envoy's wait alone but not two in a row.
WEBHOOK_TIMEOUT_MS = 1200
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}
KEY = {"authorization": "Bearer team1-key"}


class Hanging(JsonStandIn):
    """Webhooks that have stopped answering: each call waits past any timeout."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.json_body()
        time.sleep(2.5)
        self.answer_json({"action": {}})


def guarded(port: int) -> dict[str, Any]:
    raw = default_config()
    raw["envoy"]["message_timeout_ms"] = MESSAGE_TIMEOUT_MS
    hook = {"host": "127.0.0.1", "port": port, "timeout_ms": WEBHOOK_TIMEOUT_MS}
    raw["guardrails"] = {
        "webhooks": [
            {"name": "pii-open", **hook, "failure_mode": "fail_open"},
            {"name": "tone-open", **hook, "failure_mode": "fail_open"},
            {"name": "tone-closed", **hook, "failure_mode": "fail_closed"},
        ],
        "policies": [
            {
                "name": "open",
                "request": [
                    {"name": "pii", "webhook": "pii-open"},
                    {"name": "tone", "webhook": "tone-open"},
                ],
            },
            {
                # The first fails open, then the second must still fail closed in time.
                "name": "closed",
                "request": [
                    {"name": "pii", "webhook": "pii-open"},
                    {"name": "tone", "webhook": "tone-closed"},
                ],
            },
        ],
    }
    for route in raw["routes"]:
        if route["name"] == "openai-chat":
            route["guardrails"] = "open"
        elif route["name"] == "openai":
            route["guardrails"] = "closed"
    return raw


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir: Path = tmp_path_factory.mktemp("guard-deadline")
    with running_stack_calling(Hanging, workdir, guarded) as running:
        yield running


def test_guards_failing_open_let_the_request_through_in_time(stack: LocalStack) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=KEY, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["total_tokens"] > 0
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert {(g["guard"], g["action"]) for g in line["guardrails"]} == {
        ("pii", "fail_open"),
        ("tone", "fail_open"),
    }


def test_guards_failing_closed_get_the_gateways_503_not_envoys_504(stack: LocalStack) -> None:
    answer = httpx.post(f"{stack.base_url}/openai", json=CHAT, headers=KEY, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "guardrail_unavailable"
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert [(g["guard"], g["action"]) for g in line["guardrails"]] == [
        ("pii", "fail_open"),
        ("tone", "fail_closed"),
    ]
