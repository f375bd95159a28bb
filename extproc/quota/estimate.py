"""How many tokens to reserve before the provider says how many were used.

Prompt tokens are estimated at one per four characters of the prompt's text
(the common rule of thumb for English with OpenAI's tokenizers), plus the
request's ``max_tokens`` (or the configured default) for the completion. The
estimate only sizes the reservation: the settlement replaces it with the
provider's own count.

The text is everything the provider reads and bills as input, in the client's
body (OpenAI chat completions or Anthropic messages: the estimate runs before
translation, so a Bedrock-bound request is read in its OpenAI shape):

- each message's content: a string, or its text and refusal parts or blocks (a bare
  string among them too, which vLLM reads as a text part), an OpenAI message's
  ``name`` and an assistant's ``refusal``; a text file an OpenAI ``file`` part carries
  (``attached_text``), counted from its base64's length, never decoded;
- reasoning sent back: Claude's ``thinking`` text (not its signature), Mistral's
  ``thinking`` chunks, an OpenAI-compatible assistant's ``reasoning_content``,
  ``reasoning`` and ``reasoning_details`` text; not ``redacted_thinking`` nor encrypted
  details, whose length is no measure of their text;
- Anthropic's ``tool_result`` and ``mcp_tool_result`` content (a string or blocks,
  nested documents and search results included), ``document`` blocks (a plain-text
  source's ``data``, a content source's text, ``title``, ``context``),
  ``search_result`` blocks, and the text of server tools' results (a fetched page,
  a run's output, a viewed file: what the guards read of them,
  ``guardrails.content.server_result_slots``; encrypted results are not text);
- tool calls in the history: Anthropic's ``tool_use``, ``server_tool_use`` and
  ``mcp_tool_use`` name and ``input`` (as JSON), OpenAI's ``tool_calls`` (a
  function's or a custom tool's) and legacy ``function_call`` names and
  ``arguments`` or ``input``;
- what an OpenAI-compatible server's chat template reads beside the messages: vLLM's
  ``documents`` and ``chat_template_kwargs`` (``template_chars``), as JSON;
- tool definitions: OpenAI's ``tools`` and legacy ``functions``, Anthropic's
  ``tools``, as JSON (the providers render them into the prompt);
- a structured output's schema (``output_schema_chars``): OpenAI's ``response_format``
  of type ``json_schema``, Anthropic's ``output_config.format`` and its beta
  ``output_format``, as JSON, as tool definitions are: the model reads it, and the
  providers bill it as input (OpenAI's ``prompt_tokens`` grow with it; Claude gets it
  in a system prompt of its own).

An OpenAI Responses API body (``/v1/responses``) is read its own way
(``estimate_responses_tokens``): ``instructions``, a stored prompt's variables, then
``input`` (a string, or items: the text the guards read of each, from
``guardrails.responses_text``: messages' text and refusal parts, function and custom
tool calls' names and arguments, what tools returned, reasoning summaries, MCP and
shell items...), with the same per-message overhead, its tool definitions and its
structured output's schema (``text.format``); its completion allowance is
``max_output_tokens``. Context the provider adds from storage
(``previous_response_id``, ``conversation``, a stored ``prompt``) is not in the body:
the estimate is low for such a request, and the settlement, from the provider's
count, exact.

The chat walk counts at least what the request guards read (``guardrails.content``):
a part the guards learn to read is a part the model reads, so it counts here too.
Text the estimate skipped would still be billed: a prompt made of it reserved
next to nothing, and one large request could overrun a token limit or a hard
cap. Images and PDFs are not text (their base64 is not their token count); a file of
a text type is (``attached_text``).

One pass over the already-parsed body; the only allocation is the JSON of tool
inputs and definitions, which orjson writes in C at a fraction of the parse's cost.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.attached_text import openai_file
from extproc.guardrails.content import (
    OPENAI_REASONING,
    REASONING_DETAILS,
    TextSlot,
    server_result_slots,
    thinking_chunks,
)
from extproc.guardrails.responses_text import item_slots, prompt_slots
from extproc.guardrails.template_inputs import DOCUMENTS, TEMPLATE_KWARGS

CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4
# The fields of a tool call (in an assistant turn) that the provider reads back: a
# function's arguments, a custom tool's input.
_CALL_FIELDS = ("name", "arguments", "input")
# Anthropic's blocks holding what a tool returned (a string or blocks), and calling one.
_RESULT_BLOCKS = frozenset(("tool_result", "mcp_tool_result"))
_CALL_BLOCKS = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))
# How a server tool's result block is named (web_fetch_tool_result, ...).
_SERVER_RESULT = "_tool_result"
# Where a request bounds its completion: chat completions and Anthropic's Messages
# (OpenAI's newer name first), and OpenAI's Responses API, which has one field only.
CHAT_ALLOWANCE_FIELDS = ("max_completion_tokens", "max_tokens")
RESPONSES_ALLOWANCE_FIELDS = ("max_output_tokens",)


def completion_allowance(
    body: dict[str, Any], default_max_tokens: int, fields: tuple[str, ...] = CHAT_ALLOWANCE_FIELDS
) -> int:
    for field in fields:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default_max_tokens


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    prompt = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                prompt += _message_chars(message) // CHARS_PER_TOKEN
                prompt += PER_MESSAGE_OVERHEAD
    prompt += _content_chars(body.get("system")) // CHARS_PER_TOKEN
    prompt += template_chars(body) // CHARS_PER_TOKEN
    prompt += definitions_chars(body) // CHARS_PER_TOKEN
    prompt += output_schema_chars(body) // CHARS_PER_TOKEN
    return prompt


def estimate_responses_tokens(body: dict[str, Any]) -> int:
    """The prompt of an OpenAI Responses API body: ``instructions``, a stored prompt's
    variables, ``input`` and the tool definitions, as ``estimate_prompt_tokens`` counts a
    chat body's. The text of each item is what the guards read of it
    (``guardrails.responses_text``), so no text reaches the provider past both."""
    prompt = string_chars(body.get("instructions")) // CHARS_PER_TOKEN
    prompt += _slots_chars(prompt_slots(body)) // CHARS_PER_TOKEN
    value = body.get("input")
    if isinstance(value, str):
        prompt += len(value) // CHARS_PER_TOKEN + PER_MESSAGE_OVERHEAD
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                prompt += _item_chars(item) // CHARS_PER_TOKEN + PER_MESSAGE_OVERHEAD
    prompt += definitions_chars(body) // CHARS_PER_TOKEN
    return prompt + output_schema_chars(body) // CHARS_PER_TOKEN


def _item_chars(item: dict[str, Any]) -> int:
    """One input item: its text (a message's content, a tool call's arguments, what a
    tool returned, a reasoning summary...) and the name of the tool a call called."""
    return _slots_chars(item_slots(item)) + string_chars(item.get("name"))


def _slots_chars(slots: list[TextSlot]) -> int:
    return sum(slot.chars for slot in slots)


def _message_chars(message: dict[str, Any]) -> int:
    """A message's content, and what an OpenAI message carries beside it: a participant's
    ``name``, an assistant's refusal (the Anthropic and Bedrock translations send it as
    text), its tool calls, and the reasoning an OpenAI-compatible client sends back."""
    chars = _content_chars(message.get("content")) + string_chars(message.get("refusal"))
    chars += string_chars(message.get("name"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                chars += _call_chars(call.get("function")) + _call_chars(call.get("custom"))
    chars += _call_chars(message.get("function_call"))
    # Three key lookups, as the guards make them: most messages carry no reasoning.
    if "reasoning_content" in message or "reasoning" in message or "reasoning_details" in message:
        chars += _reasoning_chars(message)
    return chars


def _reasoning_chars(message: dict[str, Any]) -> int:
    """Reasoning sent back on an OpenAI-compatible message (DeepSeek's and vLLM's
    ``reasoning_content``, ``reasoning``, OpenRouter's ``reasoning_details`` text and
    summaries): chat templates write it into the prompt. A detail's ``signature`` and
    an encrypted detail's ``data`` are no text the model reads as such."""
    chars = sum(string_chars(message.get(field)) for field in OPENAI_REASONING)
    details = message.get("reasoning_details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict):
                kind = detail.get("type")
                named = REASONING_DETAILS.get(kind) if isinstance(kind, str) else None
                if named is not None:
                    chars += string_chars(detail.get(named))
    return chars


def _call_chars(function: Any) -> int:
    """OpenAI's ``{"name", "arguments"}`` (``arguments`` is already JSON text), or a custom
    tool's ``{"name", "input"}``."""
    if not isinstance(function, dict):
        return 0
    return sum(string_chars(function.get(field)) for field in _CALL_FIELDS)


def _content_chars(content: Any) -> int:
    """A content string, or its parts (OpenAI) or blocks (Anthropic)."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    chars = 0
    for part in content:
        if isinstance(part, dict):
            chars += _block_chars(part)
        elif isinstance(part, str):
            # A bare string among the parts: vLLM reads it as a text part, and the
            # guards read it (``guardrails.content``). Skipped, a prompt written so
            # reserved four tokens a message.
            chars += len(part)
    return chars


def _block_chars(block: dict[str, Any]) -> int:
    text = block.get("text")
    if isinstance(text, str):
        return len(text)
    kind = block.get("type")
    if not isinstance(kind, str):
        return 0  # no block the provider takes (unhashable, too: no key of the sets below)
    if kind in _RESULT_BLOCKS:
        # What a tool returned is prompt text, as an OpenAI "tool" message's content is.
        return _content_chars(block.get("content"))
    if kind in _CALL_BLOCKS:
        chars = string_chars(block.get("name")) + string_chars(block.get("server_name"))
        return chars + json_chars(block.get("input"))
    if kind == "thinking":
        return _thinking_chars(block)
    if kind in ("document", "search_result"):
        return _document_chars(block)
    if kind == "refusal":
        return string_chars(block.get("refusal"))
    if kind == "file" and isinstance(block.get("file"), dict):
        # A text file the model reads as text (``attached_text``): its length from its
        # base64, never decoded. A PDF or a file id counts nothing, as images do.
        text_file = openai_file(block["file"])
        return text_file.chars if text_file is not None else 0
    if kind.endswith(_SERVER_RESULT):
        slots: list[TextSlot] = []
        server_result_slots(block, slots)
        return _slots_chars(slots)
    return 0


def _thinking_chars(block: dict[str, Any]) -> int:
    """Reasoning sent back in the history: Claude's ``thinking`` text (a string; its
    ``signature`` is a check, no text the model reads), or the text chunks of Mistral's
    ``thinking`` part. Claude reads and bills the thinking of a tool loop's open turn (and
    Opus 4.5 and later keep every turn's), and Mistral's chat template writes it in the
    prompt. ``redacted_thinking`` is not counted: its ``data`` is encrypted, and its
    length is no measure of the text it hides; it comes from Claude's own answer, so no
    client's prompt can hide in it."""
    thinking = block.get("thinking")
    if isinstance(thinking, str):
        return len(thinking)
    return sum(len(chunk["text"]) for chunk in thinking_chunks(block))


