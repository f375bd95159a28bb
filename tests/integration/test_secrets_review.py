"""Credentials in, credentials out: what a client presents, what a provider gets, what leaks.

One stack with distinctive secrets (each starts and ends with four characters found
nowhere else, so a fragment of one is as easy to find as the whole): org keys, a
narrow key, a JWT provider's shared secret, the admin token, the providers' own keys
(a second mock provider that fails every request serves as the primary of failover
chains), a cookie and a proxy credential. The gateway runs at DEBUG. The clients are
the official ``openai`` and ``anthropic`` SDKs, or httpx where a header form needs it.

Checked: every documented credential form, which one wins, empty and malformed
ones, a key in the query string; 401 and 403 in OpenAI's shape; that a provider's
refusal of the gateway's own key (OpenAI names a fragment of that key in its 401)
reaches the client as the gateway's own error, without the fragment, on every path; that
no client credential reaches any provider, failover attempts included; and, after
all that, that no secret nor a fragment of one is in any log, metric, span, Envoy
page, error body or management output.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jwt
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.store.embedded import free_port
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_log,
    mock_requests,
    readable_places,
    run_cli,
    running_stack,
    wait_for,
)
from tests.integration.forked import run_extproc_text
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_secrets import scanned_stack_env, with_prompt_span_export

PROVIDER_KEY = "Zq4vPROVIDERkey-openai-7d1c0e5aW9x3"
FLAKY_KEY = "Gk7eFLAKYkey-second-mock-41d2Wb2n"
ORG_KEY = "Jx8kORGkey-team1-5e8f2a7cYt2m"
OTHER_ORG_KEY = "Hb3nORGkey-team2-b40c6e1fQp6r"
NARROW_KEY = "Mw5tNARROWkey-3c9d8e7fKd4s"
SSO_SECRET = "Vr2gSSOsecret-3f9a1c7e5b2d8046Ln7c"
ADMIN_TOKEN = "Pf6yADMINtoken-c2e4a6f8b0d1Gs9h"
WRONG_KEY = "Ck1wWRONGkey-9a8b7c6d5e4fUe5j"
COOKIE_SECRET = "Tn4hCOOKIEsession-88aa77bbRm3x"
PROXY_SECRET = "Yd9pPROXYauth-1122aabbZc8v"
# A key in the header another route reads (routes[].auth.api_key_header).
PARTNER_SECRET = "Ub6sPARTNERkey-5566eeffJh4q"
# A client's own AWS session token: sent beside the gateway's signature, AWS refuses both.
AMZ_TOKEN_SECRET = "Qw7rAMZtoken-3344ccddKp2m"
AWS_SECRET = "mock-secret-key"  # the mock's Bedrock accepts only this one: checked whole
ISSUER = "https://sso.review.test"

# Secrets whose first and last four characters are their own: fragments are checked too.
DISTINCT = (
    PROVIDER_KEY, FLAKY_KEY, ORG_KEY, OTHER_ORG_KEY, NARROW_KEY, SSO_SECRET, ADMIN_TOKEN,
    WRONG_KEY, COOKIE_SECRET, PROXY_SECRET, PARTNER_SECRET,
)  # fmt: skip
# Random-looking secrets (tokens minted below) are checked whole and by six-character ends.
MINTED: list[str] = []
# What clients and operators were shown.
SHOWN: list[str] = []

CLIENT_SECRETS = (
    ORG_KEY,
    OTHER_ORG_KEY,
    NARROW_KEY,
    WRONG_KEY,
    COOKIE_SECRET,
    PROXY_SECRET,
    AMZ_TOKEN_SECRET,
    PARTNER_SECRET,
)

CONFIG_AUTH = f"""  jwt_providers:
    - name: sso
      issuer: {ISSUER}
      shared_secret: ${{SSO_SECRET}}
      algorithms: [HS256]
  api_keys:
    - id: narrow
      key: {NARROW_KEY}
      allowed_routes: [anthropic]
