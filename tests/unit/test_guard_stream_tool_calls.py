"""Response guards on streamed tool calls: the arguments a client assembles are guarded
as a buffered answer's are, whatever the chunks they were cut into.

OpenAI streams carry them as ``delta.tool_calls[j].function.arguments`` fragments (the
first delta of a call carries its id and name), Anthropic streams as ``input_json_delta``
``partial_json`` fragments of a ``tool_use`` block. Each call is a channel of its own.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.content import openai_answer_slots
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.guardrails.stream import StreamGuard
from tests.unit.guard_helpers import (
    ERROR,
    anthropic_event,
    anthropic_stream_text,
    openai_chunk,
    openai_stream_text,
    play,
)
from tests.unit.test_guard_flow import Gateway
from tests.unit.test_guardrail_review import DONE, Hook, hooked, serving, stream_through

PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")
KEYS = GuardConfig(name="keys", patterns=[{"pattern": r"sk-[A-Za-z0-9]{8,}"}], action="reject")
SECRET = "sk-live4f9a8b7c6d5e"


def guard_of(*configs: GuardConfig, anthropic: bool = False) -> StreamGuard:
    return StreamGuard(Matchers(tuple(MatcherGuard(c, 256) for c in configs)), anthropic=anthropic)


# --- OpenAI chunks ------------------------------------------------------------------------


# A tool call's type -> the field of its streamed text: a function's JSON arguments, a
# custom tool's free input.
TEXT_FIELD = {"function": "arguments", "custom": "input"}


def call_chunk(
    text: str | None,
    call: int = 0,
    *,
    choice: int = 0,
    name: str | None = None,
    finish: str | None = None,
    kind: str = "function",
) -> bytes:
    """A chunk with one tool call delta of type ``kind``; ``name`` makes it the call's first
    (id, type, name)."""
    delta: dict[str, Any] = {"index": call}
    holder: dict[str, Any] = {}
    if name is not None:
        delta.update(id=f"call_{call}", type=kind)
        holder["name"] = name
    if text is not None:
        holder[TEXT_FIELD[kind]] = text
    delta[kind] = holder
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": choice,
                "delta": {"tool_calls": [delta]},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def openai_events(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]


def openai_calls(body: bytes, kind: str = "function") -> dict[tuple[int, int], dict[str, str]]:
    """What an OpenAI client assembles of the calls of type ``kind``: each call's id, name and
    text (``arguments``, a custom tool's ``input``), by (choice, index)."""
    field = TEXT_FIELD[kind]
    calls: dict[tuple[int, int], dict[str, str]] = {}
    for event in openai_events(body):
        for choice in event.get("choices") or ():
            for delta in choice.get("delta", {}).get("tool_calls") or ():
                holder = delta.get(kind)
                if not isinstance(holder, dict):
                    continue
                call = calls.setdefault((choice["index"], delta["index"]), {field: ""})
                if "id" in delta:
                    call["id"] = delta["id"]
                if "name" in holder:
                    call["name"] = holder["name"]
                call[field] += holder.get(field) or ""
    return calls


def test_an_address_cut_over_argument_fragments_reaches_the_client_masked() -> None:
    body = play(
        guard_of(PII),
        [
            call_chunk("", name="send_email"),
            call_chunk('{"to": "jane.'),
            call_chunk("doe@exam"),
            call_chunk('ple.com", "subject": "hi"}'),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert openai_calls(body) == {
        (0, 0): {
            "id": "call_0",
            "name": "send_email",
            "arguments": '{"to": "<EMAIL>", "subject": "hi"}',
        }
    }
    assert b"jane" not in body and b"doe@" not in body
    assert body.endswith(DONE)


def test_a_key_in_streamed_arguments_ends_the_stream_with_the_error_event() -> None:
    guard = guard_of(PII, KEYS)
    body = play(
        guard,
        [
            openai_chunk("Calling the tool."),
            call_chunk("", name="deploy"),
            call_chunk('{"token": "sk-live4f9a'),
            call_chunk('8b7c6d5e"}'),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert SECRET[:8] not in body.decode()
    assert body.endswith(b"data: " + ERROR + b"\n\n" + DONE)
    assert guard.rejected_by == 1
    # The text before the call went out (but for "tool.", which could begin an address
    # and was still held when the stream ended).
    assert openai_stream_text(body) == "Calling the "


def test_held_argument_characters_go_out_before_the_finish_chunk() -> None:
    body = play(
        guard_of(PII),
        [
            call_chunk('{"ticket": "4111', name="file_ticket"),
            call_chunk(None, finish="tool_calls"),  # the finish chunk, no arguments
            DONE,
        ],
    )
    events = openai_events(body)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "tool_calls"]
    # What could have begun a card number was held, and released as a delta of the call.
    assert openai_calls(body)[(0, 0)]["arguments"] == '{"ticket": "4111'
    assert events[1]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": "4111"}}]
    }


def test_held_characters_join_arguments_the_finish_chunk_itself_carries() -> None:
    body = play(
        guard_of(PII),
        [
            call_chunk('{"to": "ann@exa', name="send_email"),
            call_chunk('mple.org"}', finish="tool_calls"),
            DONE,
        ],
    )
    assert openai_calls(body)[(0, 0)]["arguments"] == '{"to": "<EMAIL>"}'
    assert len(openai_events(body)) == 2  # no extra chunk was needed


def test_arguments_whole_in_the_first_delta_are_masked_and_keep_the_calls_name() -> None:
    body = play(
        guard_of(PII),
        [
            call_chunk('{"to": "jane@example.com"}', name="send_email"),
            openai_chunk(None, "tool_calls"),
        ],
    )
    assert openai_calls(body) == {
        (0, 0): {"id": "call_0", "name": "send_email", "arguments": '{"to": "<EMAIL>"}'}
    }


def test_each_tool_call_is_a_channel_of_its_own() -> None:
    # Parallel calls, their fragments interleaved: a call starting does not close the
    # one before it, and digits at the end of one call never join the next call's.
    body = play(
        guard_of(PII),
        [
            call_chunk('{"a": "4111 1111 ', 0, name="one"),
            call_chunk('{"b": "1111 1111', 1, name="two"),
            call_chunk('1111 1111"}', 0),
            call_chunk(' done"}', 1),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    calls = openai_calls(body)
    assert calls[(0, 0)]["arguments"] == '{"a": "<CREDIT_CARD>"}'
    assert calls[(0, 1)]["arguments"] == '{"b": "1111 1111 done"}'


def test_the_text_and_the_tool_calls_of_a_choice_are_guarded_apart() -> None:
    body = play(
        guard_of(PII),
        [
            openai_chunk("card 4111 1111 "),
            call_chunk('{"n": "1111 1111"}', name="lookup"),
            openai_chunk(None, "tool_calls"),
        ],
    )
    assert openai_stream_text(body) == "card 4111 1111 "
    assert openai_calls(body)[(0, 0)]["arguments"] == '{"n": "1111 1111"}'


def test_choices_tool_calls_are_guarded_apart() -> None:
    body = play(
        guard_of(PII),
        [
            call_chunk('{"to": "jane@', name="send", choice=0),
            call_chunk('{"to": "bob@', name="send", choice=1),
            call_chunk('example.com"}', choice=0),
            call_chunk("nowhere", choice=1),
            openai_chunk(None, "tool_calls", index=0),
            openai_chunk(None, "tool_calls", index=1),
        ],
    )
    calls = openai_calls(body)
    assert calls[(0, 0)]["arguments"] == '{"to": "<EMAIL>"}'
    assert calls[(1, 0)]["arguments"] == '{"to": "bob@nowhere'


def test_the_deprecated_function_call_is_guarded_too() -> None:
    def function_chunk(fields: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"function_call": fields}, "finish_reason": finish}
        return b"data: " + orjson.dumps({"id": "c", "choices": [choice]}) + b"\n\n"

    body = play(
        guard_of(PII),
        [
            function_chunk({"name": "send_email", "arguments": ""}),
            function_chunk({"arguments": '{"to": "jane@exa'}),
            function_chunk({"arguments": 'mple.com"}'}),
            openai_chunk(None, "function_call"),
        ],
    )
    arguments = "".join(
        choice["delta"].get("function_call", {}).get("arguments", "")
        for event in openai_events(body)
        for choice in event["choices"]
    )
    assert arguments == '{"to": "<EMAIL>"}'


@pytest.mark.parametrize(
    "arguments",
    [
        '{"to": "jane.doe@example.com", "cc": "ops@example.org"}',
        '{"card": "4111 1111 1111 1111", "note": "x4111111111111111"}',
        '{"to": "jane\\u0040example.com", "plain": "a@b.io"}',  # read decoded, as buffered
    ],
)
def test_streamed_arguments_are_masked_as_the_buffered_answers_are(arguments: str) -> None:
    guards = (PII,)
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    answer = {"choices": [{"message": {"role": "assistant", "tool_calls": [call]}}]}
    [slot] = openai_answer_slots(answer)
    matchers = Matchers(tuple(MatcherGuard(c, 256) for c in guards))
    buffered = apply(slot.text, matchers.scan(slot.text, json_text=slot.is_json)[1])
    for size in (1, 3, 7, len(arguments)):
        pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)]
        chunks = [call_chunk("", name="f"), *(call_chunk(piece) for piece in pieces)]
        body = play(guard_of(*guards), [*chunks, openai_chunk(None, "tool_calls"), DONE])
        assert openai_calls(body)[(0, 0)]["arguments"] == buffered, size


# --- Anthropic events ---------------------------------------------------------------------


def tool_use_start(index: int, name: str = "send_email") -> bytes:
    block = {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}}
    return anthropic_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def json_delta(index: int, partial: str) -> bytes:
    delta = {"type": "input_json_delta", "partial_json": partial}
    return anthropic_event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def text_delta(index: int, text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    return anthropic_event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def block_stop(index: int) -> bytes:
    return anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index})


