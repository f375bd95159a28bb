"""Bedrock through the real stack with ambient credentials: a provider with no keys in the
config signs with the profile of the shared AWS credentials file (botocore's default chain),
and a rotation of that file is used without a restart or a signal (the reloader watches it).

The mock checks SigV4 against the one secret it knows (``mock-secret-key``): keys AWS no
longer accepts are refused there with a 403, which the client gets as the gateway's 502.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import envoy_access_log, mock_requests, running_stack

KEY = "team1-key"
REVOKED_SECRET = "revoked-secret-of-last-week"
SESSION_TOKEN = "rotated-session-token-value"
PROVIDERS = """
  - name: bedrock-ambient
    type: bedrock
    base_url: http://${MOCK_LLM_ADDRESS}
    aws: {region: us-east-1}
"""
ROUTES = """
  - {name: ambient, path_prefix: /ambient, model_from_path: true, provider: bedrock-ambient}
"""
# The reloader polls the shared files every second: a rotation shows within a few.
ROTATION_DEADLINE_S = 30.0


def write_profile(path: Path, secret: str, token: str | None = None) -> None:
    lines = ["[gateway]", "aws_access_key_id = AKIDMOCK", f"aws_secret_access_key = {secret}"]
    if token is not None:
        lines.append(f"aws_session_token = {token}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aws") / "credentials"


@pytest.fixture(scope="module")
def ambient(
    tmp_path_factory: pytest.TempPathFactory, credentials_file: Path
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("bedrock-ambient")
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + PROVIDERS, 1)
    text = text.replace("\nroutes:\n", "\nroutes:" + ROUTES, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    aws_config = workdir / "aws-config"
    aws_config.write_text("")
    # Keys AWS has revoked since the file was written: the rotation has not reached it yet.
    write_profile(credentials_file, REVOKED_SECRET)
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file),
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_PROFILE": "gateway",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Whatever the machine running the tests has: not part of the chain here.
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",
    }
    with running_stack(workdir, config, extra_env=env) as running:
        yield running


def chat(stack: LocalStack) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/ambient/amazon.nova-micro-v1:0",
        content=orjson.dumps({"messages": [{"role": "user", "content": "hello"}]}),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=30.0,
    )


@pytest.mark.timeout(ROTATION_DEADLINE_S + 90)
def test_a_rotated_credentials_file_is_used_without_a_restart(
    ambient: LocalStack, credentials_file: Path
) -> None:
    refused = chat(ambient)
    assert refused.status_code == 502
    assert "AWS credentials" in refused.json()["error"]["message"]

    write_profile(credentials_file, "mock-secret-key", SESSION_TOKEN)
    deadline = time.monotonic() + ROTATION_DEADLINE_S
    answer = chat(ambient)
    while answer.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = chat(ambient)

    # The old gateway read the file once, at start: every request stayed a 502.
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Mock reply to: hello"
    upstream = mock_requests(ambient)[-1]
    assert upstream["headers"]["x-amz-security-token"] == SESSION_TOKEN
    assert "x-amz-security-token" in upstream["headers"]["authorization"]


def test_no_secret_of_either_file_reaches_a_log_or_a_client(
    ambient: LocalStack, credentials_file: Path
) -> None:
    workdir = ambient.workdir
    readable = "\n".join(
        path.read_text(errors="replace")
        for path in (ambient.gateway_log, workdir / "gateway.err")
        if path.exists()
    )
    readable += envoy_access_log(ambient)
    readable += chat(ambient).text
    for secret in (REVOKED_SECRET, "mock-secret-key", SESSION_TOKEN):
        assert secret not in readable