"""
# A partner's route, reading keys from a header of its own: every other route reads
# the standard ones only, and must still keep this one from the provider.
PARTNER_ROUTE = """
  - name: partner-chat
    path: /partner/v1/chat/completions
    auth: {methods: [api_key], api_key_header: x-partner-key}
"""
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_BODY: dict[str, Any] = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi"}],
}


def fragments(secret: str, size: int) -> set[str]:
    return {secret, secret[:size], secret[-size:]}


class DebugStack(LocalStack):
    """The usual local stack, with the gateway's diagnostic log at DEBUG."""

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], stdout: Path | None = None
    ) -> None:
        if name.startswith("gateway"):
            argv = [*argv[:3], "--log-level", "DEBUG", *argv[3:]]
        super()._spawn(name, argv, env, stdout)


@contextmanager
def flaky_provider() -> Iterator[int]:
    """A second mock provider that answers every request 503: the failing primary."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc", "mock-llm", "--port", str(port), "--fault",
         "status=503"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_mock/health", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def flaky_port() -> Iterator[int]:
    with flaky_provider() as port:
        yield port


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver, flaky_port: int
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("secrets-review")
    flaky = f"http://127.0.0.1:{flaky_port}/v1"
    providers = f"""
  - {{name: flaky, base_url: "{flaky}", api_key: {FLAKY_KEY}}}
  - {{name: flaky-anthropic, type: anthropic, base_url: "{flaky}", api_key: {FLAKY_KEY}}}
"""
    models = """
  - {name: fo-openai-first, provider: flaky, fallbacks: [claude-3-5-haiku-latest]}
  - {name: fo-to-openai, provider: flaky-anthropic, upstream_model: claude-x,
     fallbacks: [gpt-4.1-nano]}
  - {name: fo-to-bedrock, provider: flaky, upstream_model: gpt-x,
     fallbacks: [anthropic.claude-3-haiku-20240307-v1:0]}
  - {name: fo-mock-first, provider: mock, upstream_model: gpt-4o,
     fallbacks: [claude-3-5-haiku-latest]}
