"""Envoy's HTTP/2 keepalive pings on its connection to the gateway, end to end.

The real Envoy pings the real gateway every second (``server.keepalive``:
``interval_s: 1``, so the gateway permits pings half a second apart), and the
official OpenAI client calls through it. A connection left idle for several
intervals, and one whose only stream waits on a slow provider for as long, stays
up: Envoy's stats for the gateway's cluster show no GOAWAY from the gateway
(``upstream_cx_close_notify``) and no connection closed (``upstream_cx_destroy``),
the requests are answered and billed, and the next one goes out on the same
connection. Without the gateway's permission, gRPC answers the fourth such ping
with GOAWAY ENHANCE_YOUR_CALM and closes the connection, failing the request on
it; a second Envoy that pings ten times as often as permitted shows that the
gateway still does so for a client that abuses it, and that these checks see it.

Pings are counted in Envoy's own trace log of its HTTP/2 codec (``recv PING
ACK``: the gateway answered one), switched on through the admin API. Nothing is
timed: each wait is for a count of answered pings, or the connection's end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from openai import OpenAI

from extproc.config import load_config
from extproc.config.model import KeepaliveConfig
from extproc.devstack import DEFAULT_CONFIG, LocalStack, envoy_binary, free_port
from extproc.envoy_bootstrap import envoy_command, render_bootstrap_yaml
from tests.integration.conftest import GatewayLog, running_stack, wait_for

KEY = "keepalive-key-5d4c3b2a"
# Envoy pings every second; the gateway permits pings half a second apart.
KEEPALIVE = {"interval_s": 1, "timeout_s": 1}
# Pings answered while nothing else crosses the connection. gRPC's default
# permission sends GOAWAY on the fourth (its first and two strikes pass): six
# answered prove the permission holds, with a margin.
QUIET_PINGS = 6
# A provider whose answers wait until the test lets them go.
SLOW_MODEL = "slow-model"
SLOW_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
# How long any one condition is waited for: far beyond the seconds it takes.
WAIT_S = 60.0
# Envoy's counters of a connection's end: GOAWAY received, connection closed.
CONNECTION_ENDS = ("upstream_cx_close_notify", "upstream_cx_destroy")


class SlowProvider:
    """An OpenAI-compatible provider that holds each answer until ``release()``."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                owner.arrived.set()
                owner._release.wait(WAIT_S)
                body = orjson.dumps(owner.completion())
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @staticmethod
    def completion() -> dict[str, Any]:
        message = {"role": "assistant", "content": "worth the wait"}
        return {
            "id": "chatcmpl-slow",
            "object": "chat.completion",
            "created": 1,
            "model": SLOW_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": SLOW_USAGE,
        }

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def keepalive_config(workdir: Path, slow: SlowProvider) -> Path:
    """The default config with fast pings, one key and the slow provider's model."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["server"]["keepalive"] = KEEPALIVE
    raw["auth"]["api_keys"].append({"id": "keepalive", "key": KEY})
    slow_provider = {"name": "slow", "base_url": f"http://127.0.0.1:{slow.port}/v1"}
    raw["providers"].append({**slow_provider, "api_key": "slow-provider-key"})
    raw["models"].append({"name": SLOW_MODEL, "provider": "slow"})
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def slow() -> Iterator[SlowProvider]:
    provider = SlowProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, slow: SlowProvider) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("keepalive")
    with running_stack(workdir, keepalive_config(workdir, slow)) as running:
        trace_pings(running.envoy_admin_url)
        yield running


@pytest.fixture
def client(stack: LocalStack) -> OpenAI:
    # No retries: a request the gateway's GOAWAY failed must show as failed.
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


def trace_pings(admin_url: str) -> None:
    """Envoy logs each PING it sends and each answer from then on (to its stderr)."""
    answer = httpx.post(f"{admin_url}/logging", params={"http2": "trace"}, timeout=5.0)
    assert answer.status_code == 200, answer.text


def pings_answered(stack: LocalStack) -> int:
    log = stack.workdir / "envoy.err"
    return log.read_text(errors="replace").count("recv PING ACK") if log.exists() else 0


def gateway_cluster(admin_url: str) -> dict[str, int]:
    """Envoy's counters and gauges for its cluster of the gateway, by name."""
    text = httpx.get(
        f"{admin_url}/stats", params={"filter": r"^cluster\.extproc\."}, timeout=5.0
    ).text
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name.removeprefix("cluster.extproc.")] = int(value)
    return stats


def connection_ended(admin_url: str, before: dict[str, int]) -> Callable[[], bool]:
    """Whether the gateway sent GOAWAY or a connection closed since ``before``."""

    def ended() -> bool:
        now = gateway_cluster(admin_url)
        return any(now[name] > before[name] for name in CONNECTION_ENDS)

    return ended


def quiet_pings(stack: LocalStack, before: dict[str, int]) -> int:
    """Wait until QUIET_PINGS more pings were answered, or the connection ended;
    return how many were answered."""
    answered = pings_answered(stack)
    ended = connection_ended(stack.envoy_admin_url, before)
    wait_for(lambda: pings_answered(stack) >= answered + QUIET_PINGS or ended(), WAIT_S)
    return pings_answered(stack) - answered


