"""Prompt and completion text of an InvokeModel call in another family's body than
Claude's (Llama, Mistral, Titan Text, Nova, Cohere...), for content capture.

Each family names its text its own way. The prompt, in the order the model reads it:

- a system prompt: Nova's ``system`` blocks (Converse's shape, ``converse_content``), a
  ``system`` string, Cohere Command R's ``preamble``;
- Cohere Command R's ``chat_history`` (``USER`` / ``CHATBOT`` / ``SYSTEM`` turns, their
  ``message``);
- ``messages``, each with its role: Nova's content blocks in Converse's shape, or a
  string or OpenAI's typed parts (Mistral Large, AI21 Jamba, DeepSeek);
- the user's turn as a single string: ``prompt`` (Llama, Mistral's text models, Cohere
  Command, AI21 Jurassic), Titan Text's ``inputText``, Cohere Command R's ``message``.

The answer, whole or streamed, is the string values of the fields the families write
generated text in, in the order they come: Llama's ``generation``, Titan's
``outputText``, ``text`` (Mistral's ``outputs``, Cohere's answer, Nova's blocks and
deltas), ``completion``, and a message's or delta's ``content`` string (the OpenAI-shaped
choices of Mistral Large and Jamba). The stream's chunks arrive as the JSON objects the
frames' base64 hid (``bedrock_invoke.ModelStreamReader.unwrapped``), one after another.

As everything content capture reads, an odd shape never raises here into the log line:
the caller catches and leaves the field out.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.telemetry import converse_content

# Cohere Command R's roles in chat_history, as the log line names roles.
_COHERE_ROLES = {"USER": "user", "CHATBOT": "assistant", "SYSTEM": "system", "TOOL": "tool"}
# Where a family writes the user's turn as one string.
_USER_TEXT_KEYS = ("prompt", "inputText", "message")
# The fields a family writes generated text in (the module docstring).
_ANSWER_KEYS = frozenset({"generation", "outputText", "text", "completion"})
_DECODER = json.JSONDecoder()


def conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """Every part of the prompt with its role, the system prompt first."""
    messages: list[dict[str, str]] = []
    system = body.get("system")
    if isinstance(system, list) and system:
        messages.append({"role": "system", "content": converse_content.blocks_text(system)})
    elif isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    preamble = body.get("preamble")
    if isinstance(preamble, str) and preamble:
        messages.append({"role": "system", "content": preamble})
    for turn in _listed(body.get("chat_history")):
        if isinstance(turn, dict) and isinstance(turn.get("message"), str):
            role = _COHERE_ROLES.get(str(turn.get("role")), str(turn.get("role")).lower())
            messages.append({"role": role, "content": turn["message"]})
    for message in _listed(body.get("messages")):
        if isinstance(message, dict):
            content = message.get("content")
            text = (
                content
                if isinstance(content, str)
                else converse_content.blocks_text(_listed(content))
            )
            messages.append({"role": str(message.get("role")), "content": text})
    for key in _USER_TEXT_KEYS:
        value = body.get(key)
        if isinstance(value, str):
            messages.append({"role": "user", "content": value})
    return messages


def answer_text(body: bytes) -> str | None:
    """The generated text of a whole answer, or of a stream's chunks one after another;
    None when nothing in ``body`` reads as JSON."""
    text = body.decode("utf-8", errors="replace")
    pieces: list[str] = []
    read = False
    at = 0
    while True:
        at = _skip_space(text, at)
        if at >= len(text):
            break
        try:
            value, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            break  # what was read before a cut chunk stands
        read = True
        _collect(value, pieces)
    return "".join(pieces) if read else None


def _collect(value: Any, pieces: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if key in _ANSWER_KEYS or key == "content":
                    pieces.append(item)
            else:
                _collect(item, pieces)
    elif isinstance(value, list):
        for item in value:
            _collect(item, pieces)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
