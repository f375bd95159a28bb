"""OpenAI's ``response_format`` carried to the providers' structured outputs.

A team asks a Bedrock model (through the OpenAI SDK, Converse behind the gateway) for an
answer that matches its JSON schema. It used to get a 400, "response_format is not
supported for Bedrock models", although Converse constrains answers to a schema
(``outputConfig.textFormat``). Now:

- ``json_schema`` reaches Converse as ``outputConfig.textFormat`` (the schema as JSON
  text, ``name`` and ``description`` beside it; ``strict`` has no counterpart), in the
  shape botocore's service model describes, and the mock Bedrock answers JSON of it;
- ``json_object`` is refused for Bedrock, saying what to send instead, and now the same
  way for Claude on Anthropic, which dropped it and answered JSON only as the model chose
  (often in a Markdown fence) to a client parsing the content as a JSON object;
- ``text`` sends nothing, as before;
- a malformed ``response_format`` (an unknown type, a schema missing) is a 400 naming the
  field for Bedrock and for Claude on Anthropic, which dropped it silently and answered
  prose to a client waiting for JSON; refused before the quota counts the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import botocore.session
import orjson
import pytest
from botocore.validate import ParamValidator

from extproc.config.loader import parse_config
from extproc.errors import BadRequestError
from extproc.mock_llm.bedrock_api import (
    NO_FAULT,
    AwsError,
    build_reply,
    parse_converse_request,
)
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators import openai_anthropic, openai_bedrock
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_bedrock_invoke_review import signing_processor
from tests.unit.test_completions_api import AUTH, error_of
from tests.unit.test_guard_flow import upstream_body

CLAUDE_ON_BEDROCK = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-1-70b-instruct-v1:0"
QUESTION = {"role": "user", "content": "Weather in Paris?"}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "weather",
        "description": "Today's weather in one city",
        "schema": SCHEMA,
        "strict": True,
    },
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [QUESTION], **fields}


def converse_input_errors(converse: dict[str, Any], model_id: str) -> str:
    """What botocore's own validation of a Converse call finds wrong with ``converse``
    (empty: nothing), against the service model the SDKs send from."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").input_shape
    report = ParamValidator().validate({"modelId": model_id, **converse}, shape)
    return str(report.generate_report())


# --- Bedrock: the translation ------------------------------------------------------------


@pytest.mark.parametrize("model_id", [CLAUDE_ON_BEDROCK, LLAMA])
def test_a_json_schema_becomes_converses_structured_output(model_id: str) -> None:
    converse = openai_bedrock.translate_request(
        chat(response_format=JSON_SCHEMA), model_id=model_id
    )
    assert converse_input_errors(converse, model_id) == ""
    text_format = converse["outputConfig"]["textFormat"]
    definition = dict(text_format["structure"]["jsonSchema"])
    assert text_format["type"] == "json_schema"
    assert orjson.loads(definition.pop("schema")) == SCHEMA
    # OpenAI's name and description go beside it; strict has no place (always enforced).
    assert definition == {"name": "weather", "description": "Today's weather in one city"}


def test_a_json_schema_without_name_or_description_sends_the_schema_alone() -> None:
    response_format = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    converse = openai_bedrock.translate_request(chat(response_format=response_format))
    definition = converse["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert list(definition) == ["schema"]
    assert converse_input_errors(converse, LLAMA) == ""


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_text_and_no_response_format_ask_converse_for_nothing(response_format: Any) -> None:
    converse = openai_bedrock.translate_request(chat(response_format=response_format))
    assert "outputConfig" not in converse


def test_json_object_is_refused_for_bedrock_saying_what_to_send() -> None:
    with pytest.raises(BadRequestError) as refused:
        openai_bedrock.check_request(chat(response_format={"type": "json_object"}))
    assert refused.value.param == "response_format"
    assert "json_schema" in refused.value.message


MALFORMED = [
    ("json", "response_format"),
    ({"type": "json"}, "response_format.type"),
    ({}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "w"}}, "response_format.json_schema.schema"),
    (
        {"type": "json_schema", "json_schema": {"name": "w", "schema": "{}"}},
        "response_format.json_schema.schema",
    ),
    (
        {"type": "json_schema", "json_schema": {"name": 7, "schema": SCHEMA}},
        "response_format.json_schema.name",
    ),
    (
        {"type": "json_schema", "json_schema": {"description": [], "schema": SCHEMA}},
        "response_format.json_schema.description",
    ),
    (
        {"type": "json_schema", "json_schema": {"strict": "yes", "schema": SCHEMA}},
        "response_format.json_schema.strict",
    ),
]


