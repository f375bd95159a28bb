"""Reloads at the edges of a process's life, and what a refused or late reload leaves.

An operator edits the config and sends SIGHUP (or a ConfigMap sync does it for them)
while the gateway is still starting; a worker of `serve --workers N` crashes after
the file changed; a reload is refused while the metrics' label budget is full;
`extproc check-config` is run before a deploy. Each must end as the docs say: the
reload applied once the gateway serves, no worker killed by the signal, nothing
changed by a refused config, and the check failing where `serve` would.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.cli import main
from extproc.config.loader import ConfigError, load_config
from extproc.config.model import GatewayConfig
from extproc.devstack import free_port, free_port_block
from extproc.server import Gateway
from extproc.workers import Supervisor
from tests.integration.conftest import wait_for
from tests.integration.test_lifecycle_review import CONFIG as WORKERS_CONFIG

# One process, no store answering (readiness is not what these tests look at).
SERVING = """
server:
  grpc_address: 127.0.0.1:{grpc_port}
  http_address: 127.0.0.1:{http_port}
  grace_period_s: 1
store:
  url: redis://127.0.0.1:{store_port}/0
  timeout_ms: 200
management:
  enabled: false
telemetry:
  log: {{stdout: false}}
providers:
  - {{name: mock, base_url: "http://127.0.0.1:9/v1", api_key: provider-key-123}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
"""
ADDED_MODEL = "  - {name: added-while-starting, provider: mock}\n"


async def async_wait_for(probe: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def rewrite(path: Path, change: Callable[[str], str]) -> None:
    """The operator's edit of the config file."""
    path.write_text(change(path.read_text()))


def models_of(gateway: Gateway) -> set[str]:
    return {model.name for model in gateway.config.models}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    http_port = free_port()
    path.write_text(
        SERVING.format(
            grpc_port=free_port_block(1, avoid={http_port}),
            http_port=http_port,
            store_port=free_port_block(1, avoid={http_port}),
        )
    )
    return path


# --- one process: a reload asked for while it starts ---------------------------------


async def test_a_sighup_while_the_gateway_starts_is_applied_once_it_serves(
    config_file: Path,
) -> None:
    gateway = Gateway(load_config(config_file), config_file)
    # The operator adds a model and sends SIGHUP; serve() has the handler in place from
    # the start, and it calls this. The gateway is still starting (store, listeners).
    rewrite(config_file, lambda text: text + ADDED_MODEL)
    gateway.reload_config()
    try:
        await gateway.start()
        applied = await async_wait_for(
            lambda: "added-while-starting" in models_of(gateway), timeout_s=15.0
        )
        assert applied, "the SIGHUP received while starting was lost"
    finally:
        await gateway.stop()


async def test_a_file_changed_while_the_gateway_starts_is_applied_once_it_serves(
    config_file: Path,
) -> None:
    gateway = Gateway(load_config(config_file), config_file)
    # Written after the file was loaded, before the gateway serves: no signal, the
    # file watch must see it.
    rewrite(config_file, lambda text: text + ADDED_MODEL)
    try:
        await gateway.start()
        applied = await async_wait_for(
            lambda: "added-while-starting" in models_of(gateway), timeout_s=15.0
        )
        assert applied, "the change written while starting was never applied"
    finally:
        await gateway.stop()


# --- serve --workers N: SIGHUP while the workers start ----------------------------


WORKERS = 2


@pytest.fixture
def supervisor_starting(
    tmp_path: Path,
) -> Iterator[tuple[int, Path, Path, subprocess.Popen[bytes]]]:
    http_port = free_port()
    grpc_port = free_port_block(WORKERS, avoid={http_port})
    config = tmp_path / "gateway.yaml"
    config.write_text(
        WORKERS_CONFIG.format(grpc_port=grpc_port, http_port=http_port, workdir=tmp_path)
    )
    err = tmp_path / "gateway.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "extproc", "serve", "--workers", str(WORKERS),
             "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield http_port, config, err, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_sighup_while_workers_start_kills_none_and_reaches_the_supervisor(
    supervisor_starting: tuple[int, Path, Path, subprocess.Popen[bytes]],
) -> None:
    """A SIGHUP reached workers that had not yet put their handler in place, and its
    default action killed them all (with 5 workers, one SIGHUP was a crash loop and the
    server exited 1). The supervisor's own copy never applied a change made meanwhile."""
    http_port, config, err, process = supervisor_starting
    log = lambda: err.read_text(errors="replace")  # noqa: E731
    spawned = wait_for(lambda: f"worker {WORKERS - 1} started" in log(), timeout_s=60.0)
    assert spawned, log()[-3000:]
    config.write_text(config.read_text() + ADDED_MODEL)
    process.send_signal(signal.SIGHUP)  # the workers are importing the gateway's modules

    def ready_or_exited() -> bool:
        if process.poll() is not None:
            return True
        try:
            answer = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    wait_for(ready_or_exited, timeout_s=90.0)
    assert process.poll() is None, log()[-3000:]
    assert "exited with" not in log(), log()[-3000:]
    # The supervisor's own reload (its lines carry no worker-N): once it has started.
    supervisor_reloaded = re.compile(r"INFO extproc\.config\.reload: config reloaded from")
    assert wait_for(lambda: supervisor_reloaded.search(log()), timeout_s=30.0), log()[-3000:]


