"""OpenAI's rate-limit and quota errors in a 200, from an OpenAI-compatible proxy in front of
a provider whose answer the gateway translates (Anthropic, Bedrock).

OpenAI answers a rate limit with type ``requests`` or ``tokens`` and code
``rate_limit_exceeded``, and an account out of credit with type and code
``insufficient_quota``, both with a 429. Such an error in a 200 was read as an unknown
type, a server error: the client got a 502 ``upstream_error`` with code ``requests``,
which its SDK does not back off from, and a failover attempt handed Envoy a 502. Now
it is the 429 it stands for, with and without failover; the log line keeps the
provider's own type and code.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.runtime import Services
from tests.unit.sse_play import only_line
from tests.unit.test_failover_cut_attempts import (
    attempt,
    failover_config,  # noqa: F401 (fixture)
    gateway,
    request_sent,
)
from tests.unit.test_failover_error_bodies import handed_status
from tests.unit.test_translated_answer_errors import translated

JSON = {"content-type": "application/json"}
LIMITED = "Rate limit reached for requests per min. Limit: 3 / min."
NO_CREDIT = "You exceeded your current quota, please check your plan and billing details."


def openai_error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# (the proxy's 200 body, the code the client reads)
ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "requests": (openai_error(LIMITED, "requests", "rate_limit_exceeded"), "rate_limit_exceeded"),
    "tokens": (openai_error(LIMITED, "tokens", "rate_limit_exceeded"), "rate_limit_exceeded"),
    # A proxy that names the code alone, under a type of its own.
    "code-only": (openai_error(LIMITED, "error", "rate_limit_exceeded"), "rate_limit_exceeded"),
    "insufficient-quota": (
        openai_error(NO_CREDIT, "insufficient_quota", "insufficient_quota"),
        "insufficient_quota",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
async def test_an_openai_client_on_claude_reads_the_proxys_rate_limit_as_a_429(case: str) -> None:
    body, code = ERRORS[case]
    status, shown, services = await translated(orjson.dumps(body))

    # Before: 502, {"type": "upstream_error", "code": "requests"}.
    assert status == 429
    assert shown["error"]["type"] == "rate_limit_error"
    assert shown["error"]["code"] == code
    assert shown["error"]["message"] == body["error"]["message"]
    line = only_line(services)
    assert line["http_status_code"] == 429
    assert (line["error_type"], line["error_code"]) == (
        body["error"]["type"],
        body["error"]["code"],
    )
    assert line["cost_usd"] == 0.0


@pytest.mark.parametrize("case", ["requests", "insufficient-quota"])
async def test_a_translated_failover_attempt_hands_envoy_the_429(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
    case: str,
) -> None:
    """Claude's member, behind a proxy, answers OpenAI's rate limit in a 200: the attempt
    hands Envoy a 429 (the next member is tried on it; the last member's is the client's),
    and the body Envoy passes on is the client's rate-limit error."""
    processor = gateway(failover_config, services)
    body, code = ERRORS[case]
    sent = await request_sent(processor)
    _, answers = await attempt(processor, "mock-anthropic", sent, 200, orjson.dumps(body), JSON)

    assert handed_status(answers) == "429"  # before: "502"
    [answer] = [a for a in answers if a.WhichOneof("response") == "response_body"]
    replaced = orjson.loads(answer.response_body.response.body_mutation.body)
    assert (replaced["error"]["type"], replaced["error"]["code"]) == ("rate_limit_error", code)


async def test_an_untranslated_failover_attempt_hands_envoy_the_429(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
) -> None:
    """An OpenAI-compatible member's rate limit in a 200 moves the chain on as its 429
    would, not as a server error."""
    processor = gateway(failover_config, services)
    sent = await request_sent(processor)
    body = orjson.dumps(ERRORS["requests"][0])
    _, answers = await attempt(processor, "cut", sent, 200, body, JSON)

    assert handed_status(answers) == "429"
