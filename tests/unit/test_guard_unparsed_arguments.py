"""Guards read tool-call arguments that are no JSON document as the model reads them.

Arguments that are a JSON object or array are read string by string, decoded
(``test_guard_tool_args_json``). Arguments that are not (a call the model did not finish,
cut by ``max_tokens``; a bare JSON string; a custom tool's free text; or a client crafting
them so) were read as raw text only: a value spelled with JSON escapes
(``\\u0073k-...``, ``jane\\u0040example.com``) went past every guard. Yet the model reads
the escape as the character it stands for: an OpenAI-compatible provider gets the text as
it is, and the gateway sends it to Claude and Bedrock as
``{"unparsed_arguments": "<the text>"}``. They are now read as written and decoded too; a
mask of a decoded match replaces the escapes it came from, in place.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate
from tests.unit.test_guard_tool_args_json import (
    CLAUDE,
    ESCAPED_KEY,
    KEY,
    KEY_MESSAGE,
    POLICIES,
    anthropic_input,
    history,
    refused,
    sent,
)

# A call cut by the token limit: the object never closed.
CUT = '{{"to": "{to}", "body": "Hi'


async def chat(policy: str, body: bytes, route: str = "openai-chat") -> list[Any]:
    gateway = Gateway(config_with(POLICIES, {route: {"guardrails": policy}}))
    path = "/anthropic/v1/chat/completions" if route == "anthropic" else "/v1/chat/completions"
    return await gateway.send(path, body)


def chat_arguments(answers: list[Any], body: bytes) -> str:
    arguments: str = sent(answers, body)["messages"][1]["tool_calls"][0]["function"]["arguments"]
    return arguments


# --- chat: a key spelled with escapes is refused, however the arguments are broken -------------


@pytest.mark.parametrize(
    "arguments",
    [
        CUT.format(to=ESCAPED_KEY),  # cut by max_tokens
        f'"{ESCAPED_KEY}"',  # a bare JSON string: valid JSON, but no object
        f'{{"key": "{ESCAPED_KEY}"}} trailing',  # crafted: text after the object
        f"key={ESCAPED_KEY}",  # free text
    ],
    ids=["cut", "json-string", "trailing", "free-text"],
)
async def test_a_key_spelled_with_escapes_in_unparsable_arguments_is_refused(
    arguments: str,
) -> None:
    answers = await chat("no-keys", history(arguments))
    assert refused(answers) == 403, "the model reads the escape as the letter: the key went by"
    assert immediate(answers[-1])[1]["error"]["message"] == KEY_MESSAGE


async def test_the_escaped_key_is_refused_before_claude_reads_it_as_unparsed_arguments() -> None:
    answers = await chat("no-keys", history(CUT.format(to=ESCAPED_KEY), model=CLAUDE), "anthropic")
    assert refused(answers) == 403


async def test_an_escaped_address_in_cut_arguments_is_masked_where_it_stands() -> None:
    body = history(CUT.format(to="jane\\u0040example.com"))
    answers = await chat("pii", body)
    # The escape the match came from is replaced; the rest stays as the model wrote it.
    assert chat_arguments(answers, body) == CUT.format(to="<EMAIL>")


async def test_claude_gets_the_masked_text_as_unparsed_arguments() -> None:
    body = history(CUT.format(to="jane\\u0040example.com"), model=CLAUDE)
    answers = await chat("pii", body, "anthropic")
    assert anthropic_input(answers, body) == {"unparsed_arguments": CUT.format(to="<EMAIL>")}


async def test_a_legacy_function_call_and_a_custom_tool_input_are_read_decoded() -> None:
    body = orjson.loads(history("{}"))
    message = body["messages"][1]
    message["function_call"] = {"name": "send_email", "arguments": CUT.format(to=ESCAPED_KEY)}
    del message["tool_calls"]
    assert refused(await chat("no-keys", orjson.dumps(body))) == 403
    del message["function_call"]
    custom = {"name": "shell", "input": f"curl -H {ESCAPED_KEY}"}
    message["tool_calls"] = [{"id": "call_1", "type": "custom", "custom": custom}]
    assert refused(await chat("no-keys", orjson.dumps(body))) == 403


async def test_the_text_as_written_is_still_read() -> None:
    # "\n" decodes to a newline, so the decoded reading has no "newsletter": the written one
    # does, and a model may read the backslash as a path's.
    policies = {"policies": [{"name": "words", "request": [
        {"name": "words", "literals": ["newsletter"], "case_insensitive": True}]}]}  # fmt: skip
    gateway = Gateway(config_with(policies, {"openai-chat": {"guardrails": "words"}}))
    answers = await gateway.send("/v1/chat/completions", history('{"path": "C:\\newsletter'))
    assert refused(answers) == 403


# --- the Responses API: function and custom tool calls, MCP calls ------------------------------


def responses_body(item: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "input": [
            {"role": "user", "content": "Email the report."}, item,
            {"type": "function_call_output", "call_id": "call_1", "output": "sent"}]}
    )  # fmt: skip


@pytest.mark.parametrize(
    "item",
    [
        {"type": "function_call", "call_id": "call_1", "name": "send_email",
         "arguments": CUT.format(to=ESCAPED_KEY)},
        {"type": "custom_tool_call", "call_id": "call_1", "name": "shell",
         "input": f"curl -H {ESCAPED_KEY}"},
        {"type": "mcp_call", "id": "mcp_1", "server_label": "mail", "name": "send",
         "arguments": CUT.format(to=ESCAPED_KEY)},
    ],
    ids=["function_call", "custom_tool_call", "mcp_call"],
)  # fmt: skip
async def test_a_responses_call_spelling_a_key_with_escapes_is_refused(
    item: dict[str, Any],
) -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-responses": {"guardrails": "no-keys"}}))
    answers = await gateway.send("/v1/responses", responses_body(item))
    assert refused(answers) == 403


async def test_a_responses_call_masks_an_escaped_address_in_place() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-responses": {"guardrails": "pii"}}))
    item = {"type": "function_call", "call_id": "call_1", "name": "send_email",
            "arguments": CUT.format(to="jane\\u0040example.com")}  # fmt: skip
    body = responses_body(item)
    answers = await gateway.send("/v1/responses", body)
    assert sent(answers, body)["input"][1]["arguments"] == CUT.format(to="<EMAIL>")


# --- the matchers on their own -----------------------------------------------------------------


def matchers(*configs: dict[str, Any]) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig(**config), 256) for config in configs))


PII = {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}


def masked(found: Matchers, arguments: str) -> str:
    rejecting, hits, _ = found.scan(arguments, json_text=True)
    assert rejecting is None
    return apply(arguments, hits)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        # Every escape of the match goes with it; escapes around it stay.
        ('{"to": "\\u006aane\\u0040example.com\\u002e', '{"to": "<EMAIL>\\u002e'),
        # A surrogate pair is one character; a lone half is no character: left as written.
        ('["\\ud83d\\ude00 jane\\u0040example.com', '["\\ud83d\\ude00 <EMAIL>'),
        ('["\\ud800 jane\\u0040example.com', '["\\ud800 <EMAIL>'),
        # An escaped backslash is a backslash: what follows it is no escape.
        ('["jane\\\\u0040example.com', '["jane\\\\u0040example.com'),
        # What is found as written and decoded alike is masked once.
        ('{"a": "jane@example.com", "b": "\\t', '{"a": "<EMAIL>", "b": "\\t'),
        # A card after an escaped newline: decoded, it stands alone.
        ('{"n": "x\\n4111111111111111', '{"n": "x\\n<CREDIT_CARD>'),
        # No escape: read as written, as before.
        ('{"to": "jane@example.com', '{"to": "<EMAIL>'),
        # An escape cut short, or no JSON escape, stays text.
        ('{"to": "\\u00', '{"to": "\\u00'),
        ('{"to": "\\x40 \\q', '{"to": "\\x40 \\q'),
    ],
    ids=["escapes", "pair", "lone-half", "escaped-backslash", "once", "newline", "plain",
         "cut-escape", "not-escapes"],
)  # fmt: skip
def test_unparsable_arguments_are_masked_where_the_match_was_written(
    arguments: str, expected: str
) -> None:
    assert masked(matchers(PII), arguments) == expected


def test_a_refusal_in_the_decoded_reading_names_what_it_found() -> None:
    found = matchers({"name": "keys", "patterns": [{"pattern": r"sk-[A-Za-z0-9]{32,64}",
                                                    "name": "KEY"}]})  # fmt: skip
    arguments = CUT.format(to=ESCAPED_KEY)
    rejecting, _, spans = found.scan(arguments, json_text=True)
    assert rejecting == 0
    # The span is where the key was written, escape included.
    assert [(arguments[s.start : s.end], s.label) for s in spans] == [(ESCAPED_KEY, "KEY")]
    assert KEY not in arguments
