"""Who is calling: org API keys and JWTs through the real Envoy, access rules, no secret leaks.

A stack of its own with an identity-rich config; JWKS served by a local HTTP
server that the tests rotate; the official openai client as the caller.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_log,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
)
from tests.integration.jwt_tokens import (
    ISSUER,
    JwksServer,
    SigningKey,
    hmac_with_public_key,
    tampered,
    unsigned_token,
)

PROVIDER_KEY = "mock-provider-key"
KEYS = {
    "team1": "team1-key",
    "team2": "team2-key",
    "file-key": "file-key-secret-1",
    "hashed": "hashed-key-secret-1",
    "dir-key": "directory-key-secret-1",
    "disabled": "disabled-key-secret-1",
    "expired": "expired-key-secret-1",
    "mini-only": "mini-only-key-secret-1",
}
RSA_KEY = SigningKey("rsa-1", "RS256")
EC_KEY = SigningKey("ec-1", "ES256")
# Every secret the tests configure or present; none may show anywhere.
PRESENTED: list[str] = []


def auth_section(workdir: Path, jwks_url: str) -> str:
    (workdir / "file.key").write_text(KEYS["file-key"] + "\n")
    (workdir / "keys").mkdir()
    (workdir / "keys" / "dir-key").write_text(KEYS["dir-key"])
    hashed = hashlib.sha256(KEYS["hashed"].encode()).hexdigest()
    return f"""
auth:
  api_key_directory: {workdir / "keys"}
  api_keys:
    - {{id: team1, key: {KEYS["team1"]}, user_id: alice, group_id: engineering}}
    - {{id: team2, key: {KEYS["team2"]}, user_id: bob, group_id: marketing}}
    - {{id: file-key, key_file: {workdir / "file.key"}, group_id: engineering}}
    - {{id: hashed, key_sha256: {hashed}}}
    - {{id: disabled, key: {KEYS["disabled"]}, enabled: false}}
    - {{id: expired, key: {KEYS["expired"]}, expires_at: "2020-01-01T00:00:00Z"}}
    - {{id: mini-only, key: {KEYS["mini-only"]}, allowed_models: [gpt-4o-mini]}}
  jwt_providers:
    - name: dev
      issuer: {ISSUER}
      audiences: [aigw]
      jwks: {{url: "{jwks_url}", min_refresh_interval_s: 1}}
      algorithms: [RS256, ES256]
      required_claims: [exp, sub]
      claims: {{user_id: [sub], group_id: [group, groups], extra: [org, email]}}
  access_rules:
    - {{name: gpt-4o-for-engineering, models: [gpt-4o], groups: [engineering]}}
