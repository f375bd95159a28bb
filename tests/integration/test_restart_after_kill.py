"""A gateway killed outright (SIGKILL, the OOM killer) with its embedded Valkey is started
again on the same data dir, as systemd's ``Restart=always`` or a supervisor loop does:
it starts and serves without an operator, and the usage recorded before the kill is
still in the report. The embedded Valkey outlives the kill (it runs in a session of its
own): the new start takes it over, after the killed supervisor's workers have drained
into it. A data dir whose gateway still runs stays refused, and so does one whose left
server runs but does not answer (stopped with SIGSTOP): never a second server on its AOF.

Every process a test starts is stopped by pid, the servers a kill leaves included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.store.embedded import ENDPOINT_FILE, free_port, running_endpoint
from tests.integration.conftest import running_stack, usage_rows, wait_for
from tests.integration.test_shutdown import (
    KEY_ID,
    log_line,
    open_streams,
    spooled,
    worker_pids,
    write_config,
)
from tests.unit.test_embedded_store_takeover import freeze, servers_on


def store_pid(stack: LocalStack) -> int:
    """The pid of the embedded Valkey the gateway's endpoint file names."""
    url = (Path(stack.env["EXTPROC_DATA_DIR"]) / ENDPOINT_FILE).read_text().strip()
    with redis.Redis.from_url(url, socket_timeout=5.0) as client:
        return int(client.info("server")["process_id"])


def started_at(pid: int) -> str | None:
    """When ``pid`` started (None once it has exited): a pid alone may be another's by then."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


@contextlib.contextmanager
def stopped_by_pid(pids: list[int]) -> Iterator[None]:
    """Whatever a kill leaves behind (the store, a supervisor's workers) is ended at the
    end, by pid: nothing else would, and each run would leave one more."""
    processes = [(pid, started_at(pid)) for pid in pids]
    try:
        yield
    finally:
        for pid, started in processes:
            if started is not None and started_at(pid) == started:
                os.kill(pid, signal.SIGKILL)


def kill_gateway(stack: LocalStack) -> None:
    gateway = stack.process("gateway")
    gateway.kill()
    gateway.wait()
    # Gone for good: the stack's checks must not take it for a crash of the new one.
    stack._processes[:] = [(name, p) for name, p in stack._processes if p is not gateway]


def start_again(stack: LocalStack) -> subprocess.Popen[bytes]:
    """The same command on the same config and data dir, as a restart policy runs it;
    stopped with the stack."""
    serve = [sys.executable, "-m", "extproc", "serve", "--config", str(stack.config_path)]
    if stack.workers > 1:
        serve += ["--workers", str(stack.workers)]
    stack._spawn("gateway-again", serve, stack.env, stdout=stack.gateway_log)
    stack.wait_ready(120)
    return stack.process("gateway-again")


def chat(stack: LocalStack) -> int:
    """One chat completion through Envoy; its total tokens."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=f"{KEY_ID}-key", max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
    )
    assert answer.usage is not None
    return answer.usage.total_tokens


def reported_tokens(stack: LocalStack) -> int:
    row = usage_rows(stack, "api_key").get(KEY_ID)
    return int(row["total_tokens"]) if row else 0


def another_gateway_env(stack: LocalStack) -> dict[str, str]:
    """The stack's environment (its data dir) with ports of the gateway's own."""
    env = stack.env
    for name in ("GRPC", "HTTP", "MANAGEMENT"):
        env[f"EXTPROC_{name}_ADDRESS"] = f"127.0.0.1:{free_port()}"
    return env


def test_a_gateway_killed_with_sigkill_starts_again_with_its_usage(tmp_path: Path) -> None:
    with (
        running_stack(tmp_path, write_config(tmp_path, grace_s=5)) as stack,
        stopped_by_pid([store_pid(stack)]),
    ):
        before = chat(stack)
        assert wait_for(lambda: reported_tokens(stack) == before), "never rolled up"
        kill_gateway(stack)

        gateway = start_again(stack)

        after = chat(stack)
        assert wait_for(lambda: reported_tokens(stack) == before + after)
        # A second gateway on that data dir while this one runs: refused, by name.
        second = subprocess.run(
            [sys.executable, "-m", "extproc", "serve", "--config", str(stack.config_path)],
            env=another_gateway_env(stack), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"another process (pid {gateway.pid}) runs an embedded Valkey" in second.stderr
        assert "Traceback" not in second.stderr
        assert chat(stack) > 0  # the running one was left alone
    assert spooled(stack) == {}


def test_a_left_store_that_does_not_answer_refuses_the_start_until_it_answers(
    tmp_path: Path,
) -> None:
    """Killed, and its store stopped with SIGSTOP (or swapping): the next start used to
    take its silence for absence and start a second Valkey on the same AOF."""
    with (
        running_stack(tmp_path, write_config(tmp_path, grace_s=5)) as stack,
        stopped_by_pid([store_pid(stack)]),
    ):
        before = chat(stack)
        assert wait_for(lambda: reported_tokens(stack) == before), "never rolled up"
        left = store_pid(stack)
        data_dir = Path(stack.env["EXTPROC_DATA_DIR"])
        kill_gateway(stack)
        freeze(left)
        try:
            refused = subprocess.run(
                [sys.executable, "-m", "extproc", "serve", "--config", str(stack.config_path)],
                env=stack.env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert refused.returncode == 2, refused.stderr
            assert f"pid {left}, stopped" in refused.stderr
            assert f"kill -CONT {left}" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert servers_on(data_dir) == [left]
        finally:
            os.kill(left, signal.SIGCONT)

        start_again(stack)

        [server] = servers_on(data_dir)
        assert server != left
        after = chat(stack)
        assert wait_for(lambda: reported_tokens(stack) == before + after)
    assert spooled(stack) == {}


def test_a_killed_supervisors_workers_drain_into_its_store_before_the_next_start_takes_it(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "stack"
    workdir.mkdir()
    with (
        running_stack(workdir, write_config(workdir, grace_s=30), workers=2) as stack,
        stopped_by_pid([store_pid(stack), *worker_pids(stack)]),
    ):
        # ~10 s: still streaming when the new start comes to the store.
        [stream] = open_streams(stack, "chunks=100;interval=0.1")
        kill_gateway(stack)

        start_again(stack)

        stream.join(60)
        assert stream.usage is not None, stream.error
        assert log_line(stack, stream)["total_tokens"] == stream.usage.total_tokens
        err = (stack.workdir / "gateway-again.err").read_text()
        assert "waiting up to" in err, err
        after = chat(stack)
        expected = stream.usage.total_tokens + after
        assert wait_for(lambda: reported_tokens(stack) == expected), reported_tokens(stack)
    assert spooled(stack) == {}


@pytest.fixture(autouse=True)
def _no_server_left(tmp_path: Path) -> Iterator[None]:
    """Should a test fail between the kill and the new start, the server the kill left
    on its data dir is shut down (only one that says it serves that data dir)."""
    yield
    for endpoint in tmp_path.rglob(ENDPOINT_FILE):
        url = running_endpoint(endpoint.parent)
        if url is not None:
            with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url) as client:
                client.shutdown()
