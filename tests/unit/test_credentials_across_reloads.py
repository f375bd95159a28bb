"""A config reload while a provider's credential service is out of reach (Google's token
endpoint for Vertex, AWS STS for a service account's web identity): the reload is
applied, a key it removes is refused at once, and the provider's requests go on with
the credentials the replaced config held, as they would have there.

In-process, no store and no Envoy: a ``Gateway`` reloaded with ``apply`` as the
reloader does, the mock's real token endpoint (google-auth) and a real HTTP STS
(botocore's web identity provider), and for what a client sees the processor with
real protobuf messages.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc import event_loop
from extproc.config import ConfigError, parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.mock_llm import MockOptions
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.providers import aws_signer
from extproc.server import Gateway
from extproc.testing import request_body, request_headers, run_stream, serve_mock
from tests.unit.mock_vertex import mock_vertex, vertex_provider
from tests.unit.test_identity_review import STS_SESSION_TOKEN, FakeSts, service_account

__all__ = ["service_account"]  # a fixture, used by name

REMOVED_KEY = "team2-key"  # the default config's second org key
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def raw_config() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    return raw


def parsed(raw: dict[str, Any]) -> GatewayConfig:
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def without_team2(raw: dict[str, Any]) -> dict[str, Any]:
    """The same config with the second org key revoked (removed from the file)."""
    keys = [key for key in raw["auth"]["api_keys"] if key["id"] != "team2"]
    return {**raw, "auth": {**raw["auth"], "api_keys": keys}}


async def status_with(gateway: Gateway, key: str) -> int | None:
    """The status the gateway answers a chat request with ``key`` at once (None: sent on)."""
    answers = await run_stream(
        gateway.processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}),
            request_body(BODY),
        ],
    )
    for answer in answers:
        if answer.HasField("immediate_response"):
            return int(answer.immediate_response.status.code)
    return None


async def test_a_reload_during_a_google_token_outage_is_applied_and_keeps_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "key.json"
    raw = raw_config()
    async with mock_vertex(key_file) as mock:
        raw["providers"].append(vertex_provider(mock, key_file))
        gateway = Gateway(parsed(raw), None)
        await gateway.runtime.start()
        token = gateway.runtime.token_sources["vertex"].authorization()
        assert await status_with(gateway, REMOVED_KEY) is None, "served before the reload"
    # Google's token endpoint is out of reach now; the org revokes a key meanwhile.
    try:
        # Before, the new config's token source tried for 20 s, then the whole reload was
        # refused: the revoked key went on working until Google answered again.
        await gateway.apply(parsed(without_team2(raw)))
        assert await status_with(gateway, REMOVED_KEY) == 401
        # Vertex requests carry the token the replaced config held (valid for its hour).
        assert gateway.runtime.token_sources["vertex"].authorization() == token
        assert "the replaced config's serves until it is due for a refresh" in caplog.text
        assert token.split()[1] not in caplog.text
    finally:
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()


async def test_a_google_key_refused_at_reload_still_refuses_the_config(tmp_path: Path) -> None:
    """Carrying a token over is for an outage only: a key Google refuses is a mistake."""
    trusted, key_file = tmp_path / "trusted.json", tmp_path / "key.json"
    raw = raw_config()
    async with serve_mock(MockOptions(gcp_service_account=str(trusted))) as mock:
        write_service_account(trusted, token_uri=f"{mock}/token")
        key_file.write_bytes(trusted.read_bytes())
        raw["providers"].append(vertex_provider(mock, key_file))
        gateway = Gateway(parsed(raw), None)
        await gateway.runtime.start()
        # The mounted key is replaced by one Google does not know (it was deleted).
        write_service_account(key_file, token_uri=f"{mock}/token")
        try:
            with pytest.raises(ConfigError, match="cannot obtain a Google Cloud access token"):
                await gateway.apply(parsed(without_team2(raw)))
            assert await status_with(gateway, REMOVED_KEY) is None, "the old config serves"
        finally:
            await gateway.runtime.close()


@pytest.fixture
def sts_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sts_endpoint(sts_server: ThreadingHTTPServer) -> str:
    """The STS the service_account fixture points botocore at: ours, which can go down."""
    return f"http://127.0.0.1:{sts_server.server_address[1]}"


@pytest.mark.usefixtures("service_account")
async def test_a_reload_during_an_sts_outage_is_applied_and_keeps_the_credentials(
    sts_server: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = raw_config()
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    bedrock["aws"] = {"region": "us-east-1"}  # the pod's service account (IRSA)
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()
    assert gateway.runtime.signers["mock-bedrock"].method == "assume-role-with-web-identity"
    assert await status_with(gateway, REMOVED_KEY) is None, "served before the reload"
    sts_server.shutdown()  # STS goes out of reach; the org revokes a key meanwhile
    sts_server.server_close()
    try:
        # Before, the new config's signer could not get credentials and the whole reload
        # was refused: the revoked key went on working until STS answered again.
        await gateway.apply(parsed(without_team2(raw)))
        assert await status_with(gateway, REMOVED_KEY) == 401
        signed = gateway.runtime.signers["mock-bedrock"].sign(
            "POST", "/model/m/converse", b"{}", {}
        )
        assert signed["x-amz-security-token"] == STS_SESSION_TOKEN
        assert "the replaced config's sign until they are due for a refresh" in caplog.text
        assert STS_SESSION_TOKEN not in caplog.text
    finally:
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()


@pytest.mark.usefixtures("service_account")
async def test_a_reload_while_sts_takes_connections_and_never_answers_is_applied(
    sts_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = raw_config()
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    bedrock["aws"] = {"region": "us-east-1"}
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()
    # STS's address still takes connections (its listening socket is open), but nothing
    # answers: botocore waits 60 s per try, and tries again.
    sts_server.shutdown()
    monkeypatch.setattr(aws_signer, "RELOAD_CREDENTIALS_WAIT_S", 0.5)
    try:
        # Before, the reload (and every reload queued behind it) waited for botocore's
        # tries to run out, minutes, while the revoked key kept working.
        await gateway.apply(parsed(without_team2(raw)))
        assert await status_with(gateway, REMOVED_KEY) == 401
        signed = gateway.runtime.signers["mock-bedrock"].sign(
            "POST", "/model/m/converse", b"{}", {}
        )
        assert signed["x-amz-security-token"] == STS_SESSION_TOKEN
    finally:
        sts_server.server_close()  # the waiting connection is reset: botocore gives up
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()
        # The fetch the reload stopped waiting for logs botocore's traceback when it
        # gives up. Left running into a later test of this process, that traceback's
        # formatting (Python 3.11 parses source lines for it) once broke the later
        # test's own ast.parse: "AST constructor recursion depth mismatch".
        await asyncio.to_thread(join_credential_fetches)


def join_credential_fetches() -> None:
    for thread in threading.enumerate():
        if thread.name == aws_signer.CREDENTIALS_THREAD:
            thread.join()


@pytest.mark.usefixtures("service_account")
def test_a_fetch_sts_never_answers_does_not_hold_the_gateways_stop(
    sts_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload that stopped waiting for STS leaves botocore's fetch running for
    minutes (60 s per try, tried again). The gateway's stop must not wait for it: its
    event loop runs as ``extproc serve`` runs it, and closing that loop waits for every
    thread of the loop's executor."""
    monkeypatch.setattr(aws_signer, "RELOAD_CREDENTIALS_WAIT_S", 0.5)
    raw = raw_config()
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    bedrock["aws"] = {"region": "us-east-1"}

    async def serve_reload_and_stop() -> None:
        gateway = Gateway(parsed(raw), None)
        await gateway.runtime.start()
        sts_server.shutdown()  # takes connections, answers nothing
        await gateway.apply(parsed(without_team2(raw)))
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()

    stopping = threading.Thread(target=event_loop.run, args=(serve_reload_and_stop(), "asyncio"))
    stopping.start()
    try:
        # A bound for a hang, not a speed: the stop takes milliseconds, the fetch minutes.
        stopping.join(timeout=30)
        assert not stopping.is_alive(), "the gateway's stop waited for STS"
        fetches = [t for t in threading.enumerate() if t.name == aws_signer.CREDENTIALS_THREAD]
        assert fetches, "the control: the fetch was still waiting on STS"
    finally:
        sts_server.server_close()  # the waiting connection is reset: botocore gives up
        stopping.join()
        join_credential_fetches()