"""


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.keys = [RSA_KEY.jwk(), EC_KEY.jwk()]
        yield server


@pytest.fixture(scope="module")
def id_stack(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("identity")
    text = DEFAULT_CONFIG.read_text()
    start = text.index("\nauth:\n")
    end = text.index("\nroutes:\n")
    config = workdir / "gateway.yaml"
    config.write_text(text[:start] + auth_section(workdir, jwks.url) + text[end:])
    with running_stack(workdir, config) as running:
        yield running


def post_chat(
    stack: LocalStack, headers: dict[str, str], model: str = "gpt-4o-mini"
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "who am I?"}]}
    for value in headers.values():
        PRESENTED.append(value.removeprefix("Bearer "))
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **headers},
        timeout=30.0,
    )


def log_line(stack: LocalStack, response: httpx.Response) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(response.headers["x-request-id"])
    return line


ERROR_BODIES: list[str] = []


def assert_unauthorized(response: httpx.Response, message: str) -> None:
    ERROR_BODIES.append(response.text)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["message"].startswith(message), response.text
    assert response.headers["www-authenticate"].startswith('Bearer realm="aigw"')


def test_openai_client_with_an_org_key_gets_the_provider_key_swapped_in(
    id_stack: LocalStack,
) -> None:
    client = OpenAI(base_url=f"{id_stack.base_url}/v1", api_key=KEYS["team1"], max_retries=0)
    PRESENTED.append(KEYS["team1"])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    usage = raw.parse().usage
    assert usage is not None
    upstream = mock_requests(id_stack)[-1]
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert KEYS["team1"] not in orjson.dumps(upstream).decode()
    line = GatewayLog(id_stack.gateway_log).for_request(raw.headers["x-request-id"])[0]
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "team1",
        "alice",
        "engineering",
    )
    assert line["auth_method"] == "api_key"
    samples = scrape(id_stack.metrics_url)
    assert metric(samples, "tokens_consumed_total", api_key_id="team1", group_id="engineering") > 0


@pytest.mark.parametrize(
    ("headers", "key_id"),
    [
        ({"authorization": KEYS["team2"]}, "team2"),  # the bare form the workshop uses
        ({"x-api-key": KEYS["file-key"]}, "file-key"),
        ({"authorization": f"Bearer {KEYS['hashed']}"}, "hashed"),
        ({"authorization": f"Bearer {KEYS['dir-key']}"}, "dir-key"),
    ],
)
def test_every_way_of_presenting_and_storing_a_key_works(
    id_stack: LocalStack, headers: dict[str, str], key_id: str
) -> None:
    response = post_chat(id_stack, headers)
    assert response.status_code == 200, response.text
    assert log_line(id_stack, response)["api_key_id"] == key_id


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
def test_a_jwt_names_the_user_and_group(id_stack: LocalStack, key: SigningKey) -> None:
    token = key.token(sub="carol", group="research", org="acme", email="carol@acme.test")
    response = post_chat(id_stack, {"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    line = log_line(id_stack, response)
    assert (line["user_id"], line["group_id"], line["auth_method"]) == ("carol", "research", "jwt")
    assert line["claims"] == {"org": "acme", "email": "carol@acme.test"}
    assert line["api_key_id"] is None


def test_a_groups_array_counts_every_group_for_access(id_stack: LocalStack) -> None:
    token = RSA_KEY.token(sub="dave", groups=["interns", "engineering"])
    response = post_chat(id_stack, {"authorization": f"Bearer {token}"}, model="gpt-4o")
    assert response.status_code == 200, response.text
    assert log_line(id_stack, response)["group_id"] == "interns"


def test_a_rotated_signing_key_is_picked_up_without_restart(
    id_stack: LocalStack, jwks: JwksServer
) -> None:
    rotated = SigningKey("rsa-2", "RS256")
    jwks.keys = [rotated.jwk(), EC_KEY.jwk()]
    try:
        token = rotated.token(sub="erin", group="engineering")
        # An unknown kid refetches the keys at most once per min_refresh_interval_s
        # (1 s): a token sent within a second of the last fetch waits for the next.
        headers = {"authorization": f"Bearer {token}"}

        def accepted() -> httpx.Response | None:
            answer = post_chat(id_stack, headers)
            return answer if answer.status_code == 200 else None

        response = wait_for(accepted, timeout_s=10.0) or post_chat(id_stack, headers)
        assert response.status_code == 200, response.text
    finally:
        jwks.keys = [RSA_KEY.jwk(), EC_KEY.jwk()]
        # The gateway holds the rotated set until its next refetch (at most one per
        # second): the tests after this one sign with the first key again.
        restored = {"authorization": f"Bearer {RSA_KEY.token(sub='x', group='marketing')}"}
        wait_for(lambda: post_chat(id_stack, restored).status_code == 200 or None, timeout_s=10.0)


def _rejections() -> list[tuple[str, dict[str, str], str]]:
    expired = RSA_KEY.token(sub="x", iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    valid = RSA_KEY.token(sub="x", group="marketing")
    stranger = SigningKey("stranger", "RS256")
    return [
        ("no credentials", {}, "no credentials found"),
        ("garbage token", {"authorization": "Bearer eyJhbGciOi.garbage.x"}, "invalid token"),
        ("alg none", {"authorization": f"Bearer {unsigned_token(sub='x')}"}, "invalid token"),
        (
            "HS256 with the RSA public key",
            {"authorization": f"Bearer {hmac_with_public_key(RSA_KEY, sub='x')}"},
            "invalid token",
        ),
        ("expired", {"authorization": f"Bearer {expired}"}, "token expired"),
        (
            "not yet valid",
            {"authorization": f"Bearer {RSA_KEY.token(sub='x', nbf=int(time.time()) + 3600)}"},
            "token not yet valid",
        ),
        (
            "wrong issuer",
            {"authorization": f"Bearer {RSA_KEY.token(sub='x', iss='https://evil.test')}"},
            "invalid token",
        ),
        (
            "wrong audience",
            {"authorization": f"Bearer {RSA_KEY.token(sub='x', aud='someone-else')}"},
            "invalid token",
        ),
        ("unknown kid", {"authorization": f"Bearer {stranger.token(sub='x')}"}, "invalid token"),
        (
            "tampered payload",
            {"authorization": f"Bearer {tampered(valid, group='engineering')}"},
            "invalid token",
        ),
        ("oversized", {"authorization": "Bearer eyJ" + "a" * 9000 + ".b.c"}, "invalid token"),
        ("unknown key", {"authorization": "Bearer not-a-real-key-123"}, "invalid API key"),
        ("disabled key", {"x-api-key": KEYS["disabled"]}, "API key 'disabled' is disabled"),
        ("expired key", {"x-api-key": KEYS["expired"]}, "API key 'expired' has expired"),
    ]


@pytest.mark.parametrize(
    ("case", "headers", "message"), _rejections(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_bad_credentials_are_401_and_never_reach_the_provider(
    id_stack: LocalStack, case: str, headers: dict[str, str], message: str
) -> None:
    before = len(mock_requests(id_stack))
    response = post_chat(id_stack, headers)
    assert_unauthorized(response, message)
    assert len(mock_requests(id_stack)) == before
    line = log_line(id_stack, response)
    assert line["http_status_code"] == 401 and line["outcome"] == "rejected"
    # A key the gateway recognised and refused (disabled, expired) is logged under its id,
    # so an operator finds a team's failing requests; any other refusal names nobody.
    recognised = {"disabled key": "disabled", "expired key": "expired"}.get(case)
    assert line["api_key_id"] == recognised
    assert line["auth_method"] == ("api_key" if recognised else "none")


def test_access_rules_and_key_restrictions_are_403(id_stack: LocalStack) -> None:
    allowed = post_chat(id_stack, {"authorization": KEYS["team1"]}, model="gpt-4o")
    assert allowed.status_code == 200
    denied = post_chat(id_stack, {"authorization": KEYS["team2"]}, model="gpt-4o")
    ERROR_BODIES.append(denied.text)
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == (
        "group 'marketing' may not use model 'gpt-4o' (access rule 'gpt-4o-for-engineering')"
    )
    restricted = post_chat(id_stack, {"authorization": KEYS["mini-only"]}, model="gpt-4o-mini")
    assert restricted.status_code == 200
    refused = post_chat(id_stack, {"authorization": KEYS["mini-only"]}, model="gpt-4.1-nano")
    assert refused.status_code == 403


def test_the_model_list_shows_only_what_the_caller_may_use(id_stack: LocalStack) -> None:
    marketing = OpenAI(base_url=f"{id_stack.base_url}/v1", api_key=KEYS["team2"], max_retries=0)
    engineering = OpenAI(base_url=f"{id_stack.base_url}/v1", api_key=KEYS["team1"], max_retries=0)
    assert "gpt-4o" not in {m.id for m in marketing.models.list()}
    assert "gpt-4o" in {m.id for m in engineering.models.list()}
    with pytest.raises(openai.AuthenticationError):
        OpenAI(
            base_url=f"{id_stack.base_url}/v1", api_key="nope-nope-nope", max_retries=0
        ).models.list()


def test_a_model_is_retrieved_by_those_who_may_use_it(id_stack: LocalStack) -> None:
    """models.retrieve, as tools check a model before using it, through Envoy."""
    for base in ("/v1", "/openai/v1"):
        engineering = OpenAI(
            base_url=f"{id_stack.base_url}{base}", api_key=KEYS["team1"], max_retries=0
        )
        marketing = OpenAI(
            base_url=f"{id_stack.base_url}{base}", api_key=KEYS["team2"], max_retries=0
        )
        assert engineering.models.retrieve("gpt-4o").id == "gpt-4o"
        with pytest.raises(openai.NotFoundError) as kept:
            marketing.models.retrieve("gpt-4o")
        assert kept.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            engineering.models.retrieve("gpt-9")


def test_an_anthropic_client_lists_and_retrieves_what_it_may_use(id_stack: LocalStack) -> None:
    """The anthropic SDK's models.list() (paged by its own iterator) and retrieve."""
    engineering = anthropic.Anthropic(
        base_url=id_stack.base_url, api_key=KEYS["team1"], max_retries=0
    )
    marketing = anthropic.Anthropic(
        base_url=id_stack.base_url, api_key=KEYS["team2"], max_retries=0
    )
    listed = [model.id for model in engineering.models.list(limit=2)]
    openai_listed = OpenAI(
        base_url=f"{id_stack.base_url}/v1", api_key=KEYS["team1"], max_retries=0
    ).models.list()
    assert listed == [model.id for model in openai_listed]
    assert "gpt-4o" not in [model.id for model in marketing.models.list()]
    assert engineering.models.retrieve("gpt-4o").display_name == "gpt-4o"
    with pytest.raises(anthropic.NotFoundError):
        marketing.models.retrieve("gpt-4o")


