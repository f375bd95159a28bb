"""A Bedrock fallback's stream cut short is priced at the service tier the client asked for.

Bedrock serves a request it accepts at the tier the request asked (``flex``, ``priority``,
``default``) and names that tier only in the stream's last event, ``metadata``. Without
failover, a stream cut before it is priced at the tier asked; behind a failover route the
downstream filter reads the attempt's OpenAI chunks, which name the tier only once
Bedrock has, so the same stream was priced at the model's own price: a flex stream
billed double. The primary's provider refuses connections, the stack's mock Bedrock
serves the fallback and drops the stream after a few chunks; the official OpenAI SDK is
the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import REFUSED_PORT, GatewayLog, running_stack

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
# USD per million input and output tokens of the fallback: its own, and its flex tier's.
STANDARD = (Decimal(8), Decimal(40))
FLEX = (Decimal(4), Decimal(20))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("failover-bedrock-tier")
    provider = (
        f"  - {{name: dead, base_url: 'http://127.0.0.1:{REFUSED_PORT}/v1', api_key: dead-123}}\n"
    )
    chain = f"  - {{name: primary, provider: dead, fallbacks: ['{HAIKU}']}}\n"
    priced = (
        f"    {HAIKU}: {{input_per_million: {STANDARD[0]}, output_per_million: {STANDARD[1]},"
        f" service_tiers: {{flex: {{input_per_million: {FLEX[0]},"
        f" output_per_million: {FLEX[1]}}}}}}}\n"
    )
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:\n" + provider, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + chain, 1)
    start = text.index(f"    {HAIKU}:")
    text = text[:start] + priced + text[text.index("\n", start) + 1 :]
    config = workdir / "gateway.yaml"
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def test_a_bedrock_fallbacks_stream_cut_short_is_priced_at_the_flex_tier(
    stack: LocalStack,
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    stream = client.chat.completions.with_streaming_response.create(
        model="primary",
        messages=[{"role": "user", "content": "fail over please and keep talking"}],
        stream=True,
        service_tier="flex",
        max_tokens=100,
        # Spaced chunks: the first ones reach the client before the provider breaks.
        extra_headers={"x-mock-fault": "reset_after=3;interval=0.2"},
    )
    received: list[str] = []
    with stream as response, pytest.raises(Exception):  # noqa: B017 - its stream breaks
        request_id = response.headers["x-request-id"]
        for chunk in response.parse():
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert received  # the fallback had started answering: too late to fail over
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["provider"], line["upstream_model"]) == ("mock-bedrock", HAIKU)
    assert (line["usage_estimated"], line["service_tier"]) == (True, "flex")
    prompt, completion = line["prompt_tokens"], line["completion_tokens"]
    flex = (prompt * FLEX[0] + completion * FLEX[1]) / 10**6
    assert Decimal(str(line["cost_usd"])) == flex
