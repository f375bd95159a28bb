"""A client's query string: the secrets and account choices that never reach a provider.

The gateway reads no credential from the query and passes the client's query on to
OpenAI-compatible and Anthropic providers as it came. A credential left there (Google's
`$key`, its older `oauth_token`, API Management's `subscription-key`, a presigned SigV4
URL's parts) would have gone to the provider, and Google's `userProject` would have
picked the project billed, as the `x-goog-user-project` header the gateway removes.
Each is refused before any provider, naming the parameter and never its value.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.headers import CLUSTER
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

GATEWAY = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})
KEY = {"authorization": "Bearer team1-key"}
SECRET = "Qs-client-secret-9f4d"
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
MESSAGES = orjson.dumps(
    {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}],
    }
)


async def send(path: str, body: bytes) -> tuple[list[Any], MemoryLog]:
    log = MemoryLog()
    runtime = Runtime(GATEWAY, Services(GatewayMetrics(), log))
    messages = [request_headers(path, headers=KEY), request_body(body)]
    return await run_stream(Processor(lambda: runtime, default_stages()), messages), log


def sent_to_a_provider(answers: list[Any]) -> bool:
    for answer in answers:
        phase = getattr(answer, answer.WhichOneof("response"))
        if hasattr(phase, "response"):
            for header in phase.response.header_mutation.set_headers:
                if header.header.key == CLUSTER:
                    return True
    return False


@pytest.mark.parametrize(
    ("path", "parameter", "code"),
    [
        # Google's system parameters, under their `$` spelling too.
        ("/v1/chat/completions?%24key=", "$key", "credential_in_query"),
        ("/v1/chat/completions?$KEY=", "$KEY", "credential_in_query"),
        ("/v1/chat/completions?oauth_token=", "oauth_token", "credential_in_query"),
        ("/v1/chat/completions?%24access_token=", "$access_token", "credential_in_query"),
        # Azure API Management's subscription key; a presigned SigV4 URL's parts.
        ("/openai?subscription-key=", "subscription-key", "credential_in_query"),
        (
            "/v1/chat/completions?X-Amz-Security-Token=",
            "X-Amz-Security-Token",
            "credential_in_query",
        ),
        ("/v1/chat/completions?a=1&X-Amz-Signature=", "X-Amz-Signature", "credential_in_query"),
        ("/v1/messages?beta=true&X-Amz-Credential=", "X-Amz-Credential", None),
        # The project Google bills, the query's twin of x-goog-user-project.
        ("/v1/chat/completions?userProject=", "userProject", "account_in_query"),
        ("/v1/messages?%24userProject=", "$userProject", None),
        # `;` as the separator, as servers that take it read it; a name percent-encoded.
        ("/v1/chat/completions?a=1;key=", "key", "credential_in_query"),
        ("/v1/messages?beta=true;api-key=", "api-key", None),
        ("/v1/chat/completions?%6Bey=", "key", "credential_in_query"),
    ],
)
async def test_a_query_secret_or_billed_account_is_refused_before_any_provider(
    path: str, parameter: str, code: str | None
) -> None:
    body = MESSAGES if path.startswith("/v1/messages") else CHAT
    answers, log = await send(path + SECRET, body)
    assert not sent_to_a_provider(answers)
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert f"'{parameter}'" in error["message"] and "query string" in error["message"]
    if code is not None:  # Anthropic's error shape has no code
        assert error["code"] == code
    assert SECRET.encode() not in refusal.body
    [line] = log.lines()
    assert SECRET not in orjson.dumps(line).decode()
    assert line["path"] == path.partition("?")[0]


@pytest.mark.parametrize(
    "query",
    [
        "api-version=2024-10-21",  # Azure OpenAI's
        "beta=true",  # the Anthropic SDK's beta calls
        "keys=1&token_count=2&monkey=3",  # names that only contain a credential's
        "quotaUser=alice",  # Google's per-user quota label, no account of its own
    ],
)
async def test_other_query_parameters_go_on_to_the_provider(query: str) -> None:
    answers, _ = await send(f"/v1/chat/completions?{query}", CHAT)
    assert sent_to_a_provider(answers)


@pytest.mark.parametrize(
    "query",
    [
        "team1-key",  # bare, no name that says it is a key
        "a=1&team1-key",
        "note=team1-key",
        "k=Bearer%20team1%2Dkey",  # percent-encoded
        "q=Bearer+team1-key",
    ],
)
async def test_the_requests_own_key_anywhere_in_the_query_is_refused(query: str) -> None:
    answers, log = await send(f"/v1/chat/completions?{query}", CHAT)
    assert not sent_to_a_provider(answers)
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert error["code"] == "credential_in_query"
    assert b"team1-key" not in refusal.body
    [line] = log.lines()
    assert "team1-key" not in orjson.dumps(line).decode()
