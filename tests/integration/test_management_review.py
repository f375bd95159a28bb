"""The management API and its CLI under a security and correctness review, with real parts.

A real gateway (and Envoy) on a Valkey of its own, the real `extproc quota|keys|usage`
commands as subprocesses. An operator whose shell has a proxy configured still talks
to the gateway directly (the admin token crosses no proxy in plaintext); a second
gateway started on the same host with the same management address refuses to start
instead of silently answering half of the operator's calls; a change the store could
not make, or did not confirm, is in the audit trail with its outcome, and the CLI
says that the store failed, not that the gateway is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack, free_port
from extproc.store.connection import connect
from tests.integration.conftest import running_stack, wait_for
from tests.integration.forked import run_extproc_text
from tests.integration.test_store_outage import OwnValkey

ADMIN_TOKEN = "mgmt-review-admin-token-5b7d9f1c"
RULE = """
quotas:
  rules:
    - name: team1-hourly
      subject: api_key
      match: team1
      requests_per_hour: 100
"""
TEAM1 = ("--kind", "api_key", "--subject", "team1")
TEAM1_RULE = (*TEAM1, "--rule", "team1-hourly", "--counter", "requests_per_hour")


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    server = OwnValkey(tmp_path_factory.mktemp("mgmt-review-valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, valkey: OwnValkey) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("mgmt-review")
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULE)
    store = {"REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0"}
    with running_stack(workdir, config, extra_env=store) as running:
        # One request, so that the usage report has a row and the log a line.
        answer = httpx.post(
            f"{running.base_url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer team1-key"},
            timeout=30.0,
        )
        assert answer.status_code == 200, answer.text
        yield running


def extproc(
    stack: LocalStack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`extproc <args>` as an operator runs it: the token from AIGW_ADMIN_TOKEN."""
    argv = [sys.executable, "-m", "extproc", *args, "--config", str(stack.config_path)]
    environment = {**stack.env, "AIGW_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
    return run_extproc_text(argv, environment)


def audit_lines(stack: LocalStack) -> list[dict[str, Any]]:
    err = (stack.workdir / "gateway.err").read_text(errors="replace")
    return [orjson.loads(line) for line in err.splitlines() if line.startswith('{"audit"')]


def last_audit(stack: LocalStack, action: str, seen: int) -> dict[str, Any]:
    """The first audit line of ``action`` written after the first ``seen`` lines."""

    def written() -> dict[str, Any] | None:
        fresh = [line for line in audit_lines(stack)[seen:] if line["action"] == action]
        return fresh[0] if fresh else None

    found: dict[str, Any] | None = wait_for(written)
    assert found is not None, f"no audit line for {action}"
    return found


class ProxyRecorder:
    """An HTTP proxy that only records who connected to it (and relays nothing)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port: int = self._socket.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2.0)
                with contextlib.suppress(OSError):
                    self.requests.append(connection.recv(4096))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def proxy() -> Iterator[ProxyRecorder]:
    recorder = ProxyRecorder()
    yield recorder
    recorder.close()


@pytest.mark.parametrize(
    "command",
    [
        ("quota", "get", *TEAM1, "--format", "json"),
        ("keys", "list", "--format", "json"),
        ("usage", "report", "--api", "--format", "json"),
    ],
    ids=["quota", "keys", "usage"],
)
def test_a_proxy_in_the_operators_environment_never_carries_the_admin_token(
    stack: LocalStack, proxy: ProxyRecorder, command: tuple[str, ...]
) -> None:
    """Corporate hosts set https_proxy; gRPC honoured it, so the plaintext call (admin
    token included) went to the proxy, which could not even reach the gateway's
    loopback: the command failed with "cannot reach the management API"."""
    proxied = f"http://127.0.0.1:{proxy.port}"
    names = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    env = {name: proxied for name in names} | {"no_proxy": "", "NO_PROXY": ""}

    done = extproc(stack, *command, env=env)

    assert done.returncode == 0, done.stderr
    orjson.loads(done.stdout)
    assert proxy.requests == []


def test_a_second_gateway_cannot_answer_on_the_same_management_address(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Two gateways on one host (a second config, an old process still running) with
    the same management.address: gRPC bound both to the port (SO_REUSEPORT), and the
    kernel handed each of the operator's calls to one of them at random, so a quota
    change could land in the other gateway's store."""
    returncode, stderr = second_gateway(stack, tmp_path, shares="EXTPROC_MANAGEMENT_ADDRESS")

    assert returncode == 2
    address = stack.env["EXTPROC_MANAGEMENT_ADDRESS"]
    assert f"management API cannot listen on {address}" in stderr
    assert "the address is in use" in stderr
    assert "Traceback" not in stderr
    # The first gateway answers as before.
    assert extproc(stack, "quota", "get", *TEAM1).returncode == 0


def test_a_second_gateway_cannot_take_a_share_of_envoys_streams(
    stack: LocalStack, tmp_path: Path
) -> None:
    """The same for the ext_proc address itself: with SO_REUSEPORT a second gateway (an
    old process still running) took a share of Envoy's streams and counted them in its
    own store and metrics."""
    returncode, stderr = second_gateway(stack, tmp_path, shares="EXTPROC_GRPC_ADDRESS")

    assert returncode == 2
    address = stack.env["EXTPROC_GRPC_ADDRESS"]
    assert f"ext_proc server cannot listen on {address}" in stderr
    assert "Traceback" not in stderr


def second_gateway(stack: LocalStack, tmp_path: Path, shares: str) -> tuple[int, str]:
    """Start a second gateway with the stack's config, on addresses of its own except
    ``shares`` (an address variable), and a store of its own; it must exit, not serve.
    Its exit code and stderr."""
    own = ("EXTPROC_GRPC_ADDRESS", "EXTPROC_HTTP_ADDRESS", "EXTPROC_MANAGEMENT_ADDRESS")
    env = {
        **stack.env,
        **{name: f"127.0.0.1:{free_port()}" for name in own if name != shares},
        "EXTPROC_DATA_DIR": str(tmp_path / "valkey"),
        "EXTPROC_SPOOL_DIR": str(tmp_path / "spool"),
        "REDIS_URL": "",  # a store of its own: another gateway's quotas
    }
    serve = [sys.executable, "-m", "extproc", "serve", "--config", str(stack.config_path)]
    with (tmp_path / "second.err").open("wb") as err:
        second = subprocess.Popen(
            serve, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
        try:
            ready_url = f"http://{env['EXTPROC_HTTP_ADDRESS']}/readyz"
            outcome = wait_for(lambda: _exited_or_ready(second, ready_url), timeout_s=60)
        finally:
            if second.poll() is None:
                second.terminate()
                second.wait(30)
    assert outcome == "exited", "the second gateway serves beside the first"
    return second.returncode, (tmp_path / "second.err").read_text(errors="replace")


def _exited_or_ready(process: subprocess.Popen[bytes], ready_url: str) -> str | None:
    if process.poll() is not None:
        return "exited"
    try:
        return "ready" if httpx.get(ready_url, timeout=1.0).status_code == 200 else None
    except httpx.HTTPError:
        return None


def store_command(valkey: OwnValkey, *args: str) -> None:
    async def send() -> None:
        client = connect(f"redis://127.0.0.1:{valkey.port}/0", 5.0)
        try:
            await client.execute_command(*args)
        finally:
            await client.aclose()

    asyncio.run(send())


@contextlib.contextmanager
def writes_paused(valkey: OwnValkey) -> Iterator[None]:
    """The store takes no write (a failover, a stalled primary) while reads go on."""
    store_command(valkey, "CLIENT", "PAUSE", "30000", "WRITE")
    try:
        yield
    finally:
        store_command(valkey, "CLIENT", "UNPAUSE")


def test_a_change_the_store_did_not_confirm_is_audited_as_unknown(
    stack: LocalStack, valkey: OwnValkey
) -> None:
    """The override was sent but never confirmed: it may be in force. The audit
    trail had nothing, and the CLI blamed an unreachable gateway."""
    seen = len(audit_lines(stack))
    with writes_paused(valkey):
        done = extproc(stack, "quota", "set", *TEAM1_RULE, "--limit", "7")

    assert done.returncode == 2
    assert "is the gateway running" not in done.stderr
    assert "store" in done.stderr and "may have been applied" in done.stderr
    line = last_audit(stack, "set_limit", seen)
    assert (line["caller"], line["outcome"], line["limit"]) == ("ops", "unknown", 7)
    assert line["error"].startswith("store error")
    assert line["before"]["team1-hourly:requests_per_hour"]["limit"] == 100
    assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert ADMIN_TOKEN not in (stack.workdir / "gateway.err").read_text(errors="replace")


def test_a_change_refused_by_a_stopped_store_is_audited_and_explained(
    stack: LocalStack, valkey: OwnValkey
) -> None:
    seen = len(audit_lines(stack))
    valkey.stop()
    try:
        reset = extproc(stack, "quota", "reset", *TEAM1)
        read = extproc(stack, "quota", "get", *TEAM1)
    finally:
        valkey.start()

    for done in (reset, read):
        assert done.returncode == 2
        assert "is the gateway running" not in done.stderr
        assert "store did not answer" in done.stderr
        assert "Traceback" not in done.stderr
    line = last_audit(stack, "reset_usage", seen)
    assert (line["caller"], line["outcome"]) == ("ops", "failed")
    assert "before" not in line
    # The store back, the same command works.
    assert wait_for(lambda: extproc(stack, "quota", "get", *TEAM1).returncode == 0)


@pytest.mark.parametrize("token", ["tök-admin", "admin\ntoken"], ids=["not-ascii", "line-break"])
def test_a_token_grpc_cannot_send_is_a_clear_usage_error(stack: LocalStack, token: str) -> None:
    """It was "error: Invalid metadata (INTERNAL)", exit 1, after gRPC's own log lines."""
    done = extproc(stack, "quota", "get", *TEAM1, env={"AIGW_ADMIN_TOKEN": token})

    assert done.returncode == 2
    assert "admin token holds a character gRPC cannot send" in done.stderr
    assert token not in done.stderr and "INTERNAL" not in done.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "inf", "nan"])
def test_a_timeout_that_cannot_be_waited_is_refused_as_such(
    stack: LocalStack, timeout: str
) -> None:
    """Each made the call fail at once with "no answer from the management API in time"."""
    done = extproc(stack, "quota", "get", *TEAM1, "--timeout", timeout)

    assert done.returncode == 2
    assert "expected a number of seconds above 0" in done.stderr
    assert "no answer" not in done.stderr
