"""The text of an OpenAI Responses API request and of its whole answer, as guard slots.

A request's text is what the provider reads, in order:

- ``instructions``, with the role ``system``;
- a stored prompt's ``prompt.variables`` (``prompt_slots``): each string, or the text of
  an ``input_text`` value, as the ``user``'s: the provider writes them into the prompt;
- ``input``: one string (role ``user``), or items (``item_slots``): a message's
  ``content`` (a string, or the text of its ``input_text`` / ``output_text`` parts and
  the ``refusal`` of its refusal parts, and the ``file_data`` of an ``input_file`` part
  of a text type, read decoded: ``attached_text``) with the message's role; a function call's
  ``arguments`` and a custom tool call's ``input`` (read as a chat tool call's are: as
  JSON when they are), as the ``assistant``'s; what a function or custom tool returned
  (``output``, a string or text parts, text files included), as ``tool``.

Every other item (reasoning summaries and text, MCP calls, shell and patch calls and
their outputs, and the types OpenAI adds later) is read whole: each string in it, but
for those that are no text (ids, states, names, encrypted content, images and files:
``_NOT_TEXT``); what a tool returned (an ``output``, ``outputs``, ``results`` or
``result``, or an item whose type ends in ``_output``) as ``tool``, the rest as the
``assistant``'s. Left unread, such an item carried text past every guard.

A whole answer's text is each output message's text and refusal parts, each function
or custom tool call's input, and every other output item read whole as above (reasoning
summaries, MCP calls...). Images, PDFs, files by id or URL and other non-text parts are
not slots, as on chat routes. A streamed answer is not read here: the route refuses streams when it
guards answers (``stages.guardrails``).

The quota's estimate counts the same text (``quota.estimate.estimate_responses_tokens``).
"""

from __future__ import annotations

from typing import Any

from extproc.attached_text import openai_file
from extproc.guardrails.content import SERVER_NAME, TextSlot, name_slot

# The role of the calls an input item holds: the model made them.
CALL_ROLE = "assistant"

# Text parts of a message's content, by the field of their text: the client's own,
# earlier answers sent back, and an earlier answer's refusal.
_TEXT_PARTS = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
# Items that call a tool: the field of their text, read as JSON while it is JSON (a
# custom tool's free input too, as on chat routes: a tool that decodes a JSON input
# reads a key spelled with an escape), as written otherwise.
_CALLS = {"function_call": ("arguments", True), "custom_tool_call": ("input", True)}
# Items whose ``output`` is what a tool returned: a string or content parts.
_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
# The fields of an item read whole whose strings are no text the model reads as language:
# identifiers, states and enums, tool and server names (renaming them breaks the call),
# and payloads that are not text (encrypted reasoning, images, files, token logprobs).
_NOT_TEXT = frozenset(
    {
        "id",
        "call_id",
        "approval_request_id",
        "caller_id",
        "type",
        "status",
        "role",
        "name",
        "server_label",
        "fingerprint",
        "created_by",
        "encrypted_content",
        "image_url",
        "file_id",
        "file_url",
        "file_data",
        "detail",
        "logprobs",
        "annotations",
    }
)
# Parts and values that are not text, wherever they stand.
_NOT_TEXT_PARTS = frozenset({"input_image", "input_file", "input_audio", "computer_screenshot"})
# Items read whole whose own field holds no text: an image generation's base64 image.
_NOT_TEXT_FIELDS = {"image_generation_call": frozenset({"result"})}
# The fields of an item read whole that hold what a tool returned.
_TOOL_FIELDS = frozenset({"output", "outputs", "results", "result"})
# Fields of an item read whole that hold JSON text (MCP calls' and approvals' arguments).
_JSON_FIELDS = frozenset({"arguments"})


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of a Responses API request, in the order the provider reads it."""
    slots: list[TextSlot] = []
    if isinstance(body.get("instructions"), str):
        slots.append(TextSlot("system", body, "instructions"))
    slots.extend(prompt_slots(body))
    value = body.get("input")
    if isinstance(value, str):
        slots.append(TextSlot("user", body, "input"))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                slots.extend(item_slots(item, names=True))
    return slots


def prompt_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The text of a stored prompt's ``variables``: strings, and ``input_text`` values."""
    slots: list[TextSlot] = []
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if not isinstance(variables, dict):
        return slots
    for name, value in variables.items():
        if isinstance(value, str):
            slots.append(TextSlot("user", variables, name))
        elif isinstance(value, dict):
            _part_slots("user", value, slots)
    return slots


