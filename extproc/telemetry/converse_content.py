"""Prompt and completion text of Bedrock's Converse API, for content capture.

A Converse request reads as a conversation: ``system``'s text blocks as the system
message, then each message with its role and its blocks' text: ``text``, a tool call as
``[tool_call <name>]`` and its input as JSON, a tool result's text, and a ``[type]``
marker for anything else (images, documents, reasoning). The answer is its
``output.message`` read the same way, or, streamed, the text and tool-input deltas of
its event-stream frames (botocore's decoder; a frame that breaks ends the reading).

As everything content capture reads, an odd shape never raises here into the log line:
the caller catches and leaves the field out.
"""

from __future__ import annotations

from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer

from extproc.translators.openai_bedrock_stream import BAD_FRAME


def conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """Every message of a Converse body with its text, the system prompt first."""
    messages: list[dict[str, str]] = []
    system = body.get("system")
    if isinstance(system, list) and system:
        messages.append({"role": "system", "content": blocks_text(system)})
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            content = message.get("content")
            text = blocks_text(content) if isinstance(content, list) else ""
            messages.append({"role": str(message.get("role")), "content": text})
    return messages


def blocks_text(blocks: list[Any]) -> str:
    """The text of Converse content blocks, one line each."""
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            lines.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            call = block["toolUse"]
            arguments = orjson.dumps(call.get("input")).decode()
            lines.append(f"[tool_call {call.get('name')}] {arguments}")
        elif isinstance(block.get("toolResult"), dict):
            content = block["toolResult"].get("content")
            lines.append(blocks_text(content) if isinstance(content, list) else "")
        elif block:
            lines.append(f"[{next(iter(block))}]")
    return "\n".join(lines)


def answer_text(body: bytes) -> str | None:
    """A Converse JSON answer's ``output.message`` text; None when it holds none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    output = parsed.get("output") if isinstance(parsed, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return blocks_text(content) if isinstance(content, list) else None


def stream_text(body: bytes) -> str | None:
    """A ConverseStream answer's text and tool-input deltas, joined; None when no frame
    could be read."""
    frames = EventStreamBuffer()
    frames.add_data(body)
    pieces: list[str] = []
    read = False
    try:
        for frame in frames:
            read = True
            if frame.headers.get(":event-type") != "contentBlockDelta":
                continue
            event = orjson.loads(frame.payload)
            delta = event.get("delta") if isinstance(event, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("text"), str):
                pieces.append(delta["text"])
            tool = delta.get("toolUse")
            if isinstance(tool, dict) and isinstance(tool.get("input"), str):
                pieces.append(tool["input"])
    except BAD_FRAME:
        pass  # what was read before the broken frame stands
    return "".join(pieces) if read else None