"""
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + models, 1)
    text = text.replace("\nauth:\n  api_keys:\n", "\nauth:\n" + CONFIG_AUTH, 1)
    text = text.replace("\nroutes:\n", "\nroutes:" + PARTNER_ROUTE, 1)
    text = with_prompt_span_export(text)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    env = scanned_stack_env(
        workdir, collector, provider_key=PROVIDER_KEY, org_key=ORG_KEY,
        other_org_key=OTHER_ORG_KEY, sso_secret=SSO_SECRET, admin_token=ADMIN_TOKEN,
    )  # fmt: skip
    with running_stack(workdir, config, extra_env=env, stack_type=DebugStack) as running:
        yield running


def token(secret: str = SSO_SECRET, expires_in: float = 600) -> str:
    minted = jwt.encode(
        {"iss": ISSUER, "sub": "erin", "group": "finance", "exp": int(time.time() + expires_in)},
        secret,
        algorithm="HS256",
    )
    MINTED.append(minted)
    return minted


def post(
    stack: LocalStack, path: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    answer = httpx.post(
        f"{stack.base_url}{path}", content=orjson.dumps(body), headers=headers, timeout=30.0
    )
    SHOWN.append(answer.text)
    SHOWN.append(orjson.dumps(dict(answer.headers)).decode())
    return answer


def openai_client(stack: LocalStack, key: str = ORG_KEY, **headers: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, default_headers=headers
    )


def log_line(stack: LocalStack, answer: httpx.Response) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    return line


def error_of(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    return body["error"]  # type: ignore[no-any-return]


# --- what a client presents -----------------------------------------------------------


def test_the_openai_sdk_key_is_accepted_and_attributed(stack: LocalStack) -> None:
    raw = openai_client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=CHAT["messages"],
    )
    assert raw.parse().choices[0].message.content
    [line] = GatewayLog(stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert line["api_key_id"] == "team1"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {ORG_KEY}"},
        {"authorization": f"bEaReR    {ORG_KEY}"},  # any case, any run of spaces
        {"authorization": ORG_KEY},  # the bare form: `Authorization: team1-key`
        {"x-api-key": ORG_KEY},
        {"api-key": ORG_KEY},
    ],
    ids=["bearer", "bearer-case-and-spaces", "bare", "x-api-key", "api-key"],
)
def test_every_documented_credential_form_is_accepted(
    stack: LocalStack, headers: dict[str, str]
) -> None:
    answer = post(stack, "/v1/chat/completions", CHAT, headers)
    assert answer.status_code == 200, answer.text
    assert log_line(stack, answer)["api_key_id"] == "team1"


def test_authorization_wins_over_x_api_key_as_documented(stack: LocalStack) -> None:
    answer = post(
        stack,
        "/v1/chat/completions",
        CHAT,
        {"authorization": f"Bearer {ORG_KEY}", "x-api-key": OTHER_ORG_KEY},
    )
    assert answer.status_code == 200
    assert log_line(stack, answer)["api_key_id"] == "team1"


def test_an_empty_bearer_does_not_hide_the_x_api_key(stack: LocalStack) -> None:
    # `Authorization: Bearer ` arrives as `Bearer` (HTTP trims the value): no credential.
    answer = post(
        stack, "/v1/chat/completions", CHAT, {"authorization": "Bearer", "x-api-key": ORG_KEY}
    )
    assert answer.status_code == 200, answer.text
    assert log_line(stack, answer)["api_key_id"] == "team1"


def test_an_empty_bearer_alone_is_told_no_key_was_found(stack: LocalStack) -> None:
    answer = post(stack, "/v1/chat/completions", CHAT, {"authorization": "Bearer"})
    assert answer.status_code == 401
    # This stack takes JWTs too: "no credentials found", not "invalid API key".
    assert error_of(answer)["message"].startswith("no credentials found")
    assert answer.headers["www-authenticate"] == 'Bearer realm="aigw"'


@pytest.mark.parametrize(
    ("path", "parameter", "code"),
    [
        ("/v1/chat/completions?api-key=", "api-key", "credential_in_query"),
        ("/openai?model=gpt-4o-mini&api_key=", "api_key", "credential_in_query"),
        ("/v1/messages?key=", "key", "credential_in_query"),
        # Google's `$` spelling of its key, and its older name for an OAuth token.
        ("/v1/chat/completions?%24key=", "$key", "credential_in_query"),
        ("/v1/messages?beta=true&oauth_token=", "oauth_token", "credential_in_query"),
        # Google's billing project, the query's twin of x-goog-user-project.
        ("/openai?model=gpt-4o-mini&userProject=", "userProject", "account_in_query"),
    ],
)
def test_a_key_in_the_query_string_is_refused_and_never_forwarded(
    stack: LocalStack, path: str, parameter: str, code: str
) -> None:
    query_key = f"Qs{parameter}-query-string-key-77e1"
    before = len(mock_requests(stack))
    body = MESSAGES_BODY if path.startswith("/v1/messages") else CHAT
    # Even with a good key in the header: the query's key would go to the provider.
    answer = post(stack, path + query_key, body, {"authorization": f"Bearer {ORG_KEY}"})
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert f"'{parameter}'" in error["message"] and "query string" in error["message"]
    assert query_key not in answer.text
    if not path.startswith("/v1/messages"):  # Anthropic's error shape has no code
        assert error["code"] == code
    assert len(mock_requests(stack)) == before  # nothing reached a provider
    line = log_line(stack, answer)
    assert query_key not in orjson.dumps(line).decode()
    # Envoy's access log line for it names the path alone.
    request_id = answer.headers["x-request-id"]
    logged = wait_for(
        lambda: [line for line in envoy_access_log(stack).splitlines() if request_id in line],
        30,
    )
    assert [orjson.loads(line)["path"] for line in logged] == [path.partition("?")[0]]


def test_a_refused_query_key_is_not_in_envoys_access_log_or_spans(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    query_key = "Qsenvoy-query-string-key-5b2c"
    answer = post(stack, f"/v1/chat/completions?api-key={query_key}", CHAT, {})
    assert answer.status_code == 400
    request_id = answer.headers["x-request-id"]
    # Envoy writes its access log and exports spans a little after the answer.
    logged = wait_for(
        lambda: [line for line in envoy_access_log(stack).splitlines() if request_id in line],
        30,
    )
    spans = wait_for(
        lambda: [repr(span) for span in collector.spans if request_id in repr(span)], 30
    )
    assert logged and spans
    assert query_key not in "".join(logged) + "".join(spans)
    # Still there, only without the query: the path and URL an operator searches by.
    assert [orjson.loads(line)["path"] for line in logged] == ["/v1/chat/completions"]
    assert (
        collector.request_span(request_id).attributes["http.url"].endswith("/v1/chat/completions")
    )


def test_a_key_sent_as_the_model_is_refused_and_in_no_envoy_log_or_span(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    """A client whose settings were swapped: the openai SDK sends its key as the model.
    Before, the key was the log line's model and error message, and through the
    gateway's metadata Envoy's access log `model` and the span's model tag."""
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(stack).chat.completions.create(
            model=ORG_KEY, messages=[{"role": "user", "content": "hi"}]
        )
    answer = refused.value.response
    SHOWN.append(answer.text)
    assert refused.value.code == "credential_in_model"
    assert "'model' holds this request's API key or token" in refused.value.message
    assert ORG_KEY not in answer.text
    assert len(mock_requests(stack)) == before
    request_id = answer.headers["x-request-id"]
    line = log_line(stack, answer)
    assert line["model"] is None and line["http_status_code"] == 400
    logged = wait_for(
        lambda: [line for line in envoy_access_log(stack).splitlines() if request_id in line],
        30,
    )
    spans = wait_for(
        lambda: [repr(span) for span in collector.spans if request_id in repr(span)], 30
    )
    assert [orjson.loads(line)["response_code"] for line in logged] == [400]
    assert ORG_KEY not in "".join(logged) + "".join(spans) + orjson.dumps(line).decode()


