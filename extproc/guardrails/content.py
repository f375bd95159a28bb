"""Where the text of a request or a buffered answer lives, as slots a guard reads and writes.

A ``TextSlot`` points at one string inside the parsed body (a message's
``content``, one text part of it, Anthropic's ``system``, a ``tool_result``'s
content, the text of a ``document`` or ``search_result`` block, a choice's
message), so guards read every piece of text and write masked text back in
place, whether content came as a string or as an array of parts. Images, audio,
PDFs and tool-call arguments are not text slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TextSlot:
    role: str
    holder: Any  # the dict (or list) holding the string
    key: Any  # its key (or index) there

    @property
    def text(self) -> str:
        value = self.holder[self.key]
        return value if isinstance(value, str) else ""

    def write(self, text: str) -> None:
        self.holder[self.key] = text


def _content_slots(role: str, holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        slots.append(TextSlot(role, holder, key))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                _block_slots(role, part, slots)


def _block_slots(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        slots.append(TextSlot(role, block, "text"))
    elif kind == "tool_result":
        # Anthropic's tool output, a string or blocks: the model reads it, as it
        # reads an OpenAI "tool" message's content.
        _content_slots(role, block, "content", slots)
    elif kind in ("document", "search_result"):
        _document_slots(role, block, slots)


def _document_slots(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    """Anthropic's document and search result blocks: prompt text in another envelope.

    The model reads their ``title`` and ``context``, a plain-text document's ``data``,
    a content document's text blocks and a search result's; left unread, they were a
    way around every guard. PDFs (base64, URL, file ids) are not text.
    """
    for field in ("title", "context"):
        if isinstance(block.get(field), str):
            slots.append(TextSlot(role, block, field))
    if block.get("type") == "search_result":
        _content_slots(role, block, "content", slots)
        return
    source = block.get("source")
    if not isinstance(source, dict):
        return
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        slots.append(TextSlot(role, source, "data"))
    elif source.get("type") == "content":
        _content_slots(role, source, "content", slots)


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of an OpenAI chat or Anthropic messages request, in order."""
    slots: list[TextSlot] = []
    if "system" in body:  # Anthropic's system prompt, a string or text blocks
        _content_slots("system", body, "system", slots)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            role = message.get("role")
            _content_slots(role if isinstance(role, str) else "user", message, "content", slots)
    return slots


def openai_answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text of each choice of an OpenAI chat completion."""
    slots: list[TextSlot] = []
    for choice in answer.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            slots.append(TextSlot("assistant", message, "content"))
    return slots


def anthropic_answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text blocks of an Anthropic message."""
    slots: list[TextSlot] = []
    _content_slots("assistant", answer, "content", slots)
    return slots
