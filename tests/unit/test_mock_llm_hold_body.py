"""The mock's ``hold_body``, ``reset_in_body`` and ``no_output_count`` faults, on its raw answers.

``hold_body``: a non-streamed answer (an error status's too) whose status and headers
come at once and whose body waits, so a gateway test can have its client leave between
them (a client's timeout on a 429 whose body is slow). ``no_output_count``: an
InvokeModel answer with Bedrock's input count header and without its output count (a
proxy that dropped one), so a gateway test can bill such an answer through Envoy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from extproc.mock_llm.faults import FAULT_HEADER, FaultSpecError, parse_fault
from tests.unit.test_mock_bedrock_anthropic import invoke
from tests.unit.test_mock_bedrock_text_models import INPUT_TOKENS, MISTRAL, PROMPT, mistral_body
from tests.unit.test_mock_llm_bedrock import bedrock

OPENAI = {"authorization": "Bearer sk-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.mark.parametrize("status", [None, 429], ids=["answer", "error"])
async def test_the_status_comes_while_the_body_is_held(
    http: httpx.AsyncClient, status: int | None
) -> None:
    """A minute's hold: the status and headers are there long before the body (the
    mock's shutdown ends the wait once the test is done)."""
    fault = "hold_body=60" + (f";status={status}" if status else "")
    request = http.build_request("POST", "/v1/chat/completions", json=CHAT,
                                 headers={**OPENAI, FAULT_HEADER: fault})  # fmt: skip
    answer = await asyncio.wait_for(http.send(request, stream=True), 30)
    try:
        assert answer.status_code == (status or 200)
        assert answer.headers["content-type"].startswith("application/json")
        assert int(answer.headers["content-length"]) > 0
        # The body has not come: reading it waits past a short timeout.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(answer.aread(), 0.3)
    finally:
        await answer.aclose()


@pytest.mark.parametrize("status", [None, 429], ids=["answer", "error"])
async def test_the_held_body_is_the_answer_it_would_have_been(
    http: httpx.AsyncClient, status: int | None
) -> None:
    fault = f"status={status}" if status else ""
    plain = await http.post("/v1/chat/completions", json=CHAT,
                            headers={**OPENAI, FAULT_HEADER: fault or "delay=0"})  # fmt: skip
    held = await http.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={**OPENAI, FAULT_HEADER: ";".join(p for p in (fault, "hold_body=0.05") if p)},
    )
    assert held.status_code == plain.status_code == (status or 200)
    assert held.json().keys() == plain.json().keys()


async def test_no_output_count_keeps_the_input_count_alone(mock_url: str) -> None:
    client = bedrock(mock_url, headers={FAULT_HEADER: "no_output_count=1"})
    answer: dict[str, Any] = await invoke(client, mistral_body(PROMPT, None), MISTRAL.model_id)

    headers = answer.pop("headers")
    assert headers["x-amzn-bedrock-input-token-count"] == str(INPUT_TOKENS)
    assert "x-amzn-bedrock-output-token-count" not in headers
    assert answer["outputs"][0]["text"]


@pytest.mark.parametrize("spec", ["hold_body=-1", "hold_body=nan", "no_output_count=2"])
def test_bad_values_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError, match=spec.split("=")[0]):
        parse_fault(spec)


async def test_reset_in_body_sends_the_status_and_half_the_body_then_drops(
    http: httpx.AsyncClient,
) -> None:
    """``reset_in_body``: a provider reset mid-body, after its 200 and headers left."""
    request = http.build_request("POST", "/v1/chat/completions", json=CHAT,
                                 headers={**OPENAI, FAULT_HEADER: "reset_in_body=1"})  # fmt: skip
    answer = await http.send(request, stream=True)
    try:
        assert answer.status_code == 200
        announced = int(answer.headers["content-length"])
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async for piece in answer.aiter_raw():
                received += piece
        assert 0 < len(received) < announced
    finally:
        await answer.aclose()
