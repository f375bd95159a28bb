"""A Bedrock provider whose AWS credentials cannot be fetched when its config loads (STS
out of reach for a Kubernetes service account's web identity): the gateway serves all the
same, that provider's requests get a 503 the SDKs retry, and its credentials are fetched
again until STS answers. A refusal from STS still refuses the config.

Real sockets: botocore's web identity provider against an STS stand-in that is down
(a port bound and not listening: connections refused), silent, refusing or answering.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.config import ConfigError
from extproc.config.model import AwsConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import PRIMARY, failover_cluster_name
from extproc.errors import ServiceUnavailableError
from extproc.providers import aws_signer, credentials_pending
from extproc.providers.aws_signer import AwsSigner
from extproc.server import Gateway
from extproc.testing import request_body, request_headers, run_stream
from tests.sts_stand_in import DownSts
from tests.unit.test_alerts_review import alert, firing, promtool_test, scraped_around
from tests.unit.test_credentials_across_reloads import (
    REMOVED_KEY,
    parsed,
    raw_config,
    status_with,
    without_team2,
)
from tests.unit.test_identity_review import (
    STS_SESSION_TOKEN,
    WEB_IDENTITY_TOKEN,
    FakeSts,
    service_account,
)

__all__ = ["service_account"]  # a fixture, used by name

AUTH = {"authorization": "Bearer team1-key"}
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
HAIKU = orjson.dumps({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]})


class RefusingSts(BaseHTTPRequestHandler):
    """STS refusing the web identity token (a role that does not trust it)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = (
            b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
            b"<Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to"
            b" perform sts:AssumeRoleWithWebIdentity</Message></Error>"
            b"<RequestId>r</RequestId></ErrorResponse>"
        )
        self.send_response(403)
        self.send_header("content-type", "text/xml")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def sts() -> Iterator[DownSts]:
    down = DownSts()
    yield down
    down.close()


@pytest.fixture
def sts_endpoint(sts: DownSts) -> str:
    """The STS the service_account fixture points botocore at: down until it comes up."""
    return sts.url


