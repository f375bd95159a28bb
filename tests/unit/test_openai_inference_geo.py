"""An OpenAI client can ask Claude for US-only inference, and is billed for where it ran.

Anthropic's Messages API takes ``inference_geo`` (``us``: US-only inference, 1.1x the
price); OpenAI's chat API has no such field, and the gateway's translation to Anthropic
dropped every field it did not know, so an OpenAI client could not ask for it: its
request ran wherever Anthropic chose. The gateway now takes ``inference_geo`` as its own
extension of a chat body (``extra_body`` in the official client) and passes it on to
Anthropic's API; Claude on Bedrock and Vertex AI, which take none, refuse a geography
other than ``global`` with a 400 naming the field rather than run it elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import parse_config
from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import processor_for, request_body, request_headers, run_stream
from extproc.translators.openai_anthropic import translate_request
from extproc.translators.openai_bedrock import translate_request as bedrock_request

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "Summarise the contract for the US legal team"}]
SONNET, BEDROCK_HAIKU = "claude-sonnet-4-0", "haiku"
HAIKU_ID = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture
def gateway(services: Services) -> Processor:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["pricing"]["inference_geos"] = {"us": "1.1"}
    return processor_for(parse_config(yaml.safe_dump(raw), "gateway.yaml", {}), services)


async def ask(gateway: Processor, model: str, **fields: Any) -> ext.ProcessingResponse:
    body = orjson.dumps({"model": model, "messages": PROMPT, **fields})
    answers = await run_stream(
        gateway,
        [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body)],
    )
    return answers[-1]


def sent(answer: ext.ProcessingResponse) -> dict[str, Any]:
    body = answer.request_body.response.body_mutation.body
    # What reaches Anthropic must pass its checks (the mock's).
    parse_messages_request(Body.parse(body))
    found: dict[str, Any] = orjson.loads(body)
    return found


def refusal(answer: ext.ProcessingResponse) -> dict[str, Any]:
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 400
    error: dict[str, Any] = orjson.loads(answer.immediate_response.body)["error"]
    return error


@pytest.mark.parametrize("geo", ["us", "global"])
async def test_the_geography_asked_goes_to_anthropic(gateway: Processor, geo: str) -> None:
    assert sent(await ask(gateway, SONNET, inference_geo=geo))["inference_geo"] == geo


async def test_a_request_that_asks_none_sends_none(gateway: Processor) -> None:
    assert "inference_geo" not in sent(await ask(gateway, SONNET))


@pytest.mark.parametrize("geo", ["US", "", 1, ["us"], "us; drop"])
async def test_a_value_that_is_no_geography_is_a_400_naming_it(
    gateway: Processor, geo: Any
) -> None:
    error = refusal(await ask(gateway, SONNET, inference_geo=geo))
    assert (error["param"], error["type"]) == ("inference_geo", "invalid_request_error")


async def test_claude_on_bedrock_refuses_a_geography_it_cannot_keep(gateway: Processor) -> None:
    error = refusal(await ask(gateway, BEDROCK_HAIKU, inference_geo="us"))
    assert error["param"] == "inference_geo" and "Bedrock" in error["message"]
    # The default geography restricts nothing: translated as before.
    body = {"model": BEDROCK_HAIKU, "messages": PROMPT, "inference_geo": "global"}
    assert "inference_geo" not in orjson.dumps(bedrock_request(body, model_id=HAIKU_ID)).decode()


def test_claude_on_vertex_refuses_a_geography_it_cannot_keep() -> None:
    body = {"model": SONNET, "messages": PROMPT, "inference_geo": "us"}
    with pytest.raises(BadRequestError) as caught:
        translate_request(body, SONNET, stream=False, image_urls=False, inference_geo=False)
    assert caught.value.param == "inference_geo" and "Vertex AI" in str(caught.value)
    body["inference_geo"] = "global"
    sent = translate_request(body, SONNET, stream=False, image_urls=False, inference_geo=False)
    assert "inference_geo" not in sent
