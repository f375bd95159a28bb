"""The text of a Gemini API request and of its whole answer, as guard slots.

A client of Gemini's own API (``google-genai``, Gemini CLI, ADK; ``extproc.gemini_api``)
sends its prompt in Gemini's shape, which goes to Google's model on Vertex as it is. Its
text is what the model reads, in order:

- ``systemInstruction``'s parts, with the role ``system``;
- each of ``contents``' parts, with the content's role (Gemini's ``model`` is the
  ``assistant``; a content without a role is the ``user``'s): a ``text`` part; a
  ``functionCall``'s ``args`` as the ``assistant``'s (the model wrote it, whatever content
  carries it back); a ``functionResponse``'s ``response`` as ``tool``'s; the ``code`` of
  an ``executableCode`` part as the ``assistant``'s and the ``output`` of a
  ``codeExecutionResult`` as ``tool``'s (Google's code execution tool ran it);
- the text of a thought part (``"thought": true``), the model's reasoning sent back, as
  the ``assistant``'s: no signature covers that text (a ``thoughtSignature`` stands for
  the model's hidden thinking and stays as it came), so a mask writes in place there;
- a text file sent inline (``inlineData`` of a text media type, ``text/plain`` and the
  like: ``gemini_api.text_inline_data``), which Gemini reads as text: its base64 ``data``
  is read decoded (as UTF-8, standard or URL-safe base64 alike, as Google takes either)
  and a mask writes it back encoded, as every API's text files are (``attached_text``).
  Left unread, a file was a way around every guard.

A function call's ``args`` and a response's ``response`` are JSON values, not JSON text:
each key and each string in them is a slot of its own, read and masked as a Converse
``toolUse`` ``input`` is (``converse_text.json_value_slots``), so a masked value or key
changes in place and the value stays the same object.

A function call's or response's ``name`` in a request is read, ``fixed``: an identifier
a mask would break, so a mask there refuses (``content.name_slot``).

Not read, as on the other APIs:

- inline data that is no
  text (images, audio, video, PDFs) and files (``fileData``: a URI),
  ``generationConfig``, ``safetySettings``, ``cachedContent`` (a name: its text is
  Google's, not in the body). Function declarations and response schemas are read by
  ``definitions``, as every API's tool definitions are.

A countTokens body is read as the request it counts: its ``contents`` (with Vertex's
top-level ``systemInstruction``), or the ``generateContentRequest`` it wraps
(``guarded_request``), which enrichment writes into as well.

A whole answer's text is each candidate's ``content.parts``, read as the ``assistant``'s
as above, then its thought parts' text: the client is shown its thought summaries as it
is shown the answer, and a mask writes in place there. Field names are read in camelCase,
then snake_case, as ``gemini_api`` reads them (Google's REST API takes both); a field
that holds text is read under both when a body spells it both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extproc.attached_text import EncodedText
from extproc.gemini_api import (
    CODE,
    CODE_RESULT,
    CONTENTS,
    FUNCTION_CALL,
    FUNCTION_RESPONSE,
    REQUEST,
    SYSTEM,
    text_inline_data,
)
from extproc.guardrails.content import TextSlot, name_slot
from extproc.guardrails.converse_text import CALL_ROLE, TOOL_ROLE, dicts, json_value_slots

# A content without a role (or with one that is not a string) is the user's, as Gemini
# reads it.
DEFAULT_ROLE = "user"
# Gemini's roles as the guards (webhooks, moderation's ``roles``) name them.
_ROLES = {"model": "assistant"}


def guarded_request(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentRequest whose text reaches the model: the body itself, or the
    ``generateContentRequest`` a countTokens body wraps instead of ``contents``."""
    request = _field(body, REQUEST)
    if _field(body, CONTENTS) is None and isinstance(request, dict):
        return request
    return body


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of a Gemini request, in the order the model reads it."""
    request = guarded_request(body)
    slots: list[TextSlot] = []
    for system in spellings(request, SYSTEM):
        if isinstance(system, dict):
            for part in dicts(system.get("parts")):
                part_slots("system", part, slots)
    for content in dicts(_field(request, CONTENTS)):
        role = content.get("role")
        role = _ROLES.get(role, role) if isinstance(role, str) else DEFAULT_ROLE
        for part in dicts(content.get("parts")):
            part_slots(role, part, slots, names=True)
    return slots


def answer_slots(answer: Any) -> list[TextSlot]:
    """The text of each candidate of a whole answer, as the assistant's. Any other shape
    (an error, a blocked prompt) holds none."""
    slots: list[TextSlot] = []
    thoughts: list[TextSlot] = []
    candidates = answer.get("candidates") if isinstance(answer, dict) else None
    for candidate in dicts(candidates):
        content = candidate.get("content")
        if isinstance(content, dict):
            for part in dicts(content.get("parts")):
                if part.get("thought") is True and isinstance(part.get("text"), str):
                    # The client is shown its thought summaries as it is shown the
                    # answer; no signature covers their text (a thought signature
                    # stands for the model's hidden thinking), so a mask writes there.
                    thoughts.append(TextSlot(CALL_ROLE, part, "text"))
                else:
                    part_slots(CALL_ROLE, part, slots)
    slots.extend(thoughts)
    return slots


def part_slots(
    role: str, part: dict[str, Any], slots: list[TextSlot], *, names: bool = False
) -> None:
    """The text of one part (the module docstring), a thought's included; ``names``: a
    request's, whose function calls' and responses' names are read too
    (``content.name_slot``)."""
    if isinstance(part.get("text"), str):
        slots.append(TextSlot(role, part, "text"))
        return
    for call in spellings(part, FUNCTION_CALL):
        if isinstance(call, dict):
            if names:
                name_slot(CALL_ROLE, call, "name", slots)
            json_value_slots(CALL_ROLE, call, "args", slots)
    for response in spellings(part, FUNCTION_RESPONSE):
        if isinstance(response, dict):
            if names:
                name_slot(TOOL_ROLE, response, "name", slots)
            json_value_slots(TOOL_ROLE, response, "response", slots)
    for code in spellings(part, CODE):
        if isinstance(code, dict) and isinstance(code.get("code"), str):
            slots.append(TextSlot(CALL_ROLE, code, "code"))
    for result in spellings(part, CODE_RESULT):
        if isinstance(result, dict) and isinstance(result.get("output"), str):
            slots.append(TextSlot(TOOL_ROLE, result, "output"))
    inline = text_inline_data(part)
    if inline is not None:
        slots.append(TextSlot(role, EncodedText(inline, "data"), "data"))


def _field(container: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` the container gives one (not null)."""
    for name in names:
        value = container.get(name)
        if value is not None:
            return value
    return None


def spellings(container: dict[str, Any], names: tuple[str, ...]) -> Iterator[Any]:
    """The value under each of ``names`` (one field's camelCase and snake_case names) the
    container gives: a body that spells a field both ways has both read, whichever one
    Google reads."""
    for name in names:
        value = container.get(name)
        if value is not None:
            yield value
