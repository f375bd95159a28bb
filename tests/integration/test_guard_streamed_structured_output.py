"""A structured output streamed through the real Envoy stays the JSON the SDK parses when a
response guard masks it.

The mock provider's answer (scripted with ``x-mock-reply``) is a JSON document cut into
chosen chunks: an address cut in two, a card written as a JSON number cut in two, and a
password cut from the quote after it. The route's guards mask them, the first with a
replacement holding quotes. The ``openai`` SDK's stream helper
(``client.chat.completions.stream(response_format=...)``) assembles the content and parses
it into the client's model: before, it raised on the masked text; now it gets the values
masked, and the same request without ``response_format`` still gets prose masking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from extproc.devstack import LocalStack
from tests.integration.conftest import guarded_config, running_stack, write_config
from tests.integration.test_guard_tool_calls import gpt

REPLACEMENT = '[hidden "pii"]'
ANSWER_GUARDS: dict[str, Any] = {
    "name": "answer-guards",
    "response": [
        {"name": "pii-out", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask",
         "replacement": REPLACEMENT},
        {"name": "secret", "patterns": [r"hunter\d+"], "action": "mask"},
    ],
}  # fmt: skip
PIECES = [
    '{"contact": "jane@exa',
    'mple.com", "card": 4111111',
    '111111111, "note": "hunter',
    '2"}',
]


class Contact(BaseModel):
    contact: str
    card: str
    note: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-streamed-structured-output")
    raw = guarded_config(ANSWER_GUARDS, "openai-chat")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def test_a_masked_structured_output_streamed_is_parsed_by_the_openai_sdk(
    guarded: LocalStack,
) -> None:
    with gpt(guarded).chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Who is the contact?"}],
        response_format=Contact,
        extra_headers={"x-mock-reply": json.dumps(PIECES)},
    ) as stream:
        shown = "".join(event.delta for event in stream if event.type == "content.delta")
        completion = stream.get_final_completion()
    assert completion.choices[0].message.parsed == Contact(
        contact=REPLACEMENT, card=REPLACEMENT, note="****"
    )
    assert "jane@" not in shown and "4111" not in shown and "hunter2" not in shown


def test_a_prose_answer_is_still_masked_as_text(guarded: LocalStack) -> None:
    stream = gpt(guarded).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Who?"}],
        stream=True,
        extra_headers={"x-mock-reply": json.dumps(["Write to jane@exa", "mple.com today."])},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == f"Write to {REPLACEMENT} today."
