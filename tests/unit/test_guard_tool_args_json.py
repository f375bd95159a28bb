"""Guards read OpenAI tool-call arguments as the JSON they are.

Arguments (``tool_calls[].function.arguments``, ``custom.input``, the deprecated
``function_call.arguments``, in a request's history and a buffered answer) are JSON
text. Read as raw text, a value spelled with JSON escapes went past the guards while
the provider (after translation to Anthropic or Bedrock) and the client read it
decoded; ``\\n`` before a card number hid it; a card written as a JSON number was
masked into invalid JSON. Each string of the arguments is now read decoded, each
number as written, and a mask keeps the arguments valid JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.json_text import pieces
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.processor import Processor
from extproc.runtime import Runtime
from extproc.stages.pipeline import default_stages
from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate

KEY_MESSAGE = "API keys must not be sent to a model."
# A key as a REJECT guard for sk-[A-Za-z0-9]{32,64} knows it: 40 characters after "sk-".
KEY = "sk-" + "a1B2c3D4e5" * 4
# The same key as JSON text may spell it: "s" as \u0073.
ESCAPED_KEY = "\\u0073" + KEY[1:]
POLICIES = {
    "policies": [
        {"name": "no-keys", "request": [
            {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE}]},
        {"name": "pii",
         "request": [{"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}],
         "response": [{"name": "pii-out", "builtins": ["EMAIL", "CREDIT_CARD"],
                       "action": "mask"}]},
        {"name": "quoted",
         "request": [{"name": "quoted", "builtins": ["EMAIL"], "action": "mask",
                      "replacement": 'an "address" \\ here'}]},
    ]
}  # fmt: skip
CLAUDE = "claude-3-5-haiku-latest"
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SEND_EMAIL = {"type": "function", "function": {"name": "send_email", "parameters": {}}}


def history(arguments: str, model: str = "gpt-4o-mini", **call: Any) -> bytes:
    """A conversation whose assistant turn called send_email with ``arguments`` (as written)."""
    function = {"name": "send_email", "arguments": arguments}
    return orjson.dumps(
        {
            "model": model,
            "tools": [SEND_EMAIL],
            "messages": [
                {"role": "user", "content": "Email the report to my manager."},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": function, **call}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
            ],
        }
    )  # fmt: skip


def sent(answers: list[Any], body: bytes) -> dict[str, Any]:
    """The body the provider receives: the gateway's rewrite, or the client's unchanged."""
    assert answers[1].HasField("request_body"), "refused: nothing reached the provider"
    mutation = answers[1].request_body.response.body_mutation
    forwarded: dict[str, Any] = orjson.loads(mutation.body if mutation.body else body)
    return forwarded


def refused(answers: list[Any]) -> int | None:
    """The status the client got when the gateway refused, else None."""
    last = answers[-1]
    return immediate(last)[0] if last.HasField("immediate_response") else None


async def send_history(policy: str, arguments: str) -> str:
    """The arguments the OpenAI-compatible provider receives for these."""
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": policy}}))
    body = history(arguments)
    answers = await gateway.send("/v1/chat/completions", body)
    arguments = sent(answers, body)["messages"][1]["tool_calls"][0]["function"]["arguments"]
    return arguments


async def refusal(policy: str, arguments: str) -> int | None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": policy}}))
    return refused(await gateway.send("/v1/chat/completions", history(arguments)))


# --- 1. a value spelled with JSON escapes -------------------------------------------------


async def test_a_key_spelled_with_a_json_escape_is_refused() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "no-keys"}}))
    answers = await gateway.send("/v1/chat/completions", history(f'{{"key": "{ESCAPED_KEY}"}}'))
    assert refused(answers) == 403, "the provider reads the key decoded: it went past the guard"
    assert immediate(answers[-1])[1]["error"]["message"] == KEY_MESSAGE


async def test_an_address_spelled_with_a_json_escape_is_masked_as_valid_json() -> None:
    arguments = await send_history("pii", '{"to": "jane\\u0040example.com", "cc": "ops\\/x"}')
    # The escaped match is masked; the rest stays as the model wrote it.
    assert arguments == '{"to": "<EMAIL>", "cc": "ops\\/x"}'


async def test_a_key_escaped_in_arguments_is_refused_before_translation_to_anthropic() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic": {"guardrails": "no-keys"}}))
    body = history(f'{{"key": "{ESCAPED_KEY}"}}', model=CLAUDE)
    answers = await gateway.send("/anthropic/v1/chat/completions", body)
    assert refused(answers) == 403, "Anthropic got the decoded key in the tool_use input"


def anthropic_input(answers: list[Any], body: bytes) -> Any:
    blocks = sent(answers, body)["messages"][1]["content"]
    return next(block for block in blocks if block["type"] == "tool_use")["input"]


async def test_an_escaped_address_is_masked_in_the_anthropic_tool_use_input() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic": {"guardrails": "pii"}}))
    body = history('{"to": "jane\\u0040example.com"}', model=CLAUDE)
    answers = await gateway.send("/anthropic/v1/chat/completions", body)
    assert anthropic_input(answers, body) == {"to": "<EMAIL>"}


async def test_an_escaped_address_is_masked_in_the_bedrock_tool_use_input() -> None:
    config = config_with(POLICIES, {"bedrock": {"guardrails": "pii"}})
    gateway = Gateway(config)
    runtime = Runtime(config, gateway.services)
    await runtime.start()  # SigV4 credentials are loaded there
    gateway.processor = Processor(lambda: runtime, default_stages())
    body = history('{"to": "jane\\u0040example.com"}', model=BEDROCK_MODEL)
    try:
        answers = await gateway.send(f"/bedrock/{BEDROCK_MODEL}", body)
    finally:
        await runtime.close()
    content = sent(answers, body)["messages"][1]["content"]
    assert content[0]["toolUse"]["input"] == {"to": "<EMAIL>"}


async def test_a_masked_answer_hides_an_escaped_address_from_a_client_reading_json() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "send_email", "arguments": '{"to":"jane\\u0040example.com"}'},
    }
    answer = {
        "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }  # fmt: skip
    raw = orjson.dumps(answer)
    answers = await gateway.send(
        "/v1/chat/completions",
        history("{}"),
        response_headers(200, {"content-type": "application/json"}),
        response_body(raw),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body or raw)
    arguments = shown["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    # What the client's code does with arguments: json.loads.
    assert json.loads(arguments) == {"to": "<EMAIL>"}


# --- 2. an escape right before a number ------------------------------------------------------


async def test_a_card_after_an_escaped_newline_is_masked() -> None:
    arguments = await send_history("pii", '{"note": "x\\n4111111111111111"}')
    assert arguments == '{"note": "x\\n<CREDIT_CARD>"}'


# --- 3. a match in a JSON number --------------------------------------------------------------


async def test_a_card_written_as_a_json_number_is_masked_into_a_json_string() -> None:
    arguments = await send_history("pii", '{"card": 4111111111111111, "amount": 12.5}')
    assert arguments == '{"card": "<CREDIT_CARD>", "amount": 12.5}'


async def test_a_card_in_a_number_with_a_fraction_leaves_one_json_string() -> None:
    arguments = await send_history("pii", "[4111111111111111.0]")
    assert json.loads(arguments) == ["<CREDIT_CARD>.0"]


async def test_a_card_written_as_a_number_no_longer_fails_the_anthropic_translation() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic": {"guardrails": "pii"}}))
    body = history('{"card": 4111111111111111}', model=CLAUDE)
    answers = await gateway.send("/anthropic/v1/chat/completions", body)
    assert refused(answers) is None, "refused with a 400: the mask broke the JSON"
    assert anthropic_input(answers, body) == {"card": "<CREDIT_CARD>"}


async def test_legacy_function_call_arguments_are_read_as_json() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    body = orjson.loads(history("{}"))
    message = body["messages"][1]
    del message["tool_calls"]
    message["function_call"] = {"name": "charge", "arguments": '{"card": 4111111111111111}'}
    raw = orjson.dumps(body)
    answers = await gateway.send("/v1/chat/completions", raw)
    arguments = sent(answers, raw)["messages"][1]["function_call"]["arguments"]
    assert arguments == '{"card": "<CREDIT_CARD>"}'


async def test_a_custom_tool_input_that_is_json_is_read_decoded() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "no-keys"}}))
    body = orjson.loads(history("{}"))
    body["messages"][1]["tool_calls"] = [
        {"id": "call_1", "type": "custom",
         "custom": {"name": "shell", "input": f'{{"cmd": "curl -H {ESCAPED_KEY}"}}'}}
    ]  # fmt: skip
    answers = await gateway.send("/v1/chat/completions", orjson.dumps(body))
    assert refused(answers) == 403


# --- the view keeps everything else ------------------------------------------------------------


async def test_a_replacement_holding_quotes_and_backslashes_is_escaped() -> None:
    arguments = await send_history("quoted", '{"to": "jane@example.com"}')
    assert json.loads(arguments) == {"to": 'an "address" \\ here'}


async def test_the_models_formatting_and_other_escapes_are_kept() -> None:
    written = (
        '{\n  "subject" : "caf\\u00e9 \\ud83d\\ude00",\n'
        '  "to":"\\ud83d\\ude00 jane@example.com\\t"\n}'
    )
    arguments = await send_history("pii", written)
    assert arguments == written.replace("jane@example.com", "<EMAIL>")


@pytest.mark.parametrize("key", [KEY, ESCAPED_KEY], ids=["plain", "escaped"])
async def test_a_key_written_as_a_parameter_name_is_refused(key: str) -> None:
    # Parameter names were read (as raw text) before: a client must not carry a key there.
    assert await refusal("no-keys", f'{{"{key}": true}}') == 403


async def test_a_key_cut_across_two_values_is_not_one_match() -> None:
    # Each string is read on its own, as an Anthropic input's strings are.
    half = len(KEY) // 2
    arguments = f'{{"a": "{KEY[:half]}", "b": "{KEY[half:]}"}}'
    assert await refusal("no-keys", arguments) is None


@pytest.mark.parametrize(
    ("arguments", "masked"),
    [
        # Cut short by the model: not JSON, read as raw text as before.
        ('{"to": "jane@example.com', '{"to": "<EMAIL>'),
        ("mail jane@example.com now", "mail <EMAIL> now"),
    ],
    ids=["truncated", "plain-text"],
)
async def test_arguments_that_are_not_json_are_read_as_text(arguments: str, masked: str) -> None:
    assert await send_history("pii", arguments) == masked


# --- the matchers on their own -----------------------------------------------------------------


def matchers(*configs: dict[str, Any]) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig(**config), 256) for config in configs))


def masked(found: Matchers, arguments: str) -> str:
    rejecting, hits, _ = found.scan(arguments, json_text=True)
    assert rejecting is None
    return apply(arguments, hits)


PII = {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD", "PHONE_NUMBER"], "action": "mask"}


def test_a_refusal_names_what_the_first_refusing_guard_found_in_any_string() -> None:
    found = matchers(
        {"name": "cards", "builtins": ["CREDIT_CARD"]},
        {"name": "keys", "patterns": [{"pattern": r"sk-[A-Za-z0-9]{32,64}", "name": "KEY"}]},
    )
    arguments = f'{{"k": "{ESCAPED_KEY}", "n": [1, 4111111111111111]}}'
    rejecting, _, spans = found.scan(arguments, json_text=True)
    # The card guard is listed first: it refuses, though the key comes first in the text.
    assert rejecting == 0
    assert [(arguments[s.start : s.end], s.label) for s in spans] == [
        ("4111111111111111", "CREDIT_CARD")
    ]


def test_a_match_spelled_with_escapes_is_replaced_whole() -> None:
    arguments = '{"to": "\\u006aane\\u0040example.com\\u002e"}'
    assert masked(matchers(PII), arguments) == '{"to": "<EMAIL>\\u002e"}'


def test_two_matchers_masking_one_number_leave_one_string() -> None:
    found = matchers(
        {"name": "head", "patterns": [{"pattern": r"^-\d+", "name": "HEAD"}], "action": "mask"},
        {"name": "tail", "patterns": [{"pattern": r"\d+$", "name": "TAIL"}], "action": "mask"},
    )
    _, hits, _ = found.scan("[-5.5e42, 7]", json_text=True)
    assert {hit.guard for hit in hits} == {0, 1}  # both guards are recorded as masking
    assert json.loads(apply("[-5.5e42, 7]", hits)) == ["<HEAD>.5e<TAIL>", "<TAIL>"]


def test_the_newline_escape_no_longer_reads_as_a_letter_before_a_phone_number() -> None:
    assert masked(matchers(PII), '["call\\n555-123-4567"]') == '["call\\n<PHONE_NUMBER>"]'


def test_arguments_without_a_json_object_or_array_are_read_as_text() -> None:
    found = matchers(PII)
    # A custom tool's free text that happens to be a JSON scalar keeps today's reading.
    assert masked(found, "4111111111111111") == "<CREDIT_CARD>"
    assert masked(found, '"jane@example.com"') == '"<EMAIL>"'
    assert pieces("[1, 2") is None and pieces("") is None and pieces("  ") is None


# --- the JSON view, for any JSON -----------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Strings with what JSON escapes (quotes, backslashes, controls) and what it may (non-ASCII,
# characters outside the BMP, written as surrogate pairs by ensure_ascii).
texts = st.text(
    alphabet=st.sampled_from('ab1@"\\/\n\t\x00\x7f\u00e9\u2028\U0001f600 '), max_size=10
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False,
    allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
documents = st.lists(values, max_size=4) | st.dictionaries(texts, values, max_size=4)
spellings = st.fixed_dictionaries({"ensure_ascii": st.booleans(), "indent": st.none() | st.just(1)})


def strings_and_numbers(value: Any) -> list[str]:
    """What the view must find, in document order: strings (keys too) and numbers as written."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *strings_and_numbers(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_and_numbers(item)]
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [json.dumps(value)]
    return []


