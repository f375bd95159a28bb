"""Streamed tool-call arguments are read as the JSON they are, as a buffered answer's are.

A client assembles a call's arguments from OpenAI ``arguments`` fragments (or Anthropic
``input_json_delta`` ``partial_json`` fragments) and parses them: it reads each string
decoded and each number as written. Matched as raw text, a value spelled with JSON
escapes (``\\u0073k-...``, ``jane\\u0040example.com``) went past the guards, ``\\n`` before
a card hid it, and a card written as a JSON number was masked into arguments the client
could not parse. The guard now reads the fragments with an incremental JSON lexer, holds
back what is unfinished (a partial escape, a number still growing), writes masks as JSON,
and falls back to reading the text as written when the fragments stop being JSON.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.testing import client_body
from tests.unit.guard_helpers import anthropic_event, config_with, openai_chunk
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_flow import Gateway
from tests.unit.test_guard_stream_tool_calls import (
    MESSAGE_STOP,
    anthropic_inputs,
    block_stop,
    call_chunk,
    guard_of,
    json_delta,
    openai_calls,
    play,
    tool_use_start,
)
from tests.unit.test_guard_tool_args_json import documents, spellings

DONE = b"data: [DONE]\n\n"
# A key a REJECT guard for sk-[A-Za-z0-9]{32,64} knows, and the same key as JSON text may
# spell it: "s" as \u0073.
KEY = "sk-" + "a1B2c3D4e5" * 4
ESCAPED_KEY = "\\u0073" + KEY[1:]
KEY_MESSAGE = "API keys must not be sent to a client's tools."
PII = {"name": "pii-out", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}
POLICIES = {
    "policies": [
        {"name": "pii", "response": [PII]},
        {"name": "no-keys", "response": [
            {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE}]},
        {"name": "quoted", "response": [{"name": "quoted", "builtins": ["EMAIL"],
                                         "action": "mask", "replacement": 'an "address" \\ here'}]},
    ]
}  # fmt: skip
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
CLAUDE = "claude-3-5-haiku-latest"


def gateway(policy: str) -> Gateway:
    return Gateway(
        config_with(
            POLICIES,
            {"openai-chat": {"guardrails": policy}, "anthropic-messages": {"guardrails": policy}},
        )
    )


async def openai_stream(gate: Gateway, fragments: list[str], name: str = "send_email") -> bytes:
    """A client asks for a chat completion; the model streams one tool call in ``fragments``."""
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    )
    chunks = [
        call_chunk("", name=name),
        *(call_chunk(fragment) for fragment in fragments),
        openai_chunk(None, "tool_calls"),
        DONE,
    ]
    answers = await play_sse(gate.processor, "/v1/chat/completions", OPENAI_AUTH, body, chunks)
    return client_body(chunks, answers)


def message_start() -> bytes:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
               "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}  # fmt: skip
    return anthropic_event("message_start", {"type": "message_start", "message": message})


async def anthropic_stream(gate: Gateway, fragments: list[str]) -> bytes:
    """An Anthropic client asks for a message; the model streams one tool_use block."""
    body = orjson.dumps(
        {"model": CLAUDE, "stream": True, "max_tokens": 100,
         "messages": [{"role": "user", "content": "go"}]}
    )  # fmt: skip
    chunks = [
        message_start(),
        tool_use_start(0),
        *(json_delta(0, fragment) for fragment in fragments),
        block_stop(0),
        MESSAGE_STOP,
    ]
    answers = await play_sse(gate.processor, "/v1/messages", ANTHROPIC_AUTH, body, chunks)
    return client_body(chunks, answers)


def arguments(body: bytes) -> str:
    """The arguments the OpenAI client assembled for the call."""
    return openai_calls(body)[(0, 0)]["arguments"]


# --- what the client reads decoded, the guard reads decoded -----------------------------------


async def test_an_address_spelled_with_a_json_escape_is_masked_and_the_rest_kept_as_written() -> (
    None
):
    gate = gateway("pii")
    # The escape itself is cut over two fragments.
    body = await openai_stream(gate, ['{"to": "jane', "\\u00", '40example.com", "cc": "ops\\/x"}'])
    assert arguments(body) == '{"to": "<EMAIL>", "cc": "ops\\/x"}'
    assert json.loads(arguments(body)) == {"to": "<EMAIL>", "cc": "ops/x"}
    assert gate.log()["guardrails"] == [{"guard": "pii-out", "phase": "response", "action": "mask"}]


async def test_a_key_spelled_with_a_json_escape_ends_the_stream_with_the_error_event() -> None:
    gate = gateway("no-keys")
    body = await openai_stream(gate, ['{"token": "' + ESCAPED_KEY[:14], ESCAPED_KEY[14:] + '"}'])
    assert KEY[3:13] not in body.decode()
    events = [orjson.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[-1]["error"]["message"] == KEY_MESSAGE
    assert body.endswith(DONE)
    assert gate.log()["guardrails"] == [
        {"guard": "api-keys", "phase": "response", "action": "reject"}
    ]


async def test_a_card_after_an_escaped_newline_is_masked() -> None:
    body = await openai_stream(gateway("pii"), ['{"note": "call me\\n4111 1111 ', '1111 1111"}'])
    assert arguments(body) == '{"note": "call me\\n<CREDIT_CARD>"}'


async def test_a_card_written_as_a_json_number_is_masked_into_a_json_string() -> None:
    body = await openai_stream(
        gateway("pii"), ['{"card": 4111', "11111111111", '1, "amount": 12.5}']
    )
    assert arguments(body) == '{"card": "<CREDIT_CARD>", "amount": 12.5}'
    assert json.loads(arguments(body)) == {"card": "<CREDIT_CARD>", "amount": 12.5}
    assert b"4111" not in body  # the number was held until it ended, then masked whole


async def test_a_replacement_holding_quotes_is_written_as_json_for_the_anthropic_client() -> None:
    body = await anthropic_stream(gateway("quoted"), ['{"to": "jane@exa', 'mple.com", "n": 1}'])
    # What the anthropic SDK's stream helper parses when the block stops.
    assert json.loads(anthropic_inputs(body)[0]) == {"to": 'an "address" \\ here', "n": 1}


async def test_an_escaped_address_in_input_json_deltas_is_masked() -> None:
    body = await anthropic_stream(gateway("pii"), ['{"to": ["ann\\u0040', 'example.org"]}'])
    assert anthropic_inputs(body) == {0: '{"to": ["<EMAIL>"]}'}


async def test_a_surrogate_pair_cut_over_fragments_is_kept_as_written() -> None:
    body = await openai_stream(
        gateway("pii"), ['{"mood": "\\ud83d', '\\ude00", "to": "a\\u0040b.io"}']
    )
    # The pair is one character: the arguments are still read as JSON after it.
    assert arguments(body) == '{"mood": "\\ud83d\\ude00", "to": "<EMAIL>"}'
    assert json.loads(arguments(body)) == {"mood": "\U0001f600", "to": "<EMAIL>"}


def test_arguments_cut_short_at_the_close_are_read_as_far_as_they_go() -> None:
    # The model ran out of tokens inside a number: the close releases it, read as a number.
    body = play(
        guard_of(GuardConfig(**PII)),
        [call_chunk('{"to": "x", "card": 4111', name="f"), call_chunk("111111111111"),
         openai_chunk(None, "length"), DONE],
    )  # fmt: skip
    assert arguments(body) == '{"to": "x", "card": "<CREDIT_CARD>"'


# --- arguments that stop being JSON are read as written, as before ------------------------------


async def test_a_card_in_arguments_that_stop_being_json_is_still_masked() -> None:
    # "4111 1111 ..." is no JSON number: from there on the text is read as written, and
    # what the lexer had held (the "4111 " it read as a number) is read with it.
    body = await openai_stream(gateway("pii"), ['{"n": 4111 ', "1111 1111 1111}"])
    assert arguments(body) == '{"n": <CREDIT_CARD>}'


async def test_arguments_that_are_no_json_at_all_are_matched_as_text() -> None:
    body = await openai_stream(gateway("pii"), ["{'to': 'jane@", "example.com'}"])
    assert arguments(body) == "{'to': '<EMAIL>'}"


# --- however the provider cuts the fragments, the client gets what a buffered answer gets -------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def buffered(matchers: Matchers, text: str) -> str:
    return apply(text, matchers.scan(text, json_text=True)[1])


# What strings hold and what numbers are made of, escaped characters, one outside the BMP.
PATTERNS = st.sampled_from([r"[ab]+", r"\d+", r"[\n\t\x00@]", "e\u00e9", "\U0001f600 "])


@FUZZ
@given(documents, spellings, PATTERNS, st.data())
def test_streamed_arguments_are_masked_as_the_buffered_answers_are(
    document: Any, spelling: dict[str, Any], pattern: str, data: st.DataObject
) -> None:
    config = GuardConfig(name="m", patterns=[pattern], action="mask", replacement='R"\\\n')
    text = json.dumps(document, **spelling)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=8)))
    fragments = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    chunks = [call_chunk("", name="f"), *(call_chunk(f) for f in fragments)]
    body = play(guard_of(config), [*chunks, openai_chunk(None, "tool_calls"), DONE])
    expected = buffered(Matchers((MatcherGuard(config, 256),)), text)
    assert arguments(body) == expected