def test_usage_report_groups_by_identity(id_stack: LocalStack) -> None:
    def report() -> list[dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "extproc", "usage", "report", "--by", "api_key,user,group",
             "--format", "json", "--config", str(id_stack.config_path)],
            env=id_stack.env, capture_output=True, check=True,
        )  # fmt: skip
        rows: list[dict[str, Any]] = orjson.loads(result.stdout)["rows"]
        return rows

    deadline = time.monotonic() + 10
    while True:
        rows = {(r["api_key_id"], r["user_id"], r["group_id"]): r for r in report()}
        if ("team1", "alice", "engineering") in rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows[("team1", "alice", "engineering")]["requests"] >= 1
    assert any(key[1] == "carol" and key[2] == "research" for key in rows)


def test_no_secret_appears_in_logs_metrics_or_errors(id_stack: LocalStack) -> None:
    """Runs last in this module: everything above has been logged by now."""
    secrets = {*KEYS.values(), PROVIDER_KEY, *PRESENTED}
    secrets = {s for s in secrets if len(s) >= 8}
    time.sleep(0.5)
    places = {
        "gateway log": id_stack.gateway_log.read_text(errors="replace"),
        "gateway stderr": (id_stack.workdir / "gateway.err").read_text(errors="replace"),
        "envoy access log": envoy_access_log(id_stack),
        "metrics": httpx.get(id_stack.metrics_url).text,
        "error bodies": "\n".join(ERROR_BODIES),
    }
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into the {place}"
