"""A review of a Vertex AI provider's credentials and configuration, as an operator meets them.

The access token's life (minted at start, refreshed before it expires, kept when a refresh
fails), the token endpoints it is minted at (the mock's, which checks assertions as Google
does, or a stand-in the test steers: silent, or without a lifetime), Application Default
Credentials, what ``check-config`` promises to read, a ``base_url`` with a path, and that
no token, key or assertion reaches a log line even at DEBUG.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import types
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import google.auth._helpers
import google.oauth2.credentials
import httpx
import orjson
import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.auth.exceptions import GoogleAuthError

from extproc import runtime as runtime_module
from extproc.cli import main
from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.model import GcpConfig
from extproc.mock_llm import MockOptions
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.processor import Processor
from extproc.providers import gcp_tokens
from extproc.providers.gcp_tokens import REFRESH_AHEAD_S, GcpTokenSource
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    serve_mock,
)

T = TypeVar("T")

WHERE = "providers.vertex.gcp"
# How long a test waits for a token request before calling it hung: well beyond what a
# token request to Google takes, and beyond the timeout proposed for it.
GIVE_UP_S = 30.0
# A token that lives less than REFRESH_AHEAD_S is due for a refresh at once.
SHORT_LIFETIME_S = REFRESH_AHEAD_S // 2
CHAT = {"model": "gemini-flash", "messages": [{"role": "user", "content": "Hi"}]}


def provider_yaml(name: str, base_url: str, gcp: str) -> str:
    """A Vertex provider's YAML (``gcp``: more lines of its ``gcp`` section)."""
    return f"""
  - name: {name}
    type: vertex
    base_url: {base_url}
    gcp:
      project: mock-project
      region: us-east5
{gcp}"""


def vertex_config(base_url: str, gcp: str, *more_providers: str) -> str:
    """A config with a Vertex provider named ``vertex`` (and ``more_providers``) and a
    Gemini model on it."""
    providers = provider_yaml("vertex", base_url, gcp) + "".join(more_providers)
    return f"""
providers:{providers}
models:
  - name: gemini-flash
    provider: vertex
    upstream_model: google/gemini-2.5-flash
"""


def key_file_line(path: Path) -> str:
    return f"      credentials_file: {path}"


def source_for(key_file: Path | None, first_token_timeout_s: float = 20.0) -> GcpTokenSource:
    credentials = None if key_file is None else str(key_file)
    config = GcpConfig(
        project="mock-project",
        region="us-east5",
        credentials_file=credentials,
        first_token_timeout_s=first_token_timeout_s,
    )
    return GcpTokenSource(config, WHERE)


async def ended(work: Awaitable[T]) -> T:
    """``work``'s result, or a failure naming the hang when it is still waiting after
    GIVE_UP_S (a token request that never ends)."""
    try:
        return await asyncio.wait_for(work, GIVE_UP_S)
    except TimeoutError:
        pass
    pytest.fail(f"still waiting for the token endpoint after {GIVE_UP_S:.0f} s")


