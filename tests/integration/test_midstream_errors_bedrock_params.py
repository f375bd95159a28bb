"""An OpenAI client's temperature above 1 reaches a Bedrock model, as it does a Claude one.

OpenAI takes 0..2; Anthropic's Messages API and Bedrock's Converse take 0..1. The gateway
clamps for both, so the same request works whichever provider serves the model (the mock
refuses an out-of-range ``inferenceConfig.temperature`` as Bedrock does).
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests


@pytest.mark.parametrize("prefix", ["/bedrock/haiku", "/anthropic"])
def test_a_temperature_above_one_is_clamped_for_the_provider(
    stack: LocalStack, prefix: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{prefix}", api_key="team1-key", max_retries=0)
    reply = client.chat.completions.create(
        model="claude-3-5-haiku-latest",  # the /bedrock route takes the model from its path
        messages=[{"role": "user", "content": "Be creative"}],
        temperature=1.7,
    )
    assert reply.choices[0].message.content == "Mock reply to: Be creative"
    sent = mock_requests(stack)[-1]["json"]
    temperature = (
        sent["inferenceConfig"]["temperature"] if "inferenceConfig" in sent else sent["temperature"]
    )
    assert temperature == 1.0