MESSAGE_STOP = anthropic_event("message_stop", {"type": "message_stop"})


def anthropic_inputs(body: bytes) -> dict[int, str]:
    """What an Anthropic client assembles: each block's input JSON text."""
    inputs: dict[int, str] = {}
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                data = orjson.loads(line[6:])
                delta = data.get("delta") or {}
                if data.get("type") == "content_block_delta" and "partial_json" in delta:
                    inputs[data["index"]] = inputs.get(data["index"], "") + delta["partial_json"]
    return inputs


def event_names(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"event: ")]


def test_an_address_cut_over_input_json_deltas_reaches_the_client_masked() -> None:
    body = play(
        guard_of(PII, anthropic=True),
        [
            text_delta(0, "Sending it."),
            block_stop(0),
            tool_use_start(1),
            json_delta(1, ""),
            json_delta(1, '{"to": "jane.'),
            json_delta(1, "doe@exam"),
            json_delta(1, 'ple.com"}'),
            block_stop(1),
            MESSAGE_STOP,
        ],
    )
    assert anthropic_inputs(body) == {1: '{"to": "<EMAIL>"}'}
    assert orjson.loads(anthropic_inputs(body)[1]) == {"to": "<EMAIL>"}
    assert b"jane" not in body
    assert anthropic_stream_text(body) == "Sending it."


