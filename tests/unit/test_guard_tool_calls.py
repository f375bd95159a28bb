"""Guards read the arguments of tool calls, through the processor.

A client could put a key or personal data in the arguments of a tool call of its
conversation history (OpenAI's ``tool_calls[].function.arguments`` and legacy
``function_call.arguments``, Anthropic's ``tool_use`` ``input``) and it reached the
provider unread; a buffered answer's tool calls reached the client unread too.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body
from tests.unit.test_guardrail_review import Hook, hooked, serving

KEY_MESSAGE = "API keys must not be sent to a model."
SECRET = "sk-live4f9a8b7c6d5e"
POLICIES = {
    "policies": [
        {"name": "no-keys", "request": [
            {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{8,}"], "message": KEY_MESSAGE}]},
        {"name": "pii",
         "request": [{"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}],
         "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"},
                      {"name": "keys-out", "patterns": [{"pattern": r"sk-[A-Za-z0-9]{8,}",
                                                         "name": "KEY"}], "action": "mask"}]},
    ]
}  # fmt: skip


def openai_history(assistant: dict[str, Any], model: str = "gpt-4o-mini") -> bytes:
    """A conversation whose assistant turn called a tool, answered by the tool."""
    return orjson.dumps(
        {
            "model": model,
            "messages": [
                {"role": "user", "content": "Email the report to my manager."},
                {"role": "assistant", "content": None, **assistant},
                {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
            ],
        }
    )


def openai_call(arguments: str) -> dict[str, Any]:
    return {
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send_email", "arguments": arguments}}
        ]
    }  # fmt: skip


def anthropic_history(tool_input: Any) -> bytes:
    use = {"type": "tool_use", "id": "toolu_1", "name": "send_email", "input": tool_input}
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Email the report to my manager."},
                {"role": "assistant", "content": [{"type": "text", "text": "Sending."}, use]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sent"}]},
            ],
        }
    )  # fmt: skip


# --- requests: OpenAI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "assistant",
    [
        openai_call(orjson.dumps({"to": "boss", "auth": SECRET}).decode()),
        # The deprecated single call is still accepted by OpenAI-compatible servers.
        {"function_call": {"name": "send_email", "arguments": f'{{"auth": "{SECRET}"}}'}},
    ],
    ids=["tool_calls", "function_call"],
)
async def test_a_key_in_openai_tool_call_arguments_is_refused(assistant: dict[str, Any]) -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "no-keys"}}))
    answers = await gateway.send("/v1/chat/completions", openai_history(assistant))
    status, body = immediate(answers[-1])
    assert status == 403, "the key reached the provider inside the tool call's arguments"
    assert body["error"]["message"] == KEY_MESSAGE
    assert gateway.log()["guardrails"] == [
        {"guard": "api-keys", "phase": "request", "action": "reject"}
    ]


async def test_pii_in_openai_tool_call_arguments_is_masked_and_stays_a_string() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    arguments = orjson.dumps({"to": "jane@example.com", "body": "see attached"}).decode()
    answers = await gateway.send("/v1/chat/completions", openai_history(openai_call(arguments)))
    sent = upstream_body(answers[1])["messages"][1]["tool_calls"][0]
    assert sent["function"]["arguments"] == '{"to":"<EMAIL>","body":"see attached"}'
    assert sent["function"]["name"] == "send_email"
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]


async def test_pii_in_legacy_function_call_arguments_is_masked() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    call = {"function_call": {"name": "charge", "arguments": '{"card": "4111 1111 1111 1111"}'}}
    answers = await gateway.send("/v1/chat/completions", openai_history(call))
    sent = upstream_body(answers[1])["messages"][1]["function_call"]
    assert sent == {"name": "charge", "arguments": '{"card": "<CREDIT_CARD>"}'}


async def test_pii_in_a_custom_tool_call_input_is_masked() -> None:
    # A custom tool (free-form input, no JSON schema) is called with a plain string.
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    custom = {"name": "shell", "input": "mail jane@example.com"}
    call = {"tool_calls": [{"id": "call_1", "type": "custom", "custom": custom}]}
    answers = await gateway.send("/v1/chat/completions", openai_history(call))
    sent = upstream_body(answers[1])["messages"][1]["tool_calls"][0]["custom"]
    assert sent == {"name": "shell", "input": "mail <EMAIL>"}


# --- requests: Anthropic -------------------------------------------------------------------


async def test_a_key_in_an_anthropic_tool_use_input_is_refused_in_anthropic_shape() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "no-keys"}}))
    tool_input = {"to": "boss", "headers": [{"name": "authorization", "value": SECRET}]}
    answers = await gateway.send("/v1/messages", anthropic_history(tool_input))
    status, error = immediate(answers[-1])
    assert status == 403, "the key reached the provider inside the tool_use input"
    assert error == {"type": "error", "error": {"type": "permission_error", "message": KEY_MESSAGE}}


async def test_pii_in_anthropic_tool_use_input_is_masked_leaf_by_leaf() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "pii"}}))
    tool_input = {
        "to": "jane@example.com",
        "cc": ["ops@example.com", 3, True, None],
        "payment": {"card": {"number": "card 4111 1111 1111 1111"}, "amount": 12.5},
        # A parameter name is read too: a secret or an address there would reach the
        # provider as surely as in a value.
        "x@example.com": "kept",
    }
    answers = await gateway.send("/v1/messages", anthropic_history(tool_input))
    sent = upstream_body(answers[1])["messages"][1]["content"][1]
    assert sent["input"] == {
        "to": "<EMAIL>",
        "cc": ["<EMAIL>", 3, True, None],
        "payment": {"card": {"number": "card <CREDIT_CARD>"}, "amount": 12.5},
        "<EMAIL>": "kept",
    }
    assert list(sent["input"]) == ["to", "cc", "payment", "<EMAIL>"]  # order kept
    assert sent["name"] == "send_email" and sent["id"] == "toolu_1"


async def test_a_server_tool_use_input_is_read_like_a_tool_use() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "no-keys"}}))
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
              "input": {"query": f"who owns {SECRET}"}}  # fmt: skip
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Search for it."},
                {"role": "assistant", "content": [search]},
                {"role": "user", "content": "And?"},
            ],
        }
    )
    status, _ = immediate((await gateway.send("/v1/messages", body))[-1])
    assert status == 403


async def test_a_tool_use_without_input_goes_on_untouched() -> None:
    # Malformed, and the provider's to refuse: the guard has nothing to read in it.
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "pii"}}))
    body = orjson.loads(anthropic_history({}))
    del body["messages"][1]["content"][1]["input"]
    answers = await gateway.send("/v1/messages", orjson.dumps(body))
    assert answers[1].HasField("request_body")  # on to the provider, not refused
    assert gateway.log()["guardrails"] == [{"guard": "pii", "phase": "request", "action": "pass"}]


async def test_a_leaf_nested_as_deep_as_a_body_may_go_is_still_read() -> None:
    # The default limits refuse bodies nesting past 64 levels; the tool input starts at
    # level 6 (body, messages, message, content, block, input).
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "pii"}}))
    tool_input: Any = "to jane@example.com"
    for _ in range(56):
        tool_input = {"next": tool_input}
    answers = await gateway.send("/v1/messages", anthropic_history(tool_input))
    sent = upstream_body(answers[1])["messages"][1]["content"][1]["input"]
    for _ in range(56):
        sent = sent["next"]
    assert sent == "to <EMAIL>"


# --- requests: webhooks --------------------------------------------------------------------


async def test_a_request_webhook_sees_tool_call_arguments_and_may_mask_them() -> None:
    def mask(call: dict[str, Any]) -> dict[str, Any]:
        messages = call["body"]["messages"]
        masked = [{**m, "content": m["content"].replace(SECRET, "[key]")} for m in messages]
        return {"action": {"body": {"messages": masked}, "reason": "keys"}}

    hook = Hook(mask)
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port))
        arguments = orjson.dumps({"auth": SECRET}).decode()
        answers = await gateway.send("/v1/chat/completions", openai_history(openai_call(arguments)))
    seen = hook.calls[0]["body"]["messages"]
    assert {"role": "assistant", "content": arguments} in seen
    sent = upstream_body(answers[1])["messages"][1]["tool_calls"][0]["function"]
    assert sent["arguments"] == '{"auth":"[key]"}'


# --- buffered answers ----------------------------------------------------------------------


async def test_a_buffered_openai_answer_has_its_tool_call_arguments_masked() -> None:
    gateway = Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "pii"}}))
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            **openai_call(orjson.dumps({"to": "jane@example.com", "auth": SECRET}).decode())}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }  # fmt: skip
    answers = await gateway.send(
        "/v1/chat/completions",
        openai_history(openai_call("{}")),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    call = shown["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"to":"<EMAIL>","auth":"<KEY>"}'
    line = gateway.log()
    assert {"guard": "keys-out", "phase": "response", "action": "mask"} in line["guardrails"]
    assert line["completion_tokens"] == 9


async def test_an_answer_translated_from_anthropic_has_its_tool_call_arguments_masked() -> None:
    # An OpenAI client on the /anthropic route: the guard reads the translated answer.
    gateway = Gateway(config_with(POLICIES, {"anthropic": {"guardrails": "pii"}}))
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "send_email",
                     "input": {"to": "jane@example.com"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 9},
    }  # fmt: skip
    answers = await gateway.send(
        "/anthropic/v1/chat/completions",
        openai_history(openai_call("{}"), model="claude-3-5-haiku-latest"),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    call = shown["choices"][0]["message"]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"to": "<EMAIL>"}
    assert shown["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_buffered_anthropic_answer_has_its_tool_use_input_masked() -> None:
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "pii"}}))
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [
            {"type": "text", "text": "Sending to jane@example.com."},
            {"type": "tool_use", "id": "toolu_1", "name": "send_email",
             "input": {"to": ["jane@example.com"], "auth": SECRET, "retries": 2}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 9},
    }  # fmt: skip
    answers = await gateway.send(
        "/v1/messages",
        anthropic_history({}),
        response_headers(200, {"content-type": "application/json"}),
        response_body(orjson.dumps(answer)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert shown["content"][0]["text"] == "Sending to <EMAIL>."
    assert shown["content"][1]["input"] == {"to": ["<EMAIL>"], "auth": "<KEY>", "retries": 2}
    assert gateway.log()["completion_tokens"] == 9