def test_unknown_key_is_401_and_a_route_the_key_may_not_use_is_403_in_openais_shape(
    stack: LocalStack,
) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        openai_client(stack, WRONG_KEY).chat.completions.create(
            model="gpt-4o-mini", messages=CHAT["messages"]
        )
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    assert refused.value.message.endswith("invalid API key")
    SHOWN.append(refused.value.response.text)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        openai_client(stack, NARROW_KEY).chat.completions.create(
            model="gpt-4o-mini", messages=CHAT["messages"]
        )
    assert denied.value.status_code == 403
    assert denied.value.code == "route_not_allowed"
    assert "'narrow'" in denied.value.message
    SHOWN.append(denied.value.response.text)


# --- what the provider says about its own key -----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    "model",
    ["gpt-4o-mini", "fo-mock-first"],
    ids=["pass-through", "failover-attempt"],
)
def test_the_providers_refusal_of_its_key_reaches_the_client_without_a_fragment(
    stack: LocalStack, model: str, stream: bool
) -> None:
    client = openai_client(stack, **{"x-mock-fault": "status=401"})
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model=model,
            messages=CHAT["messages"],
            stream=stream,
        )
    # The control: the mock did answer with a fragment of the key it was sent.
    assert (
        "W9x3"
        in httpx.post(
            f"{stack.mock_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {PROVIDER_KEY}", "x-mock-fault": "status=401"},
            json=CHAT,
        ).text
    )
    text = failed.value.response.text
    SHOWN.append(text)
    # The provider's status (a pass-through answer may take the lean path, whose
    # headers leave before the body is read), the gateway's own words.
    assert failed.value.status_code == 401, text
    assert failed.value.code == "upstream_credentials_refused"
    assert "not a problem with your API key" in failed.value.message
    assert not any(piece in text for piece in fragments(PROVIDER_KEY, 4))


