"""Stopping the gateway loses no usage: streams open when it is told to stop are
logged, rolled up and settled in the quota store before it exits, whatever sends
the signal (a terminal's Ctrl-C, a supervisor's SIGTERM, the supervisor's death).

Each test runs a stack of its own, since each stops it. Streams come from the
official OpenAI client; the mock provider paces them (``chunks``/``interval``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import EmbeddedValkey
from tests.integration.conftest import GatewayLog, running_stack, usage_rows, wait_for
from tests.integration.test_store_outage import OwnValkey

KEY_ID = "team1"
QUOTAS = """
quotas:
  rules:
    - {name: daily, subject: api_key, tokens_per_day: 100000000}
"""
# A stream the mock paces over ~0.4 s, and one that would take a minute (few chunks a
# second: each one costs Envoy and the gateway some CPU, and their count proves nothing).
SHORT = "chunks=20;interval=0.02"
LONG = "chunks=1200;interval=0.05"


def write_config(workdir: Path, grace_s: float) -> Path:
    text = DEFAULT_CONFIG.read_text().replace("grace_period_s: 10", f"grace_period_s: {grace_s}")
    assert f"grace_period_s: {grace_s}" in text
    path = workdir / "gateway.yaml"
    path.write_text(text + QUOTAS)
    return path


class OpenStream(threading.Thread):
    """One streamed chat completion, read to its end (or its cut) in the background."""

    def __init__(self, stack: LocalStack, fault: str) -> None:
        super().__init__(daemon=True)
        self._client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=f"{KEY_ID}-key",
                              max_retries=0, timeout=120.0)  # fmt: skip
        self._fault = fault
        self.request_id = ""
        self.usage: Any = None
        self.error: BaseException | None = None
        self.first_chunk = threading.Event()

    def run(self) -> None:
        try:
            with self._client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Stream, please"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-fault": self._fault},
            ) as response:
                self.request_id = response.headers["x-request-id"]
                for chunk in response.parse():
                    self.first_chunk.set()
                    if chunk.usage is not None:
                        self.usage = chunk.usage
        except Exception as exc:  # a cut stream: what the client saw is the result
            self.error = exc
        finally:
            self.first_chunk.set()


def open_streams(stack: LocalStack, *faults: str) -> list[OpenStream]:
    """Streams that are under way (the client has their first chunk)."""
    streams = [OpenStream(stack, fault) for fault in faults]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.first_chunk.wait(30), "the stream never started"
        assert stream.error is None, stream.error
    return streams


def log_line(stack: LocalStack, stream: OpenStream) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(stream.request_id)
    return line


def spooled(stack: LocalStack) -> dict[str, str]:
    """Spool files that hold records: what waits for a later start to reach the store."""
    root = Path(stack.env["EXTPROC_SPOOL_DIR"])
    files = root.rglob("*.jsonl") if root.exists() else iter(())
    return {str(path): path.read_text() for path in files if path.read_text().strip()}


def tokens_counted(client: redis.Redis) -> int:
    """The key's daily token counter, as the quota store holds it."""
    keys = client.keys(f"aigw:q:{{api_key:{KEY_ID}}}:daily:t:*")
    return sum(int(client.get(key) or 0) for key in keys)


def embedded_tokens_counted(stack: LocalStack) -> int:
    """The counter in the stopped gateway's embedded store, read as ``extproc usage`` does."""
    embedded = EmbeddedValkey(stack.env["EXTPROC_DATA_DIR"])
    with redis.Redis.from_url(embedded.start()) as client:
        try:
            return tokens_counted(client)
        finally:
            embedded.stop()


