"""Reloads leave nothing behind: every replaced config's clients (webhook
session, JWKS refresher and session, Vertex token source and its refresh task) are
closed once no stream uses them, and not while one does.

In-process, no store and no Envoy: a ``Gateway`` reloaded with ``apply`` as the
reloader does, the real aiohttp JWKS server and the mock's real token endpoint. What
an operator would see leak is counted as the process sees it: the event loop's tasks
and the process's open file descriptors (sockets among them).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import yaml

from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.server import Gateway
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.mock_vertex import mock_vertex, vertex_provider
from tests.unit.test_jwt_verifier import JwksServer, url_provider
from tests.unit.test_reload_lifetimes import Stream, wait_until

jwks_server = jwt_tests.jwks_server
# A task or socket left by each reload shows after the first (open files and tasks are
# compared with what was open before, not allowed to grow at all); ten also show that
# every replaced config is closed, not only the last.
RELOADS = 10


def open_files() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def config_text(jwks: JwksServer, mock: str, key_file: Path) -> str:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["providers"].append(vertex_provider(mock, key_file))
    raw["auth"]["jwt_providers"] = [url_provider(jwks)]
    raw["guardrails"] = {
        "webhooks": [{"name": "civility", "host": "127.0.0.1", "port": 9}],
        "policies": [{"name": "watched", "response": [{"name": "out", "webhook": "civility"}]}],
    }
    raw["routes"].append({"name": "watched", "path_prefix": "/watched", "guardrails": "watched"})
    return yaml.safe_dump(raw)


def config(text: str) -> GatewayConfig:
    """A config parsed anew, as the reloader parses the file it reads."""
    return parse_config(text, "gateway.yaml", {})


async def test_reloads_leave_no_task_or_socket_behind(
    jwks_server: JwksServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        # Written once (PyYAML's pure-Python load and dump took 36 ms a reload), parsed anew.
        text = config_text(jwks_server, mock, key_file)
        gateway = Gateway(config(text), None)
        await gateway.runtime.start()
        # Sessions open their connections lazily: one request's worth of each is made.
        await asyncio.sleep(0.1)
        gc.collect()
        tasks, files = len(asyncio.all_tasks()), open_files()
        held = Stream(gateway)  # a stream on the first config, open across every reload
        await held.started.wait()
        first = gateway.runtime
        try:
            for _ in range(RELOADS):
                await gateway.apply(config(text))
            assert not first.closed, "a config still serving a stream keeps its clients"
            assert await wait_until(
                lambda: all(r.closed for r in gateway._retired if r is not first)
            )
            await held.end()
            assert await wait_until(lambda: first.closed), "closed once its stream ended"
            await asyncio.sleep(0.1)  # connections closed by the sessions finish closing
            gc.collect()
            assert len(asyncio.all_tasks()) <= tasks
            assert open_files() <= files
        finally:
            await gateway.runtime.close()
