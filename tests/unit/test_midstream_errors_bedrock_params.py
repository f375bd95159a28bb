"""OpenAI's temperature range (0..2) on Bedrock, whose Converse API takes 0..1.

The OpenAI->Anthropic translator clamps; the OpenAI->Bedrock one must do the same, or a
client's ``temperature: 1.5`` (valid for OpenAI) is refused by Bedrock with a 400
ValidationException. Checked against the mock's Converse validation, which follows AWS's
documented ranges for ``inferenceConfig``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.errors import BadRequestError
from extproc.mock_llm.bedrock_api import parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.translators import openai_anthropic, openai_bedrock

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [{"role": "user", "content": "Hi"}]
# OpenAI's temperature -> what Anthropic and Bedrock are sent.
CLAMPED = [(0, 0), (0.7, 0.7), (1, 1), (1.3, 1.0), (2, 1.0), (-0.5, 0.0)]


def converse(**fields: Any) -> dict[str, Any]:
    return openai_bedrock.translate_request({"messages": MESSAGES, **fields})


@pytest.mark.parametrize(("temperature", "sent"), CLAMPED)
def test_bedrock_gets_temperature_clamped_like_anthropic(temperature: float, sent: float) -> None:
    assert converse(temperature=temperature)["inferenceConfig"]["temperature"] == sent
    anthropic = openai_anthropic.translate_request(
        {"messages": MESSAGES, "temperature": temperature}, "claude", stream=False
    )
    assert anthropic["temperature"] == sent


@pytest.mark.parametrize("temperature", [1.5, 2])
def test_a_temperature_valid_for_openai_is_accepted_by_converse(temperature: float) -> None:
    body = converse(temperature=temperature, top_p=0.9)
    # The mock validates inferenceConfig as Bedrock documents it (temperature and topP 0..1).
    parsed = parse_converse_request(
        "anthropic.claude-3-haiku-20240307-v1:0", Body.parse(orjson.dumps(body))
    )
    assert parsed.messages
    assert body["inferenceConfig"]["topP"] == 0.9


def test_a_temperature_that_is_not_a_number_is_still_a_400_naming_it() -> None:
    with pytest.raises(BadRequestError) as refused:
        converse(temperature="hot")
    assert refused.value.param == "temperature"