def test_a_key_in_input_json_deltas_ends_the_anthropic_stream_with_an_error_event() -> None:
    guard = guard_of(PII, KEYS, anthropic=True)
    body = play(
        guard,
        [
            tool_use_start(0, "deploy"),
            json_delta(0, '{"token": "sk-live4f'),
            json_delta(0, '9a8b7c6d5e"}'),
            block_stop(0),
            MESSAGE_STOP,
        ],
    )
    assert b"sk-live" not in body
    assert body.endswith(b"event: error\ndata: " + ERROR + b"\n\n")
    assert guard.rejected_by == 1


def test_held_input_json_goes_out_before_the_block_stops() -> None:
    body = play(
        guard_of(PII, anthropic=True),
        [tool_use_start(0), json_delta(0, '{"to": "ann@example'), block_stop(0), MESSAGE_STOP],
    )
    assert anthropic_inputs(body) == {0: '{"to": "ann@example'}
    assert event_names(body)[-3:] == [
        b"event: content_block_delta",
        b"event: content_block_stop",
        b"event: message_stop",
    ]
    last_delta = [e for e in body.split(b"\n\n") if b"input_json_delta" in e][-1]
    assert orjson.loads(last_delta.split(b"data: ")[1])["delta"] == {
        "type": "input_json_delta",
        "partial_json": "ann@example",
    }


# --- webhooks see streamed arguments as they see buffered ones -------------------------------


async def test_a_response_webhook_refuses_a_key_in_streamed_arguments() -> None:
    def reply(call: dict[str, Any]) -> dict[str, Any]:
        texts = [c["message"]["content"] for c in call["body"]["choices"]]
        if any("sk-" in text for text in texts):
            return {"action": {"body": "No keys in tool calls.", "status_code": 403}}
        return {"action": {}}

    hook = Hook(reply)
    chunks = [
        openai_chunk("Deploying."),
        call_chunk("", name="deploy"),
        call_chunk('{"token": "' + SECRET + '"}'),
        openai_chunk(None, "tool_calls"),
        DONE,
    ]
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert SECRET not in got.decode()
    assert b"No keys in tool calls." in got
    assert gateway.log()["guardrails"] == [
        {"guard": "hook-guard", "phase": "response", "action": "reject"}
    ]


@pytest.mark.parametrize(
    "input_json",
    [
        '{"to": "jane.doe@example.com", "cc": ["ops@example.org"], "urgent": true}',
        '{"card": "4111 1111 1111 1111", "note": "x4111111111111111"}',
    ],
)
def test_input_json_masks_the_same_however_it_is_cut(input_json: str) -> None:
    # Each string of this input is masked as a buffered answer's would be (and the JSON
    # still parses), whatever pieces the provider sent.
    matchers = Matchers((MatcherGuard(PII, 256),))
    whole = apply(input_json, matchers.scan(input_json)[1])
    for size in (1, 3, 7, len(input_json)):
        pieces = [input_json[i : i + size] for i in range(0, len(input_json), size)]
        chunks = [tool_use_start(0), json_delta(0, ""), *(json_delta(0, p) for p in pieces)]
        body = play(guard_of(PII, anthropic=True), [*chunks, block_stop(0), MESSAGE_STOP])
        assert anthropic_inputs(body) == {0: whole}, size
    assert "@" not in str(orjson.loads(whole)) and "4111 " not in whole