@FUZZ
@given(documents, spellings, st.data())
def test_the_view_reads_what_a_json_parser_reads(
    document: Any, spelling: dict[str, Any], data: st.DataObject
) -> None:
    text = json.dumps(document, **spelling)
    found = pieces(text)
    assert found is not None
    assert [piece.text for piece in found] == strings_and_numbers(document)
    for piece in found:
        if piece.number or not piece.text:
            continue
        start = data.draw(st.integers(0, len(piece.text)))
        end = data.draw(st.integers(start, len(piece.text)))
        # A span of the decoded text maps onto JSON text that decodes to exactly it.
        raw = text[piece.raw(start) : piece.raw(end)]
        assert json.loads(f'"{raw}"') == piece.text[start:end]


def masked_value(value: Any, pattern: str, replacement: str) -> Any:
    """The document a masked argument must parse to: each string and number masked alone."""

    def mask(text: str) -> str:
        return re.sub(pattern, replacement.replace("\\", "\\\\"), text)

    if isinstance(value, dict):
        return {mask(key): masked_value(item, pattern, replacement) for key, item in value.items()}
    if isinstance(value, list):
        return [masked_value(item, pattern, replacement) for item in value]
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        written = json.dumps(value)
        return value if mask(written) == written else mask(written)
    return value


@FUZZ
@given(documents, spellings, st.sampled_from([r"[ab]+", r"\d+", r"[\n\t\x00@]", "e\u00e9"]))
def test_a_masked_document_stays_the_same_json_with_its_matches_replaced(
    document: Any, spelling: dict[str, Any], pattern: str
) -> None:
    replacement = 'R"\\\n'  # every character a replacement could break a string with
    found = matchers({"name": "m", "patterns": [pattern], "action": "mask",
                      "replacement": replacement})  # fmt: skip
    text = json.dumps(document, **spelling)
    result = json.loads(masked(found, text))
    expected = masked_value(document, pattern, replacement)
    if isinstance(document, dict) and len(set(expected)) < len(expected):
        return  # two keys masked alike: a JSON object keeps the last (said in the docs)
    assert result == expected
