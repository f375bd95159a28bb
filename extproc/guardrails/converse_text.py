"""The text of a Bedrock Converse request and of its whole answer, as guard slots.

A client speaking Bedrock's own Converse API (boto3 ``bedrock-runtime`` ``converse``)
sends its prompt in Converse's shape, which goes to Bedrock as it is. Its text is what
the provider reads, in order:

- ``system`` blocks, with the role ``system``: a ``text`` block, and the text of a
  ``guardContent`` block (``guardContent.text.text``);
- ``promptVariables`` (a Prompt management prompt's variables): each value's ``text``,
  as the ``user``'s, since Bedrock writes them into the prompt;
- each message's content blocks, with the message's role: a ``text`` block; a
  ``guardContent`` block's text; a ``document``'s ``context`` and its source's ``text``
  or ``content`` text blocks, or its ``bytes`` when its format is text (``txt``, ``csv``,
  ``md``, ``html``: base64 in JSON, read decoded and masked back encoded,
  ``attached_text``); a ``searchResult``'s ``title`` and text blocks; the
  generated text of a ``citationsContent`` block sent back;
- a ``toolUse`` block's ``input``, as the ``assistant``'s (the model wrote it, whatever
  message carries it back); what a ``toolResult`` holds, as ``tool``: its text,
  documents and search results read as a message's blocks are, and its ``json`` blocks.

A tool's ``input`` and a result's ``json`` are JSON values, not JSON text: each key and
each string in them is a slot of its own, read and masked as an Anthropic ``tool_use``
``input`` is (``content.tool_input_slots``): a masked key renames its member where it
stands, and the value stays the same object, so no one re-serialises it. Numbers,
booleans and nulls are not text. A value that is a bare string is one slot.

Reasoning sent back (``reasoningContent``) is read as the ``assistant``'s too. Its
``signature`` (Claude's) covers its text, which Bedrock wants back unmodified, as
Anthropic's ``thinking``: a mask there drops the block where Claude allows it, from a
closed turn, or refuses the request. Reasoning without one is masked in place;
``redactedContent`` is encrypted.

Not read, as on chat routes:

- a document's ``name``: an identifier, as a tool's name is, of a few characters
  (letters, digits, spaces, hyphens, brackets) that a mask's ``<EMAIL>`` or ``****``
  would break (Bedrock would refuse the body); a search result's ``source`` (a URL or an
  identifier); a citation's source and quoted text (``citations``), the client's own
  documents quoted back; images, videos, audio, the bytes of documents that are no text
  (PDFs, Word and Excel files) and S3 locations;
- tool definitions (``toolConfig``) and the structured output's schema
  (``outputConfig``): not here, but in ``definitions``, as every API's are;
- ``additionalModelRequestFields``: free-form per model, its meaning is the model's
  (a sampling knob or a prompt), so the gateway cannot tell text from settings there.

A whole answer's text is its ``output.message`` content blocks, read as the
``assistant``'s as above: text, cited text and tool calls' input, then its reasoning's
text, which reaches the client too: signed, so a mask there refuses the answer. A
streamed answer is not read here.

The quota's prompt estimate (``estimate_chars``) counts the same text, with JSON values
whole, reasoning sent back, tool definitions and a structured output's schema
(``outputConfig.textFormat``); a text document's bytes from their base64's length,
never decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# One walk of a structured tool input (``content``) and one way of counting JSON values
# and tool definitions (the quota's estimate).
from extproc.attached_text import converse_document
from extproc.guardrails.content import (
    TextSlot,
    drop_closed_reasoning,
    name_slot,
    tool_input_slots,
)
from extproc.quota.estimate import definitions_chars, json_chars, string_chars

# A message without a role (Bedrock refuses it) is read as the user's, as on chat routes.
DEFAULT_ROLE = "user"
# A tool call's input is the model's text, wherever the client puts it back.
CALL_ROLE = "assistant"
# What a tool returned, as an OpenAI "tool" message and a Responses tool output are read.
TOOL_ROLE = "tool"


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of a Converse request, in the order the provider reads it."""
    slots: list[TextSlot] = []
    for block in dicts(body.get("system")):
        _block_slots("system", block, slots)
    slots.extend(_variable_slots(body))
    for role, block in _message_blocks(body):
        _block_slots(role, block, slots, names=True)
        if "reasoningContent" in block:
            _sent_reasoning_slot(role, block, slots)
    return slots