def assert_still_connected(stack: LocalStack, before: dict[str, int]) -> None:
    after = gateway_cluster(stack.envoy_admin_url)
    # No GOAWAY from the gateway, no connection closed, none opened: the one
    # connection carried the pings and the requests.
    for name in (*CONNECTION_ENDS, "upstream_cx_total"):
        assert after[name] == before[name], (name, before, after)
    assert after["upstream_cx_active"] == 1
    assert after["http2.keepalive_timeout"] == 0


def ask(client: OpenAI, model: str = "gpt-4o-mini") -> tuple[str, Any]:
    """One chat completion: the request id Envoy gave it, and the answer."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "still there?"}]
    )
    return raw.headers["x-request-id"], raw.parse()


def billed_tokens(stack: LocalStack, request_id: str) -> int:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert line["http_status_code"] == 200
    total: int = line["total_tokens"]
    return total


def test_an_idle_connection_to_the_gateway_survives_its_pings_and_serves_the_next_request(
    stack: LocalStack, client: OpenAI
) -> None:
    first_id, first = ask(client)  # Envoy connects to the gateway for it
    assert billed_tokens(stack, first_id) == first.usage.total_tokens
    before = gateway_cluster(stack.envoy_admin_url)
    assert before["upstream_cx_active"] == 1

    # Nothing but pings crosses the connection now.
    assert quiet_pings(stack, before) >= QUIET_PINGS
    assert_still_connected(stack, before)

    second_id, second = ask(client)
    assert second.choices[0].message.content
    assert billed_tokens(stack, second_id) == second.usage.total_tokens
    assert_still_connected(stack, before)


def test_a_request_waiting_on_a_slow_provider_survives_the_pings_and_is_billed(
    stack: LocalStack, client: OpenAI, slow: SlowProvider
) -> None:
    """The request's gateway stream is open but silent while the provider thinks:
    gRPC's default permission would close the connection, and the stream with it."""
    ask(client)  # the connection is up before the pings are counted
    before = gateway_cluster(stack.envoy_admin_url)
    with ThreadPoolExecutor(max_workers=1) as caller:
        waiting = caller.submit(ask, client, SLOW_MODEL)
        try:
            assert slow.arrived.wait(WAIT_S), "the request never reached the provider"
            assert quiet_pings(stack, before) >= QUIET_PINGS
        finally:
            slow.release()
        request_id, answer = waiting.result(WAIT_S)
    assert answer.choices[0].message.content == "worth the wait"
    assert answer.usage.total_tokens == SLOW_USAGE["total_tokens"]
    assert billed_tokens(stack, request_id) == SLOW_USAGE["total_tokens"]
    assert_still_connected(stack, before)


def test_a_client_pinging_ten_times_as_often_as_permitted_is_sent_away(
    stack: LocalStack,
) -> None:
    """A second Envoy, rendered to ping every 0.1 s, against the same gateway (which
    permits 0.5 s): the gateway's GOAWAY shows in the very stats the tests above
    read, so they would see it too."""
    admin_url, base_url = pushy_envoy(stack, interval_s=0.1)
    try:
        # Any request opens the connection; whether it is answered before the pings
        # pile up does not matter here.
        httpx.post(
            f"{base_url}/v1/chat/completions",
            content=orjson.dumps(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            ),
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            timeout=30.0,
        )
        # GOAWAY, then the connection closed (by Envoy, once nothing is left on it).
        assert wait_for(lambda: gateway_cluster(admin_url)["upstream_cx_close_notify"] >= 1, WAIT_S)
        assert wait_for(lambda: gateway_cluster(admin_url)["upstream_cx_destroy"] >= 1, WAIT_S)
    finally:
        stack.process("envoy-pushy").terminate()
    # The first Envoy, pinging as permitted, is not sent away.
    assert gateway_cluster(stack.envoy_admin_url)["upstream_cx_close_notify"] == 0


def pushy_envoy(stack: LocalStack, interval_s: float) -> tuple[str, str]:
    """Another Envoy in front of the stack's gateway, pinging every ``interval_s``;
    returns its admin and listener URLs."""
    config = load_config(stack.config_path, stack.env)
    # Below what a config may say: built unvalidated, as an abusive client would ping.
    keepalive = KeepaliveConfig.model_construct(interval_s=interval_s, timeout_s=1.0)
    server = config.server.model_copy(update={"keepalive": keepalive})
    envoy = config.envoy.model_copy(
        update={"listener_port": free_port(), "admin_port": free_port()}
    )
    config = config.model_copy(update={"server": server, "envoy": envoy})
    bootstrap = stack.workdir / "envoy-pushy.yaml"
    bootstrap.write_text(render_bootstrap_yaml(config), encoding="utf-8")
    stack._spawn("envoy-pushy", envoy_command(config, str(bootstrap), envoy_binary()), stack.env)
    admin_url = f"http://127.0.0.1:{envoy.admin_port}"
    assert wait_for(lambda: _answers(f"{admin_url}/ready"), WAIT_S)
    return admin_url, f"http://127.0.0.1:{envoy.listener_port}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