def _document_chars(block: dict[str, Any]) -> int:
    """A document's or search result's title, context and text; PDFs are not text."""
    chars = string_chars(block.get("title")) + string_chars(block.get("context"))
    if block.get("type") == "search_result":
        return chars + _content_chars(block.get("content"))
    source = block.get("source")
    if not isinstance(source, dict):
        return chars
    if source.get("type") == "text":
        return chars + string_chars(source.get("data"))
    if source.get("type") == "content":
        return chars + _content_chars(source.get("content"))
    return chars


def template_chars(body: dict[str, Any]) -> int:
    """vLLM's ``documents`` and the values of its ``chat_template_kwargs``, as JSON: the
    chat template writes them into the prompt (``guardrails.template_inputs``). Two key
    lookups for a body that has neither."""
    chars = json_chars(body.get(DOCUMENTS))
    kwargs = body.get(TEMPLATE_KWARGS)
    if isinstance(kwargs, dict):
        chars += sum(json_chars(value) for value in kwargs.values())
    return chars


def definitions_chars(body: dict[str, Any]) -> int:
    """Tool definitions (names, descriptions, schemas): the providers put them in the prompt."""
    chars = 0
    for field in ("tools", "functions"):
        definitions = body.get(field)
        if isinstance(definitions, list) and definitions:
            chars += json_chars(definitions)
    return chars