@pytest.fixture
def pod(service_account: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod whose service account may assume the gateway's role, with STS at ``sts``."""
    # botocore's own retries of a refused connection: one try is enough to see it.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


def on_the_pods_account(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the mock Bedrock provider signing with the pod's service account (IRSA)
    instead of its static keys."""
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    bedrock["aws"] = {"region": "us-east-1"}
    return raw


@pytest.fixture
def silent_sts(sts: DownSts, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[SilentSts]]:
    """STS up at ``sts`` and silent (released at the end); a start waits 0.3 s for it."""
    monkeypatch.setattr(aws_signer, "FIRST_CREDENTIALS_WAIT_S", 0.3)
    SilentSts.taken = 0
    SilentSts.release.clear()
    SilentSts.first_taken.clear()
    sts.come_up(SilentSts)
    yield SilentSts
    SilentSts.release.set()


def signer() -> AwsSigner:
    return AwsSigner(AwsConfig(region="us-east-1"), "http://bedrock.test")


@pytest.mark.usefixtures("pod")
async def test_a_start_while_sts_is_down_serves_and_signs_once_sts_answers(
    sts: DownSts, caplog: pytest.LogCaptureFixture
) -> None:
    waiting = signer()
    await waiting.start()  # before, ConfigError: the gateway did not start at all

    assert waiting.pending
    with pytest.raises(ServiceUnavailableError) as refused:
        waiting.sign("POST", "/model/m/converse", b"{}", {})
    assert refused.value.status == 503
    assert refused.value.code == credentials_pending.CODE
    assert not await waiting.obtain()
    assert waiting.pending

    sts.come_up(FakeSts)
    assert await waiting.obtain()
    assert not waiting.pending
    signed = waiting.sign("POST", "/model/m/converse", b"{}", {})
    assert signed["x-amz-security-token"] == STS_SESSION_TOKEN
    said = " ".join(r.getMessage() for r in caplog.records if r.name == aws_signer.__name__)
    assert "503 provider_credentials_unavailable" in said
    assert WEB_IDENTITY_TOKEN not in said and STS_SESSION_TOKEN not in said


@pytest.mark.usefixtures("pod")
async def test_sts_refusing_the_token_still_refuses_the_config(sts: DownSts) -> None:
    sts.come_up(RefusingSts)
    with pytest.raises(ConfigError, match="cannot obtain credentials from the AWS default chain"):
        await signer().start()


class SilentSts(BaseHTTPRequestHandler):
    """STS taking connections and never answering; counts the requests it took."""

    taken = 0
    release = threading.Event()
    first_taken = threading.Event()

    def do_POST(self) -> None:
        type(self).taken += 1
        self.first_taken.set()
        self.release.wait(30)

    def log_message(self, format: str, *args: Any) -> None:
        return

    @classmethod
    async def requests_taken(cls) -> int:
        """The requests it took, once the first has come: on a busy machine botocore's
        thread may still be on its way to it when the gateway has already moved on."""
        await asyncio.to_thread(cls.first_taken.wait, 10)
        return cls.taken


@pytest.mark.usefixtures("pod")
async def test_a_silent_sts_leaves_the_signer_pending_with_one_fetch_at_a_time(
    silent_sts: type[SilentSts],
) -> None:
    waiting = signer()
    try:
        await waiting.start()  # before: waited for botocore's 60 s timeouts
        assert waiting.pending
        assert not await waiting.obtain()
        assert not await waiting.obtain()
        # The tries waited for the one fetch STS holds; none started another.
        assert await silent_sts.requests_taken() == 1
    finally:
        await waiting.close()


async def status_and_code(gateway: Gateway, body: bytes) -> tuple[int | None, str | None]:
    """The status and error code the gateway answers a chat request with at once (None,
    None: sent on to the provider)."""
    answers = await run_stream(
        gateway.processor,
        [request_headers("/v1/chat/completions", headers=AUTH), request_body(body)],
    )
    for answer in answers:
        if answer.HasField("immediate_response"):
            error = orjson.loads(answer.immediate_response.body)["error"]
            return int(answer.immediate_response.status.code), error["code"]
    return None, None


@pytest.mark.usefixtures("pod")
async def test_a_gateway_started_while_sts_is_down_serves_the_other_providers(
    sts: DownSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials_pending, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(credentials_pending, "LAST_RETRY_S", 0.2)
    gateway = Gateway(parsed(on_the_pods_account(raw_config())), None)
    await gateway.runtime.start()
    try:
        assert await status_and_code(gateway, CHAT) == (None, None), "OpenAI serves"
        assert await status_and_code(gateway, HAIKU) == (503, credentials_pending.CODE)

        sts.come_up(FakeSts)
        waiting = gateway.runtime.signers["mock-bedrock"]
        assert await _eventually(lambda: not waiting.pending), "no retry fetched them"
        assert await status_and_code(gateway, HAIKU) == (None, None), "Bedrock serves"
    finally:
        await gateway.runtime.close()


async def _eventually(probe: Any, rounds: int = 600) -> bool:
    for _ in range(rounds):
        if probe():
            return True
        await asyncio.sleep(0.05)
    return bool(probe())


def pending_gauge(gateway: Gateway, provider: str) -> float | None:
    registry = gateway.services.metrics.registry
    return registry.get_sample_value("aigw_provider_credentials_pending", {"provider": provider})


@pytest.mark.usefixtures("pod")
async def test_the_pending_gauge_is_1_until_sts_answers(
    sts: DownSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials_pending, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(credentials_pending, "LAST_RETRY_S", 0.2)
    raw = on_the_pods_account(raw_config())
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()
    try:
        assert pending_gauge(gateway, "mock-bedrock") == 1
        assert pending_gauge(gateway, "mock") is None, "a static key is never pending"
        sts.come_up(FakeSts)
        assert await _eventually(lambda: pending_gauge(gateway, "mock-bedrock") == 0)
    finally:
        await gateway.runtime.close()


@pytest.mark.usefixtures("pod")
async def test_a_gateway_started_while_sts_is_down_raises_the_alert(
    tmp_path: Path,
) -> None:
    raw = on_the_pods_account(raw_config())
    gateway = Gateway(parsed(raw), None)
    try:
        # Scraped once a minute; at minute 10 the gateway starts, STS down.
        timeline = await scraped_around(gateway.services.metrics.registry, gateway.runtime.start)
    finally:
        await gateway.runtime.close()
    expected = alert(
        "gateway-a:9464 has no credentials for provider mock-bedrock: its requests get 503"
        " provider_credentials_unavailable",
        severity="critical",
        instance="gateway-a:9464",
        provider="mock-bedrock",
    )
    expected["exp_annotations"]["description"] = (
        "Its credential source (AWS STS or instance metadata for Bedrock, Google's token"
        " endpoint for Vertex) was out of reach when the config loaded; the gateway asks it"
        " again every 30 s and the provider serves once it answers. The gateway's log names"
        " the exception (docs/providers.md, Credentials out of reach at start)."
    )
    name = "AigwProviderCredentialsPending"
    # Not at once: a source back within two minutes pages nobody.
    failed = promtool_test(tmp_path, timeline, [firing(name, 11), firing(name, 13, expected)])
    assert not failed, failed


def failover_routes(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rendered bootstrap's routes and clusters of failover chains, by name."""
    bootstrap = render_bootstrap(parsed(raw))
    resources = bootstrap["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    return {r["name"]: clusters[r["name"]] for r in routes if r.get("name") in clusters}


def chained(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with a Bedrock model failing over to gpt-4o-mini, then to Claude, and an
    OpenAI one to the Bedrock model."""
    raw["models"] += [
        {"name": "bedrock-first", "provider": "mock-bedrock",
         "upstream_model": "amazon.nova-micro-v1:0",
         "fallbacks": ["gpt-4o-mini", "claude-3-5-haiku-latest"]},
        {"name": "openai-first", "provider": "mock", "upstream_model": "gpt-4o",
         "fallbacks": ["bedrock-first"]},
    ]  # fmt: skip
    return raw


def test_a_bedrock_primarys_chain_has_routes_without_the_primary() -> None:
    routes = failover_routes(chained(raw_config()))
    without_primary = routes[failover_cluster_name("bedrock-first", [PRIMARY])]
    members = without_primary["cluster_type"]["typed_config"]["clusters"]
    assert members == ["provider_mock", "provider_mock_anthropic"]
    # Along with a fallback the caller may not use; never without every member.
    assert failover_cluster_name("bedrock-first", [PRIMARY, 1]) in routes
    assert failover_cluster_name("bedrock-first", [PRIMARY, 0, 1]) not in routes
    # A primary with a static key is never pending: no such route.
    assert failover_cluster_name("openai-first", [PRIMARY]) not in routes


@pytest.mark.usefixtures("pod")
async def test_a_pending_primarys_request_goes_to_the_chain_without_it() -> None:
    gateway = Gateway(parsed(on_the_pods_account(chained(raw_config()))), None)
    await gateway.runtime.start()
    try:
        body = orjson.dumps(
            {"model": "bedrock-first", "messages": [{"role": "user", "content": "hi"}]}
        )
        answers = await run_stream(
            gateway.processor,
            [request_headers("/v1/chat/completions", headers=AUTH), request_body(body)],
        )
        mutation = answers[-1].request_body.response
        cluster = {
            o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
        }[headers.CLUSTER]
        assert cluster == failover_cluster_name("bedrock-first", [PRIMARY])
        # The chain the attempts read still opens with the primary: it names the chain.
        chain = orjson.loads(mutation.body_mutation.body)[headers.FAILOVER_CHAIN_KEY]
        assert [member[0] for member in chain] == ["mock-bedrock", "mock", "mock-anthropic"]
    finally:
        await gateway.runtime.close()


@pytest.mark.usefixtures("pod")
async def test_a_reload_while_sts_is_silent_is_applied_at_once_and_keeps_the_one_fetch(
    silent_sts: type[SilentSts], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = on_the_pods_account(raw_config())
    gateway = Gateway(parsed(raw), None)
    await gateway.runtime.start()
    try:
        assert gateway.runtime.signers["mock-bedrock"].pending
        # The org revokes a key during the outage. Before, the reload waited for STS
        # again (here up to a minute) before the key stopped working.
        monkeypatch.setattr(aws_signer, "FIRST_CREDENTIALS_WAIT_S", 60.0)
        async with asyncio.timeout(10):
            await gateway.apply(parsed(without_team2(raw)))
        assert await status_with(gateway, REMOVED_KEY) == 401
        assert gateway.runtime.signers["mock-bedrock"].pending
        assert await status_and_code(gateway, HAIKU) == (503, credentials_pending.CODE)
        taken = await silent_sts.requests_taken()
        assert taken == 1, "the new config waits on the fetch STS holds"
    finally:
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()
