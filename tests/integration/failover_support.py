"""What the failover integration tests share: a mock provider of their own that answers
every request with one fault, and what they read of one request (its log line, and the
tokens its key's ``failover-budget`` quota counter holds)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, wait_for


def log_line(gateway: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(gateway.gateway_log).for_request(request_id)
    return line


def quota_used(gateway: LocalStack, key: str) -> int:
    """Tokens the key's `failover-budget` counter holds, as `extproc quota get` shows it."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "quota", "get", "--kind", "api_key", "--subject", key,
         "--format", "json", "--config", str(gateway.config_path),
         "--token", "dev-admin-token"],
        env=gateway.env, capture_output=True, check=True,
    )  # fmt: skip
    for limit in orjson.loads(result.stdout).get("limits", []):
        if limit.get("rule") == "failover-budget":
            return int(limit["used"])
    return 0


@dataclass
class FaultyMock:
    """A mock provider that answers every request with the same fault."""

    url: str
    process: subprocess.Popen[bytes]

    def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.url}/_mock/requests").json()
        return found


def start_faulty_mock(port: int, command: list[str]) -> FaultyMock:
    """The mock ``command`` starts on ``port``, once it answers."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mock = FaultyMock(f"http://127.0.0.1:{port}", process)
    wait_for(lambda: _answers(mock.url), 15.0)
    return mock


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_mock/health").status_code == 200
    except httpx.HTTPError:
        return False