@pytest.mark.parametrize("status", [401, 403])
def test_anthropic_clients_are_told_the_refusal_is_the_gateways_too(
    stack: LocalStack, status: int
) -> None:
    claude = anthropic.Anthropic(
        base_url=stack.base_url, api_key=ORG_KEY, max_retries=0,
        default_headers={"x-mock-fault": f"status={status}"},
    )  # fmt: skip
    with pytest.raises(anthropic.APIStatusError) as failed:
        claude.messages.create(**MESSAGES_BODY)
    SHOWN.append(failed.value.response.text)
    assert failed.value.status_code == status
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "gateway's own credentials" in failed.value.message
    assert "not a problem with your API key" in failed.value.message


# --- what a provider gets -------------------------------------------------------------

ALL_CLIENT_CREDENTIALS = {
    "authorization": f"Bearer {ORG_KEY}",
    "x-api-key": OTHER_ORG_KEY,
    "api-key": WRONG_KEY,
    "proxy-authorization": f"Basic {PROXY_SECRET}",
    "cookie": f"session={COOKIE_SECRET}",
    "x-amz-security-token": AMZ_TOKEN_SECRET,
    "x-partner-key": PARTNER_SECRET,
}


@pytest.mark.parametrize(
    ("path", "body", "provider_key", "where"),
    [
        ("/v1/chat/completions", CHAT, PROVIDER_KEY, "openai"),
        ("/anthropic/chat/completions", {**CHAT, "model": "claude-sonnet-4-0"}, PROVIDER_KEY,
         "anthropic"),
        ("/v1/messages", MESSAGES_BODY, PROVIDER_KEY, "anthropic-native"),
        ("/bedrock/haiku/chat/completions", CHAT, None, "bedrock"),
        ("/v1/chat/completions", {**CHAT, "model": "fo-openai-first"}, FLAKY_KEY, "failover"),
        ("/v1/chat/completions", {**CHAT, "model": "fo-to-openai"}, FLAKY_KEY, "failover"),
        ("/v1/chat/completions", {**CHAT, "model": "fo-to-bedrock"}, FLAKY_KEY, "failover"),
    ],
    ids=["openai", "anthropic", "anthropic-native", "bedrock", "failover-to-anthropic",
         "failover-to-openai", "failover-to-bedrock"],
)  # fmt: skip
def test_no_client_credential_reaches_any_provider(
    stack: LocalStack,
    flaky_port: int,
    path: str,
    body: dict[str, Any],
    provider_key: str | None,
    where: str,
) -> None:
    flaky_url = f"http://127.0.0.1:{flaky_port}/_mock/requests"
    httpx.delete(f"{stack.mock_url}/_mock/requests")
    httpx.delete(flaky_url)
    for stream in (False, True):
        answer = post(stack, path, {**body, "stream": stream}, ALL_CLIENT_CREDENTIALS)
        assert answer.status_code == 200, answer.text
    received = mock_requests(stack) + httpx.get(flaky_url).json()
    assert len(received) >= (4 if where == "failover" else 2)
    for request in received:
        headers = request["headers"]
        seen = orjson.dumps(headers).decode() + request.get("query_string", "")
        assert not [secret for secret in CLIENT_SECRETS if secret in seen], headers
        assert "cookie" not in headers and "proxy-authorization" not in headers
        assert "api-key" not in headers
        if request["path"].endswith("/v1/messages"):
            # An Anthropic provider gets its own key, where Anthropic wants it.
            assert headers["x-api-key"] in (PROVIDER_KEY, FLAKY_KEY)
            assert "authorization" not in headers
        elif request["path"].endswith("/converse") or request["path"].endswith("/converse-stream"):
            assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCK/")
            assert "x-api-key" not in headers
        else:
            assert headers["authorization"] in (f"Bearer {PROVIDER_KEY}", f"Bearer {FLAKY_KEY}")
            assert "x-api-key" not in headers
    if provider_key is not None:
        assert provider_key in orjson.dumps(received).decode()  # the control


# --- config errors and management output ----------------------------------------------


