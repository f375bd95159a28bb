"""The embedded Valkey killed behind the gateway's back (the OOM killer, a crash):
the gateway starts it again on its port, with its data, and serves on.

Before, nothing watched it: every request a fail_closed rule covers got a 503
until someone restarted the whole gateway, while /readyz said ready. Run with
``serve --workers 2``, where the supervisor owns the store and the workers hold
its URL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import ENDPOINT_FILE
from tests.integration.conftest import running_stack, usage_rows, wait_for

QUOTAS = """
quotas:
  rules:
    - {name: daily, subject: api_key, tokens_per_day: 100000000, on_store_failure: fail_closed}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("embedded-restart")
    config = workdir / "gateway.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + QUOTAS)
    with running_stack(workdir, config_path=config, workers=2) as running:
        yield running


def chat(stack: LocalStack) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": "Bearer team1-key", "content-type": "application/json"},
        timeout=30.0,
    )


def test_a_killed_embedded_store_is_started_again_and_no_usage_is_lost(
    stack: LocalStack,
) -> None:
    served = [chat(stack) for _ in range(3)]
    assert [answer.status_code for answer in served] == [200, 200, 200]
    url = (stack.workdir / "data" / "valkey" / ENDPOINT_FILE).read_text().strip()
    with redis.Redis.from_url(url) as store:
        os.kill(int(store.info("server")["process_id"]), signal.SIGKILL)

    refused: list[httpx.Response] = []

    def served_again() -> bool:
        answer = chat(stack)
        if answer.status_code == 200:
            served.append(answer)
            return True
        refused.append(answer)
        return False

    assert wait_for(served_again, timeout_s=30.0), refused[-1].text
    # Meanwhile the rule failed closed, as its on_store_failure says.
    assert {answer.json()["error"]["code"] for answer in refused} <= {"quota_store_unavailable"}
    served += [chat(stack) for _ in range(2)]
    assert {answer.status_code for answer in served} == {200}
    # Same port, same data: the workers' URL still reaches it.
    assert (stack.workdir / "data" / "valkey" / ENDPOINT_FILE).read_text().strip() == url

    # Every request served, before the kill, around it and after, is in the rollups once:
    # those written before it were on the AOF, those it cut were spooled and replayed.
    tokens = sum(answer.json()["usage"]["total_tokens"] for answer in served)

    def counted() -> bool:
        row = usage_rows(stack, "api_key").get("team1")
        return row is not None and row["requests"] == len(served)

    assert wait_for(counted, timeout_s=20.0)
    row = usage_rows(stack, "api_key")["team1"]
    assert row["prompt_tokens"] + row["completion_tokens"] == tokens
    said = (stack.workdir / "gateway.err").read_text()
    assert said.count("the embedded Valkey exited") == 1
    assert "the embedded Valkey answers again" in said
