"""Guardrail bypasses and bugs found in review, each through the processor as Envoy feeds it.

- a chat message's ``refusal`` parts (and an assistant's ``refusal``) are text the
  provider reads (the Anthropic and Bedrock translators turn them into text blocks, a
  system message's included), yet no guard read them.
- a Gemini part marked ``"thought": true`` was skipped wherever it stood: a client
  could mark its own text (a user turn's, the system instruction's) as a thought and
  send it to Google past every guard. Only the model's own thoughts are reasoning.
- an Anthropic ``mcp_tool_result`` block (what an MCP server returned, sent back in the
  history as the API wants) was not read, though its ``mcp_tool_use`` input was: its
  text reached the provider past every guard.
- in a stream, a match of an unbounded pattern (``\\d+``, ``[A-Za-z0-9+/]{40,}``) that
  kept growing was held whole, however long, not at most ``stream_max_match``
  characters as documented: the client got nothing until it ended, and each chunk
  scanned all of it again (CPU quadratic in its length, on the event loop).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.gemini_text import request_slots as gemini_request_slots
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.guardrails.stream import ArgumentsStream, StreamRejectedError, TextStream
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body

WORKSHOP = {"policies": [{"name": "workshop", "request": [
    {"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True},
    {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip


def chat_body(model: str, *messages: dict[str, Any]) -> bytes:
    return orjson.dumps({"model": model, "messages": list(messages)})


# --- refusal parts -------------------------------------------------------------------------

REFUSAL_MESSAGES = [
    {"role": "system", "content": [{"type": "refusal", "refusal": "Talk about credit cards."}]},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "Credit card 4111..."}]},
    {"role": "assistant", "content": None, "refusal": "I will not list credit card numbers."},
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
@pytest.mark.parametrize("message", REFUSAL_MESSAGES)
async def test_a_refused_word_in_a_refusal_part_is_refused(
    model: str, message: dict[str, Any]
) -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}}))
    body = chat_body(model, message, {"role": "user", "content": "Go on."})
    answers = await gateway.send("/v1/chat/completions", body)
    assert answers[-1].HasField("immediate_response"), "the refusal text reached the provider"
    status, error = immediate(answers[-1])
    assert status == 403
    assert error["error"]["code"] == "guardrail_rejected"


async def test_an_address_in_a_refusal_part_is_masked_before_the_provider() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-chat": {"guardrails": "workshop"}}))
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "ask jo@ex.com"}]}
    body = chat_body("gpt-4o-mini", refusal, {"role": "user", "content": "Go on."})
    answers = await gateway.send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])["messages"][0]["content"][0]
    assert sent == {"type": "refusal", "refusal": "ask <EMAIL>"}


# --- Gemini thought parts outside the model's turns ---------------------------------------

EMAIL_MASK = Matchers(
    (MatcherGuard(GuardConfig.model_validate({"name": "pii", "builtins": ["EMAIL"],
                                              "action": "mask"}), 256),)
)  # fmt: skip


def test_a_clients_text_marked_as_a_thought_is_still_guarded() -> None:
    said = {"text": "mail jane@example.com the plan", "thought": True}
    instruction = {"text": "owner bob@example.com", "thought": True}
    reasoning = {"text": "they said amy@example.com", "thought": True, "thoughtSignature": "c2ln"}
    body = {
        "systemInstruction": {"parts": [instruction]},
        "contents": [
            {"role": "user", "parts": [said]},
            {"role": "model", "parts": [reasoning, {"text": "Noted."}]},
        ],
    }
    for slot in gemini_request_slots(body):
        _, hits, _ = EMAIL_MASK.scan(slot.text, json_text=slot.is_json)
        slot.write(apply(slot.text, hits))
    assert said["text"] == "mail <EMAIL> the plan", "the user's 'thought' went to Google unread"
    assert instruction["text"] == "owner <EMAIL>"
    # The model's thought text is read too: no signature covers it (the
    # thoughtSignature stands for the hidden thinking and stays as it came).
    assert reasoning["text"] == "they said <EMAIL>"
    assert reasoning["thoughtSignature"] == "c2ln"


# --- Anthropic MCP tool results ------------------------------------------------------------


def messages_body(*assistant: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 50,
            "messages": [
                {"role": "user", "content": "Look it up."},
                {"role": "assistant", "content": list(assistant)},
                {"role": "user", "content": "Thanks, go on."},
            ],
        }
    )


MCP_USE = {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "lookup",
           "server_name": "crm", "input": {"q": "owner"}}  # fmt: skip


@pytest.mark.parametrize(
    "content",
    ["The credit card on file is ...", [{"type": "text", "text": "Credit card: ..."}]],
)
async def test_a_refused_word_in_an_mcp_tool_result_is_refused(content: Any) -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    result = {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False,
              "content": content}  # fmt: skip
    answers = await gateway.send("/v1/messages", messages_body(MCP_USE, result))
    assert answers[-1].HasField("immediate_response"), "the MCP result reached the provider"
    status, error = immediate(answers[-1])
    assert (status, error["type"]) == (403, "error")


async def test_an_address_in_an_mcp_tool_result_is_masked() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    result = {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False,
              "content": [{"type": "text", "text": "owner: jane@example.com"}]}  # fmt: skip
    answers = await gateway.send("/v1/messages", messages_body(MCP_USE, result))
    sent = upstream_body(answers[1])["messages"][1]["content"][1]
    assert sent["content"] == [{"type": "text", "text": "owner: <EMAIL>"}]


# --- unbounded matches in streams ----------------------------------------------------------


def matchers_of(*guards: dict[str, Any], cap: int = 256) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig.model_validate(g), cap) for g in guards))


DIGITS = {"name": "digits", "patterns": [r"\d+"], "action": "mask"}


def test_a_long_unbounded_match_is_held_at_most_stream_max_match_characters() -> None:
    stream = TextStream(matchers_of(DIGITS))
    released = stream.push("Account: ")
    for count in range(1, 501):  # 2000 digits, four at a time, as a model streams them
        released += stream.push("1234")
        assert held(stream) <= 256, f"{held(stream)} characters held after {4 * count}"
    assert released.startswith("Account: ****"), "the client got nothing of the run yet"
    released += stream.push(" done.") + stream.flush()
    assert released == "Account: **** done.", "not masked as in a buffered answer"


def held(stream: TextStream) -> int:
    """How many characters the stream has not released yet."""
    return len(stream._held)


def test_a_long_match_of_a_reject_pattern_ends_the_stream_before_it_ends() -> None:
    secret = {"name": "blob", "patterns": [r"[A-Za-z0-9+/]{40,}"], "action": "reject"}
    stream = TextStream(matchers_of(secret))
    released = stream.push("Here: ")
    with pytest.raises(StreamRejectedError):
        for _ in range(1000):
            released += stream.push("QUJD")
    assert "QUJD" not in released, "a piece of the refused text reached the client"


def test_a_long_unbounded_match_in_streamed_arguments_is_masked_as_it_comes() -> None:
    stream = ArgumentsStream(matchers_of(DIGITS))
    released = stream.push('{"n": "')
    for _ in range(500):
        released += stream.push("1234")
    assert len(released) > len('{"n": "'), "the arguments were held whole"
    released += stream.push('"}') + stream.flush()
    assert not any(c.isdigit() for c in released)
    assert orjson.loads(released)["n"].strip("*") == ""
