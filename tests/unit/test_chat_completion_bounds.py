"""A chat completion's bound (``max_completion_tokens``, ``max_tokens``) of the wrong type
or below 1 is refused up front, whichever provider serves the model, as OpenAI refuses
it: a 400 ``invalid_request_error`` naming the field.

It was refused only where a quota rule or a translation read it; to an OpenAI-compatible
provider it went on, and when that provider answered (vLLM reads ``"100"`` as 100) and
the answer was cut, the charge of the cut answer read the bound, failed, and the request
was billed 0 tokens.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, response_headers, run_stream
from tests.unit.sse_play import only_line

AUTH = {"authorization": "Bearer team1-key"}
HI = [{"role": "user", "content": "x" * 40}]
# Every way a bound can be wrong: OpenAI refuses each ("Invalid type for 'max_tokens':
# expected an integer", "integer below minimum value. Expected a value >= 1").
WRONG = ["100", 100.0, 1.5, 0, -1, -(2**63), True, False, [], [100], {}, {"value": 100}]
# Chat completions to OpenAI's API, to Claude (Anthropic) and to Bedrock's Converse.
ROUTES = {
    "openai": ("/v1/chat/completions", "gpt-4o-mini"),
    "anthropic": ("/anthropic/chat/completions", "claude-3-5-haiku-latest"),
    "bedrock": ("/bedrock/haiku/chat/completions", None),
}


async def send(processor: Processor, route: str, fields: dict[str, Any]) -> Any:
    path, model = ROUTES[route]
    body: dict[str, Any] = {"messages": HI, **fields}
    if model is not None:
        body["model"] = model
    # The provider's 200 comes back and the stream ends there: an answer cut before its
    # body, which is charged the bound the request was sent with.
    return await run_stream(
        processor,
        [request_headers(path, headers=AUTH), request_body(orjson.dumps(body)), response_headers()],
    )


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", WRONG, ids=repr)
async def test_a_wrong_bound_is_a_400_naming_it(
    processor: Processor, services: Services, route: str, field: str, value: Any
) -> None:
    answers = await send(processor, route, {field: value})
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400, answers[-1]
    error = orjson.loads(refusal.body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert error["message"] == f"'{field}' must be an integer >= 1"
    line = only_line(services)
    assert line["http_status_code"] == 400
    assert line["total_tokens"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"max_completion_tokens": 50, "max_tokens": "50"},
        {"max_completion_tokens": "50", "max_tokens": 50},
        {"max_completion_tokens": None, "max_tokens": 0},
    ],
)
async def test_each_bound_is_checked_when_both_are_sent(
    processor: Processor, fields: dict[str, Any]
) -> None:
    answers = await send(processor, "openai", fields)
    error = orjson.loads(answers[-1].immediate_response.body)["error"]
    [wrong] = [name for name, value in fields.items() if value is not None and value != 50]
    assert error["param"] == wrong


@pytest.mark.parametrize("fields", [{}, {"max_tokens": None}, {"max_completion_tokens": 1}])
async def test_a_bound_of_one_or_none_goes_on_and_a_cut_answer_is_charged(
    processor: Processor, services: Services, fields: dict[str, Any]
) -> None:
    answers = await send(processor, "openai", fields)
    assert not answers[1].HasField("immediate_response")
    line = only_line(services)
    # Charged its prompt and its bound (else quotas.default_max_tokens), not 0 tokens.
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == fields.get("max_completion_tokens", 1024)
