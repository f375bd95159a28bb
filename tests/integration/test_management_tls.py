"""The management API served over TLS by a running gateway (``management.tls``).

The gateway reads its certificate at start and serves the management API over TLS; the
CLI, run with the same config, connects as ``management.tls.cli`` says and reads and
changes a quota; told nothing of TLS (another config, no flags), it cannot reach it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.certificates import Authority
from tests.integration.conftest import running_stack
from tests.integration.forked import run_extproc_text

ADMIN_TOKEN = "integration-tls-admin-token"
RULE = """
quotas:
  rules:
    - {name: team1-hourly, subject: api_key, match: team1, requests_per_hour: 7}
"""


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("management-tls")
    authority = Authority(workdir, "management-ca")
    served = authority.issue("management", ips=("127.0.0.1",))
    operator = authority.issue("operator")
    tls = (
        f"  tls:\n    cert_file: {served.cert}\n    key_file: {served.key}\n"
        f"    client_ca_file: {authority.cert}\n"
        f"    cli: {{ca_file: {authority.cert}, cert_file: {operator.cert},"
        f" key_file: {operator.key}}}\n"
    )
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    text = text.replace("\nmanagement:\n", "\nmanagement:\n" + tls, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULE)
    with running_stack(workdir, config) as running:
        yield running


def quota(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "extproc", "quota", *args, "--kind", "api_key",
            "--subject", "team1", "--config", str(config), "--format", "json"]  # fmt: skip
    environment = {**env, "AIGW_ADMIN_TOKEN": ADMIN_TOKEN}
    return run_extproc_text(argv, environment)


def test_the_cli_reads_and_changes_quotas_over_mutual_tls(tls_stack: LocalStack) -> None:
    got = quota(tls_stack.config_path, "get", env=tls_stack.env)
    assert got.returncode == 0, got.stderr
    assert orjson.loads(got.stdout)["limits"][0]["limit"] == 7

    rule = ("--rule", "team1-hourly", "--counter", "requests_per_hour")
    changed = quota(tls_stack.config_path, "set", *rule, "--limit", "3", env=tls_stack.env)
    assert changed.returncode == 0, changed.stderr
    assert orjson.loads(changed.stdout)["limits"][0]["limit"] == 3
    # The gateway serves its clients as before, counted under the limit just set.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{tls_stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": "Bearer team1-key", "content-type": "application/json"},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ratelimit-limit-requests"] == "3"


def test_a_cli_that_does_not_speak_tls_cannot_reach_it(
    tls_stack: LocalStack, tmp_path: Path
) -> None:
    # The same address in a config that says nothing of TLS: a plaintext call.
    plain = tmp_path / "plain.yaml"
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    address = tls_stack.env.get("EXTPROC_MANAGEMENT_ADDRESS", "127.0.0.1:9465")
    plain.write_text(text.replace("${EXTPROC_MANAGEMENT_ADDRESS:-127.0.0.1:9465}", address) + RULE)
    refused = quota(plain, "get", env=tls_stack.env)
    assert refused.returncode == 2
    assert "cannot reach the management API" in refused.stderr
    assert ADMIN_TOKEN not in refused.stderr
