"""No secret, configured or presented, ever shows where operators or clients can read.

One stack with distinctive secrets everywhere (provider key, AWS secret key,
org API keys from the environment, a JWT shared secret, the admin token) is
driven through every flow: each client API and provider, streaming, JWTs good
and bad, wrong and oversized keys, upstream errors, the management API with
good and bad tokens, a key created and revoked at run time, a config reload
that fails on a secret-bearing field and one that succeeds. Then every place
that could hold text is scanned: the gateway's request log (stdout and file)
and stderr, Envoy's access log and stderr, the metrics page, the spans Envoy
exported to an OTLP receiver, Envoy's admin pages (stats, clusters, config
dump), every error body a client got and every management output.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jwt
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    readable_places,
    run_cli,
    running_stack,
    scrape,
    wait_for,
)
from tests.integration.otlp_receiver import OtlpReceiver

PROVIDER_KEY = "sk-provider-7d1c0e5a9b3f4e21"
AWS_SECRET = "mock-secret-key"  # the mock's Bedrock only accepts this one
ORG_KEY = "org-key-5e8f2a7c1d9b4063"
OTHER_ORG_KEY = "org-key-b40c6e1f8a2d7953"
SSO_SECRET = "sso-shared-secret-3f9a1c7e5b2d8046a1c3e5f7"
ADMIN_TOKEN = "admin-token-c2e4a6f8b0d1e3f5"
WRONG_KEY = "sk-wrong-9a8b7c6d5e4f3021"
WRONG_ADMIN = "admin-wrong-1f2e3d4c5b6a7980"
ISSUER = "https://sso.secrets.test"
JWT_PROVIDER = f"""  jwt_providers:
    - name: sso
      issuer: {ISSUER}
      shared_secret: ${{SSO_SECRET}}
      algorithms: [HS256]
"""

QUOTAS = """
quotas:
  rules:
    - {name: per-key, subject: api_key, tokens_per_day: 100000000}
    - {name: marketing-once, subject: group, match: marketing, requests_per_minute: 1}