@pytest.mark.parametrize(("response_format", "param"), MALFORMED)
def test_a_malformed_response_format_is_refused_for_bedrock_naming_the_field(
    response_format: Any, param: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        openai_bedrock.check_request(chat(response_format=response_format))
    assert refused.value.param == param


# --- Bedrock: the mock answers as Converse does --------------------------------------------


def test_the_mock_bedrock_answers_json_of_the_schema_it_was_sent() -> None:
    converse = openai_bedrock.translate_request(chat(response_format=JSON_SCHEMA))
    request = parse_converse_request(LLAMA, Body.parse(orjson.dumps(converse)))
    answer = orjson.loads(build_reply(request, NO_FAULT).text)
    assert answer == {"city": "Mock reply to: Weather in Paris?", "celsius": 0}


@pytest.mark.parametrize(
    ("output_config", "names"),
    [
        ("json", "outputConfig"),
        ({"textFormat": {"type": "json", "structure": {}}}, "outputConfig.textFormat.type"),
        ({"textFormat": {"type": "json_schema"}}, "outputConfig.textFormat.structure"),
        (
            {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {}}}},
            "outputConfig.textFormat.structure.jsonSchema.schema",
        ),
        (
            # The schema as an object, not as JSON text: what an SDK-less client may send.
            {
                "textFormat": {
                    "type": "json_schema",
                    "structure": {"jsonSchema": {"schema": SCHEMA}},
                }
            },
            "outputConfig.textFormat.structure.jsonSchema.schema",
        ),
        (
            {
                "textFormat": {
                    "type": "json_schema",
                    "structure": {"jsonSchema": {"schema": "{not json"}},
                }
            },
            "outputConfig.textFormat.structure.jsonSchema.schema",
        ),
    ],
)
def test_the_mock_bedrock_refuses_a_malformed_output_config(output_config: Any, names: str) -> None:
    converse = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    converse["outputConfig"] = output_config
    with pytest.raises(AwsError) as refused:
        parse_converse_request(LLAMA, Body.parse(orjson.dumps(converse)))
    assert (refused.value.status, refused.value.code) == (400, "ValidationException")
    assert names in refused.value.message


# --- Anthropic ---------------------------------------------------------------------------


def test_a_json_schema_becomes_anthropics_output_config_format() -> None:
    request = openai_anthropic.translate_request(
        chat(response_format=JSON_SCHEMA), "claude-sonnet-4-5", stream=False
    )
    assert request["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_text_and_no_response_format_send_claude_no_output_config(response_format: Any) -> None:
    request = openai_anthropic.translate_request(
        chat(response_format=response_format), "claude-sonnet-4-5", stream=False
    )
    assert "output_config" not in request


def test_json_object_is_refused_for_claude_as_for_bedrock_saying_what_to_send() -> None:
    # Dropped, as it was, Claude answered JSON as it chose (often in a Markdown fence)
    # to a client that parses the content as a JSON object.
    body = chat(response_format={"type": "json_object"})
    with pytest.raises(BadRequestError) as claude:
        openai_anthropic.translate_request(body, "claude-sonnet-4-5", stream=False)
    with pytest.raises(BadRequestError) as bedrock:
        openai_bedrock.translate_request(body, model_id="anthropic.claude-sonnet-4-5-v1:0")
    for refused, provider in ((claude, "Claude"), (bedrock, "Bedrock")):
        assert refused.value.param == "response_format"
        assert refused.value.message == (
            f"response_format 'json_object' is not supported for {provider} models, which "
            "have no mode for any JSON object: send 'json_schema' with the object's schema "
            f"({provider}'s structured outputs), or, for a model without structured "
            "outputs, leave response_format out and ask for JSON in the prompt"
        )


@pytest.mark.parametrize(("response_format", "param"), MALFORMED)
def test_a_malformed_response_format_is_refused_for_claude_naming_the_field(
    response_format: Any, param: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        openai_anthropic.translate_request(
            chat(response_format=response_format), "claude-sonnet-4-5", stream=False
        )
    assert refused.value.param == param


# --- through the processor, before the quota ----------------------------------------------

ONE_REQUEST_A_MINUTE = """
quotas:
  rules:
    - {name: one-rpm, subject: api_key, requests_per_minute: 1}
"""


@pytest.fixture
async def one_request_a_minute(quota_store: QuotaStore) -> AsyncIterator[Processor]:
    """The default config, each key allowed one request a minute; its AWS signer started."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    config = parse_config(DEFAULT_CONFIG + ONE_REQUEST_A_MINUTE, "t", {})
    async with signing_processor(config, services) as processor:
        yield processor


async def send(processor: Processor, body: dict[str, Any]) -> Any:
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=AUTH), request_body(orjson.dumps(body))],
    )
    return answers[1]


@pytest.mark.parametrize("model", ["haiku", "claude-3-5-haiku-latest"])
async def test_a_malformed_response_format_is_refused_before_the_quota_counts_it(
    one_request_a_minute: Processor, model: str
) -> None:
    refused = await send(one_request_a_minute, chat(model=model, response_format={"type": "json"}))
    status, error = error_of(refused)
    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        "response_format.type",
    )
    # The key's one request of the minute is still there for the corrected request.
    sent = upstream_body(
        await send(one_request_a_minute, chat(model=model, response_format=JSON_SCHEMA))
    )
    assert "outputConfig" in sent or "output_config" in sent


@pytest.mark.parametrize("model", ["haiku", "claude-3-5-haiku-latest"])
async def test_json_object_is_refused_before_the_quota_counts_it(
    one_request_a_minute: Processor, model: str
) -> None:
    refused = await send(
        one_request_a_minute, chat(model=model, response_format={"type": "json_object"})
    )
    status, error = error_of(refused)
    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        "response_format",
    )
    assert "send 'json_schema'" in error["message"]
    # The key's one request of the minute is still there for the corrected request.
    sent = upstream_body(
        await send(one_request_a_minute, chat(model=model, response_format=JSON_SCHEMA))
    )
    assert "outputConfig" in sent or "output_config" in sent


async def test_a_json_schema_for_bedrock_goes_out_as_output_config(
    one_request_a_minute: Processor,
) -> None:
    sent = upstream_body(
        await send(one_request_a_minute, chat(model="haiku", response_format=JSON_SCHEMA))
    )
    definition = sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert orjson.loads(definition["schema"]) == SCHEMA