def output_schema_chars(body: dict[str, Any]) -> int:
    """A structured output's definition (name, description, schema) as JSON: OpenAI chat's
    ``response_format``, the Responses API's ``text.format``, Anthropic's
    ``output_config.format`` or beta ``output_format``. Counted as tool definitions are:
    a schema of thousands of characters reserved nothing, while the provider billed it
    as input, and a hard cap let a prompt past its budget."""
    text = body.get("text")
    config = body.get("output_config")
    chars = 0
    for found in (
        body.get("response_format"),
        text.get("format") if isinstance(text, dict) else None,
        config.get("format") if isinstance(config, dict) else None,
        body.get("output_format"),
    ):
        if isinstance(found, dict) and found.get("type") == "json_schema":
            # OpenAI chat nests the definition in ``json_schema``; the Responses API and
            # Anthropic put it beside ``type``.
            nested = found.get("json_schema")
            chars += json_chars(nested if isinstance(nested, dict) else found)
    return chars


def string_chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def json_chars(value: Any) -> int:
    """The length of ``value`` as compact JSON (a string counts as itself)."""
    if isinstance(value, str):
        return len(value)
    if value is None:
        return 0
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        # Deeper than orjson writes (a parse limit raised past 254 levels): the
        # strings alone, so a deep schema still counts for its text.
        return _strings_chars(value)


def _strings_chars(value: Any) -> int:
    """The strings (keys too) inside ``value``, walked without recursion."""
    chars = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict):
            chars += sum(len(key) for key in item if isinstance(key, str))
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return chars


def cap_completion(
    body: dict[str, Any],
    most: int,
    field: str = "max_completion_tokens",
    names: tuple[str, ...] = CHAT_ALLOWANCE_FIELDS,
) -> bool:
    """Lower the request's completion allowance (its fields ``names``) to ``most``; True
    when the body changed.

    A body that names no allowance gets ``field``: ``max_completion_tokens`` for
    OpenAI's chat API, where ``max_tokens`` is deprecated and its reasoning models
    refuse it (400 "Unsupported parameter"); ``max_tokens`` for Anthropic's Messages
    API, which has no other; ``max_output_tokens`` for OpenAI's Responses API."""
    changed = False
    named = False
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            named = True
            if value > most:
                body[name] = most
                changed = True
    if not named:
        body[field] = most
        changed = True
    return changed
