"""Guards read tool-call arguments as JSON, through the real Envoy with the official SDK.

An OpenAI client's history carries its tool calls' arguments as JSON text. The gateway
translates them into an object for Anthropic (the provider reads them decoded), so a
value spelled with JSON escapes must meet the guards decoded, and a masked argument
must still be JSON the translation can parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import mock_requests, running_stack

KEY = "team1-key"
KEY_MESSAGE = "API keys must not be sent to a model."
CLAUDE = "claude-3-5-haiku-latest"
# "sk-" and 40 letters and digits, with its "s" spelled as a JSON escape.
ESCAPED_SECRET = "\\u0073k-" + "a1B2c3D4e5" * 4
SEND_EMAIL: Any = {
    "type": "function",
    "function": {"name": "send_email", "parameters": {"type": "object", "properties": {}}},
}


def args_guards_config() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["guardrails"] = {
        "policies": [
            {"name": "args-guards",
             "request": [
                 {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"],
                  "message": KEY_MESSAGE},
                 {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}]},
        ]
    }  # fmt: skip
    for route in raw["routes"]:
        if route["name"] in ("openai-chat", "anthropic"):
            route["guardrails"] = "args-guards"
    return raw


@pytest.fixture(scope="module")
def args_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-tool-args-json")
    config = Path(workdir) / "gateway.yaml"
    config.write_text(yaml.safe_dump(args_guards_config(), sort_keys=False))
    with running_stack(workdir, config) as running:
        yield running


def gpt(stack: LocalStack, prefix: str = "") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}/v1", api_key=KEY, max_retries=0, timeout=30)


def history(arguments: str) -> Any:
    return [
        {"role": "user", "content": "Email the report to my manager."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send_email", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
    ]  # fmt: skip


def test_an_escaped_key_is_refused_before_it_is_translated_for_anthropic(
    args_stack: LocalStack,
) -> None:
    calls_before = len(mock_requests(args_stack))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gpt(args_stack, "/anthropic").chat.completions.create(
            model=CLAUDE,
            tools=[SEND_EMAIL],
            messages=history(f'{{"auth": "{ESCAPED_SECRET}"}}'),
        )
    assert refused.value.status_code == 403
    assert KEY_MESSAGE in refused.value.message
    assert len(mock_requests(args_stack)) == calls_before, "Anthropic got the decoded key"


def test_masked_arguments_stay_json_anthropic_gets_as_input(args_stack: LocalStack) -> None:
    # An escaped address, and a card written as a JSON number: before, the address passed
    # and the card was masked into invalid JSON, which the translation refused with a 400.
    arguments = '{"to": "jane\\u0040example.com", "card": 4111111111111111}'
    gpt(args_stack, "/anthropic").chat.completions.create(
        model=CLAUDE, tools=[SEND_EMAIL], messages=history(arguments)
    )
    blocks = mock_requests(args_stack)[-1]["json"]["messages"][1]["content"]
    tool_use = next(block for block in blocks if block["type"] == "tool_use")
    assert tool_use["input"] == {"to": "<EMAIL>", "card": "<CREDIT_CARD>"}


def test_a_card_after_an_escaped_newline_reaches_the_provider_masked(
    args_stack: LocalStack,
) -> None:
    gpt(args_stack).chat.completions.create(
        model="gpt-4o-mini",
        tools=[SEND_EMAIL],
        messages=history('{"note": "x\\n4111111111111111"}'),
    )
    sent = mock_requests(args_stack)[-1]["json"]["messages"][1]["tool_calls"][0]["function"]
    assert json.loads(sent["arguments"]) == {"note": "x\n<CREDIT_CARD>"}


def test_cut_arguments_reach_claude_masked_and_an_escaped_key_in_them_is_refused(
    args_stack: LocalStack,
) -> None:
    # A call cut by max_tokens is no JSON: Claude gets it as unparsed_arguments, where it
    # reads the escapes as their characters, so the guards read them decoded too.
    calls_before = len(mock_requests(args_stack))
    with pytest.raises(openai.PermissionDeniedError):
        gpt(args_stack, "/anthropic").chat.completions.create(
            model=CLAUDE, tools=[SEND_EMAIL], messages=history(f'{{"auth": "{ESCAPED_SECRET}')
        )
    assert len(mock_requests(args_stack)) == calls_before, "Claude got the escaped key"
    gpt(args_stack, "/anthropic").chat.completions.create(
        model=CLAUDE, tools=[SEND_EMAIL], messages=history('{"to": "jane\\u0040example.com", "b')
    )
    blocks = mock_requests(args_stack)[-1]["json"]["messages"][1]["content"]
    tool_use = next(block for block in blocks if block["type"] == "tool_use")
    assert tool_use["input"] == {"unparsed_arguments": '{"to": "<EMAIL>", "b'}