# --- a worker restarted after the file changed --------------------------------------


class _RecordedProcess:
    pid = 4242

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args

    def start(self) -> None:
        pass


class _RecordingContext:
    """Stands in for multiprocessing's spawn context: records what a worker is given."""

    def __init__(self) -> None:
        self.spawned: list[_RecordedProcess] = []

    def Event(self) -> Any:  # noqa: N802 - multiprocessing's name
        return threading.Event()

    def Process(self, target: Any, args: tuple[Any, ...], name: str) -> _RecordedProcess:  # noqa: N802
        process = _RecordedProcess(args)
        self.spawned.append(process)
        return process


async def test_a_restarted_worker_keeps_the_settings_its_siblings_started_with(
    tmp_path: Path, config_file: Path
) -> None:
    """The file now moves the management API, the request log's file and the label
    budget, which change only on restart: the running workers keep theirs (with a
    warning), and a worker restarted after a crash must run as they do, not listen
    on another port or log to another file. The reloadable rest is the new config's."""
    started = load_config(config_file)
    started = started.model_copy(
        update={
            "telemetry": started.telemetry.model_copy(
                update={"metrics": started.telemetry.metrics.model_copy(
                    update={"multiprocess_dir": str(tmp_path / "metrics")}
                )}
            )
        }
    )  # fmt: skip
    rewrite(
        config_file,
        lambda text: (
            text.replace(
                "management:\n  enabled: false",
                "management:\n  address: 127.0.0.1:1\n  enabled: false",
            ).replace(
                "log: {stdout: false}",
                f"log: {{stdout: false, file: {tmp_path}/new.log}}\n"
                "  metrics: {max_label_values: 3}",
            )
            + ADDED_MODEL
        ),
    )
    changed = load_config(config_file)
    supervisor = Supervisor(started, str(config_file), 1)
    context = _RecordingContext()
    supervisor._context = context  # type: ignore[assignment]
    supervisor._store_url = "redis://127.0.0.1:1/0"
    await supervisor._apply(changed)  # the reload the workers applied too
    supervisor._spawn(supervisor._workers[0])  # the worker restarted after its crash
    given: GatewayConfig = context.spawned[0].args[0]
    assert "added-while-starting" in {model.name for model in given.models}
    assert given.management.address == started.management.address
    assert given.telemetry.log.file == started.telemetry.log.file is None
    assert given.telemetry.metrics.max_label_values == started.telemetry.metrics.max_label_values
    assert given.server == started.server and given.store == started.store


# --- a refused reload changes nothing -------------------------------------------------


async def test_a_refused_reload_leaves_running_models_under_their_own_names(
    tmp_path: Path, config_file: Path
) -> None:
    """The label budget is full of made-up names; a reload that names other models is
    refused (a key file it names is missing). The running model's tokens must still be
    counted under its name, not under `other`."""
    rewrite(
        config_file,
        lambda text: text.replace("telemetry:\n", "telemetry:\n  metrics: {max_label_values: 2}\n"),
    )
    gateway = Gateway(load_config(config_file), None)
    for index in range(3):
        gateway.metrics.count_tokens(identity=("k", "u", "g"), model=f"made-up-{index}",
                                     provider="mock", prompt=1, completion=0)  # fmt: skip
    rewrite(
        config_file,
        lambda text: (
            text.replace("gpt-4o-mini", "renamed-model")
            + f"auth:\n  api_keys:\n    - {{id: team1, key_file: {tmp_path}/missing-key}}\n"
        ),
    )
    with pytest.raises(ConfigError):
        await gateway.apply(load_config(config_file))
    gateway.metrics.count_tokens(identity=("k", "u", "g"), model="gpt-4o-mini",
                                 provider="mock", prompt=5, completion=0)  # fmt: skip
    samples = {
        sample.labels["model"]: sample.value
        for family in gateway.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "tokens_consumed_total" and sample.labels["token_type"] == "prompt"
    }
    assert samples.get("gpt-4o-mini") == 5, samples
    await gateway.stop()


# --- check-config reads what serve reads ------------------------------------------


BEDROCK = """
providers:
  - name: bedrock
    type: bedrock
    base_url: https://bedrock-runtime.us-east-1.amazonaws.com
    aws:
      region: us-east-1
      access_key_id_file: {workdir}/aws/access_key_id
      secret_access_key_file: {workdir}/aws/secret_access_key
models:
  - {{name: claude, provider: bedrock, upstream_model: anthropic.claude-3-haiku-20240307-v1:0}}
"""


def test_check_config_refuses_a_bedrock_credential_file_serve_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(BEDROCK.format(workdir=tmp_path))
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "access_key_id").write_text("AKIDEXAMPLE\n")
    # The secret key's file is not there (a Secret not mounted): serve cannot sign.
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "secret_access_key_file: cannot read" in err, err
    (tmp_path / "aws" / "secret_access_key").write_text("wJalrXUtnFEMI/K7MDENG\n")
    assert main(["check-config", "--config", str(config)]) == 0
