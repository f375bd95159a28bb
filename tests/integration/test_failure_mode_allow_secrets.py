"""``envoy.failure_mode_allow: true`` and the gateway's provider credentials.

With it, Envoy lets a request past a gateway that fails to answer. Where the gateway
answered for the request but not for one failover attempt (killed, restarting, or
past ``envoy.message_timeout_ms`` under load), the attempt went on unprocessed: with the
headers Envoy replays from the attempt before it, the previous provider's credential
included, to the next provider of the chain. An attempt the gateway did not prepare can
serve nothing (its body untranslated, no credential of its own provider), so the
per-attempt filter fails closed whatever ``failure_mode_allow`` says.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from extproc.devstack import LocalStack
from extproc.store.embedded import ENDPOINT_FILE, free_port
from tests.integration.conftest import (
    default_config,
    running_stack,
    wait_for,
    write_config,
)
from tests.integration.failover_support import FaultyMock, start_faulty_mock
from tests.integration.test_faults import fail_open_envoy

KEY = "fail-open-client-key-5d1e"
SLOW_PROVIDER_KEY = "Wd3sSLOWprovider-key-0c9e4b7aNx5q"
# The primary answers a 503 after this long: time enough to stop the gateway while it waits.
PRIMARY_DELAY_S = 4.0
CHAT = {"model": "gpt-slow", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Stack:
    gateway: LocalStack
    slow: FaultyMock
    fallback: Catcher


class Catcher:
    """The chain's fallback provider: records the bytes of every request it gets, as they
    came (an attempt sent unprocessed need not be valid HTTP for a parser), and answers 503."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(1.0)
            try:
                while chunk := connection.recv(65536):
                    self.received += chunk
                    if b"\r\n\r\n" in chunk:
                        connection.sendall(
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                        )
            except OSError:
                pass

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    script = (
        "from extproc.mock_llm import MockOptions, run\n"
        f"run('127.0.0.1', {port}, "
        f"MockOptions(default_fault='status=503;delay={PRIMARY_DELAY_S}'))\n"
    )
    slow = start_faulty_mock(port, [sys.executable, "-c", script])
    raw = default_config()
    mock = next(p for p in raw["providers"] if p["name"] == "mock")
    fallback = Catcher()
    raw["providers"] += [
        {**mock, "name": "slow", "base_url": f"{slow.url}/v1", "api_key": SLOW_PROVIDER_KEY},
        {**mock, "name": "next", "base_url": f"http://127.0.0.1:{fallback.port}/v1"},
    ]
    raw["models"] += [
        {"name": "gpt-slow", "provider": "slow", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["gpt-next"]},
        {"name": "gpt-next", "provider": "next", "upstream_model": "gpt-4o-mini"},
    ]  # fmt: skip
    raw["auth"]["api_keys"].append({"id": "fail-open", "key": KEY})
    workdir = tmp_path_factory.mktemp("fail-open-secrets")
    try:
        with running_stack(workdir, write_config(workdir, raw)) as gateway:
            yield Stack(gateway, slow, fallback)
    finally:
        fallback.close()
        slow.process.terminate()
        slow.process.wait(10)
        stop_orphaned_store(workdir / "data" / "valkey")


def stop_orphaned_store(data_dir: Path) -> None:
    """Shut down the embedded Valkey of the gateway the test kills: a SIGKILL ends no
    child, so it went on running after the stack, one more on every run."""
    endpoint = data_dir / ENDPOINT_FILE
    if not endpoint.exists():
        return  # stopped by its gateway
    client = redis.Redis.from_url(endpoint.read_text().strip(), socket_timeout=5.0)
    with contextlib.suppress(redis.RedisError):  # the connection ends with the server
        client.shutdown(nosave=True)


def test_a_failover_attempt_the_gateway_did_not_answer_never_carries_the_last_providers_key(
    stack: Stack,
) -> None:
    # A request served as usual first (the session's check reads every gateway's log).
    served = httpx.post(
        f"{stack.gateway.base_url}/v1/chat/completions",
        content=orjson.dumps(CHAT | {"model": "gpt-4o-mini"}),
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30.0,
    )
    assert served.status_code == 200
    fail_open = fail_open_envoy(stack.gateway)
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(
            httpx.post(
                f"{fail_open}/v1/chat/completions",
                content=orjson.dumps(CHAT),
                headers={"authorization": f"Bearer {KEY}"},
                timeout=60.0,
            )
        )

    client = threading.Thread(target=send)
    client.start()
    # The first attempt reached the primary, with the primary's key: the gateway did its
    # part for the request and for that attempt. Now it goes away.
    wait_for(stack.slow.requests, 20.0)
    [first] = stack.slow.requests()
    assert first["headers"]["authorization"] == f"Bearer {SLOW_PROVIDER_KEY}"
    gateway = stack.gateway.process("gateway")
    gateway.kill()
    gateway.wait(10)
    client.join(60)
    [answer] = answers
    # Before: the primary's 503 made Envoy try the fallback, past the dead gateway, with
    # the primary's key (and a body never translated for it); the client got its 503.
    assert SLOW_PROVIDER_KEY.encode() not in stack.fallback.received
    assert not stack.fallback.received  # nothing the gateway did not prepare
    assert answer.status_code >= 500
    assert answer.json()["error"]["type"]
