"""OpenAI's Responses API reviewed as an operator would: text that reaches the model by a
way the guards and the estimate did not read (a reusable prompt's variables, reasoning
items, refusals, MCP and shell items), and requests OpenAI serves that the gateway refused
(a stored prompt with no ``input``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_responses_tokens
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped
from tests.unit.sse_play import only_line
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body

RESPONSES = "/v1/responses"
ROUTE = "openai-responses"
AUTH = {"authorization": "Bearer team1-key"}
TEXT_JSON = Path("tests/fixtures/openai_responses/text.json").read_bytes()
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
CARD = "4111 1111 1111 1111"
# A stored prompt as OpenAI's dashboard names one.
PROMPT_ID = "pmpt_68bee228e8288196811e9e0426855ad501793deee998d9b1"


def responses(**fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "input": "Tell me a one-sentence story.", **fields}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def guarded() -> Gateway:
    return Gateway(config_with(WORKSHOP, {ROUTE: {"guardrails": "workshop"}}))


async def send(processor: Processor, body: bytes) -> list[Any]:
    return await run_stream(
        processor, [request_headers(RESPONSES, headers=AUTH), request_body(body)]
    )


# --- a reusable prompt's variables ----------------------------------------------------------


async def test_a_reject_guard_refuses_a_topic_sent_in_a_stored_prompts_variables() -> None:
    gateway = guarded()
    prompt = {"id": PROMPT_ID, "variables": {"topic": "credit card numbers"}}
    answers = await gateway.send(RESPONSES, responses(prompt=prompt))
    status, body = immediate(answers[-1])
    assert status == 403
    assert body["error"]["message"] == "Sorry, I cannot talk about credit cards."


async def test_masks_rewrite_a_stored_prompts_variables_before_the_provider() -> None:
    gateway = guarded()
    prompt = {
        "id": PROMPT_ID,
        "version": "2",
        "variables": {
            "customer": "jane@example.com",
            "card": {"type": "input_text", "text": f"card {CARD}"},
            "photo": {"type": "input_image", "image_url": "https://example.com/a.png"},
        },
    }
    answers = await gateway.send(RESPONSES, responses(prompt=prompt))
    sent = upstream_body(answers[1])
    variables = sent["prompt"]["variables"]
    assert variables["customer"] == "<EMAIL>"
    assert variables["card"] == {"type": "input_text", "text": "card <CREDIT_CARD>"}
    assert variables["photo"] == prompt["variables"]["photo"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("prompt", "param"),
    [
        ("pmpt_1", "prompt"),
        ({"id": PROMPT_ID, "variables": ["credit card"]}, "prompt.variables"),
        ({"id": PROMPT_ID, "variables": {"topic": ["credit card"]}}, "prompt.variables.topic"),
        ({"id": PROMPT_ID, "variables": {"n": 4}}, "prompt.variables.n"),
    ],
)
async def test_a_prompt_the_guards_could_not_read_is_a_400_naming_the_field(
    prompt: Any, param: str
) -> None:
    gateway = guarded()
    answers = await gateway.send(RESPONSES, responses(prompt=prompt))
    status, body = immediate(answers[-1])
    assert (status, body["error"]["param"]) == (400, param)
    assert gateway.log()["quota_decision"] is None


# --- every input item that carries text -------------------------------------------------------


async def test_masks_rewrite_text_in_reasoning_refusal_mcp_and_shell_items() -> None:
    gateway = guarded()
    items: list[dict[str, Any]] = [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "The user's mail is jane@example.com"}],
            "content": [{"type": "reasoning_text", "text": f"Their card is {CARD}"}],
            "encrypted_content": "gAAAAB" + CARD,
        },
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": f"I will not repeat {CARD}"}],
        },
        {
            "type": "mcp_call",
            "id": "mcp_1",
            "server_label": "crm",
            "name": "lookup",
            "arguments": '{"email": "jane@example.com"}',
            "output": f"card on file: {CARD}",
        },
        {
            "type": "shell_call_output",
            "call_id": "call_1",
            "output": [{"stdout": "ops@example.com\n", "stderr": "", "outcome": {"type": "exit"}}],
        },
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [
                {"type": "input_text", "text": "owner ops@example.com"},
                {"type": "input_image", "image_url": "data:image/png;base64,4111111111111111"},
            ],
        },
    ]
    answers = await gateway.send(RESPONSES, responses(input=items))
    sent = upstream_body(answers[1])["input"]
    reasoning, refusal, mcp, shell, output = sent
    assert reasoning["summary"][0]["text"] == "The user's mail is <EMAIL>"
    assert reasoning["content"][0]["text"] == "Their card is <CREDIT_CARD>"
    # Encrypted reasoning is no text (and would not decrypt once rewritten).
    assert reasoning["encrypted_content"] == items[0]["encrypted_content"]
    assert refusal["content"][0]["refusal"] == "I will not repeat <CREDIT_CARD>"
    assert orjson.loads(mcp["arguments"]) == {"email": "<EMAIL>"}
    assert mcp["output"] == "card on file: <CREDIT_CARD>"
    assert mcp["server_label"] == "crm" and mcp["id"] == "mcp_1"
    assert shell["output"][0]["stdout"] == "<EMAIL>\n"
    assert output["output"][0]["text"] == "owner <EMAIL>"
    assert output["output"][1] == items[4]["output"][1]


async def test_a_reject_guard_reads_an_item_type_it_has_never_seen() -> None:
    """Item types OpenAI adds later carry text too: a guard reads their strings."""
    gateway = guarded()
    item = {"type": "program_output", "id": "p1", "call_id": "c1", "result": "credit card list"}
    answers = await gateway.send(RESPONSES, responses(input=[item]))
    status, _ = immediate(answers[-1])
    assert status == 403


async def test_an_item_whose_type_is_no_string_is_a_400_rather_than_passed_unread() -> None:
    gateway = guarded()
    answers = await gateway.send(
        RESPONSES, responses(input=[{"type": 5, "content": "credit card"}])
    )
    status, body = immediate(answers[-1])
    assert (status, body["error"]["param"]) == (400, "input[0].type")


# --- a whole answer's text beyond its output_text ---------------------------------------------


async def test_a_response_guard_masks_a_whole_answers_reasoning_summary_and_refusal() -> None:
    gateway = guarded()
    answer = orjson.loads(TEXT_JSON)
    answer["output"] = [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": f"The card {CARD} is on file."}],
        },
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "refusal", "refusal": f"I cannot share {CARD}."}],
        },
    ]
    answers = await gateway.send(
        RESPONSES, responses(), response_headers(200), response_body(orjson.dumps(answer))
    )
    shown = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert shown["output"][0]["summary"][0]["text"] == "The card <CREDIT_CARD> is on file."
    assert shown["output"][1]["content"][0]["refusal"] == "I cannot share <CREDIT_CARD>."
    assert shown["usage"]["total_tokens"] == 123


# --- requests built from stored context -------------------------------------------------------


async def test_a_request_built_from_a_stored_prompt_needs_no_input(
    processor: Processor, services: Services
) -> None:
    prompt = {"id": PROMPT_ID, "variables": {"customer_name": "Jane Doe"}}
    answers = await send(processor, responses(input=None, prompt=prompt))
    assert answers[-1].WhichOneof("response") == "request_body"
    assert not answers[-1].request_body.response.HasField("body_mutation")


@pytest.mark.parametrize(
    "context",
    [{"previous_response_id": "resp_1"}, {"conversation": "conv_1"}],
)
async def test_a_turn_of_a_stored_conversation_may_send_an_empty_input(
    processor: Processor, context: dict[str, Any]
) -> None:
    answers = await send(processor, responses(input=[], **context))
    assert answers[-1].WhichOneof("response") == "request_body"


async def test_a_request_with_no_input_and_no_stored_context_is_still_refused(
    processor: Processor,
) -> None:
    answers = await send(processor, responses(input=None))
    status, body = immediate(answers[-1])
    assert (status, body["error"]["param"]) == (400, "input")


async def test_enrichment_still_adds_its_messages_to_a_request_without_input() -> None:
    enrichment = {"prepend": [{"role": "system", "content": "You help the {group_id} team."}]}
    gateway = Gateway(config_with({}, {ROUTE: {"enrichment": enrichment}}))
    prompt = {"id": PROMPT_ID}
    answers = await gateway.send(RESPONSES, responses(input=None, prompt=prompt))
    assert upstream_body(answers[1])["input"] == [
        {"role": "system", "content": "You help the engineering team."}
    ]


# --- the estimate reads what the guards read ----------------------------------------------------


def test_the_estimate_counts_prompt_variables_and_the_text_of_every_item() -> None:
    passage = "The quarterly report shows growth in every region. " * 40
    body = {
        "model": "gpt-4o-mini",
        "prompt": {"id": PROMPT_ID, "variables": {"report": passage}},
        "input": [
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": passage}],
            },
            {"type": "mcp_call", "id": "m", "name": "f", "arguments": "{}", "output": passage},
        ],
    }
    assert estimate_responses_tokens(body) >= 3 * (len(passage) // CHARS_PER_TOKEN)


async def test_a_hard_cap_refuses_a_prompt_made_of_variables_larger_than_the_budget(
    quota_store: QuotaStore,
) -> None:
    processor, services = capped(quota_store, 500)
    document = "Section 4.2: every region reported growth this quarter. " * 200  # ~2,800 tokens
    prompt = {"id": PROMPT_ID, "variables": {"document": document}}
    answers = await send(processor, responses(input="Summarise it.", prompt=prompt))
    status, body = immediate(answers[-1])
    assert (status, body["error"]["code"]) == (429, "insufficient_quota")
    assert "Prompt too large" in body["error"]["message"]
    assert only_line(services)["quota_decision"] == "rejected"
