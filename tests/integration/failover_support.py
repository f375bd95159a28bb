"""What the failover integration tests share: a mock provider of their own that answers
every request with one fault, and what they read of one request (its log line, the
tokens its key's ``failover-budget`` quota counter holds, and its key's rollup rows)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from extproc.devstack import LocalStack
from extproc.store.embedded import free_port
from tests.integration.conftest import GatewayLog, run_cli, wait_for

# The quota rule whose counter quota_used reads: each failover stack's config has it.
FAILOVER_BUDGET = "failover-budget"


def failover_budget(tokens_per_day: int = 1_000_000) -> dict[str, Any]:
    """The config's ``quotas`` section: one ``failover-budget`` rule per API key, large
    enough never to refuse, so that its counter shows what each request was charged."""
    rule = {"name": FAILOVER_BUDGET, "subject": "api_key", "tokens_per_day": tokens_per_day}
    return {"rules": [rule]}


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
        if limit.get("rule") == FAILOVER_BUDGET:
            return int(limit["used"])
    return 0


def rollup_by_provider(
    gateway: LocalStack, key: str, by: str = "api_key,provider"
) -> dict[str, dict[str, Any]]:
    """The rows of one key in `extproc usage report --by <by>`, by provider (``by`` holds
    api_key and provider; a key whose provider served one model may add model)."""
    done = run_cli(
        gateway, "usage", "report", "--by", by, "--format", "json",
        admin_token="dev-admin-token",
    )  # fmt: skip
    rows: list[dict[str, Any]] = orjson.loads(done.stdout)["rows"]
    return {row["provider"]: row for row in rows if row["api_key_id"] == key}


@dataclass
class FaultyMock:
    """A mock provider that answers every request with the same fault."""

    url: str
    process: subprocess.Popen[bytes]

    def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.url}/_mock/requests").json()
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_faulty_mock(port: int, command: list[str]) -> FaultyMock:
    """The mock ``command`` starts on ``port``, once it answers."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mock = FaultyMock(f"http://127.0.0.1:{port}", process)
    wait_for(lambda: _answers(mock.url), 15.0)
    return mock


def start_mock_with_fault(fault: str) -> FaultyMock:
    """The stack's mock provider on a port of its own, answering every request with
    ``fault`` (an ``x-mock-fault`` value such as ``status=429`` or ``delay=6``)."""
    port = free_port()
    script = (
        "from extproc.mock_llm import MockOptions, run\n"
        f"run('127.0.0.1', {port}, MockOptions(default_fault={fault!r}))\n"
    )
    return start_faulty_mock(port, [sys.executable, "-c", script])


@contextmanager
def mocks_with_faults(*faults: str) -> Iterator[list[FaultyMock]]:
    """One mock per fault, in order; every one started is stopped on leaving, also when
    a later one fails to start."""
    with ExitStack() as started:
        mocks = []
        for fault in faults:
            mock = start_mock_with_fault(fault)
            started.callback(mock.stop)
            mocks.append(mock)
        yield mocks


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_mock/health").status_code == 200
    except httpx.HTTPError:
        return False
