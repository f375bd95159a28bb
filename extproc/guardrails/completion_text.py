"""The text of an OpenAI text completion request and of its whole answer, as guard slots.

A request's text is its ``prompt``, with the role ``user``: one string, or each string
of a batch, in order; and its ``suffix`` (what a fill-in-the-middle request puts after
the insertion point), read by the model as prompt text too. Request guards read, mask
and refuse them as they do a chat message's content: webhooks get one user message per
string, moderation reads them when its ``roles`` include ``user``. A prompt of token
ids is not text the gateway can read (it would need the model's tokenizer), and passes
unread, as an embeddings request's token ids do.

A whole answer's text is each choice's ``text`` (``echo`` puts the prompt back in front
of it: then guards read the prompt again, as the client gets it). A stream's is guarded
event by event (``guardrails.stream``, ``choices[].text``).
"""

from __future__ import annotations

from typing import Any

from extproc.guardrails.content import TextSlot

ROLE = "user"


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Each string of a text completion's ``prompt``, then its ``suffix``."""
    slots: list[TextSlot] = []
    value = body.get("prompt")
    if isinstance(value, str):
        slots.append(TextSlot(ROLE, body, "prompt"))
    elif isinstance(value, list):
        slots.extend(
            TextSlot(ROLE, value, i) for i, item in enumerate(value) if isinstance(item, str)
        )
    if isinstance(body.get("suffix"), str):
        slots.append(TextSlot(ROLE, body, "suffix"))
    return slots


def speech_slots(body: dict[str, Any]) -> list[TextSlot]:
    """A text-to-speech request's text: its ``input`` (what is read aloud) and its
    ``instructions`` (how), each read by the model as a prompt's text is."""
    return [
        TextSlot(ROLE, body, field)
        for field in ("instructions", "input")
        if isinstance(body.get(field), str)
    ]


def answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """Each choice's ``text`` in a whole text completion."""
    slots: list[TextSlot] = []
    choices = answer.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            slots.append(TextSlot("assistant", choice, "text"))
    return slots
