"""Routes named the way Envoy Gateway names them, sent by the real Envoy as ext_proc attributes.

A second Envoy runs next to the session's stack (same gateway, same mock
provider) with a bootstrap shaped like Envoy Gateway's translation of two
HTTPRoutes: routes named ``httproute/<ns>/<name>/rule/0/match/0/*`` carrying
``envoy-gateway`` metadata with the HTTPRoute's annotations, and the ext_proc
filter asking for ``xds.route_name`` and ``xds.route_metadata``. Their paths are
paths the gateway config does not know: only the attributes can name the route.
"""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from extproc.config.loader import load_config
from extproc.controller_routes import ROUTE_METADATA_ATTRIBUTE, ROUTE_NAME_ATTRIBUTE
from extproc.devstack import LocalStack, envoy_binary, free_port
from extproc.envoy_bootstrap import envoy_command, render_bootstrap
from tests.integration.conftest import GatewayLog, mock_requests

KEY = {"authorization": "Bearer team1-key", "content-type": "application/json"}


def controller_route(name: str, prefix: str, annotations: dict[str, str]) -> dict[str, Any]:
    """A route as Envoy Gateway renders an HTTPRoute rule without a backend."""
    resource = {"kind": "HTTPRoute", "namespace": "ai", "name": name, "annotations": annotations}
    return {
        "name": f"httproute/ai/{name}/rule/0/match/0/*",
        "match": {"prefix": prefix},
        "metadata": {"filter_metadata": {"envoy-gateway": {"resources": [resource]}}},
        "direct_response": {"status": 500},
    }


@pytest.fixture(scope="module")
def controller_envoy(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("controller-envoy")
    config = load_config(stack.config_path, stack.env)
    listener, admin = free_port(), free_port()
    envoy = config.envoy.model_copy(update={"listener_port": listener, "admin_port": admin})
    config = config.model_copy(update={"envoy": envoy})
    bootstrap = copy.deepcopy(render_bootstrap(config))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = hcm["typed_config"]
    ext_proc = next(
        f["typed_config"]
        for f in typed["http_filters"]
        if f["name"] == "envoy.filters.http.ext_proc"
    )
    ext_proc["request_attributes"] = [ROUTE_NAME_ATTRIBUTE, ROUTE_METADATA_ATTRIBUTE]
    routes = typed["route_config"]["virtual_hosts"][0]["routes"]
    # After the provider routes (picked once the gateway set its header), before the 404.
    routes[-1:-1] = [
        controller_route("aigw-openai-chat", "/team-a/", {}),
        controller_route("team-b-claude", "/team-b/", {"aigw-route": "anthropic"}),
    ]
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False), encoding="utf-8")
    with (workdir / "envoy.err").open("wb") as err:
        process = subprocess.Popen(
            envoy_command(config, str(path), envoy_binary()),
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        _wait_ready(f"http://127.0.0.1:{admin}/ready", process, workdir / "envoy.err")
        yield f"http://127.0.0.1:{listener}"
    finally:
        process.terminate()
        process.wait(15)


def _wait_ready(url: str, process: subprocess.Popen[bytes], err: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, err.read_text(errors="replace")[-2000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"Envoy not ready: {err.read_text(errors='replace')[-2000:]}")


def ask(base: str, path: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "which route?"}]}
    return httpx.post(base + path, content=orjson.dumps(body), headers=KEY, timeout=30)


def test_an_http_route_named_after_a_gateway_route_serves_it_on_any_path(
    stack: LocalStack, controller_envoy: str, gateway_log: GatewayLog
) -> None:
    response = ask(controller_envoy, "/team-a/chat", "gpt-4o-mini")
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert (line["route"], line["provider"]) == ("openai-chat", "mock")
    assert mock_requests(stack)[-1]["path"] == "/v1/chat/completions"


def test_the_aigw_route_annotation_in_route_metadata_names_the_route(
    stack: LocalStack, controller_envoy: str, gateway_log: GatewayLog
) -> None:
    # Route `anthropic`: OpenAI in, Anthropic's Messages API out.
    response = ask(controller_envoy, "/team-b/chat", "claude-3-5-haiku-latest")
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert (line["route"], line["provider"]) == ("anthropic", "mock-anthropic")
    assert mock_requests(stack)[-1]["path"] == "/v1/messages"


def test_a_path_no_route_names_is_still_not_ai_traffic(controller_envoy: str) -> None:
    response = httpx.get(controller_envoy + "/elsewhere", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "route_not_found"
