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

``max_content_chars`` bounds each field as a whole: the completion is cut at
that many characters, the prompt keeps its newest messages within that many
characters in total (a long conversation of short turns must not make a line
many times the cap); either is then flagged as truncated. Only text is kept:
images and other non-text parts become a ``[type]`` marker, tool calls their
name and arguments.

An OpenAI Responses API request reads as a conversation too: ``instructions`` as the
system message, then ``input`` (a string is one user message; items: messages by
their role, function calls as the assistant's, their outputs as ``tool``); its answer
is the text of its output messages (a stream's ``response.output_text.delta`` events)
and its function calls, and a ``[compaction]`` marker for a compaction item (its
content is encrypted). A compaction's request and answer (``/v1/responses/compact``:
the user messages kept, then the compaction item) and a token count's request
(``/v1/responses/input_tokens``) read the same way.

A Bedrock Converse request and answer (its stream's frames too) read as
``converse_content`` says; an InvokeModel call in another family's body than Claude's
(Claude's reads as Anthropic's Messages API) as ``invoke_content`` says; Gemini's API
as ``gemini_content`` says.

An OpenAI text completion request (``/v1/completions``) reads as user messages: its
prompt (each prompt of a batch; token ids, which are no text to the gateway, as a
``[token ids]`` marker), then its ``suffix``; its answer is its choices' ``text`` (a
stream's, choice 0's, as for chat).

The answer is the provider's (after translation), i.e. outside input: reading
it never raises, whatever its shape, because the log line, the metrics and the
usage rollup are written after it and must not be lost to an odd answer.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from extproc.telemetry import converse_content, gemini_content, invoke_content

log = logging.getLogger(__name__)

_DATA = b"data:"


class ContentCapture:
    """The text side of one request: what was asked and what came back."""

    __slots__ = (
        "_anthropic",
        "_chunks",
        "_completions",
        "_converse",
        "_gemini",
        "_invoke_family",
        "_limit",
        "_output",
        "_read",
        "_responses",
        "_streamed",
        "truncated",
    )

    def __init__(
        self,
        *,
        anthropic: bool,
        max_chars: int,
        responses: bool = False,
        completions: bool = False,
        converse: bool = False,
        invoke_family: bool = False,
        gemini: bool = False,
    ) -> None:
        self._anthropic = anthropic
        # Bedrock's Converse API (``converse_content``).
        self._converse = converse
        # InvokeModel with another family's body than Claude's (``invoke_content``).
        self._invoke_family = invoke_family
        # Gemini's API (``gemini_content``).
        self._gemini = gemini
        # An OpenAI Responses API exchange, or a text completion (the module docstring).
        self._responses = responses
        self._completions = completions
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
        guardrails masked it), as ``[{"role", "content"}]`` with text content: its newest
        messages within ``max_content_chars`` in all."""
        if body is None:
            return None
        try:
            if self._responses:
                messages = _responses_conversation(body)
            elif self._converse:
                messages = converse_content.conversation(body)
            elif self._invoke_family:
                messages = invoke_content.conversation(body)
            elif self._gemini:
                messages = gemini_content.conversation(body)
            elif self._completions:
                messages = _completions_prompt(body)
            else:
                messages = _conversation(body, self._anthropic)
        except Exception as exc:  # the line must be written whatever happens
            _unreadable("prompt", exc)
            return None
        return self._newest_within_limit(messages)

    def completion(self) -> str | None:
        """The answer's text as the client received it so far; None when there was none."""
        if self._read != len(self._chunks):
            self._read = len(self._chunks)
            try:
                text = self._answer_text(b"".join(self._chunks))
            except Exception as exc:  # the line must be written whatever happens
                _unreadable("completion", exc)
                self._output = None
                return None
            self._output = self._cut(text) if text is not None else ""
        return self._output or None

    def _answer_text(self, body: bytes) -> str | None:
        if self._responses:
            return _responses_stream_text(body) if self._streamed else _responses_text(body)
        if self._converse:
            if self._streamed:
                return converse_content.stream_text(body)
            return converse_content.answer_text(body)
        if self._invoke_family:
            # A stream's chunks as unwrapped from the frames, or the whole answer.
            return invoke_content.answer_text(body)
        if self._gemini:
            return gemini_content.answer_text(body)
        text = _stream_text(body, self._anthropic) if self._streamed else None
        if text is None:
            text = _body_text(body, self._anthropic)
        return text

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

    def output_messages_json(self, finish_reason: str) -> str | None:
        """The completion in OpenTelemetry's ``gen_ai.output.messages`` shape, as JSON; the
        conventions' schema requires each message's ``finish_reason``."""
        text = self.completion()
        if text is None:
            return None
        shaped = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": finish_reason,
            }
        ]
        return orjson.dumps(shaped).decode()

    def _cut(self, text: str) -> str:
        if len(text) <= self._limit:
            return text
        self.truncated = True
        return text[: self._limit]

    def _newest_within_limit(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The newest messages whose text fits in the limit, in their order; the oldest
        one kept may be cut. The newest turn is what a request adds to a conversation
        (the older ones were in the lines of its earlier requests)."""
        left = self._limit
        kept: list[dict[str, str]] = []
        for message in reversed(messages):
            if left <= 0:
                self.truncated = True
                break
            text = message["content"]
            if len(text) > left:
                self.truncated = True
                text = text[:left]
            kept.append({"role": message["role"], "content": text})
            left -= len(text)
        kept.reverse()
        return kept


def _conversation(body: dict[str, Any], anthropic: bool) -> list[dict[str, str]]:
    """Every message of a request body with its whole text, the system prompt first."""
    messages: list[dict[str, str]] = []
    system = body.get("system") if anthropic else None
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system)})
    for message in _listed(body.get("messages")):
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            calls = _listed(message.get("tool_calls"))
            if calls:
                text = "\n".join(filter(None, (text, _tool_calls_text(calls))))
            messages.append({"role": str(message.get("role")), "content": text})
    return messages


def _unreadable(field: str, exc: Exception) -> None:
    """A shape the readers below did not foresee: the field is left out (null), the rest
    of the line is written. Only the exception's type is logged: its message could
    quote the text."""
    log.warning("content capture could not read the %s: %s", field, type(exc).__name__)


def _listed(value: Any) -> list[Any]:
    """A JSON value that should be an array; anything else has no items."""
    return value if isinstance(value, list) else []


def _json_text(value: Any) -> str:
    """A tool's input as JSON text; one nested deeper than orjson writes (254 levels,
    though it reads 1024) is shown as a marker rather than failing the line."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return "[too deeply nested]"


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
                pieces.append(f"[tool_use {part.get('name')}] {_json_text(part.get('input'))}")
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
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            texts.append(choice["text"])  # a text completion's choice
        elif isinstance(message, dict):
            text = _text_of(message.get("content"))
            calls = _listed(message.get("tool_calls"))
            if calls:
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
        for choice in _listed(event.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if isinstance(choice.get("text"), str):
                pieces.append(choice["text"])  # a text completion's chunk
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            text = delta.get("content")
            if isinstance(text, str):
                pieces.append(text)
            for call in _listed(delta.get("tool_calls")):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    if function.get("name"):
                        pieces.append(f"[tool_call {function['name']}] ")
                    arguments = function.get("arguments")
                    if isinstance(arguments, str):
                        pieces.append(arguments)
    return "".join(pieces) if saw_event else None


def _completions_prompt(body: dict[str, Any]) -> list[dict[str, str]]:
    """A text completion request as user messages: each prompt, then the ``suffix``."""
    value = body.get("prompt")
    prompts = [value] if isinstance(value, str) else _listed(value)
    if prompts and not isinstance(prompts[0], str | list):
        prompts = [prompts]  # one prompt of token ids
    messages = [
        {"role": "user", "content": prompt if isinstance(prompt, str) else "[token ids]"}
        for prompt in prompts
    ]
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        messages.append({"role": "user", "content": suffix})
    return messages


def _responses_conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """A Responses API request as messages: ``instructions`` (system), then ``input``."""
    messages: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    for item in _listed(value):
        if isinstance(item, dict):
            messages.append(_input_item(item))
    return messages


def _input_item(item: dict[str, Any]) -> dict[str, str]:
    """One input item as a message: a message by its role, a tool call as the
    assistant's, a tool's output as ``tool``, anything else a ``[type]`` marker."""
    kind = item.get("type")
    if "content" in item:
        role = item.get("role")
        return {
            "role": role if isinstance(role, str) else "user",
            "content": _text_of(item.get("content")),
        }
    if kind == "function_call":
        return {"role": "assistant", "content": _item_call_text(item)}
    if "output" in item:
        return {"role": "tool", "content": _text_of(item.get("output"))}
    return {"role": "assistant", "content": f"[{kind}]"}


def _item_call_text(item: dict[str, Any]) -> str:
    return f"[tool_call {item.get('name')}] {item.get('arguments')}"


def _responses_text(body: bytes) -> str | None:
    """A whole Responses API answer: its output messages' text and its function calls."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("output"), list):
        return None
    texts = []
    for item in parsed["output"]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.append(_text_of(item.get("content")))
        elif item.get("type") == "function_call":
            texts.append(_item_call_text(item))
        elif item.get("type") == "compaction":
            texts.append("[compaction]")
    return "\n".join(texts)


def _responses_stream_text(body: bytes) -> str | None:
    """A streamed Responses API answer: its output text deltas, and its function calls
    (named when they start, then their argument deltas)."""
    pieces: list[str] = []
    saw_event = False
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.startswith(_DATA):
            continue
        saw_event = True
        if b'.delta"' not in line and b'.output_item.added"' not in line:
            continue  # the text again, whole (.done events, the terminal response)
        try:
            event = orjson.loads(line[len(_DATA) :])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        delta = event.get("delta")
        if kind in _RESPONSES_TEXT_DELTAS and isinstance(delta, str):
            pieces.append(delta)
        elif kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                pieces.append(f"[tool_call {item.get('name')}] ")
    return "".join(pieces) if saw_event else None


# The delta events whose text is the answer's: output text and function-call arguments.
_RESPONSES_TEXT_DELTAS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta"}
)
