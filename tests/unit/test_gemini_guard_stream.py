"""GeminiStreamGuard: a streamGenerateContent answer (``?alt=sse``) guarded event by event.

Each event is a whole GenerateContentResponse whose candidates carry the next piece of
their text. A match split over two events is still found; text that could begin one is
held as the chat stream guard holds it and goes out with the candidate's finishing event;
a rejection ends the stream with Google's ``{"error": {...}}`` event, which google-genai
raises; the events' usageMetadata reaches the client as Google wrote it.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.errors import google_error_body
from extproc.guardrails.gemini_stream import GeminiStreamGuard
from extproc.guardrails.matching import MatcherGuard, Matchers

PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")
NO_SECRETS = GuardConfig(name="secrets", literals=["hunter2"], action="reject")
REFUSAL = google_error_body("Rejected by guardrail 'secrets'", 403)


def guard_of(*configs: GuardConfig) -> GeminiStreamGuard:
    return GeminiStreamGuard(Matchers(tuple(MatcherGuard(c, 256) for c in configs)))


def event(
    *texts: str,
    finish: str | None = None,
    index: int | None = None,
    usage: dict[str, int] | None = None,
    parts: list[dict[str, Any]] | None = None,
) -> bytes:
    """One event as Google writes it: a GenerateContentResponse, CRLF line ends."""
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [*({"text": t} for t in texts), *(parts or [])]}
    }
    if finish is not None:
        candidate["finishReason"] = finish
    if index is not None:
        candidate["index"] = index
    answer: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    answer["usageMetadata"] = usage or {"promptTokenCount": 5, "candidatesTokenCount": 1}
    return b"data: " + orjson.dumps(answer) + b"\r\n\r\n"


def play(guard: GeminiStreamGuard, chunks: list[bytes]) -> list[bytes]:
    """What the client gets for each body chunk."""
    out = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        out.append(guard.render(guard.split(chunk, last), last, lambda _: REFUSAL))
    return out


def answers(body: bytes) -> list[dict[str, Any]]:
    """The events as google-genai reads them: one JSON document per ``data:`` event."""
    found = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if block.startswith(b"data: "):
            found.append(orjson.loads(block[6:]))
    return found


def text_of(body: bytes, index: int = 0) -> str:
    """What the SDK's ``chunk.text`` joins over the stream for one candidate."""
    pieces = []
    for answer in answers(body):
        for place, candidate in enumerate(answer.get("candidates") or ()):
            if candidate.get("index", place) != index:
                continue
            for part in candidate["content"]["parts"]:
                if "text" in part and not part.get("thought"):
                    pieces.append(part["text"])
    return "".join(pieces)


@pytest.mark.parametrize("step", [1, 9, 100_000])
def test_an_address_split_over_two_events_is_masked(step: int) -> None:
    stream = (
        event("Write to jane.")
        + event("doe@example.com today.")
        + event(finish="STOP", usage={"promptTokenCount": 5, "candidatesTokenCount": 9})
    )
    pieces = [stream[i : i + step] for i in range(0, len(stream), step)]
    out = b"".join(play(guard_of(PII), pieces))
    assert text_of(out) == "Write to <EMAIL> today."
    assert b"jane." not in out and b"example.com" not in out


def test_prose_flows_and_held_text_goes_out_with_the_finishing_event() -> None:
    guard = guard_of(PII)
    out = play(guard, [event("Hello there. "), event("Card 4111"), event(finish="STOP")])
    # Only what could begin a match waits: what a card number can hold (digits, spaces).
    assert text_of(out[0]) == "Hello there."
    assert text_of(out[1]) == " Card"
    assert text_of(out[2]) == " 4111"
    final = answers(out[2])
    # Held text leaves before the event that finishes the candidate, which keeps its bill.
    assert final[-1]["candidates"][0]["finishReason"] == "STOP"
    assert final[-1]["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 1}
    assert [a["candidates"][0].get("finishReason") for a in final] == [None, "STOP"]
    assert final[0]["modelVersion"] == "gemini-2.5-flash" and "usageMetadata" not in final[0]


def test_held_text_joins_the_finishing_events_own_text() -> None:
    out = b"".join(play(guard_of(PII), [event("mail jane@exa"), event("mple.com", finish="STOP")]))
    finals = answers(out)
    assert len(finals) == 2
    assert finals[-1]["candidates"][0]["content"]["parts"] == [{"text": "<EMAIL>"}]
    assert text_of(out) == "mail <EMAIL>"


def test_every_other_field_of_an_event_is_as_google_wrote_it() -> None:
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 7, "totalTokenCount": 12}
    untouched = event("Nothing to find here.", finish="STOP", usage=usage)
    out = b"".join(play(guard_of(PII), [untouched]))
    assert answers(out) == answers(untouched)


