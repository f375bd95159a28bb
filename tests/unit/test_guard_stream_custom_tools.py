"""Response guards on streamed custom tool calls (OpenAI chat completions).

A custom tool (``tools: [{"type": "custom", ...}]``, GPT-5 models) is called with free
text, not JSON arguments. Streamed, the call's first delta carries its ``index``, ``id``,
``type: "custom"`` and ``custom.name``; every delta carries ``index`` and a fragment of
``custom.input``, which the client concatenates into what its tool runs. The guard read
only ``function.arguments``: a key a REJECT guard knows reached the client's tool, and an
address a MASK guard hides reached it as written. Now each call's input is a channel of
its own, guarded whatever the deltas it was cut into: read as JSON while it is JSON (as a
buffered answer's custom input is), as written once it is not.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import pytest

from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.testing import client_body
from tests.unit.guard_helpers import config_with, openai_chunk, openai_stream_text
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_flow import Gateway
from tests.unit.test_guard_stream_tool_calls import (
    ERROR,
    KEYS,
    PII,
    call_chunk,
    guard_of,
    openai_calls,
    openai_events,
    play,
)
from tests.unit.test_guardrail_review import Hook, hooked, serving, stream_through

DONE = b"data: [DONE]\n\n"
# A key the REJECT guard for sk-[A-Za-z0-9]{32,64} knows.
KEY = "sk-" + "a1B2c3D4e5" * 4
KEY_MESSAGE = "API keys must not be sent to a client's tools."
POLICIES = {
    "policies": [
        {"name": "guarded", "response": [
            {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE},
            {"name": "pii-out", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"},
        ]},
    ]
}  # fmt: skip
AUTH = {"authorization": "Bearer team1-key"}
SHELL = {"type": "custom", "custom": {"name": "shell", "description": "Runs a shell command."}}


custom_chunk = partial(call_chunk, kind="custom")
custom_calls = partial(openai_calls, kind="custom")


async def shell_stream(gate: Gateway, fragments: list[str]) -> bytes:
    """A client offers a custom ``shell`` tool; the model streams one call to it (the
    default config serves gpt-4o-mini: the model's name changes nothing here)."""
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "tools": [SHELL],
         "messages": [{"role": "user", "content": "mail the report"}]}
    )  # fmt: skip
    chunks = [
        custom_chunk("", name="shell"),
        *(custom_chunk(fragment) for fragment in fragments),
        openai_chunk(None, "tool_calls"),
        DONE,
    ]
    answers = await play_sse(gate.processor, "/v1/chat/completions", AUTH, body, chunks)
    return client_body(chunks, answers)


def guarded() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "guarded"}}))


# --- through the processor: what the client's tool would run ------------------------------


async def test_an_address_cut_over_custom_input_deltas_reaches_the_client_masked() -> None:
    gate = guarded()
    body = await shell_stream(gate, ["mail -s report jane.", "doe@exam", "ple.com < out.txt"])
    assert custom_calls(body) == {
        (0, 0): {"id": "call_0", "name": "shell", "input": "mail -s report <EMAIL> < out.txt"}
    }
    assert b"jane" not in body and b"doe@" not in body
    assert body.endswith(DONE)
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in gate.log()["guardrails"]


async def test_a_key_cut_over_custom_input_deltas_ends_the_stream_with_the_error_event() -> None:
    gate = guarded()
    body = await shell_stream(
        gate, ["curl -H 'Authorization: Bearer ", KEY[:9], KEY[9:25], KEY[25:] + "' x.io"]
    )
    text = body.decode()
    assert KEY[:9] not in text and KEY[9:25] not in text and KEY[25:] not in text
    assert KEY_MESSAGE in text
    assert body.endswith(DONE)
    assert {"guard": "api-keys", "phase": "response", "action": "reject"} in gate.log()[
        "guardrails"
    ]
    # What came before the key reached the client's tool; nothing of the key did.
    assert custom_calls(body)[(0, 0)]["input"].startswith("curl -H 'Authorization:")


# --- the guard's channel: held back and released per call -------------------------------------


def test_held_input_goes_out_as_a_custom_delta_of_the_call_before_the_finish_chunk() -> None:
    body = play(
        guard_of(PII),
        [
            custom_chunk("charge 4111", name="pay"),
            custom_chunk(None, finish="tool_calls"),
            DONE,
        ],
    )
    events = openai_events(body)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "tool_calls"]
    assert custom_calls(body)[(0, 0)]["input"] == "charge 4111"
    # " 4111" could have begun a card: held, then released in the call's own shape.
    assert events[1]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "custom": {"input": " 4111"}}]
    }


def test_held_input_joins_the_input_the_finish_chunk_itself_carries() -> None:
    body = play(
        guard_of(PII),
        [custom_chunk("mail ann@exa", name="shell"), custom_chunk("mple.org", finish="tool_calls")],
    )
    assert custom_calls(body)[(0, 0)]["input"] == "mail <EMAIL>"
    assert len(openai_events(body)) == 2  # no extra chunk was needed


def test_a_custom_input_that_stops_being_json_is_read_as_written() -> None:
    # A card written as a JSON number, then text no JSON reader reads: masked in place
    # as written, not turned into a JSON string.
    body = play(
        guard_of(PII),
        [custom_chunk('{"card": 4111', name="pay"), custom_chunk(" 1111 1111 1111}"), DONE],
    )
    assert custom_calls(body)[(0, 0)]["input"] == '{"card": <CREDIT_CARD>}'


