"""The Kubernetes pod's shutdown, Envoy's part, with the real Envoy binary: the preStop
script of deploy/kubernetes/base/deployment.yaml starts a graceful drain on Envoy's
admin port, after which every answer tells its client to close the connection, so
keep-alive clients move to the pods that stay while this one still serves them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from extproc.devstack import LocalStack
from tests.integration.conftest import running_stack

DEPLOYMENT = Path("deploy/kubernetes/base/deployment.yaml")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}


def envoy_pre_stop(admin_port: int) -> list[str]:
    """Envoy's preStop from the deployment, pointed at ``admin_port``, its wait left out."""
    [deployment] = [
        doc for doc in yaml.safe_load_all(DEPLOYMENT.read_text()) if doc["kind"] == "Deployment"
    ]
    [envoy] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy"
    ]
    bash, flag, script = envoy["lifecycle"]["preStop"]["exec"]["command"]
    assert script.count("127.0.0.1/9901") == 1 and script.rstrip().endswith("sleep 40")
    script = script.replace("127.0.0.1/9901", f"127.0.0.1/{admin_port}")
    return [bash, flag, script.rstrip().removesuffix("sleep 40") + "true"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("drain")) as running:
        yield running


def test_after_the_pre_stop_every_answer_closes_its_connection(stack: LocalStack) -> None:
    headers = {"authorization": "Bearer team1-key"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30.0) as client:
        before = client.post("/v1/chat/completions", json=CHAT)
        assert before.status_code == 200
        assert before.headers.get("connection") != "close", "kept alive while serving"

        ran = subprocess.run(envoy_pre_stop(stack.ports.envoy_admin), check=False, timeout=30)
        assert ran.returncode == 0

        # Still served (the pod's endpoints may still send requests here), but each
        # client is told to go: on the connection it kept, and on a new one.
        kept = client.post("/v1/chat/completions", json=CHAT)
        fresh = client.post("/v1/chat/completions", json=CHAT)
    for answer in (kept, fresh):
        assert answer.status_code == 200
        assert answer.json()["usage"]["total_tokens"] > 0
        assert answer.headers.get("connection") == "close"
