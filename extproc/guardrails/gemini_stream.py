"""Guards on a streamGenerateContent answer: Gemini's Server-Sent Events (``?alt=sse``).

Each event is a whole GenerateContentResponse (``data: {...}``) whose candidates carry
the next piece of their answer in ``content.parts``. ``GeminiStreamGuard`` is the chat
stream guard (``StreamGuard``: its channels, hold-back and leftovers) reading Gemini's
events:

- Each candidate's text parts are one channel (by the candidate's ``index``, else its
  place), so a match split over two events is still found, and text that could begin one
  waits as it waits in a chat stream.
- What a candidate held goes out when it finishes (the event with its ``finishReason``,
  joined to that event's own text, else in an extra event just before it), before one of
  its function calls or code parts (whose text comes before them), before Google's own
  ``{"error": ...}`` event, and at the end of the body. An extra event carries the held
  text alone, as a text part of its candidate, with the answer's ``modelVersion``,
  ``responseId`` and ``createTime``; no ``usageMetadata``: Google's counts stay where it
  wrote them, the last event's the bill.
- A function call comes whole in one event (its ``args`` an object, not fragments), as
  do code and its result: their text is matched at once, as a whole answer's is
  (``gemini_text``), a mask writing into the event.
- Thought parts (``"thought": true``, the thought summaries the client is shown) are a
  channel of their own per candidate, masked as its text is; what they held goes out, as
  a thought part, before the candidate's answer text begins and when it finishes.
- A reject guard ends the stream with Google's error event, ``data: {"error": {"code",
  "message", "status"}}``: google-genai raises it as it raises Google's own failure
  mid-stream (``ClientError`` for a 4xx, with the code and the status), and the rest of
  the upstream stream is dropped (the translator still reads it for its usage).

Every event is otherwise written as Google sent it: one that nothing changed goes on
byte for byte (its line ends as LF, as the chat guard writes every stream), and one that
changed keeps every field but the text.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.guardrails.content import TextSlot
from extproc.guardrails.converse_text import CALL_ROLE
from extproc.guardrails.gemini_text import part_slots
from extproc.guardrails.matching import Matchers
from extproc.guardrails.stream import THOUGHT, Channel, StreamEvent, StreamGuard

_EVENT_END = b"\n\n"
# The answer's fields an extra event of held text repeats: what names the answer, not
# what counts or finishes it.
_NAMING = ("modelVersion", "responseId", "createTime")


class GeminiStreamGuard(StreamGuard):
    """The SSE events of one streamGenerateContent answer, guarded (module docstring)."""

    def __init__(self, matchers: Matchers, *, json_text: bool = False) -> None:
        super().__init__(matchers, anthropic=False, json_text=json_text)

    def _read_payload(self, event: StreamEvent, payload: dict[str, Any]) -> None:
        if "error" in payload:
            # Google failed the stream: the client reads nothing after it, so every
            # candidate's held text goes out first.
            event.done = True
            return
        candidates = payload.get("candidates")
        if not isinstance(candidates, list):
            return  # a blocked prompt's feedback, a usage report alone
        self._envelope = payload
        for place, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index")
            index = index if isinstance(index, int) and not isinstance(index, bool) else place
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if not isinstance(part, dict):
                    continue
                if part.get("thought") is True:
                    if isinstance(part.get("text"), str):
                        event.texts.append(((index, 0, THOUGHT), part, "text"))
                    continue
                if isinstance(part.get("text"), str):
                    event.texts.append((index, part, "text"))
                    thought = (index, 0, THOUGHT)
                    if part["text"] and thought in self._channels and thought not in event.closes:
                        # The answer begins: the thought held goes out before it.
                        event.closes.append(thought)
                    continue
                whole: list[TextSlot] = []
                part_slots(CALL_ROLE, part, whole)
                if whole:
                    if event.whole is None:
                        event.whole = []
                    event.whole.extend(whole)
                    # The candidate's text so far goes out before the call.
                    if index not in event.closes:
                        event.closes.append(index)
            if candidate.get("finishReason") is not None and index not in event.closes:
                event.closes.append(index)

    def _released_event(
        self, channel: Channel, text: str, envelope: dict[str, Any] | None
    ) -> bytes:
        # A candidate's text, or its thoughts: Gemini's streams have no call channels.
        part: dict[str, Any] = {"text": text}
        if isinstance(channel, tuple):
            channel, part["thought"] = channel[0], True
        candidate = {"content": {"role": "model", "parts": [part]}, "index": channel}
        answer: dict[str, Any] = {"candidates": [candidate]}
        for name in _NAMING:
            if envelope is not None and name in envelope:
                answer[name] = envelope[name]
        return b"data: " + orjson.dumps(answer) + _EVENT_END

    def _error_event(self, error: bytes) -> bytes:
        # Google's failure is the stream's last event; there is no [DONE] to follow it.
        return b"data: " + error + _EVENT_END