def test_check_config_never_echoes_a_secret_from_a_broken_line(
    stack: LocalStack, tmp_path: Path
) -> None:
    good = stack.config_path.read_text()
    broken = [
        # A YAML tag: the value starts with '!' (generated passwords do).
        good.replace("${MOCK_LLM_API_KEY:-mock-provider-key}", f"!{PROVIDER_KEY}", 1),
        good.replace(f"key: {NARROW_KEY}", f"key: [{NARROW_KEY}", 1),
        good.replace(f"key: {NARROW_KEY}", f"key: {{{NARROW_KEY}: 1}}", 1),
        good.replace("shared_secret: ${SSO_SECRET}", f"shared_secret: {SSO_SECRET}: x", 1),
    ]
    for index, text in enumerate(broken):
        path = tmp_path / f"broken{index}.yaml"
        path.write_text(text)
        argv = [sys.executable, "-m", "extproc", "check-config", "--config", str(path)]
        done = run_extproc_text(argv, stack.env)
        assert done.returncode != 0, text
        assert "invalid config" in done.stdout + done.stderr
        SHOWN.extend((done.stdout, done.stderr))
        shown = done.stdout + done.stderr
        assert not [s for s in DISTINCT if s in shown or s[:4] in shown or s[-4:] in shown]
    done = subprocess.run(
        [sys.executable, "-m", "extproc", "check-config", "--config", str(stack.config_path)],
        env=stack.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    SHOWN.extend((done.stdout, done.stderr))


def test_the_key_listing_shows_ids_never_secrets_or_digests(stack: LocalStack) -> None:
    for output in ("table", "json"):
        done = run_cli(stack, "keys", "list", "--format", output, admin_token=ADMIN_TOKEN)
        assert done.returncode == 0, done.stderr
        assert "team1" in done.stdout and "narrow" in done.stdout
        SHOWN.extend((done.stdout, done.stderr))
        for key in (ORG_KEY, OTHER_ORG_KEY, NARROW_KEY):
            assert hashlib.sha256(key.encode()).hexdigest()[:16] not in done.stdout


# --- and nothing leaked anywhere ------------------------------------------------------


def drive_jwt_flows(stack: LocalStack) -> str:
    """Good and bad tokens; the request id of the last request."""
    good = token()
    assert post(stack, "/v1/chat/completions", CHAT, {"authorization": f"Bearer {good}"}).is_success
    MINTED.append(good[:-3])
    for bad in (token(expires_in=-3600), token(secret="x" * 40), good[:-3], good + "AAAA"):
        answer = post(stack, "/v1/chat/completions", CHAT, {"authorization": f"Bearer {bad}"})
        assert answer.status_code == 401
    return answer.headers["x-request-id"]


def test_zz_no_secret_nor_a_fragment_of_one_anywhere(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    """Runs last (by name): scans what every test above produced, plus JWT flows."""
    last = drive_jwt_flows(stack)
    # Envoy writes its access log and exports spans a little after the answers.
    assert wait_for(lambda: last in envoy_access_log(stack), 30)
    assert wait_for(lambda: any(last in repr(span) for span in collector.spans), 30)
    places = readable_places(stack, collector, SHOWN)
    # The control: the diagnostic log ran at DEBUG (the verifier's refusals show there).
    assert "JWT from provider sso refused" in places["gateway stderr"]
    assert "team1" in places["traces"]
    looked_for: dict[str, str] = {}
    for secret in DISTINCT:
        for piece in fragments(secret, 4):
            looked_for[piece] = secret
    looked_for[AWS_SECRET] = AWS_SECRET
    for minted in MINTED:
        signature = minted.rsplit(".", 1)[1]
        for piece in {minted, *fragments(signature, 6)}:
            looked_for[piece] = "a JWT"
    for key in (ORG_KEY, OTHER_ORG_KEY, NARROW_KEY):
        looked_for[hashlib.sha256(key.encode()).hexdigest()] = f"sha256 of {key[:4]}"
    found = sorted(
        {
            (place, f"{piece!r} of {secret[:4]}...")
            for place, text in places.items()
            for piece, secret in looked_for.items()
            if piece in text
        }
    )
    assert found == []