async def until(condition: Any, what: str) -> None:
    """Poll ``condition()`` until it holds (work the runtime does in the background)."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never happened: {what}")


async def tokens_issued(mock: str) -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{mock}/_mock/gcp/tokens")
    count: int = answer.json()["issued"]
    return count


@dataclass
class TokenEndpoint:
    """A stand-in for Google's token endpoint, steered by the test: it answers every grant
    (JWT-bearer or refresh token) with ``ya29.stub-<n>``, for ``lifetime_s`` (None: the
    answer names no lifetime), or, ``silent``, accepts the request and never answers."""

    url: str = ""
    lifetime_s: int | None = 3600
    silent: bool = False
    grants: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.grants.append({key: str(value) for key, value in form.items()})
        if self.silent:
            await asyncio.sleep(3600)  # cancelled when the server stops
        answer: dict[str, Any] = {
            "access_token": f"ya29.stub-{len(self.grants)}",
            "token_type": "Bearer",
        }
        if self.lifetime_s is not None:
            answer["expires_in"] = self.lifetime_s
        return web.json_response(answer)


@pytest.fixture
async def token_endpoint() -> AsyncIterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/token", endpoint.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    try:
        yield endpoint
    finally:
        # Closes a silent request's connection too: the thread waiting on it ends.
        await runner.cleanup()


async def started_runtime(config: GatewayConfig) -> Runtime:
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    await runtime.start()
    return runtime


async def headers_sent_to_vertex(runtime: Runtime) -> dict[str, str]:
    """The headers the gateway sets on an OpenAI chat request it sends to Vertex."""
    processor = Processor(lambda: runtime, default_stages())
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"content-type": "application/json"}),
            request_body(orjson.dumps(CHAT)),
        ],
    )
    sent: dict[str, str] = {}
    for answer in answers:
        if answer.WhichOneof("response") == "request_body":
            for option in answer.request_body.response.header_mutation.set_headers:
                sent[option.header.key] = option.header.raw_value.decode()
    return sent


# --- A token endpoint that never answers ---------------------------------------------------


# A first token tried for one second (``gcp.first_token_timeout_s``).
SHORT_FIRST_TOKEN_S = 1.0


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token requests that give up in half a second: the wait a silent endpoint meets,
    shortened (the rule is the same)."""
    monkeypatch.setattr(gcp_tokens, "TOKEN_CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(gcp_tokens, "TOKEN_READ_TIMEOUT_S", 0.5)


@pytest.mark.usefixtures("short_waits")
async def test_a_token_endpoint_that_never_answers_ends_the_start_instead_of_hanging(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    # A firewall or an egress proxy that takes the connection and never answers. The
    # start is the server's (nothing serves until it ends) or a reload's (which holds
    # the reloader's lock: no later reload, key rotation or revocation ever applies).
    token_endpoint.silent = True
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=token_endpoint.url)
    source = source_for(key_file, SHORT_FIRST_TOKEN_S)

    await ended(source.start())

    # Out of reach (an outage, not a refusal): applied, the provider pending.
    assert source.pending
    await source.close()


async def test_the_configured_first_token_timeout_bounds_a_start_at_a_silent_endpoint(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    # No shortened module constants: the provider's own gcp.first_token_timeout_s bounds
    # the start (and each of its requests, 10 s by default), instead of 20 s.
    token_endpoint.silent = True
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=token_endpoint.url)
    config = parse_config(
        f"""
providers:
  - name: vertex
    type: vertex
    base_url: "http://127.0.0.1:9/"
    gcp: {{project: mock-project, region: us-east5, credentials_file: "{key_file}",
           first_token_timeout_s: 1.5}}
models:
  - {{name: gemini-flash, provider: vertex}}
""",
        "gateway.yaml",
        {},
    )
    [provider] = config.providers
    assert provider.gcp is not None and provider.gcp.first_token_timeout_s == 1.5
    source = GcpTokenSource(provider.gcp, WHERE)

    await ended(source.start())

    # Out of reach (an outage, not a refusal): applied, the provider pending.
    assert source.pending
    await source.close()


@pytest.mark.usefixtures("short_waits")
async def test_a_refresh_at_a_token_endpoint_that_never_answers_gives_up(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    # The runtime refreshes every provider's credentials one after the other in one task:
    # a refresh that never ends stops every later refresh, and the tokens in use expire.
    token_endpoint.lifetime_s = SHORT_LIFETIME_S
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=token_endpoint.url)
    source = source_for(key_file, SHORT_FIRST_TOKEN_S)
    await source.start()
    first = source.authorization()
    token_endpoint.silent = True

    with pytest.raises(GoogleAuthError):
        await ended(source.refresh_if_needed())

    assert source.authorization() == first, "the token in use stays"
    await source.close()


# --- check-config reads what serve reads -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing"),
        pytest.param("{not json", id="not-json"),
        pytest.param(
            json.dumps({"type": "authorized_user", "refresh_token": "1//secret-refresh"}),
            id="not-a-service-account",
        ),
    ],
)
def test_check_config_refuses_a_key_file_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    # docs/configuration.md: check-config "also reads the files serve reads at start (key
    # files, ...)"; the workers' supervisor runs the same check before a reloaded config
    # becomes the one its restarted workers start with.
    key_file = tmp_path / "vertex-key.json"
    if content is not None:
        key_file.write_text(content, encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    text = vertex_config("https://us-east5-aiplatform.googleapis.com", key_file_line(key_file))
    config.write_text(text, encoding="utf-8")

    status = main(["check-config", "--config", str(config)])

    captured = capsys.readouterr()
    assert status == 2, f"check-config said: {captured.out.strip()}"
    assert f"{WHERE}.credentials_file" in captured.err
    assert "secret-refresh" not in captured.err + captured.out


# --- A base_url with the API's version path ---------------------------------------------------


def test_a_vertex_base_url_with_the_version_path_is_refused_by_its_field() -> None:
    # Every other provider's base_url ends in /v1 (https://api.openai.com/v1); the gateway
    # adds Vertex's own /v1/projects/..., so this one sends /v1/v1/projects/... and Google
    # answers every request with a 404.
    text = vertex_config("https://us-east5-aiplatform.googleapis.com/v1", "")
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "t", {})
    assert any(problem.startswith("providers[0].base_url") for problem in refused.value.problems)