def _sent_reasoning_slot(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    """The text of reasoning sent back in a request's history. With a ``signature``
    (Claude's) it is ``signed``: Bedrock refuses it changed, so a mask drops the block where
    it may go (``drop_reasoning``); without one (DeepSeek's on Bedrock) it is masked in
    place, and goes with a drop of signed reasoning before it (the slot names its block so
    guards read no more what Bedrock will not get). ``redactedContent`` is encrypted, no
    text."""
    reasoning = block["reasoningContent"]
    text = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        signed = bool(text.get("signature"))
        slots.append(TextSlot(role, text, "text", signed=signed, block=block))


def drop_reasoning(body: dict[str, Any], first: dict[str, Any]) -> set[int] | None:
    """Drop the signed reasoning block ``first`` from a Converse request's history, with
    every reasoning block of the closed turns after it, as on Anthropic's API
    (``content.drop_closed_reasoning``)."""
    return drop_closed_reasoning(
        list(dicts(body.get("messages"))),
        first,
        lambda block: "reasoningContent" in block,
        lambda block: "toolResult" in block,
    )


def answer_slots(answer: Any) -> list[TextSlot]:
    """The text of a whole Converse answer's message: its text, cited text and tool calls'
    input, as the assistant's. Any other shape holds none."""
    slots: list[TextSlot] = []
    reasoning: list[TextSlot] = []
    output = answer.get("output") if isinstance(answer, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    if isinstance(message, dict):
        for block in dicts(message.get("content")):
            _block_slots(CALL_ROLE, block, slots)
            _reasoning_slot(block, reasoning)
    slots.extend(reasoning)
    return slots


def _reasoning_slot(block: dict[str, Any], slots: list[TextSlot]) -> None:
    """The text of an answer's ``reasoningContent`` block, ``signed``: its signature covers
    it and Bedrock refuses it changed, so a mask there refuses the answer instead
    (``stages.guardrails``). ``redactedContent`` is encrypted, no text."""
    reasoning = block.get("reasoningContent")
    text = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        slots.append(TextSlot(CALL_ROLE, text, "text", signed=True))


def _variable_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The ``text`` of each value of ``promptVariables``, as the user's."""
    slots: list[TextSlot] = []
    variables = body.get("promptVariables")
    if isinstance(variables, dict):
        for value in variables.values():
            _string_slot(DEFAULT_ROLE, value, "text", slots)
    return slots


def _block_slots(
    role: str, block: dict[str, Any], slots: list[TextSlot], *, names: bool = False
) -> None:
    """The text of one content block (the module docstring); ``names``: a request's,
    whose tool calls' names are read too (``content.name_slot``)."""
    _text_slots(role, block, slots)
    use = block.get("toolUse")
    if isinstance(use, dict):
        if names:
            name_slot(CALL_ROLE, use, "name", slots)
        json_value_slots(CALL_ROLE, use, "input", slots)
    for item in _result_items(block):
        _text_slots(TOOL_ROLE, item, slots)
        json_value_slots(TOOL_ROLE, item, "json", slots)


def _text_slots(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    """The plain text of one block: text, guarded text, documents, search results and
    cited text. Tool calls and results are ``_block_slots``'s."""
    _string_slot(role, block, "text", slots)
    guarded = block.get("guardContent")
    if isinstance(guarded, dict):
        _string_slot(role, guarded.get("text"), "text", slots)
    document = block.get("document")
    if isinstance(document, dict):
        _string_slot(role, document, "context", slots)
        source = document.get("source")
        if isinstance(source, dict):
            _string_slot(role, source, "text", slots)
            _parts_slots(role, source.get("content"), slots)
        # A document in a text format sent as bytes (base64 in JSON), read decoded.
        text_file = converse_document(document)
        if text_file is not None:
            slots.append(TextSlot(role, text_file, "bytes"))
    result = block.get("searchResult")
    if isinstance(result, dict):
        _string_slot(role, result, "title", slots)
        _parts_slots(role, result.get("content"), slots)
    cited = block.get("citationsContent")
    if isinstance(cited, dict):
        _parts_slots(role, cited.get("content"), slots)


def estimate_chars(body: dict[str, Any]) -> int:
    """How many characters of text the provider reads from a Converse request.

    The text the guards read (``request_slots``), but for JSON values: a tool call's
    ``input`` and a result's ``json`` count as compact JSON (numbers and punctuation are
    tokens too), with the name of the tool called, as the chat estimate counts an
    Anthropic ``tool_use``. Reasoning sent back counts too: the guards leave it alone,
    but the model reads it (and Bedrock bills it) within a tool-use loop. Tool
    definitions count as the chat estimate counts ``tools``: as JSON; a structured
    output's schema as the chat estimate counts ``response_format``'s."""
    chars = sum(_block_chars(block) for block in dicts(body.get("system")))
    chars += _slots_chars(_variable_slots(body))
    chars += sum(_block_chars(block) for _, block in _message_blocks(body))
    tool_config = body.get("toolConfig")
    if isinstance(tool_config, dict):
        chars += definitions_chars(tool_config)
    return chars + _output_schema_chars(body)


def _output_schema_chars(body: dict[str, Any]) -> int:
    """A structured output's definition (``outputConfig.textFormat.structure.jsonSchema``:
    its name, description and schema, a string of JSON): the model reads it, and Bedrock
    bills it as input. Skipped, a schema of thousands of tokens reserved nothing, and a
    hard cap let the prompt past its budget."""
    config = body.get("outputConfig")
    text_format = config.get("textFormat") if isinstance(config, dict) else None
    structure = text_format.get("structure") if isinstance(text_format, dict) else None
    definition = structure.get("jsonSchema") if isinstance(structure, dict) else None
    if not isinstance(definition, dict):
        return 0
    return sum(json_chars(definition.get(field)) for field in ("name", "description", "schema"))


def _block_chars(block: dict[str, Any]) -> int:
    chars = _text_chars(block) + _reasoning_chars(block)
    use = block.get("toolUse")
    if isinstance(use, dict):
        chars += string_chars(use.get("name")) + json_chars(use.get("input"))
    for item in _result_items(block):
        chars += _text_chars(item) + json_chars(item.get("json"))
    return chars


def _text_chars(block: dict[str, Any]) -> int:
    slots: list[TextSlot] = []
    _text_slots(DEFAULT_ROLE, block, slots)
    return _slots_chars(slots)


def _reasoning_chars(block: dict[str, Any]) -> int:
    reasoning = block.get("reasoningContent")
    text = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
    return string_chars(text.get("text")) if isinstance(text, dict) else 0


def _slots_chars(slots: list[TextSlot]) -> int:
    return sum(slot.chars for slot in slots)


def _message_blocks(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each content block of each message, with the message's role."""
    for message in dicts(body.get("messages")):
        role = message.get("role")
        role = role if isinstance(role, str) else DEFAULT_ROLE
        for block in dicts(message.get("content")):
            yield role, block


def _result_items(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The content of a block's ``toolResult``: text, JSON, documents, search results..."""
    result = block.get("toolResult")
    if isinstance(result, dict):
        yield from dicts(result.get("content"))


def json_value_slots(role: str, holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    """Each key and string of the JSON value ``holder[key]``, in document order (Gemini's
    function calls and responses are read by it too, ``gemini_text``).

    A container is walked by content's walk of an Anthropic tool ``input``: the dict made
    here only hands it the value, and every slot it gives holds the body's own objects
    (or their ``_Members``), so a write lands in the body. A bare string is one slot."""
    value = holder.get(key)
    if isinstance(value, str):
        slots.append(TextSlot(role, holder, key))
    elif isinstance(value, dict | list):
        tool_input_slots(role, {"input": value}, slots)


def _parts_slots(role: str, parts: Any, slots: list[TextSlot]) -> None:
    """The ``text`` of each block of a list of text blocks."""
    for part in dicts(parts):
        _string_slot(role, part, "text", slots)


def _string_slot(role: str, holder: Any, key: str, slots: list[TextSlot]) -> None:
    if isinstance(holder, dict) and isinstance(holder.get(key), str):
        slots.append(TextSlot(role, holder, key))


def dicts(value: Any) -> Iterator[dict[str, Any]]:
    """The objects of a list; nothing when ``value`` is no list."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item
