"""What an OpenAI-compatible server's chat template reads of a chat body beside its messages.

vLLM renders a chat request into the model's prompt with the model's chat template, and
hands the template two inputs of the body besides the messages and tools:

- ``documents``: a RAG prompt's documents (a list of objects of strings, ``title`` and
  ``text`` by convention), which templates such as Command R's and Granite's write into
  the prompt, field names and values (``title: ...``, or each document as JSON);
- ``chat_template_kwargs``: whatever else the template reads, ``documents`` among them
  (vLLM lets it override the field), a system prompt's settings, ``enable_thinking``...

The model reads them as it reads a message, so text put there reached the provider past
every guard and reserved nothing of a token limit. Each key and string of ``documents``,
and each key and string of each value of ``chat_template_kwargs`` (not the kwargs' own
names: template variables, no text), is a slot (``template_slots``), read and masked in
place as an Anthropic tool ``input`` is (``content.tool_input_slots``), with the role
``user``: the client writes them, as it writes its messages. The quota's estimate
counts them as JSON (``quota.estimate.template_chars``), as it counts tool inputs.

The translations to Claude and Bedrock send the documents, as the guards left them, as
documents the model reads (``translators.openai_chat_extras``), and leave the other
kwargs out; OpenAI refuses both fields, so on a route that can reach it the guards and
the estimate read text the model may never get: the safe side of both.
A request's own ``chat_template`` is not read: it is Jinja code, not text, and vLLM
refuses it unless started with ``--trust-request-chat-template``.
"""

from __future__ import annotations

from typing import Any

from extproc.guardrails.content import TextSlot, tool_input_slots

# The client sends them, as it sends its messages.
ROLE = "user"
DOCUMENTS = "documents"
TEMPLATE_KWARGS = "chat_template_kwargs"


def template_slots(body: dict[str, Any]) -> list[TextSlot]:
    """The text of a chat body's ``documents`` and ``chat_template_kwargs``, in order."""
    slots: list[TextSlot] = []
    if DOCUMENTS in body:
        _value_slots(body, DOCUMENTS, slots)
    kwargs = body.get(TEMPLATE_KWARGS)
    if isinstance(kwargs, dict):
        for name in kwargs:
            _value_slots(kwargs, name, slots)
    return slots


def _value_slots(holder: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    """``holder[key]``: one slot when it is a string, each key and string inside it when it
    is an object or a list (numbers, booleans and nulls are no text)."""
    value = holder[key]
    if isinstance(value, str):
        slots.append(TextSlot(ROLE, holder, key))
    elif isinstance(value, dict | list):
        # The wrapper only hands the walk the value: every slot holds the body's own
        # objects, so a mask lands in the body.
        tool_input_slots(ROLE, {"input": value}, slots)