def test_a_reject_guard_ends_the_stream_with_googles_error_event() -> None:
    guard = guard_of(NO_SECRETS)
    out = play(
        guard,
        [event("The password is "), event("hunter2, keep it."), event("More.", finish="STOP")],
    )
    body = b"".join(out)
    assert b"hunter2" not in body
    *_, last = answers(body)
    # google-genai raises on an event whose JSON begins with "error": its code and status.
    assert last == {
        "error": {
            "code": 403,
            "message": "Rejected by guardrail 'secrets'",
            "status": "PERMISSION_DENIED",
        }
    }
    assert body.endswith(b"\n\n") and b"[DONE]" not in body
    assert text_of(body) == "The password is "
    assert guard.ended and guard.rejected_by == 0
    assert out[2] == b"", "nothing after the refusal is sent"


def test_thought_parts_are_masked_and_stay_thoughts() -> None:
    thought = {"text": "The user wrote jane@example.com", "thought": True}
    stream = event(parts=[thought]) + event("Done.", finish="STOP")
    out = b"".join(play(guard_of(PII), [stream]))
    thoughts = [
        part
        for answer in answers(out)
        for part in answer["candidates"][0]["content"]["parts"]
        if part.get("thought")
    ]
    assert "".join(p["text"] for p in thoughts) == "The user wrote <EMAIL>"
    assert text_of(out) == "Done."


def test_a_function_calls_args_are_guarded_whole_in_their_event() -> None:
    call = {"functionCall": {"name": "send", "args": {"to": "jane@example.com", "n": 2}}}
    guard = guard_of(PII)
    out = b"".join(play(guard, [event("Sending to 4111", parts=[call], finish="STOP")]))
    [answer] = answers(out)
    parts = answer["candidates"][0]["content"]["parts"]
    assert parts[1] == {"functionCall": {"name": "send", "args": {"to": "<EMAIL>", "n": 2}}}
    # The text before the call is released before it, in order.
    assert parts[0] == {"text": "Sending to 4111"}
    assert guard.masked == {0}


def test_held_text_goes_out_before_a_function_call_in_an_event_of_its_own() -> None:
    call = {"functionCall": {"name": "send", "args": {"q": "x"}}}
    out = b"".join(play(guard_of(PII), [event("Call 4111"), event(parts=[call], finish="STOP")]))
    kinds = [
        next(iter(part))
        for answer in answers(out)
        for candidate in answer["candidates"]
        for part in candidate["content"]["parts"]
    ]
    assert kinds == ["text", "text", "functionCall"]
    assert text_of(out) == "Call 4111"


def test_a_function_call_that_rejects_ends_the_stream() -> None:
    call = {"functionCall": {"name": "login", "args": {"password": "hunter2"}}}
    out = b"".join(play(guard_of(NO_SECRETS), [event("OK."), event(parts=[call], finish="STOP")]))
    assert b"hunter2" not in out
    assert "error" in answers(out)[-1]


def test_candidates_are_guarded_apart() -> None:
    stream = [
        event("card 4111 1111 ", index=0) + event("plain words ", index=1),
        event("1111 1111", index=0, finish="STOP") + event("end", index=1, finish="STOP"),
    ]
    out = b"".join(play(guard_of(PII), stream))
    assert text_of(out, 0) == "card <CREDIT_CARD>"
    assert text_of(out, 1) == "plain words end"


def test_googles_own_error_event_follows_the_text_held_before_it() -> None:
    error = b'data: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}\r\n\r\n'
    out = b"".join(play(guard_of(PII), [event("Ends in 4111"), error]))
    *_, last = answers(out)
    assert last["error"]["status"] == "INTERNAL"
    assert text_of(out) == "Ends in 4111"


def test_a_stream_cut_before_its_finish_releases_what_was_held_at_its_end() -> None:
    out = b"".join(play(guard_of(PII), [event("Ends in 4111")]))
    assert text_of(out) == "Ends in 4111"
