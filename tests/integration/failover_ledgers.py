"""What the failover integration tests read of one request: its log line, and the tokens
its key's ``failover-budget`` quota counter holds."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog


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
