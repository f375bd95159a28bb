"""A failover attempt whose provider answered 200 with a body the gateway could not read is
an error, not an answer: Envoy retries it on the next model, and it is not charged as an
attempt cut after its 200.

Envoy names an attempt as started as soon as its provider's 200 arrives (the bootstrap's
Lua filter); the per-attempt filter, which turns the unreadable answer into a 502, takes
that name back with its answer to the body. The stand-in provider speaks Anthropic's API
and answers 200 with a body that is no message; the fallback is the stack's mock OpenAI
provider. The official OpenAI SDK is the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    JsonStandIn,
    mock_requests,
    running_stack,
    serving,
)

MESSAGES = [{"role": "user", "content": "fail over please"}]
REPLY = "Mock reply to: fail over please"
KEY = "unreadable-client-secret"


class Unreadable(JsonStandIn):
    """A provider whose answer is a 200 the gateway cannot read as a message."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.json_body()
        self.answer_json({"not": "a message"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("failover-attempt-turned-error")
    with serving(Unreadable) as port:
        provider = (
            f'  - {{name: punreadable, type: anthropic, base_url: "http://127.0.0.1:{port}/v1",'
            " api_key: punreadable-provider-key}\n"
        )
        model = "  - {name: munreadable, provider: punreadable, fallbacks: [gpt-4.1-nano]}\n"
        price = "    munreadable: {input_per_million: 50, output_per_million: 100}\n"
        text = DEFAULT_CONFIG.read_text()
        text = text.replace("\nproviders:\n", "\nproviders:\n" + provider, 1)
        text = text.replace("\nmodels:\n", "\nmodels:\n" + model, 1)
        text = text.replace(
            "  api_keys:\n", f"  api_keys:\n    - {{id: unreadable, key: {KEY}}}\n", 1
        )
        head, pricing, table = text.partition("\npricing:\n")
        text = head + pricing + table.replace("  models:\n", "  models:\n" + price, 1)
        config = workdir / "gateway.yaml"
        config.write_text(text)
        with running_stack(workdir, config) as running:
            yield running


def test_an_answer_the_attempt_turned_into_an_error_is_retried_and_not_charged(
    stack: LocalStack,
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=30)
    before = len(mock_requests(stack))
    raw = client.chat.completions.with_raw_response.create(
        model="munreadable",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=50,
    )
    usage = raw.parse().usage
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert len(mock_requests(stack)) == before + 1
    assert "x-aigw-started" not in raw.headers
    [line] = GatewayLog(stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert usage is not None
    found: dict[str, Any] = {
        "provider": line["provider"],
        "cut_attempts": line["cut_attempts"],
        "total_tokens": line["total_tokens"],
        "usage_estimated": line["usage_estimated"],
    }
    assert found == {
        "provider": "mock",
        "cut_attempts": None,
        "total_tokens": usage.total_tokens,
        "usage_estimated": False,
    }
