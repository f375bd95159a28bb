"""A route prefix holding a quote reaches Envoy's CEL filters as the literal it is.

The bootstrap puts the path prefixes of Gemini, Converse and AnthropicVertex routes
into CEL expressions (Envoy's own replies on those paths come in the client API's
error shape). A prefix such as ``/team's/models`` ended the CEL string early: Envoy
refused the whole bootstrap, and no request was served. Here the real Envoy runs on
the rendered bootstrap with the gateway unreachable, so every request gets Envoy's own
503: in Google's shape under the quoted prefix, in OpenAI's on a path beside it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml

from extproc.config.loader import parse_config
from extproc.devstack import DEFAULT_CONFIG, envoy_binary, free_port
from extproc.envoy_bootstrap import envoy_command, render_bootstrap_yaml
from tests.integration.conftest import REFUSED_PORT, wait_for

PREFIX = "/team's/models"
ROUTES = [
    {"name": "gemini-quoted", "path_prefix": PREFIX, "api": "gemini_generate_content"},
    {"name": "converse-quoted", "path_prefix": "/team's/model", "api": "bedrock_converse"},
    {"name": "vertex-quoted", "path_prefix": "/team's/vertex", "api": "anthropic_vertex"},
]


@pytest.fixture(scope="module")
def envoy_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Envoy on the rendered bootstrap, its gateway unreachable; its listener's URL."""
    workdir = tmp_path_factory.mktemp("quoted-prefix")
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["routes"][:0] = ROUTES
    listener, admin = free_port(), free_port()
    raw["envoy"] = {
        **raw.get("envoy", {}),
        "listener_port": listener,
        "admin_port": admin,
        "ext_proc_address": f"127.0.0.1:{REFUSED_PORT}",
        "access_log": False,
    }
    config = parse_config(yaml.safe_dump(raw), "quoted.yaml", {})
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(render_bootstrap_yaml(config), encoding="utf-8")
    process = subprocess.Popen(
        envoy_command(config, str(bootstrap), envoy_binary()),
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "envoy.err").open("wb"),
    )
    try:
        ready = f"http://127.0.0.1:{admin}/ready"
        assert wait_for(lambda: _answers(ready) or process.poll() is not None, 30)
        assert process.poll() is None, (workdir / "envoy.err").read_text(errors="replace")
        yield f"http://127.0.0.1:{listener}"
    finally:
        process.terminate()
        process.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_envoys_reply_under_a_quoted_prefix_is_in_googles_shape(envoy_alone: str) -> None:
    answer = httpx.post(f"{envoy_alone}{PREFIX}/gemini-2.5-flash:generateContent", json={})
    assert answer.status_code == 503
    assert answer.json()["error"]["status"] == "UNAVAILABLE"


def test_a_path_beside_the_quoted_prefix_keeps_openais_shape(envoy_alone: str) -> None:
    answer = httpx.post(f"{envoy_alone}/teams/models/gemini-2.5-flash:generateContent", json={})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "gateway_unavailable"