def worker_pids(stack: LocalStack) -> list[int]:
    text = (stack.workdir / "gateway.err").read_text()
    return [int(pid) for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", text)]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_ctrl_c_drains_open_streams_and_writes_their_usage_before_the_store_stops(
    tmp_path: Path,
) -> None:
    """Ctrl-C in the terminal running `extproc serve` signals its whole process group,
    the embedded Valkey included: the store must still take the drained streams' usage."""
    with running_stack(tmp_path, write_config(tmp_path, grace_s=3)) as stack:
        short, long = open_streams(stack, SHORT, LONG)
        gateway = stack.process("gateway")
        # The launcher started it in a session of its own: its pid is its group's id.
        os.killpg(gateway.pid, signal.SIGINT)
        assert gateway.wait(60) == 0
        short.join(30)
        long.join(30)
        # Served whole within the grace period; the other one cut at its end.
        assert short.usage is not None and short.error is None
        assert long.error is not None
        finished, cut = log_line(stack, short), log_line(stack, long)
    assert finished["total_tokens"] == short.usage.total_tokens
    assert not finished["usage_estimated"]
    assert cut["usage_estimated"] and cut["completion_tokens"] > 0
    logged = finished["total_tokens"] + cut["total_tokens"]
    # Nothing waits in the spool for a next start: the store took it all before it stopped.
    assert spooled(stack) == {}
    row = usage_rows(stack, "api_key")[KEY_ID]
    assert (row["requests"], row["total_tokens"]) == (2, logged)
    assert embedded_tokens_counted(stack) == logged


def test_the_supervisor_is_not_ready_while_its_workers_drain(tmp_path: Path) -> None:
    """A load balancer must stop sending traffic as soon as the stop begins."""
    with running_stack(tmp_path, write_config(tmp_path, grace_s=30), workers=2) as stack:
        readyz = f"http://127.0.0.1:{stack.ports.http}/readyz"
        assert httpx.get(readyz).status_code == 200
        # ~3 s: still open when readiness is asked, right after the signal.
        [stream] = open_streams(stack, "chunks=30;interval=0.1")
        supervisor = stack.process("gateway")
        supervisor.send_signal(signal.SIGTERM)
        answer = httpx.get(readyz)
        draining = stream.is_alive()
        assert draining, "the stream ended before readiness was asked: inconclusive"
        assert answer.status_code == 503, answer.text
        assert answer.json()["reason"] == "shutting down"
        assert supervisor.wait(60) == 0
        stream.join(30)
        assert stream.usage is not None
        assert log_line(stack, stream)["total_tokens"] == stream.usage.total_tokens
    assert usage_rows(stack, "api_key")[KEY_ID]["total_tokens"] == stream.usage.total_tokens


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[OwnValkey]:
    server = OwnValkey(tmp_path / "own-valkey")
    server.start()
    yield server
    server.stop()


def test_workers_drain_and_stop_when_their_supervisor_is_killed(
    tmp_path: Path, valkey: OwnValkey
) -> None:
    """The OOM killer (or kill -9) takes the supervisor: its workers must not serve on
    unsupervised, holding their ports; they stop as on SIGTERM, their usage written."""
    url = f"redis://127.0.0.1:{valkey.port}/0"
    workdir = tmp_path / "stack"
    workdir.mkdir()
    config = write_config(workdir, grace_s=30)
    with running_stack(workdir, config, extra_env={"REDIS_URL": url}, workers=2) as stack:
        pids = worker_pids(stack)
        [stream] = open_streams(stack, "chunks=20;interval=0.1")  # ~2 s
        supervisor = stack.process("gateway")
        supervisor.kill()
        supervisor.wait()
        try:
            stopped = wait_for(lambda: not any(running(pid) for pid in pids), timeout_s=60)
            assert stopped, "workers still serve with no supervisor"
        finally:
            for pid in pids:  # never leave this test's workers behind
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
        stream.join(30)
        assert stream.usage is not None, stream.error
        assert log_line(stack, stream)["total_tokens"] == stream.usage.total_tokens
    assert spooled(stack) == {}
    assert usage_rows(stack, "api_key")[KEY_ID]["total_tokens"] == stream.usage.total_tokens
    with redis.Redis.from_url(url) as client:
        assert tokens_counted(client) == stream.usage.total_tokens
