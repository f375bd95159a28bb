"""A fresh review of identification and secrets: who a request is, and what of it goes where.

The credentials an AWS default chain fetches from STS at DEBUG, a route's own key header
used as a quota subject, the headers that pick the provider account a gateway key bills,
and the JWT corners an attacker reaches for first (a list `aud`, a critical header
extension, `nbf` within the leeway).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from extproc.config import ConfigError, parse_config
from extproc.config.model import AwsConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.providers.aws_signer import AwsSigner
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_headers, run_stream
from tests.sts_stand_in import answering, sts_answer
from tests.unit import test_jwt_verifier as jwt_tests
from tests.unit.test_jwt_verifier import (
    AUDIENCE,
    RSA_KEY,
    Factory,
    claims,
    inline_provider,
    mint,
    refusal,
)

clock = jwt_tests.clock
make_verifier = jwt_tests.make_verifier

# --- the AWS default chain at DEBUG ---------------------------------------------------

# What a Kubernetes service account (IRSA) projects into the pod: a JWT of the cluster's.
WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.Wq3zIRSAsig7c1d"
STS_SECRET_KEY = "Rk8vSTSsecretAccessKey-0c9d8e7fTb5w"
STS_SESSION_TOKEN = "Lm2xSTSsessionToken-6a5b4c3dPq9z"
# AWS STS as botocore's web identity provider calls it: one answer, always good.
FakeSts = answering(sts_answer("ASIAREVIEWSTS0000001", STS_SECRET_KEY, STS_SESSION_TOKEN))


@pytest.fixture
def sts_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sts_endpoint: str) -> None:
    """The environment of a pod whose service account may assume the gateway's role."""
    token = tmp_path / "token"
    token.write_text(WEB_IDENTITY_TOKEN)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gateway")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("service_account")
async def test_credentials_from_sts_never_reach_the_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator chasing a problem with --log-level DEBUG on EKS (IRSA) must not write
    the service account's token, nor the role's keys STS answers with, to stderr."""
    with caplog.at_level(logging.DEBUG):
        signer = AwsSigner(AwsConfig(region="us-east-1"), "http://bedrock.test")
        await signer.start()
        signed = signer.sign("POST", "/model/m/converse", b"{}", {})
    # The control: the chain did go to STS, and its credentials sign.
    assert signer.method == "assume-role-with-web-identity"
    assert signed["x-amz-security-token"] == STS_SESSION_TOKEN
    for secret in (WEB_IDENTITY_TOKEN, STS_SECRET_KEY, STS_SESSION_TOKEN):
        assert secret not in caplog.text
        assert secret[-8:] not in caplog.text


# --- quota subjects -------------------------------------------------------------------

PARTNER_ROUTE = """
  - name: partner
    path_prefix: /partner
    auth: {methods: [api_key], api_key_header: X-Partner-Key}
"""
HEADER_RULE = """
quotas:
  rules:
    - {name: per-partner, subject: 'header:x-partner-key', requests_per_minute: 5}
"""


def test_a_routes_own_key_header_is_refused_as_a_quota_subject() -> None:
    """Counters keyed by the partner's key header would hold every partner's secret in the
    store, print it in `extproc quota list` and on /metrics (quota gauges' `subject`), as
    `header:x-api-key` would, which the config refuses."""
    text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\nroutes:" + PARTNER_ROUTE, 1)
    with pytest.raises(ConfigError) as refused:
        parse_config(text + HEADER_RULE, "gateway.yaml", {})
    assert any(
        "quotas.rules[0].subject" in problem and "credentials" in problem
        for problem in refused.value.problems
    ), refused.value.problems
    # The control: the route alone, and a header subject that is no credential, load.
    parse_config(text, "gateway.yaml", {})
    parse_config(text + HEADER_RULE.replace("x-partner-key", "x-user-type"), "gateway.yaml", {})


@pytest.mark.parametrize("header", ["x-aigw-user-id", "X-AIGW-Group-Id", "x-aigw-caller"])
def test_a_header_the_gateway_sets_is_refused_as_a_quota_subject(header: str) -> None:
    """The gateway writes x-aigw-* (who it authenticated) for agents; a rule reads the
    request as the client sent it, so `header:x-aigw-user-id` counted whatever the
    client wrote there, and a new value per request escaped the limit."""
    rule = HEADER_RULE.replace("x-partner-key", header)
    with pytest.raises(ConfigError) as refused:
        parse_config(DEFAULT_CONFIG.read_text() + rule, "gateway.yaml", {})
    [problem] = [p for p in refused.value.problems if "quotas.rules[0].subject" in p]
    assert "the gateway sets" in problem
    assert "subject: api_key, user or group" in problem


# --- which provider account the gateway's key bills ------------------------------------


async def test_headers_that_pick_the_provider_account_never_leave_the_client() -> None:
    """The openai SDK sends OpenAI-Organization and OpenAI-Project from the client's
    OPENAI_ORG_ID and OPENAI_PROJECT_ID; Google clients send x-goog-user-project from their
    own credentials. Beside the gateway's key they pick another account to bill, or make
    the provider refuse the gateway's key (`mismatched_organization`)."""
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})
    processor = processor_for(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    client_headers = {
        "authorization": "Bearer team1-key",
        "openai-organization": "org-client-own",
        "openai-project": "proj_client_own",
        "x-goog-user-project": "client-own-project",
    }
    [answer] = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=client_headers)]
    )
    removed = set(answer.request_headers.response.header_mutation.remove_headers)
    assert set(client_headers) <= removed


# --- JWT corners ------------------------------------------------------------------------


async def test_an_aud_list_is_accepted_when_it_names_this_gateway(make_verifier: Factory) -> None:
    verifier = await make_verifier(inline_provider(audiences=[AUDIENCE]))
    assert (await verifier.verify(mint(aud=["other-app", AUDIENCE]))).user_id == "alice"
    assert await refusal(verifier, mint(aud=["other-app", "third-app"])) == (
        "invalid token: wrong audience"
    )


async def test_a_critical_header_extension_nobody_understands_is_refused(
    make_verifier: Factory,
) -> None:
    """RFC 7515 §4.1.11: a JWS whose `crit` names an extension the verifier does not
    implement is invalid, however good its signature."""
    verifier = await make_verifier(inline_provider())
    token = jwt.encode(
        claims(aud=None),
        RSA_KEY,
        algorithm="RS256",
        headers={"kid": "rsa-1", "crit": ["exp-binding"], "exp-binding": "x"},
    )
    assert (await refusal(verifier, token)).startswith("invalid token")


async def test_nbf_within_the_leeway_is_accepted_and_beyond_it_refused(
    make_verifier: Factory,
) -> None:
    verifier = await make_verifier(inline_provider(leeway_s=30))
    now = int(time.time())
    assert (await verifier.verify(mint(aud=None, nbf=now + 10))).user_id == "alice"
    assert await refusal(verifier, mint(aud=None, nbf=now + 120)) == "token not yet valid"