def test_a_custom_input_that_is_json_is_read_as_json_as_a_buffered_one_is() -> None:
    # A tool that decodes its JSON input reads the escape as the key it spells: the
    # stream is refused, as the same input in a buffered answer is.
    guard = guard_of(PII, KEYS)
    escaped = "\\u0073k-live4f9a8b7c6d5e"
    body = play(
        guard,
        [
            custom_chunk('{"env": {"TOKEN": "', name="shell"),
            custom_chunk(escaped[:9]),
            custom_chunk(escaped[9:] + '"}}'),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert b"live4f" not in body
    assert body.endswith(b"data: " + ERROR + b"\n\n" + DONE)
    assert guard.rejected_by == 1


@pytest.mark.parametrize(
    "text",
    [
        "mail jane.doe@example.com -c ops@example.org",
        "pay --card 4111 1111 1111 1111 --note x4111111111111111",
        "*** Begin Patch\n+contact: a@b.io\n*** End Patch",
    ],
)
def test_custom_input_is_masked_the_same_however_it_is_cut(text: str) -> None:
    matchers = Matchers((MatcherGuard(PII, 256),))
    whole = apply(text, matchers.scan(text)[1])
    for size in (1, 3, 7, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        chunks = [custom_chunk("", name="shell"), *(custom_chunk(p) for p in pieces)]
        body = play(guard_of(PII), [*chunks, openai_chunk(None, "tool_calls"), DONE])
        assert custom_calls(body)[(0, 0)]["input"] == whole, size
    assert "@" not in whole and "4111 " not in whole


# --- calls of both shapes ---------------------------------------------------------------


def test_a_function_call_and_a_custom_call_in_parallel_are_guarded_apart() -> None:
    # Interleaved: digits ending the custom input never join the function's arguments.
    body = play(
        guard_of(PII),
        [
            call_chunk('{"a": "4111 1111 ', 0, name="lookup"),
            custom_chunk("1111 1111", 1, name="shell"),
            call_chunk('1111 1111"}', 0),
            custom_chunk(" done", 1),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert openai_calls(body)[(0, 0)]["arguments"] == '{"a": "<CREDIT_CARD>"}'
    assert custom_calls(body)[(0, 1)]["input"] == "1111 1111 done"


def test_a_call_that_switches_shape_has_each_of_its_texts_guarded() -> None:
    # One call index carrying function arguments, then custom input (a provider's bug or
    # a shape to come): a client merging deltas by index assembles both strings, so each
    # is a channel of its own, and what each held goes out in its own shape.
    guard = guard_of(PII)
    body = play(
        guard,
        [
            call_chunk('{"to": "jane@exa', name="send"),
            custom_chunk("cc bob@exa"),
            call_chunk('mple.com"}'),
            custom_chunk("mple.org 4111"),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert openai_calls(body)[(0, 0)]["arguments"] == '{"to": "<EMAIL>"}'
    assert custom_calls(body)[(0, 0)]["input"] == "cc <EMAIL> 4111"
    assert b"jane" not in body and b"bob" not in body


def test_a_key_in_custom_input_after_a_text_reply_ends_the_stream() -> None:
    guard = guard_of(PII, KEYS)
    body = play(
        guard,
        [
            openai_chunk("Running it."),
            custom_chunk("export TOKEN=sk-live4f", name="shell"),
            custom_chunk("9a8b7c6d5e"),
            openai_chunk(None, "tool_calls"),
            DONE,
        ],
    )
    assert b"sk-live" not in body
    assert body.endswith(b"data: " + ERROR + b"\n\n" + DONE)
    assert guard.rejected_by == 1
    assert openai_stream_text(body) == "Running it."


def test_a_delta_without_input_or_with_a_non_string_one_is_passed_on_unread() -> None:
    body = play(
        guard_of(PII),
        [
            custom_chunk(None, name="shell"),
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"custom":'
            b'{"input":null}}]},"finish_reason":null}]}\n\n',
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"custom":7}]},'
            b'"finish_reason":null}]}\n\n',
            custom_chunk("mail a@b.io"),
            openai_chunk(None, "tool_calls"),
        ],
    )
    assert custom_calls(body)[(0, 0)] == {"id": "call_0", "name": "shell", "input": "mail <EMAIL>"}


# --- webhooks see streamed custom input as they see arguments ----------------------------------


async def test_a_response_webhook_refuses_a_key_in_streamed_custom_input() -> None:
    def reply(call: dict[str, Any]) -> dict[str, Any]:
        texts = [c["message"]["content"] for c in call["body"]["choices"]]
        if any("sk-" in text for text in texts):
            return {"action": {"body": "No keys in tool calls.", "status_code": 403}}
        return {"action": {}}

    hook = Hook(reply)
    chunks = [
        custom_chunk("", name="shell"),
        custom_chunk(f"export TOKEN={KEY}"),
        openai_chunk(None, "tool_calls"),
        DONE,
    ]
    async with serving(hook.handle) as port:
        gateway = Gateway(hooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert KEY not in got.decode()
    assert b"No keys in tool calls." in got
    assert gateway.log()["guardrails"] == [
        {"guard": "hook-guard", "phase": "response", "action": "reject"}
    ]
