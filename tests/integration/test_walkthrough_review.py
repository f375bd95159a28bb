"""`make run` as an operator starts it: `python -m extproc.devstack` in a checkout, with
the environment variables `config/gateway.yaml` reads, and the URLs it prints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from extproc.devstack import DEFAULT_CONFIG, Ports
from tests.integration.certificates import Authority

READY_LINE = "Ctrl-C stops everything."
ENDPOINT = re.compile(r"OpenAI-compatible endpoint: (\S+)/v1")
METRICS = re.compile(r"metrics:\s+(\S+)")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


@dataclass
class MakeRun:
    ports: Ports
    printed: str
    ca: Path

    def printed_url(self, pattern: re.Pattern[str]) -> str:
        found = pattern.search(self.printed)
        assert found is not None, self.printed
        return found.group(1)


def _environment(ports: Ports) -> dict[str, str]:
    """The variables of `config/gateway.yaml` an operator sets to move `make run` off
    ports another program holds."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        ENVOY_LISTENER_PORT=str(ports.envoy),
        ENVOY_ADMIN_PORT=str(ports.envoy_admin),
        EXTPROC_GRPC_ADDRESS=f"127.0.0.1:{ports.grpc}",
        EXTPROC_HTTP_ADDRESS=f"127.0.0.1:{ports.http}",
        EXTPROC_MANAGEMENT_ADDRESS=f"127.0.0.1:{ports.management}",
        MOCK_LLM_ADDRESS=f"127.0.0.1:{ports.mock}",
        PYTHONUNBUFFERED="1",
    )
    return env


def _checkout(folder: Path, ca_folder: Path) -> Path:
    """A checkout's `config/gateway.yaml`, its listener serving HTTPS (`envoy.listener_tls`,
    as docs/providers.md asks for AWS SDK clients)."""
    authority = Authority(ca_folder, "walkthrough-ca")
    issued = authority.issue("gateway", ips=("127.0.0.1",))
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["envoy"]["listener_tls"] = {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    (folder / "config").mkdir(parents=True)
    (folder / DEFAULT_CONFIG).write_text(yaml.safe_dump(raw, sort_keys=False))
    return authority.cert


def _read_until_ready(process: subprocess.Popen[str], timeout_s: float = 90.0) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if READY_LINE in line:
            return "".join(lines)
    return "".join(lines)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    checkout = tmp_path_factory.mktemp("checkout")
    ca = _checkout(checkout, tmp_path_factory.mktemp("ca"))
    ports = Ports.free()
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc.devstack"],
        cwd=checkout,
        env=_environment(ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = _read_until_ready(process)
        yield MakeRun(ports, printed, ca)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(checkout / ".run", ignore_errors=True)


def test_make_run_listens_where_the_environment_says(make_run: MakeRun) -> None:
    # Before: `make run` put its stack on 10000, 9464, 8089... whatever the variables
    # the config reads said, so an operator with port 10000 taken could not move it.
    assert READY_LINE in make_run.printed, make_run.printed
    endpoint = make_run.printed_url(ENDPOINT)
    assert endpoint.endswith(f"127.0.0.1:{make_run.ports.envoy}")
    assert make_run.printed_url(METRICS) == f"http://127.0.0.1:{make_run.ports.http}/metrics"


def test_the_printed_endpoint_speaks_the_listeners_scheme(make_run: MakeRun) -> None:
    # Before: http:// was printed for an HTTPS listener: every example curl got an
    # empty reply.
    assert READY_LINE in make_run.printed, make_run.printed
    endpoint = make_run.printed_url(ENDPOINT)
    assert endpoint.startswith("https://")
    with httpx.Client(verify=str(make_run.ca), timeout=30.0) as client:
        reply = client.post(
            f"{endpoint}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer team1-key"},
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["total_tokens"] > 0
