"""Prompt and completion text of Gemini's API, for content capture.

A generateContent request reads as a conversation: ``systemInstruction``'s parts as the
system message, then each content with its role (Gemini's ``model`` is the log line's
``assistant``) and its parts' text: ``text``; a function call as
``[tool_call <name>] <args as JSON>``; a function response as ``[tool_result <name>]``
and its response as JSON; a ``[kind]`` marker for anything else (inline data, files,
code). A thought summary (``thought: true``) is text the model wrote too. A token count
reads the same, either of its forms.

The answer is the first candidate's parts read the same way, from the JSON answer, or
from each event of its stream (Server-Sent Events, ``data: <answer JSON>``), joined.

As everything content capture reads, an odd shape never raises here into the log line:
the caller catches and leaves the field out.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_ROLES = {"model": "assistant"}
# One event's data of an SSE stream, whichever line ending Google writes.
_DATA = re.compile(rb"^data: ?(.*?)\r?$", re.MULTILINE)


def conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """Every content of a Gemini request with its text, the system instruction first."""
    request = body.get("generateContentRequest")
    if isinstance(request, dict):
        body = request  # countTokens' other form: the request it counts
    messages: list[dict[str, str]] = []
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, dict):
        messages.append({"role": "system", "content": parts_text(system.get("parts"))})
    for content in _listed(body.get("contents")):
        if isinstance(content, dict):
            role = str(content.get("role") or "user")
            messages.append(
                {"role": _ROLES.get(role, role), "content": parts_text(content.get("parts"))}
            )
    return messages


def parts_text(parts: Any) -> str:
    """The text of a content's parts, one line each."""
    lines: list[str] = []
    for part in _listed(parts):
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall", part.get("function_call"))
        answer = part.get("functionResponse", part.get("function_response"))
        if isinstance(part.get("text"), str):
            lines.append(part["text"])
        elif isinstance(call, dict):
            lines.append(f"[tool_call {call.get('name')}] {_json(call.get('args'))}")
        elif isinstance(answer, dict):
            lines.append(f"[tool_result {answer.get('name')}] {_json(answer.get('response'))}")
        else:
            kinds = [key for key in part if key not in ("thought", "thoughtSignature")]
            if kinds:
                lines.append(f"[{kinds[0]}]")
    return "\n".join(lines)


def answer_text(body: bytes) -> str | None:
    """The first candidate's text of a JSON answer or of a stream's events, joined;
    None when nothing in ``body`` reads as an answer."""
    events = [match.group(1) for match in _DATA.finditer(body)]
    documents: list[Any] = []
    for data in events or [body]:
        try:
            documents.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            continue  # an event cut at the end of what the client got
    pieces: list[str] = []
    read = False
    for document in documents:
        # Without alt=sse a stream is one JSON array of answers.
        for answer in document if isinstance(document, list) else [document]:
            candidates = answer.get("candidates") if isinstance(answer, dict) else None
            if not isinstance(candidates, list):
                continue
            read = True
            first = candidates[0] if candidates else None
            content = first.get("content") if isinstance(first, dict) else None
            if isinstance(content, dict):
                pieces.append(parts_text(content.get("parts")))
    # A stream's events carry deltas of one answer: joined as they came.
    return "".join(pieces) if read else None


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return "[too deeply nested]"


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
