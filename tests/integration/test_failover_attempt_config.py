"""A failover attempt is served under the config its request started with, and what the
gateway tells its per-attempt filter reaches no provider and cannot be forged by a client.

The stack is test_failover's: primaries that refuse connections or answer 503, falling
back to the stack's mock providers; the official OpenAI client is the client.
"""

from __future__ import annotations

import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.test_failover import MESSAGES, REPLY, failover_stack, flaky_requests

__all__ = ["failover_stack"]


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)


def gateway_fields(request: dict[str, object]) -> list[str]:
    """What of the gateway's own bookkeeping a provider was sent: headers and body keys."""
    sent = orjson.dumps(request).decode()
    return [word for word in ("x-aigw", "x_aigw", "aigw") if word in sent]


def test_no_provider_is_sent_the_gateways_failover_bookkeeping(
    failover_stack: LocalStack,
) -> None:
    """primary-translated fails (503) on an Anthropic provider, then its OpenAI fallback
    answers: neither attempt carries the chain or primary the gateway resolved."""
    reply = client(failover_stack).chat.completions.create(
        model="primary-translated",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == REPLY
    fallback = mock_requests(failover_stack)[-1]
    first = flaky_requests()[-1]
    assert first["path"] == "/v1/messages"  # the failed first attempt
    assert gateway_fields(first) == []
    assert fallback["json"] == {"model": "gpt-4.1-nano", "messages": MESSAGES}
    assert gateway_fields(fallback) == []


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_client_cannot_pick_its_fallback_by_sending_the_gateways_own_fields(
    failover_stack: LocalStack, where: str
) -> None:
    """A client of primary-dead (falling back to claude-3-5-haiku-latest on mock-anthropic)
    claims the chain of another model, naming another upstream model on that provider:
    the gateway's own chain is what serves it."""
    forged = "mock-anthropic claude-forged claude-forged-upstream"
    extra: dict[str, object] = {}
    if where == "header":
        extra["extra_headers"] = {
            "x-aigw-failover-model": "primary-slow",
            "x-aigw-failover-chain": forged,
        }
    else:
        extra["extra_body"] = {"x_aigw_failover_chain": forged}
    raw = client(failover_stack).chat.completions.with_raw_response.create(
        model="primary-dead",
        messages=MESSAGES,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content == REPLY
    sent = mock_requests(failover_stack)[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["json"]["model"] == "claude-3-5-haiku-latest"
    if where == "body":
        # Replaced by the gateway's chain, which no provider is sent.
        assert "forged" not in orjson.dumps(sent).decode()
    [line] = GatewayLog(failover_stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert (line["provider"], line["model"]) == ("mock-anthropic", "primary-dead")
