"""Transport security: mTLS between Envoy and the gateway, admin token rotation, and a
management API that the public listener cannot reach.

Certificates are made here: a CA that signs the gateway's certificate and
Envoy's client certificate, and a stranger CA whose client is refused. The
stack's Envoy is rendered from the same config, so the chat requests that work
prove Envoy speaks mTLS to the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.management.client import KeyClient, ManagementError
from tests.integration.certificates import Authority, Issued
from tests.integration.conftest import envoy_stat, mock_requests, running_stack, wait_for

FIRST_TOKEN = "admin-first-2c4e6a8b0d"
SECOND_TOKEN = "admin-second-9f7d5b3a1e"


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = Authority(folder, "gateway-ca")
        self.gateway = self.ca.issue("gateway", ips=("127.0.0.1",), dns=("gateway.internal",))
        self.envoy = self.ca.issue("envoy")
        self.stranger_ca = Authority(folder, "stranger-ca")
        self.stranger = self.stranger_ca.issue("stranger")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("mtls")
    token_file = workdir / "admin-token"
    token_file.write_text(FIRST_TOKEN + "\n")
    tls = f"""
  tls:
    cert_file: {pki.gateway.cert}
    key_file: {pki.gateway.key}
    client_ca_file: {pki.ca.cert}
    envoy:
      ca_file: {pki.ca.cert}
      cert_file: {pki.envoy.cert}
      key_file: {pki.envoy.key}
      server_name: gateway.internal
"""
    text = DEFAULT_CONFIG.read_text().replace("\nserver:\n", "\nserver:" + tls, 1)
    text = text.replace("token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}", f"token_file: {token_file}")
    config = workdir / "gateway.yaml"
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def chat(stack: LocalStack) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "over mTLS"}]}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": "Bearer team1-key"},
        timeout=30.0,
    )


def test_envoy_reaches_the_gateway_over_mutual_tls(stack: LocalStack) -> None:
    answer = chat(stack)
    assert answer.status_code == 200
    assert answer.json()["usage"]["total_tokens"] > 0
    assert envoy_stat(stack, "cluster.extproc.ssl.handshake") >= 1
    assert envoy_stat(stack, "cluster.extproc.ssl.connection_error") == 0


def health(stack: LocalStack, credentials: grpc.ChannelCredentials | None) -> int:
    """The gRPC health status the ext_proc port answers this client; raises when refused."""
    target = f"127.0.0.1:{stack.ports.grpc}"
    options = (("grpc.ssl_target_name_override", "gateway.internal"),)
    channel = (
        grpc.secure_channel(target, credentials, options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        request = health_pb2.HealthCheckRequest(service="")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def read(path: Path) -> bytes:
    return path.read_bytes()


def credentials(pki: Pki, client: Issued | None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=read(pki.ca.cert))
    return grpc.ssl_channel_credentials(
        root_certificates=read(pki.ca.cert),
        private_key=read(client.key),
        certificate_chain=read(client.cert),
    )


def test_only_a_client_with_a_certificate_from_the_ca_gets_in(stack: LocalStack, pki: Pki) -> None:
    assert health(stack, credentials(pki, pki.envoy)) == health_pb2.HealthCheckResponse.SERVING
    for refused in (None, credentials(pki, None), credentials(pki, pki.stranger)):
        with pytest.raises(grpc.RpcError) as caught:
            health(stack, refused)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_management_api_is_unreachable_through_the_public_listener(stack: LocalStack) -> None:
    before = len(mock_requests(stack))
    # A gRPC client aimed at Envoy's public listener, with a valid admin token: Envoy
    # answers from its catch-all 404 route, as gRPC's UNIMPLEMENTED.
    with (
        pytest.raises(ManagementError) as caught,
        KeyClient(f"127.0.0.1:{stack.ports.envoy}", FIRST_TOKEN, timeout_s=10) as client,
    ):
        client.list()
    assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert "route_not_found" in str(caught.value)
    # The same path as plain HTTP: the OpenAI-shaped 404.
    answer = httpx.post(
        f"{stack.base_url}/aigw.management.v1.KeyManagement/ListKeys",
        content=b"{}",
        headers={"content-type": "application/json", "authorization": f"Bearer {FIRST_TOKEN}"},
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "route_not_found"
    assert len(mock_requests(stack)) == before
    # Reached directly on its own port, the API answers.
    with KeyClient(f"127.0.0.1:{stack.ports.management}", FIRST_TOKEN) as direct:
        assert direct.list()


def test_a_rotated_admin_token_file_takes_effect_without_restart(stack: LocalStack) -> None:
    address = f"127.0.0.1:{stack.ports.management}"
    gateway = stack.process("gateway")

    def accepted(token: str) -> bool:
        try:
            with KeyClient(address, token, timeout_s=5) as client:
                client.list()
        except ManagementError as refused:
            assert refused.code is grpc.StatusCode.UNAUTHENTICATED
            return False
        return True

    assert accepted(FIRST_TOKEN)
    assert not accepted(SECOND_TOKEN)
    (stack.workdir / "admin-token").write_text(SECOND_TOKEN + "\n")
    assert wait_for(lambda: accepted(SECOND_TOKEN), 15, every_s=0.5)
    assert not accepted(FIRST_TOKEN)
    assert gateway.poll() is None and stack.process("gateway") is gateway