def item_slots(item: dict[str, Any], *, names: bool = False) -> list[TextSlot]:
    """The text of one input or output item (the module docstring). ``names``: an input
    item's, whose ``name`` and ``server_label`` (a call's tool and MCP server, an
    ``mcp_list_tools`` item's tools) are read too (``content.name_slot``)."""
    slots: list[TextSlot] = []
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        # No item the provider takes (it refuses it); a list or an object is no key of
        # the tables below (unhashable), and must not fail the gateway.
        return slots
    if names and kind is not None and kind != "message":
        name_slot(CALL_ROLE, item, "server_label", slots, SERVER_NAME)
        name_slot(CALL_ROLE, item, "name", slots)
        tools = item.get("tools")
        if isinstance(tools, list):
            for tool in tools:
                name_slot(CALL_ROLE, tool, "name", slots)
    call = _CALLS.get(kind) if kind is not None else None
    if call is not None:
        field, is_json = call
        if isinstance(item.get(field), str):
            slots.append(TextSlot("assistant", item, field, is_json))
    elif kind in _OUTPUTS:
        _content_slots("tool", item, "output", slots)
    elif kind is None or kind == "message":
        role = item.get("role")
        _content_slots(role if isinstance(role, str) else "user", item, "content", slots)
    else:
        role = "tool" if kind.endswith("_output") else "assistant"
        skipped = _NOT_TEXT | _NOT_TEXT_FIELDS.get(kind, frozenset())
        _walk(role, item, slots, skipped)
    return slots


def _content_slots(role: str, holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        slots.append(TextSlot(role, holder, key))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                _part_slots(role, part, slots)


def _part_slots(role: str, part: dict[str, Any], slots: list[TextSlot]) -> None:
    """A content part's text: a text part's ``text``, a refusal part's ``refusal``, a text
    file's ``file_data`` (``attached_text``)."""
    kind = part.get("type")
    field = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
    if field is not None and isinstance(part.get(field), str):
        slots.append(TextSlot(role, part, field))
    elif kind == "input_file":
        text_file = openai_file(part)
        if text_file is not None:
            slots.append(TextSlot(role, text_file, "file_data"))


def _walk(role: str, value: Any, slots: list[TextSlot], skipped: frozenset[str]) -> None:
    """Every string under ``value``, but for the fields ``skipped`` and non-text parts.

    Recursive: a parsed body is at most ``limits.max_json_depth`` (200) levels deep."""
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in _NOT_TEXT_PARTS:
            return
        for key, member in value.items():
            if key in skipped:
                continue
            inner = "tool" if key in _TOOL_FIELDS else role
            if isinstance(member, str):
                slots.append(TextSlot(inner, value, key, key in _JSON_FIELDS))
            else:
                _walk(inner, member, slots, skipped)
    elif isinstance(value, list):
        for index, member in enumerate(value):
            if isinstance(member, str):
                slots.append(TextSlot(role, value, index))
            else:
                _walk(role, member, slots, skipped)


def answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text of a whole Responses API answer's output items."""
    slots: list[TextSlot] = []
    output = answer.get("output")
    if not isinstance(output, list):
        return slots
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            _content_slots("assistant", item, "content", slots)
        else:
            slots.extend(item_slots(item))
    return slots
