"""A JSON block fenced in prose (```` ```json ````) stays JSON when a mask changes it.

Models answer a request for data with a sentence and a fenced block the user copies into a
file or a program, and users paste such blocks into prompts. The text is prose, so a mask
in the block was written as prose: a ``replacement`` holding a quote ended its string, and
a card written as a number became ``<CREDIT_CARD>`` bare even with the default
replacement; what the user copied out no longer parsed. Now a fenced block whose content
is a JSON object or array is masked as a text that is JSON whole is
(``matching.onto_document``), and the prose around it as prose.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import openai_answer
from tests.unit.test_guard_flow import chat, upstream_body
from tests.unit.test_guard_json_documents import (
    DEFAULT_PII,
    PII,
    REPLACEMENT,
    gateway_for,
)
from tests.unit.test_guard_json_encoded_twice import masked
from tests.unit.test_guardrail_gaps import messages_body

CARD = 4111111111111111
RECORD = {"name": "Jane", "email": "jane@example.com", "card": CARD, "active": True}
BLOCK = json.dumps(RECORD, indent=2)
ANSWER = f"Here is the customer:\n\n```json\n{BLOCK}\n```\n\nWrite to jane@example.com."


def fenced_blocks(text: str) -> list[Any]:
    """Every fenced block of ``text``, decoded as the user's ``json.loads`` would."""
    blocks = text.split("```")[1::2]
    return [json.loads(block.split("\n", 1)[1]) for block in blocks]


def masked_record(replacement: str) -> dict[str, Any]:
    return {"name": "Jane", "email": replacement, "card": replacement, "active": True}


async def test_a_fenced_block_in_a_whole_answer_stays_json_for_the_user() -> None:
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions",
        chat("Show me the customer as JSON."),
        response_headers(200, {"content-type": "application/json"}),
        response_body(openai_answer(content=ANSWER)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    content = shown["choices"][0]["message"]["content"]
    assert fenced_blocks(content) == [masked_record(REPLACEMENT)]
    # The prose around it takes the replacement as it is, as before.
    assert content.endswith(f"Write to {REPLACEMENT}.")


async def test_a_fenced_block_in_an_anthropic_answer_stays_json() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
              "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 5, "output_tokens": 30}}  # fmt: skip
    answers = await gateway_for("anthropic-messages").send(
        "/v1/messages",
        messages_body({"type": "text", "text": "Show me the customer as JSON."}),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert fenced_blocks(shown["content"][0]["text"]) == [masked_record(REPLACEMENT)]


async def test_a_fenced_block_in_a_prompt_reaches_the_provider_as_json() -> None:
    prompt = f"Import this record:\n```\n{json.dumps(RECORD)}\n```"
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", chat(prompt))
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert fenced_blocks(sent) == [masked_record(REPLACEMENT)]


async def test_a_fenced_block_in_a_prompt_written_on_windows_reaches_the_provider_as_json() -> None:
    """CRLF line ends: the closing fence line is ```` ```\\r ````. It was taken for text,
    the block ran on to the end of the prompt, was no JSON with the prose after it in it,
    and was masked as prose: the provider got ``"card": <CREDIT_CARD>``."""
    prompt = f"Import this record:\r\n```json\r\n{json.dumps(RECORD)}\r\n```\r\nThanks!\r\n"
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", chat(prompt))
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert fenced_blocks(sent) == [masked_record(REPLACEMENT)]
    assert sent.endswith("```\r\nThanks!\r\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Default replacements: the card, a number, becomes a string.
        ("Card:\n```json\n{\"card\": 4111111111111111}\n```",
         'Card:\n```json\n{"card": "<CREDIT_CARD>"}\n```'),
        # Tildes, any info string, indented in a list item.
        ("1. It:\n   ~~~js\n   [4111111111111111, 2]\n   ~~~\n",
         '1. It:\n   ~~~js\n   ["<CREDIT_CARD>", 2]\n   ~~~\n'),
        # A block never closed runs to the end of the text.
        ("Card:\n```json\n{\"card\": 4111111111111111}",
         'Card:\n```json\n{"card": "<CREDIT_CARD>"}'),
        # Two blocks, prose between them.
        ("```\n[4111111111111111]\n```\nmail jane@example.com\n```\n{\"a\": 4111111111111111}\n```",
         '```\n["<CREDIT_CARD>"]\n```\nmail <EMAIL>\n```\n{"a": "<CREDIT_CARD>"}\n```'),
        # A block that is no JSON (cut short, code) is prose, as before.
        ("```json\n{\"card\": 4111111111111111,\n```",
         "```json\n{\"card\": <CREDIT_CARD>,\n```"),
        ("```python\ncard = 4111111111111111\n```", "```python\ncard = <CREDIT_CARD>\n```"),
        # No closing fence of the same character: the tildes do not close backticks.
        ("```\n[4111111111111111]\n~~~\n", "```\n[4111111111111111]\n~~~\n".replace(
            "4111111111111111", "<CREDIT_CARD>")),
        # CRLF line ends (text written on Windows): the closing fence still closes.
        ("Card:\r\n```json\r\n{\"card\": 4111111111111111}\r\n```\r\nThanks\r\n",
         'Card:\r\n```json\r\n{"card": "<CREDIT_CARD>"}\r\n```\r\nThanks\r\n'),
    ],
    ids=["default", "tildes-indented", "unclosed", "two-blocks", "not-json", "code",
         "mixed-fences", "crlf"],
)  # fmt: skip
def test_which_fenced_blocks_are_masked_as_json(text: str, expected: str) -> None:
    assert masked(text, DEFAULT_PII) == expected


def test_a_match_running_from_the_prose_into_a_block_masks_each_part_where_it_falls() -> None:
    config = {"name": "run", "patterns": [r"customer:\s+```json\s+\{\s+\"name"],
              "action": "mask", "replacement": 'x"y'}  # fmt: skip
    text = f"The customer:\n```json\n{BLOCK}\n```"
    prose, block = masked(text, config).split("{", 1)
    # The prose and the fence line the pattern ran over take the replacement as it is;
    # inside the block, only the key's text is masked, written as JSON.
    assert prose == 'The x"y'
    assert json.loads("{" + block.removesuffix("```"))['x"y'] == "Jane"


def test_a_decoded_match_in_a_fenced_block_keeps_the_other_escapes() -> None:
    text = '```json\n{"name": "Ren\\u00e9e", "to": "jane\\u0040example.com"}\n```'
    assert masked(text, PII) == (
        '```json\n{"name": "Ren\\u00e9e", "to": "[hidden \\"pii\\" \\\\ by policy]\\t"}\n```'
    )
