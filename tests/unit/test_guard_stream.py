"""StreamGuard: masking that survives chunk boundaries, in OpenAI and Anthropic streams."""

from __future__ import annotations

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import StreamGuard, TextStream
from tests.unit.guard_helpers import (
    anthropic_event,
    anthropic_stream_text,
    openai_chunk,
    openai_stream_text,
)


def guard_of(*configs: GuardConfig, anthropic: bool = False) -> StreamGuard:
    return StreamGuard(Matchers(tuple(MatcherGuard(c, 256) for c in configs)), anthropic=anthropic)


PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")


def play(guard: StreamGuard, chunks: list[bytes]) -> list[bytes]:
    out = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        out.append(guard.render(guard.split(chunk, last), last, lambda _: b'{"error":{}}'))
    return out


def test_card_split_over_three_chunks_is_masked() -> None:
    chunks = [
        openai_chunk("Your card: 4111 11"),
        openai_chunk("11 1111 1"),
        openai_chunk("111, thanks."),
        openai_chunk(None, "stop"),
        b"data: [DONE]\n\n",
    ]
    out = play(guard_of(PII), chunks)
    assert openai_stream_text(b"".join(out)) == "Your card: <CREDIT_CARD>, thanks."
    # Nothing of the number ever leaves, and the text before it is not held.
    assert b"4111" not in b"".join(out)
    assert openai_stream_text(out[0]) == "Your card:"
    assert out[-1] == b"data: [DONE]\n\n"


def test_events_cut_anywhere_by_body_chunks_still_mask() -> None:
    whole = (
        openai_chunk("mail me at jane.")
        + openai_chunk("doe@example.com or not")
        + openai_chunk(None, "stop")
        + b"data: [DONE]\n\n"
    )
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    out = b"".join(play(guard_of(PII), pieces))
    assert openai_stream_text(out) == "mail me at <EMAIL> or not"


def test_prose_flows_without_being_held() -> None:
    guard = guard_of(PII)
    out = play(guard, [openai_chunk("Hello there. "), openai_chunk("How are you? ")])
    # Only the word being written could be the start of an e-mail address.
    assert openai_stream_text(b"".join(out)) == "Hello there. How are you? "


def test_held_text_is_released_before_the_finish_chunk() -> None:
    out = b"".join(
        play(guard_of(PII), [openai_chunk("ends with 4111"), openai_chunk(None, "stop")])
    )
    events = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "stop"]
    assert openai_stream_text(out) == "ends with 4111"


def test_choices_are_guarded_apart() -> None:
    chunks = [
        openai_chunk("card 4111 1111 ", index=0),
        openai_chunk("card 4111 1111 ", index=1),
        openai_chunk("1111 1111", index=0),
        openai_chunk("2222 done", index=1),
        openai_chunk(None, "stop", index=0),
        openai_chunk(None, "stop", index=1),
    ]
    out = b"".join(play(guard_of(PII), chunks))
    by_choice: dict[int, str] = {0: "", 1: ""}
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:])["choices"]:
                by_choice[choice["index"]] += choice["delta"].get("content") or ""
    assert by_choice == {0: "card <CREDIT_CARD>", 1: "card 4111 1111 2222 done"}


def test_reject_guard_ends_the_stream_with_an_error() -> None:
    banned = GuardConfig(name="banned", literals=["project x"], case_insensitive=True)
    guard = guard_of(banned)
    out = play(
        guard,
        [openai_chunk("about Proj"), openai_chunk("ect X and more"), openai_chunk("after")],
    )
    body = b"".join(out)
    assert b"Proj" not in body
    assert body.endswith(b'data: {"error":{}}\n\ndata: [DONE]\n\n')
    assert guard.rejected_by == 0
    assert out[-1] == b""  # nothing after the rejection


def test_a_later_reject_guard_still_refuses_what_it_found_before_a_growing_match() -> None:
    keys = GuardConfig(name="keys", patterns=[{"pattern": r"sk-[a-z0-9]{8,}"}], action="reject")
    words = GuardConfig(name="words", literals=["topsecret"], action="reject")
    guard = guard_of(keys, words)
    out = play(
        guard,
        [openai_chunk("the topsecret plan, key sk-abcdefgh12"), openai_chunk("34 done")],
    )
    body = b"".join(out)
    assert b"topsecret" not in body
    assert guard.rejected_by == 1  # "words" found it first in what was to go out


def test_anthropic_events_are_masked_and_flushed_at_block_stop() -> None:
    chunks = [
        anthropic_event("message_start", {"type": "message_start", "message": {"id": "m"}}),
        anthropic_event("content_block_start", {"type": "content_block_start", "index": 0}),
        anthropic_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "cc 5105 1051"},
            },
        ),
        anthropic_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": " 0510 5100 ok 4111"},
            },
        ),
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    out = b"".join(play(guard_of(PII, anthropic=True), chunks))
    assert anthropic_stream_text(out) == "cc <CREDIT_CARD> ok 4111"
    names = [line for line in out.split(b"\n") if line.startswith(b"event: ")]
    assert names[-3:] == [
        b"event: content_block_delta",
        b"event: content_block_stop",
        b"event: message_stop",
    ]


@pytest.mark.timeout(10)
def test_a_match_reaching_back_into_released_text_does_not_stall_the_stream() -> None:
    # Card-shaped runs that start in the character already released: the guard used
    # to loop for ever on them, freezing the event loop for every request. Streamed in
    # small pieces, each masks as the whole text does.
    guard = GuardConfig(name="pii", builtins=["CREDIT_CARD", "PHONE_NUMBER"], action="mask")
    for text in (
        "123-45-678914111 1111 1111 11114111-111",
        "The values are 77678 71333 17094 48490 79157 62135 82014 76133 858 79377 1725",
    ):
        whole = TextStream(Matchers((MatcherGuard(guard, 256),)))
        expected = whole.push(text) + whole.flush()
        for size in (3, len(text) - 1):
            stream = TextStream(Matchers((MatcherGuard(guard, 256),)))
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            assert "".join(stream.push(piece) for piece in pieces) + stream.flush() == expected