"""
# Everything presented or configured; tokens minted below are added as they are made.
SECRETS: set[str] = {
    PROVIDER_KEY, AWS_SECRET, ORG_KEY, OTHER_ORG_KEY, SSO_SECRET, ADMIN_TOKEN, WRONG_KEY,
    WRONG_ADMIN,
}  # fmt: skip
# What clients and operators were shown: error bodies, CLI output.
SHOWN: list[str] = []


def scanned_stack_env(
    workdir: Path,
    collector: OtlpReceiver,
    *,
    provider_key: str,
    org_key: str,
    other_org_key: str,
    sso_secret: str,
    admin_token: str,
) -> dict[str, str]:
    """The environment of a stack whose readable places are scanned for secrets: the
    secrets the config reads from it (the provider's key, team1's and team2's keys, the JWT
    provider's shared secret, the admin token); traces to a real OTLP receiver, and the
    request log to a file as well, so that every place ``readable_places`` reads is written."""
    return {
        "MOCK_LLM_API_KEY": provider_key,
        "TEAM1_API_KEY": org_key,
        "TEAM2_API_KEY": other_org_key,
        "SSO_SECRET": sso_secret,
        "AIGW_ADMIN_TOKEN": admin_token,
        "AIGW_TRACING_ENABLED": "true",
        "AIGW_OTLP_ENDPOINT": collector.endpoint,
        "AIGW_LOG_FILE": str(workdir / "requests.log"),
    }


def with_prompt_span_export(config_text: str) -> str:
    """``config_text`` with Envoy exporting its spans every 200 ms: by default it waits
    5 s for a batch of 5, which a scan for the last requests' spans waited out."""
    tracing = "    service_name: aigw\n"
    assert tracing in config_text, "the default config's tracing section has changed"
    return config_text.replace(tracing, tracing + "    flush_interval_ms: 200\n", 1)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("secrets")
    config = workdir / "gateway.yaml"
    text = DEFAULT_CONFIG.read_text().replace("\nauth:\n", "\nauth:\n" + JWT_PROVIDER)
    text = with_prompt_span_export(text)
    config.write_text(text + QUOTAS)
    env = scanned_stack_env(
        workdir, collector, provider_key=PROVIDER_KEY, org_key=ORG_KEY,
        other_org_key=OTHER_ORG_KEY, sso_secret=SSO_SECRET, admin_token=ADMIN_TOKEN,
    )  # fmt: skip
    with running_stack(workdir, config, extra_env=env) as running:
        yield running


def token(secret: str = SSO_SECRET, expires_in: float = 600) -> str:
    minted = jwt.encode(
        {"iss": ISSUER, "sub": "erin", "group": "finance", "exp": int(time.time() + expires_in)},
        secret,
        algorithm="HS256",
    )
    SECRETS.add(minted)
    SECRETS.add(minted.rsplit(".", 1)[1])  # the signature alone
    return minted


def post(
    stack: LocalStack, path: str, credential: str, body: dict[str, object], **headers: str
) -> httpx.Response:
    answer = httpx.post(
        f"{stack.base_url}{path}",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {credential}", **headers},
        timeout=30.0,
    )
    if answer.status_code >= 400:
        SHOWN.append(answer.text)
    return answer


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def drive_every_flow(stack: LocalStack) -> None:
    openai_client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=ORG_KEY, max_retries=0)
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])  # type: ignore[arg-type]
    for _ in openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=CHAT["messages"],
        stream=True,  # type: ignore[arg-type]
    ):
        pass
    claude = anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, default_headers={"x-api-key": OTHER_ORG_KEY},
        max_retries=0,
    )  # fmt: skip
    claude.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    # team2 (group marketing) has used its one request of the minute.
    assert post(stack, "/v1/chat/completions", OTHER_ORG_KEY, CHAT).status_code == 429
    assert (
        post(
            stack, "/anthropic/chat/completions", ORG_KEY, {**CHAT, "model": "claude-sonnet-4-0"}
        ).status_code
        == 200
    )
    assert post(stack, "/bedrock/haiku/chat/completions", ORG_KEY, CHAT).status_code == 200
    assert (
        post(
            stack, "/bedrock/haiku/chat/completions", ORG_KEY, {**CHAT, "stream": True}
        ).status_code
        == 200
    )
    assert (
        httpx.get(
            f"{stack.base_url}/v1/models", headers={"authorization": f"Bearer {token()}"}
        ).status_code
        == 200
    )
    assert post(stack, "/v1/chat/completions", token(), CHAT).status_code == 200
    # Refusals: each error body is kept for the scan.
    assert post(stack, "/v1/chat/completions", token(expires_in=-3600), CHAT).status_code == 401
    assert post(stack, "/v1/chat/completions", token(secret="x" * 40), CHAT).status_code == 401
    assert post(stack, "/v1/chat/completions", WRONG_KEY, CHAT).status_code == 401
    assert post(stack, "/v1/chat/completions", ORG_KEY + "x" * 9000, CHAT).status_code == 401
    assert (
        post(stack, "/v1/chat/completions", ORG_KEY, {**CHAT, "model": "nope"}).status_code == 404
    )
    assert (
        post(
            stack, "/v1/chat/completions", ORG_KEY, CHAT, **{"x-mock-fault": "status=500"}
        ).status_code
        == 500
    )
    assert (
        post(
            stack, "/v1/chat/completions", ORG_KEY, CHAT, **{"x-mock-fault": "status=401"}
        ).status_code
        == 401
    )
    assert (
        post(
            stack,
            "/anthropic/chat/completions",
            ORG_KEY,
            {**CHAT, "model": "claude-sonnet-4-0"},
            **{"x-mock-fault": "status=401"},
        ).status_code
        == 502
    )

    # The management API: a key created, used, listed, revoked; a wrong token refused.
    created = run_cli(
        stack, "keys", "create", "--id", "scan-bot", "--user", "zed", admin_token=ADMIN_TOKEN
    )
    assert created.returncode == 0, created.stderr
    [runtime_key] = [
        line.removeprefix("key: ")
        for line in created.stdout.splitlines()
        if line.startswith("key: ")
    ]
    SECRETS.add(runtime_key)
    SHOWN.append(created.stderr)  # the secret is shown once, on stdout, and only there
    assert post(stack, "/v1/chat/completions", runtime_key, CHAT).status_code == 200
    for args in (
        ("keys", "list"),
        ("quota", "list", "--kind", "api_key"),
        ("usage", "report", "--api", "--by", "api_key,user", "--format", "json"),
        ("usage", "export", "--api", "--by", "api_key", "--format", "csv"),
    ):
        listed = run_cli(stack, *args, admin_token=ADMIN_TOKEN)
        assert listed.returncode == 0, listed.stderr
        SHOWN.extend((listed.stdout, listed.stderr))
    for args in (("keys", "list"), ("usage", "report", "--api")):
        refused = run_cli(stack, *args, admin_token=WRONG_ADMIN)
        assert refused.returncode != 0
        SHOWN.extend((refused.stdout, refused.stderr))
    revoked = run_cli(stack, "keys", "revoke", "--id", "scan-bot", admin_token=ADMIN_TOKEN)
    assert revoked.returncode == 0, revoked.stderr
    SHOWN.extend((revoked.stdout, revoked.stderr))
    assert post(stack, "/v1/chat/completions", runtime_key, CHAT).status_code == 401

    # A reload that fails on secret-bearing fields, then one that succeeds.
    good = stack.config_path.read_text()
    bad = good.replace("${MOCK_LLM_API_KEY:-mock-provider-key}", f"[{PROVIDER_KEY}]", 1)
    bad = bad.replace("shared_secret: ${SSO_SECRET}", f"shared_secret: {{s: {SSO_SECRET}}}")
    reloads_before = scrape(stack.metrics_url)
    stack.config_path.write_text(bad)
    assert wait_for(
        lambda: scrape(stack.metrics_url) != reloads_before and _reloaded(stack, "failure")
    )
    stack.config_path.write_text(good)
    stack.process("gateway").send_signal(signal.SIGHUP)
    assert wait_for(lambda: _reloaded(stack, "success"))
    assert post(stack, "/v1/chat/completions", ORG_KEY, CHAT).status_code == 200


def _reloaded(stack: LocalStack, result: str) -> bool:
    samples = scrape(stack.metrics_url)
    return any(
        name == "aigw_config_reloads_total" and ("result", result) in labels and value > 0
        for (name, labels), value in samples.items()
    )


def test_no_secret_appears_anywhere_after_every_flow(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    drive_every_flow(stack)
    time.sleep(0.5)  # the last log lines are written after the answers
    assert wait_for(lambda: len(collector.spans) >= 20, 30), "Envoy exported no spans"
    places = readable_places(stack, collector, SHOWN)
    assert places["request log file"]
    assert "team1" in places["traces"]  # spans carry the identity, as ids
    assert GatewayLog(stack.gateway_log).lines(), "the flows wrote no log line"
    assert "invalid" in places["gateway stderr"]  # the failed reload was reported...
    # The control: the secrets were really in use (the provider got its key).
    assert PROVIDER_KEY in httpx.get(f"{stack.mock_url}/_mock/requests").text
    found = [
        (place, secret[:6] + "...")
        for place, text in places.items()
        for secret in SECRETS
        if secret in text
    ]
    assert found == []  # ...without any secret in it, nor anywhere else
    assert len(SECRETS) >= 14