@pytest.mark.parametrize("prefix", ["/v1/v1", ""], ids=["doubled-version", "no-version"])
async def test_the_mock_serves_vertex_under_its_version_path_only(
    tmp_path: Path, prefix: str
) -> None:
    # Vertex serves /v1/projects/... (and /v1beta1/...) at the host's root; the mock
    # takes the location under any prefix, so the gateway's /v1/v1/... passed its tests.
    key_file = tmp_path / "key.json"
    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        source = source_for(key_file)
        await source.start()
        location = "/projects/mock-project/locations/us-east5"
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{mock}{prefix}{location}/endpoints/openapi/chat/completions",
                headers={"authorization": source.authorization()},
                json={**CHAT, "model": "google/gemini-2.5-flash"},
            )
        await source.close()
    assert answer.status_code == 404


# --- Application Default Credentials ---------------------------------------------------------


async def test_the_quota_project_of_application_default_credentials_reaches_vertex(
    tmp_path: Path, token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gcloud's application-default file (user credentials), with the quota project
    # `gcloud auth application-default set-quota-project` wrote into it. google-auth sends
    # it as x-goog-user-project with every request (Credentials.apply); without it, an API
    # that needs a quota project refuses user credentials with a 403.
    adc = tmp_path / "application_default_credentials.json"
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "764086051850-test.apps.googleusercontent.com",
                "client_secret": "d-test-client-secret",
                "refresh_token": "1//test-refresh-token",
                "quota_project_id": "acme-billing",
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.delenv("GOOGLE_CLOUD_QUOTA_PROJECT", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "mock-project")
    # User credentials always trade their refresh token at Google's token URL: here the
    # stand-in's.
    monkeypatch.setattr(
        google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", token_endpoint.url
    )
    runtime = await started_runtime(
        parse_config(vertex_config("https://us-east5-aiplatform.googleapis.com", ""), "t", {})
    )
    try:
        sent = await headers_sent_to_vertex(runtime)
    finally:
        await runtime.close()

    assert token_endpoint.grants[0]["grant_type"] == "refresh_token"
    assert sent["authorization"] == "Bearer ya29.stub-1"
    assert sent.get("x-goog-user-project") == "acme-billing"


async def test_a_google_application_credentials_file_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator did set GOOGLE_APPLICATION_CREDENTIALS, to a path not mounted.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    source = source_for(None)

    with pytest.raises(ConfigError) as refused:
        await source.start()

    [problem] = refused.value.problems
    assert problem.startswith(WHERE)
    assert "no credentials" not in problem, "it names credentials that are not there"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in problem
    assert "No such file" in problem


# --- What a refused token request tells the operator -----------------------------------------


async def test_a_refused_token_request_says_googles_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's clock runs ten minutes ahead: Google refuses the assertion's iat with
    # "invalid_grant: Invalid JWT: Token must be a short-lived token (60 minutes) and in a
    # reasonable timeframe. Check your iat and exp values in the JWT claim." A deleted key
    # ("Invalid JWT Signature.") or a deleted account ("account not found") give the same
    # type, RefreshError: the type alone does not tell the operator what to fix.
    key_file = tmp_path / "key.json"

    def ahead() -> datetime.datetime:  # google-auth's clock: naive UTC
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        return now + datetime.timedelta(minutes=10)

    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        monkeypatch.setattr(google.auth._helpers, "utcnow", ahead)
        source = source_for(key_file)
        with pytest.raises(ConfigError) as refused:
            await source.start()

    [problem] = refused.value.problems
    assert problem.startswith(f"{WHERE}: cannot obtain a Google Cloud access token")
    assert "invalid_grant" in problem and "iat" in problem


# --- The refresh, and the clock ----------------------------------------------------------------


async def test_a_token_without_a_lifetime_is_replaced_at_every_tick(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    # google-auth takes a token whose answer names no lifetime for one that never
    # expires; the gateway cannot know, so it replaces it at each refresh tick.
    token_endpoint.lifetime_s = None
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=token_endpoint.url)
    source = source_for(key_file)
    await source.start()

    await source.refresh_if_needed()

    assert source.authorization() == "Bearer ya29.stub-2"
    await source.close()


async def test_a_wall_clock_stepped_back_does_not_keep_a_token_past_its_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token has 9 minutes left (under REFRESH_AHEAD_S: due now). Then NTP steps the
    # host's clock back 15 minutes (a VM resumed, a migration): the token still expires
    # at Google in 9 minutes, and the refresh must not wait for the wall clock to catch up.
    key_file = tmp_path / "key.json"
    lifetime_s = REFRESH_AHEAD_S - 60
    options = MockOptions(gcp_service_account=str(key_file), gcp_token_lifetime_s=lifetime_s)
    async with serve_mock(options) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        source = source_for(key_file)
        await source.start()
        first = source.authorization()
        step = datetime.timedelta(minutes=15)
        real = datetime.datetime

        class SteppedBack:
            """The wall clock, 15 minutes behind (what the gateway reads of it)."""

            @staticmethod
            def now(tz: datetime.tzinfo | None = None) -> datetime.datetime:
                return real.now(tz) - step

        stepped = types.SimpleNamespace(datetime=SteppedBack, UTC=datetime.UTC)
        monkeypatch.setattr(gcp_tokens, "datetime", stepped)

        await source.refresh_if_needed()

        assert source.authorization() != first
        assert await tokens_issued(mock) == 2
        await source.close()


# --- Several Vertex providers ------------------------------------------------------------------


async def test_each_vertex_provider_has_its_own_token_and_a_refused_one_is_named(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.json"
    stranger = tmp_path / "stranger.json"
    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        write_service_account(stranger, token_uri=f"{mock}/token")  # a key the mock refuses
        europe = provider_yaml("vertex-eu", mock, key_file_line(key_file))
        runtime = await started_runtime(
            parse_config(vertex_config(mock, key_file_line(key_file), europe), "t", {})
        )
        tokens = {name: source.token for name, source in runtime.token_sources.items()}
        await runtime.close()

        europe = provider_yaml("vertex-eu", mock, key_file_line(stranger))
        config = parse_config(vertex_config(mock, key_file_line(key_file), europe), "t", {})
        runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
        with pytest.raises(ConfigError) as refused:
            await runtime.start()
        await runtime.close()

    assert set(tokens) == {"vertex", "vertex-eu"}
    assert tokens["vertex"] != tokens["vertex-eu"]
    [problem] = refused.value.problems
    assert problem.startswith("providers.vertex-eu.gcp: cannot obtain a Google Cloud access token")


async def test_a_retired_config_closes_its_token_source_once_its_streams_end(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.json"
    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        config = parse_config(vertex_config(mock, key_file_line(key_file)), "t", {})
        replaced = await started_runtime(config)
        serving = await started_runtime(config)

        replaced.retire(max_wait_s=3600)  # a reload replaced it; no stream uses it
        await until(lambda: replaced.closed, "the replaced config closes")

        assert replaced.token_sources["vertex"].token is None
        assert (await headers_sent_to_vertex(serving))["authorization"].startswith(
            "Bearer ya29.mock-"
        ), "the new config's token source is its own"
        await serving.close()


# --- Secrets in logs -------------------------------------------------------------------------


async def test_no_token_key_or_assertion_reaches_a_log_record_at_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator chasing a problem runs at DEBUG: a start, a refresh and a refused
    # refresh (the key revoked) go through the runtime's own refresh loop.
    caplog.set_level(logging.DEBUG)
    google_logger = logging.getLogger("google")
    google_logger.addHandler(caplog.handler)  # in case google-auth stops propagating
    monkeypatch.setattr(runtime_module, "CREDENTIAL_REFRESH_INTERVAL_S", 0.05)
    key_file = tmp_path / "key.json"
    options = MockOptions(gcp_service_account=str(key_file), gcp_token_lifetime_s=SHORT_LIFETIME_S)
    try:
        async with serve_mock(options) as mock:
            write_service_account(key_file, token_uri=f"{mock}/token")
            private_key = json.loads(key_file.read_text(encoding="utf-8"))["private_key"]
            runtime = await started_runtime(
                parse_config(vertex_config(mock, key_file_line(key_file)), "t", {})
            )
            source = runtime.token_sources["vertex"]
            await until(lambda: source.token is not None, "a first token")
            tokens = {source.token}
            while await tokens_issued(mock) < 3:  # refreshed at every tick: short-lived
                await asyncio.sleep(0.05)
                tokens.add(source.token)
            # The key is revoked: the mock now trusts another one.
            write_service_account(key_file, token_uri=f"{mock}/token")
            failed = "Google Cloud token refresh for provider vertex failed: RefreshError"
            await until(lambda: failed in caplog.text, "a refused refresh is logged")
            await runtime.close()
            async with httpx.AsyncClient() as client:
                recorded = (await client.get(f"{mock}/_mock/requests")).json()
    finally:
        google_logger.removeHandler(caplog.handler)

    assertions = [parse_qs(r["body"])["assertion"][0] for r in recorded if r["path"] == "/token"]
    assert len(assertions) >= 4, "a start, two refreshes and a refused one"
    # Every token and assertion seen, and what any of them looks like (ya29., a JWT).
    secrets = [t for t in tokens if t] + assertions + ["ya29.", "eyJ"]
    secrets += private_key.splitlines()[1:3]
    assert all(secret for secret in secrets)
    for record in caplog.records:
        seen = record.getMessage() + repr(record.__dict__)
        for secret in secrets:
            assert secret not in seen, f"{record.name} logged a secret"


# --- The token in answers ----------------------------------------------------------------------


async def test_an_answer_quoting_the_token_refreshed_while_it_was_in_flight_shows_none(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    # The request went with the token in use; a refresh replaced it before the answer
    # came. A provider quoting the request's headers back quotes the one it was sent.
    token_endpoint.lifetime_s = None  # every refresh mints a new token
    key_file = tmp_path / "key.json"
    write_service_account(key_file, token_uri=token_endpoint.url)
    gemini_route = """
routes:
  - {name: gemini, path_prefix: /v1beta/models, api: gemini_generate_content}
"""
    text = vertex_config("http://127.0.0.1:9", key_file_line(key_file)) + gemini_route
    runtime = await started_runtime(parse_config(text, "t", {}))
    source = runtime.token_sources["vertex"]
    sent_with = source.token
    assert sent_with is not None
    said = f"bad request; got Authorization: Bearer {sent_with}"
    error = orjson.dumps({"error": {"code": 400, "message": said, "status": "INVALID_ARGUMENT"}})

    # A Gemini client gets Google's errors as they came (no translation that would
    # redact the token by its look).
    contents = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}

    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1beta/models/gemini-flash:generateContent")
        yield request_body(orjson.dumps(contents))
        await source.refresh_if_needed()
        assert source.token != sent_with
        headers = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
        yield response_headers(400, headers)
        yield response_body(error)

    processor = Processor(lambda: runtime, default_stages())
    answers = [answer async for answer in processor.process(messages())]
    await runtime.close()
    shown = client_body([error], answers)
    assert sent_with.encode() not in shown
    assert said.replace(sent_with, "*" * len(sent_with)).encode() in shown
