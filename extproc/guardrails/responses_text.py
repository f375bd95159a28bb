"""The text of an OpenAI Responses API request and of its whole answer, as guard slots.

A request's text is what the provider reads, in order:

- ``instructions``, with the role ``system``;
- ``input``: one string (role ``user``), or items: a message's ``content`` (a string,
  or the text of its ``input_text`` / ``output_text`` parts) with the message's role;
  a function call's ``arguments`` and a custom tool call's ``input`` (read as a chat
  tool call's are: as JSON when they are), as the ``assistant``'s; what a tool returned
  (``output``, a string or text parts), as ``tool``.

A whole answer's text is each output message's ``output_text`` parts and each function
call's ``arguments``. Images, files and other non-text parts are not slots, as on chat
routes. A streamed answer is not read here: the route refuses streams when it guards
answers (``stages.guardrails``).
"""

from __future__ import annotations

from typing import Any

from extproc.guardrails.content import TextSlot

# Text parts of a message's content: the client's own, and earlier answers sent back.
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# Items that call a tool: the field of their text, read as JSON while it is JSON (a
# custom tool's free input too, as on chat routes: a tool that decodes a JSON input
# reads a key spelled with an escape), as written otherwise.
_CALLS = {"function_call": ("arguments", True), "custom_tool_call": ("input", True)}


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of a Responses API request, in the order the provider reads it."""
    slots: list[TextSlot] = []
    if isinstance(body.get("instructions"), str):
        slots.append(TextSlot("system", body, "instructions"))
    value = body.get("input")
    if isinstance(value, str):
        slots.append(TextSlot("user", body, "input"))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                _item_slots(item, slots)
    return slots


def _item_slots(item: dict[str, Any], slots: list[TextSlot]) -> None:
    kind = item.get("type")
    call = _CALLS.get(kind) if isinstance(kind, str) else None
    if call is not None:
        field, is_json = call
        if isinstance(item.get(field), str):
            slots.append(TextSlot("assistant", item, field, is_json))
        return
    if "content" in item:
        role = item.get("role")
        _content_slots(role if isinstance(role, str) else "user", item, "content", slots)
    elif "output" in item:
        _content_slots("tool", item, "output", slots)


def _content_slots(role: str, holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        slots.append(TextSlot(role, holder, key))
    elif isinstance(content, list):
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") in _TEXT_PARTS
                and isinstance(part.get("text"), str)
            ):
                slots.append(TextSlot(role, part, "text"))


def answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text and function-call arguments of a whole Responses API answer."""
    slots: list[TextSlot] = []
    output = answer.get("output")
    if not isinstance(output, list):
        return slots
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            _content_slots("assistant", item, "content", slots)
        elif item.get("type") in _CALLS:
            _item_slots(item, slots)
    return slots
