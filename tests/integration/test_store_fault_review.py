"""Store faults as users see them, with a Valkey the test owns and pauses (SIGSTOP).

A store that stops answering must cost a request the store's own timeout and then
the answer its rules configure: through (``fail_open``) or a 503
``quota_store_unavailable`` (``fail_closed``), never Envoy's 504 for a gateway
that did not answer in time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import running_stack
from tests.integration.test_store_outage import OwnValkey

KEYS = {"open": "review-open-key-7a6b", "closed": "review-closed-key-5c4d"}
RULES = """
quotas:
  rules:
    - {name: open-tokens, subject: api_key, match: open, tokens_per_day: 100000000,
       on_store_failure: fail_open}
    - {name: closed-requests, subject: api_key, match: closed, requests_per_day: 100000000,
       on_store_failure: fail_closed}
"""


def slow_store_config(workdir: Path) -> Path:
    """Envoy waits 2 s for each gateway answer; the store's own timeout is 1.5 s."""
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    text = text.replace("\nenvoy:\n", "\nenvoy:\n  message_timeout_ms: 2000\n", 1)
    text = text.replace("\nstore:\n", "\nstore:\n  timeout_ms: 1500\n", 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULES)
    return config


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    server = OwnValkey(tmp_path_factory.mktemp("review-valkey"))
    server.start()
    yield server
    if server._server is not None and server._server._process is not None:
        os.kill(server._server._process.pid, signal.SIGCONT)  # never leave it paused
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, valkey: OwnValkey) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("store-review")
    env = {"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"}
    with running_stack(workdir, slow_store_config(workdir), extra_env=env) as running:
        yield running


def chat(stack: LocalStack, key: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "paused?"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {KEYS[key]}", "content-type": "application/json"},
        timeout=30.0,
    )


def pause(valkey: OwnValkey, signum: signal.Signals) -> None:
    assert valkey._server is not None
    os.kill(valkey._server._process.pid, signum)


def test_a_paused_store_gets_each_rule_its_configured_answer_not_envoys_timeout(
    stack: LocalStack, valkey: OwnValkey
) -> None:
    assert chat(stack, "open").status_code == 200
    pause(valkey, signal.SIGSTOP)
    try:
        through = chat(stack, "open")
        refused = chat(stack, "closed")
    finally:
        pause(valkey, signal.SIGCONT)
    assert through.status_code == 200, through.text
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "quota_store_unavailable"
