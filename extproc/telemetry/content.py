"""Prompt and completion text for the log line and the span, only when an operator asks.

Nothing here runs unless ``telemetry.log.include_content`` or
``telemetry.tracing.capture_content`` is on, and only for requests that went to
a provider (a refused prompt is not written: it may be the very text a
guardrail stopped). The prompt is read from the parsed request body when the
request ends, i.e. after guardrails have masked it there; the completion from
the bytes the client was sent, i.e. after translation and response guardrails.
During the response the capture only keeps references to those byte chunks
(one list append per chunk); they are parsed once, after Envoy has its last
answer, and never on a request that does not log content.

Text is cut at ``max_content_chars`` per field and flagged as truncated. Only
text is kept: images and other non-text parts become a ``[type]`` marker, tool
calls their name and arguments.
"""

from __future__ import annotations

from typing import Any

import orjson

_DATA = b"data:"


class ContentCapture:
    """The text side of one request: what was asked and what came back."""

    __slots__ = ("_anthropic", "_chunks", "_limit", "_output", "_read", "_streamed", "truncated")

    def __init__(self, *, anthropic: bool, max_chars: int) -> None:
        self._anthropic = anthropic
        self._limit = max_chars
        self._chunks: list[bytes] = []
        self._streamed = False
        self._output: str | None = None
        # How many chunks _output was read from (it may be asked for mid-stream).
        self._read = 0
        self.truncated = False

    # --- fed during the request -------------------------------------------------

    def add_response_chunk(self, chunk: bytes, *, streamed: bool) -> None:
        if chunk:
            self._chunks.append(chunk)
        self._streamed = self._streamed or streamed

    # --- read when the request ends ----------------------------------------------

    def prompt(self, body: dict[str, Any] | None) -> list[dict[str, str]] | None:
        """The conversation in the parsed request body (read at the end, so after
        guardrails masked it), as ``[{"role", "content"}]`` with text content."""
        if body is None:
            return None
        messages: list[dict[str, str]] = []
        system = body.get("system") if self._anthropic else None
        if system is not None:
            messages.append({"role": "system", "content": self._cut(_text_of(system))})
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                role = message.get("role")
                text = _text_of(message.get("content"))
                calls = message.get("tool_calls")
                if isinstance(calls, list) and calls:
                    text = "\n".join(filter(None, (text, _tool_calls_text(calls))))
                messages.append({"role": str(role), "content": self._cut(text)})
        return messages

    def completion(self) -> str | None:
        """The answer's text as the client received it so far; None when there was none."""
        if self._read != len(self._chunks):
            self._read = len(self._chunks)
            body = b"".join(self._chunks)
            text = _stream_text(body, self._anthropic) if self._streamed else None
            if text is None:
                text = _body_text(body, self._anthropic)
            self._output = self._cut(text) if text is not None else ""
        return self._output or None

    def input_messages_json(self, body: dict[str, Any] | None) -> str | None:
        """The prompt in OpenTelemetry's ``gen_ai.input.messages`` shape, as JSON."""
        prompt = self.prompt(body)
        if not prompt:
            return None
        shaped = [
            {"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]}
            for m in prompt
        ]
        return orjson.dumps(shaped).decode()

    def output_messages_json(self) -> str | None:
        """The completion in OpenTelemetry's ``gen_ai.output.messages`` shape, as JSON."""
        text = self.completion()
        if text is None:
            return None
        shaped = [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]
        return orjson.dumps(shaped).decode()

    def _cut(self, text: str) -> str:
        if len(text) <= self._limit:
            return text
        self.truncated = True
        return text[: self._limit]


def _text_of(content: Any) -> str:
    """Text of a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else str(content)
    pieces: list[str] = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            text = part.get("text")
            if isinstance(text, str):
                pieces.append(text)
            elif kind == "tool_result":
                pieces.append(_text_of(part.get("content")))
            elif kind == "tool_use":
                arguments = orjson.dumps(part.get("input")).decode()
                pieces.append(f"[tool_use {part.get('name')}] {arguments}")
            else:
                pieces.append(f"[{kind}]")
    return "\n".join(pieces)


def _tool_calls_text(calls: list[Any]) -> str:
    lines = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            lines.append(f"[tool_call {function.get('name')}] {function.get('arguments')}")
    return "\n".join(lines)


def _body_text(body: bytes, anthropic: bool) -> str | None:
    """A whole JSON answer: OpenAI's choices or Anthropic's content blocks."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    if anthropic:
        return _text_of(parsed.get("content")) if "content" in parsed else None
    choices = parsed.get("choices")
    if not isinstance(choices, list):
        return None
    texts = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                text = "\n".join(filter(None, (text, _tool_calls_text(calls))))
            texts.append(text)
    return "\n".join(texts)


def _stream_text(body: bytes, anthropic: bool) -> str | None:
    """An SSE answer: the text deltas joined (choice 0 for OpenAI)."""
    pieces: list[str] = []
    saw_event = False
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.startswith(_DATA):
            continue
        payload = line[len(_DATA) :].strip()
        if not payload or payload == b"[DONE]":
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        saw_event = True
        if anthropic:
            delta = event.get("delta") if event.get("type") == "content_block_delta" else None
            if isinstance(delta, dict):
                text = delta.get("text")
                if isinstance(text, str):
                    pieces.append(text)
                partial = delta.get("partial_json")
                if isinstance(partial, str):
                    pieces.append(partial)
            continue
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            text = delta.get("content")
            if isinstance(text, str):
                pieces.append(text)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    if function.get("name"):
                        pieces.append(f"[tool_call {function['name']}] ")
                    arguments = function.get("arguments")
                    if isinstance(arguments, str):
                        pieces.append(arguments)
    return "".join(pieces) if saw_event else None
