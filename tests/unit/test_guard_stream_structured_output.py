"""A structured output streamed stays the JSON it was when a response guard masks it.

A client that asks for JSON output (chat's ``response_format`` ``json_schema`` or
``json_object``, Anthropic's ``output_config.format``) decodes the text it assembles from
the stream's deltas. The stream guard masked that text as plain text: a ``replacement``
holding a quote or a backslash ended the JSON string early, a card written as a JSON number
became ``<CREDIT_CARD>`` bare, and a pattern running over a quote and a colon took the
syntax with it, so the client's ``json.loads`` (the SDKs' stream helpers parse the content
when the stream ends) raised on a masked answer, where the same answer unstreamed stayed
JSON. The request says whether the answer is JSON, so such a stream's text is read as
streamed tool-call arguments are: each string and number on its own, masks written as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.framed_stream import ConverseStreamGuard, FramedStreamGuard
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import StreamGuard
from extproc.guardrails.structured_output import asks_for_json
from extproc.testing import client_body, response_body, response_headers
from tests.unit.guard_helpers import (
    anthropic_event,
    anthropic_stream_text,
    config_with,
    openai_chunk,
    openai_stream_text,
    play,
)
from tests.unit.sse_play import play_sse
from tests.unit.test_gemini_guard_flow import (
    SSE_FROM_VERTEX,
    STREAM,
    user,
    vertex,  # noqa: F401 (a fixture)
)
from tests.unit.test_gemini_guard_flow import event as gemini_event
from tests.unit.test_gemini_guard_flow import gateway as gemini_gateway
from tests.unit.test_guard_flow import Gateway
from tests.unit.test_guard_framed_stream import (
    claude_stream,
    converse_frames,
    frame,
    read,
    read_converse,
    text_of,
)
from tests.unit.test_guard_framed_stream import play as play_frames
from tests.unit.test_guard_tool_args_json import documents, spellings

# An operator's replacement with characters a JSON string must escape.
REPLACEMENT = '[hidden "pii" \\ here]'
PII = {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask",
       "replacement": REPLACEMENT}  # fmt: skip
SECRET = {"name": "secret", "patterns": [r"secret\W+\w+"], "action": "mask"}
KEYS = {"name": "keys", "patterns": [r"sk-[A-Za-z0-9]{20,}"], "message": "No keys."}
POLICIES = {"policies": [{"name": "p", "response": [PII, SECRET, KEYS]}]}
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
CLAUDE = "claude-3-5-haiku-latest"
DONE = b"data: [DONE]\n\n"
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "contact",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"contact": {"type": "string"}, "card": {"type": "number"},
                           "secret": {"type": "string"}},
            "required": ["contact", "card", "secret"],
            "additionalProperties": False,
        },
    },
}  # fmt: skip
# The answer, cut where a stream may cut it: inside the address, inside the card (a JSON
# number), between the key and the value a pattern runs over.
FRAGMENTS = [
    '{"contact": "jane@exa',
    'mple.com", "card": 4111111',
    '111111111, "secret',
    '": "hunter2"}',
]
MASKED = {"contact": REPLACEMENT, "card": REPLACEMENT, "****": "****"}


class Contact(BaseModel):
    contact: str
    card: str
    secret: str | None = None


def gateway() -> Gateway:
    routes = {"openai-chat": {"guardrails": "p"}, "anthropic-messages": {"guardrails": "p"}}
    return Gateway(config_with(POLICIES, routes))


async def chat_stream(
    gate: Gateway, fragments: list[str], response_format: dict[str, Any] | None = SCHEMA
) -> bytes:
    request: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                               "messages": [{"role": "user", "content": "who?"}]}  # fmt: skip
    if response_format is not None:
        request["response_format"] = response_format
    chunks = [
        openai_chunk(""),
        *(openai_chunk(fragment) for fragment in fragments),
        openai_chunk(None, "stop"),
        DONE,
    ]
    answers = await play_sse(
        gate.processor, "/v1/chat/completions", OPENAI_AUTH, orjson.dumps(request), chunks
    )
    return client_body(chunks, answers)


def sdk_content(body: bytes) -> Any:
    """What the ``openai`` SDK's stream helper assembles from the chunks (the state behind
    ``client.chat.completions.stream``), parsed as its ``response_format`` asks."""
    state = ChatCompletionStreamState(input_tools=[], response_format=Contact)
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            state.handle_chunk(ChatCompletionChunk.model_validate_json(event[6:]))
    return state.get_final_completion().choices[0].message


async def test_a_masked_json_schema_answer_streamed_stays_json() -> None:
    gate = gateway()
    body = await chat_stream(gate, FRAGMENTS)
    assert json.loads(openai_stream_text(body)) == MASKED
    assert b"jane@" not in body and b"4111" not in body and b"hunter2" not in body
    decisions = {(d["guard"], d["action"]) for d in gate.log()["guardrails"]}
    assert ("pii", "mask") in decisions and ("secret", "mask") in decisions


async def test_the_openai_sdks_stream_helper_parses_the_masked_answer() -> None:
    fragments = ['{"contact": "jane@exa', 'mple.com", "card": "4111 1111 1111 1111"}']
    message = sdk_content(await chat_stream(gateway(), fragments))
    assert message.parsed == Contact(contact=REPLACEMENT, card=REPLACEMENT)


async def test_json_object_mode_is_json_too() -> None:
    body = await chat_stream(gateway(), FRAGMENTS, {"type": "json_object"})
    assert json.loads(openai_stream_text(body)) == MASKED


async def test_a_mask_after_an_escape_keeps_the_escape_whole() -> None:
    # Read as written, the address begins at the "n" of "\\n": masked from there it left
    # "\\" and the replacement, no JSON. The escape stays, the address is masked.
    body = await chat_stream(gateway(), ['{"contact": "Jane Doe\\njane@exa', 'mple.com"}'])
    assert json.loads(openai_stream_text(body)) == {"contact": "Jane Doe\n" + REPLACEMENT}


async def test_a_key_in_a_structured_stream_still_ends_it() -> None:
    key = "sk-" + "a1B2c3D4e5" * 3
    body = await chat_stream(gateway(), ['{"note": "' + key[:12], key[12:] + '"}'])
    assert key[3:13].encode() not in body
    events = [orjson.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[-1]["error"]["message"] == "No keys."


async def test_prose_answers_are_masked_as_text_as_before() -> None:
    # No JSON asked for: the replacement goes in as it is (the text is no JSON).
    body = await chat_stream(gateway(), ["Write to jane@exa", "mple.com today."], None)
    assert openai_stream_text(body) == f"Write to {REPLACEMENT} today."


@pytest.mark.parametrize("response_format", [SCHEMA, {"type": "json_object"}])
async def test_a_json_answer_that_is_prose_after_all_is_masked_as_text(
    response_format: dict[str, Any],
) -> None:
    # A model that writes prose anyway (no "{" first): read as written, as before.
    body = await chat_stream(gateway(), ["Sorry, jane@exa", "mple.com"], response_format)
    assert openai_stream_text(body) == f"Sorry, {REPLACEMENT}"


async def anthropic_stream(gate: Gateway, fragments: list[str], **fields: Any) -> bytes:
    request = {"model": CLAUDE, "stream": True, "max_tokens": 100,
               "messages": [{"role": "user", "content": "who?"}], **fields}  # fmt: skip
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
             "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}  # fmt: skip
    chunks = [
        anthropic_event("message_start", {"type": "message_start", "message": start}),
        anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}}),
        *(
            anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": f}})
            for f in fragments
        ),
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    answers = await play_sse(
        gate.processor, "/v1/messages", ANTHROPIC_AUTH, orjson.dumps(request), chunks
    )
    return client_body(chunks, answers)


ANTHROPIC_FORMAT = {"type": "json_schema", "schema": SCHEMA["json_schema"]["schema"]}  # type: ignore[index]


@pytest.mark.parametrize(
    "fields",
    [{"output_config": {"format": ANTHROPIC_FORMAT}}, {"output_format": ANTHROPIC_FORMAT}],
    ids=["output_config", "beta-output_format"],
)
async def test_an_anthropic_structured_output_streamed_stays_json(fields: dict[str, Any]) -> None:
    body = await anthropic_stream(gateway(), FRAGMENTS, **fields)
    assert json.loads(anthropic_stream_text(body)) == MASKED


async def test_an_anthropic_prose_answer_is_masked_as_text_as_before() -> None:
    body = await anthropic_stream(gateway(), ["Write to jane@exa", "mple.com today."])
    assert anthropic_stream_text(body) == f"Write to {REPLACEMENT} today."


@pytest.mark.parametrize(
    "config",
    [{"responseMimeType": "application/json"},
     {"response_mime_type": "application/json", "response_schema": {"type": "OBJECT"}}],
    ids=["mime-type", "snake-case-schema"],
)  # fmt: skip
async def test_a_gemini_json_answer_streamed_stays_json(
    vertex: tuple[str, Path],  # noqa: F811 (the fixture imported above)
    config: dict[str, Any],
) -> None:
    chunks = [*(gemini_event(fragment) for fragment in FRAGMENTS), gemini_event("", finish=True)]
    request = {**user("who?"), "generationConfig": config}
    async with gemini_gateway(vertex, POLICIES, guardrails="p") as gw:
        answers = await gw.send(
            STREAM,
            request,
            response_headers(200, SSE_FROM_VERTEX),
            *(response_body(c, end_of_stream=False) for c in chunks),
            response_body(b"", end_of_stream=True),
        )
    got = client_body([*chunks, b""], answers)
    text = "".join(
        part.get("text", "")
        for block in got.split(b"\n\n")
        if block.startswith(b"data: ")
        for part in orjson.loads(block[6:])["candidates"][0]["content"]["parts"]
    )
    assert json.loads(text) == MASKED


def test_what_asks_for_json_on_each_api() -> None:
    asks = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"response_format": {"type": "json_object"}},
        {"output_config": {"format": {"type": "json_schema", "schema": {}}}},
        {"output_format": {"type": "json_schema", "schema": {}}},
        {"outputConfig": {"textFormat": {"type": "json_schema", "structure": {}}}},
        {"generationConfig": {"responseMimeType": "Application/JSON"}},
        {"generation_config": {"response_json_schema": {"type": "object"}}},
    ]
    assert all(asks_for_json(body) for body in asks)
    others = [
        None,
        {},
        {"response_format": {"type": "text"}},
        {"response_format": "json_object"},
        {"output_config": {"effort": "high"}},
        {"generationConfig": {"responseMimeType": "text/plain"}},
        {"generationConfig": [1]},
    ]
    assert not any(asks_for_json(body) for body in others)


# --- whatever the answer and wherever the stream cuts it --------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Patterns that hit strings, numbers, escapes as written (the "n" of "\n", "u00" of
# "\u00e9") and the syntax around values (a quote, a colon, a comma).
PATTERNS = st.sampled_from([r"[ab]+", r"\d+", r"[n@]", r"u00", r'"\W+\w', r",\s*\S", r"e\d"])


@FUZZ
@given(documents, spellings, PATTERNS, st.data())
def test_a_streamed_structured_output_masked_is_always_json(
    document: Any, spelling: dict[str, Any], pattern: str, data: st.DataObject
) -> None:
    config = GuardConfig(name="m", patterns=[pattern], action="mask", replacement='R"\\\n')
    text = json.dumps(document, **spelling)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=8)))
    fragments = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    guard = StreamGuard(Matchers((MatcherGuard(config, 256),)), anthropic=False, json_text=True)
    body = play(guard, [*(openai_chunk(f) for f in fragments), openai_chunk(None, "stop"), DONE])
    masked = json.loads(openai_stream_text(body))
    # The same document, its values masked: as many members or items as it had.
    assert type(masked) is type(document)
    assert len(masked) <= len(document)  # keys masked alike may merge, as in a whole answer
    if isinstance(document, list):
        assert len(masked) == len(document)


# --- Bedrock's frames: Claude's InvokeModel stream and ConverseStream ---------------------------


def framed_guard(kind: type[FramedStreamGuard]) -> FramedStreamGuard:
    matchers = Matchers(tuple(MatcherGuard(GuardConfig(**c), 256) for c in (PII, SECRET)))
    return kind(matchers, json_text=True)


@pytest.mark.parametrize("step", [1, 64, 100_000])
def test_an_invoke_model_structured_output_streamed_stays_json(step: int) -> None:
    stream = b"".join(frame(event) for event in claude_stream(*FRAGMENTS))
    messages = read(play_frames(framed_guard(FramedStreamGuard), stream, step))
    assert json.loads(text_of(messages)) == MASKED


@pytest.mark.parametrize("step", [1, 64, 100_000])
def test_a_converse_structured_output_streamed_stays_json(step: int) -> None:
    stream = converse_frames(*FRAGMENTS)
    messages = read_converse(play_frames(framed_guard(ConverseStreamGuard), stream, step))
    text = "".join(p["delta"].get("text", "") for k, p in messages if k == "contentBlockDelta")
    assert json.loads(text) == MASKED


def test_a_match_longer_than_the_cap_is_one_mask_as_in_prose() -> None:
    # An unbounded pattern's match is not held whole past its cap: its mask leaves for what
    # has come, and the rest of it as nothing, as in a text channel (one "****", not one
    # per delta).
    config = GuardConfig(name="digits", patterns=[r"\d+"], action="mask")
    guard = StreamGuard(Matchers((MatcherGuard(config, 256),)), anthropic=False, json_text=True)
    deltas = ['{"n": "', *(["1234567890"] * 200), '", "m": 1}']
    body = play(guard, [*(openai_chunk(d) for d in deltas), openai_chunk(None, "stop"), DONE])
    assert json.loads(openai_stream_text(body)) == {"n": "****", "m": "****"}
