"""Envoy's access log names the service tier a request was billed at, through the real stack.

A team streams its batch work at OpenAI's flex tier with the official ``openai`` client.
The gateway's log line prices it at that tier; Envoy's own access log line, written from
the dynamic metadata the gateway returns, names the same tier, so an operator who reads
Envoy's log (or the span the same metadata tags) sees what the bill says.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, envoy_access_line, wait_for


def test_envoys_access_log_names_the_tier_of_a_flex_stream(stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Tag these tickets"}],
        stream=True, service_tier="flex",
    ) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        told = {chunk.service_tier for chunk in response.parse()}
    assert told == {"flex"}
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    envoy = wait_for(lambda: envoy_access_line(stack, request_id))
    assert envoy is not None, "no Envoy access log line for the request"
    assert envoy["service_tier"] == line["service_tier"] == "flex"
    assert int(envoy["total_tokens"]) == line["total_tokens"]
    # And the cost the tier priced, as the gateway's line has it.
    assert line["cost_usd"] > 0
    assert float(envoy["cost_usd"]) == pytest.approx(line["cost_usd"])
