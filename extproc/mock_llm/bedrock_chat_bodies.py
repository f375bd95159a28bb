"""The InvokeModel families whose body is a chat completion's ``messages``: Mistral's chat
body (Mistral Large), AI21 Jamba and Writer Palmyra; each family's body, answer and stream
chunks, as ``bedrock_text_models`` does for the others (whose base, checks and reply they
share). Which of them serves a model is ``bedrock_text_families``'.

- Mistral's chat body (``mistral.mistral-large-2402``, which takes the text body too, and
  ``mistral.mistral-large-2407``, which takes this one alone): ``{"messages" (required),
  "tools", "tool_choice", "max_tokens", "top_p", "temperature"}``; answers ``{"choices":
  [{"index": 0, "message": {"role": "assistant", "content"}, "stop_reason"}]}`` ("stop"
  or "length"), and streams the same document a piece at a time, ``stop_reason`` null
  but on the last chunk. The allowance defaults to Mistral Large's 8,192.
- AI21 Jamba (``ai21.jamba*``): ``{"messages" (required), "max_tokens" (0 to ..., 4,096 by
  default), "n" (1 to 16 answers), "stop", "temperature", "top_p", "frequency_penalty",
  "presence_penalty", "response_format", "documents", "tools"}``; answers OpenAI's chat
  completion, ``{"id", "choices": [{"index", "message": {"role", "content"},
  "finish_reason"}...], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``
  ("stop" or "length"), one choice per answer.
- Writer Palmyra (``writer.palmyra*``): ``{"messages" (required), "max_tokens" (16 by
  default), "min_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
  "frequency_penalty"}``, a message's ``content`` a string, text parts or ``{"text"}`` (as
  AWS's page writes it); answers the same chat completion with ``"object":
  "chat.completion"``.

Jamba's and Palmyra's streams are OpenAI's chunks: per answer, one ``{"id", "choices":
[{"index", "delta": {"content"}, "finish_reason": null}]}`` per piece (the answer's first
with ``"role": "assistant"`` too), then one last chunk naming every answer's
``finish_reason`` with the ``usage``, to which Bedrock adds its invocation metrics.

The prompt is every message's text; the reply quotes the last user turn. Every answer is
the mock's one reply, so its output tokens are the reply's pieces times the answers.
"""

from __future__ import annotations

import zlib
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.mock_llm.bedrock_embeddings import refuse_violations, wrong_type
from extproc.mock_llm.bedrock_text_models import (
    MISTRAL_LARGE_MAX_TOKENS,
    STOP_OR_LENGTH,
    Check,
    Finish,
    ManyAnswers,
    TextFamily,
    TextReply,
    TextRequest,
    check_array,
    check_integer,
    check_number,
    check_object_of_any,
    check_string,
    check_strings,
    object_violations,
)

# The Mistral models that take the chat completion's body (Mistral Large 24.02 takes the
# text completion's too); the others take ``prompt`` alone.
MISTRAL_CHAT_MODELS = ("mistral.mistral-large-2402", "mistral.mistral-large-2407")
JAMBA_MAX_TOKENS = 4096
PALMYRA_MAX_TOKENS = 16
JAMBA_MOST_ANSWERS = 16


def check_messages(path: str, value: object) -> list[str]:
    """A non-empty array of objects, each with a string ``role`` (its content is read as
    far as it holds text: ``content_text``)."""
    if not isinstance(value, list):
        return [wrong_type(path, "JSONArray", value)]
    if not value:
        return [f"#/{path}: expected minimum item count: 1, found: 0"]
    violations: list[str] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            violations.append(wrong_type(f"{path}/{i}", "JSONObject", message))
        elif "role" not in message:
            violations.append(f"#/{path}/{i}: required key [role] not found")
        else:
            violations += check_string(f"{path}/{i}/role", message["role"])
    return violations


def content_text(content: object) -> str:
    """A message's text: a string, an object with ``text`` (Palmyra's page writes one),
    or a list of parts whose ``text`` is read."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, list):
        return " ".join(filter(None, (content_text(part) for part in content)))
    return ""


class ChatBody(TextFamily):
    """A family whose body is a chat completion's: its checks and defaults per family."""

    stop_reasons: ClassVar[Mapping[Finish, str]] = STOP_OR_LENGTH
    schema: ClassVar[Mapping[str, Check]]
    # Where the body asks for several answers (None: it cannot).
    answers_key: ClassVar[str | None] = None

    @abstractmethod
    def default_max_tokens(self, model: str) -> int:
        """The allowance of a body that names none."""

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        refuse_violations(object_violations(doc, self.schema, ("messages",)))
        texts: list[str] = []
        last_user = ""
        for message in doc["messages"]:
            said = content_text(message.get("content"))
            texts.append(said)
            if message.get("role") == "user":
                last_user = said
        answers = doc.get(self.answers_key, 1) if self.answers_key is not None else 1
        return TextRequest(
            "\n".join(texts),
            doc.get("max_tokens", self.default_max_tokens(model)),
            tuple(doc.get("stop", ())),
            quoted=last_user,
            answers=answers,
        )


class MistralChat(ChatBody):
    schema: ClassVar[Mapping[str, Check]] = {
        "messages": check_messages,
        "tools": check_array,
        "tool_choice": check_string,
        "max_tokens": check_integer(1),
        "top_p": check_number,
        "temperature": check_number,
    }

    def default_max_tokens(self, model: str) -> int:
        return MISTRAL_LARGE_MAX_TOKENS

    def answer(self, reply: TextReply) -> dict[str, Any]:
        return self._document(reply.text, self.stop_reasons[reply.finish])

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        return self._document(reply.chunk_pieces[at], self.stop_reason(reply, at))

    @staticmethod
    def _document(text: str, stop: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"choices": [{"index": 0, "message": message, "stop_reason": stop}]}


class OpenAIChat(ChatBody, ManyAnswers):
    """Jamba's and Palmyra's answers: OpenAI's chat completion and its chunks."""

    # OpenAI's "object" of the answer and of a chunk, for the families that write one.
    objects: ClassVar[tuple[str, str] | None] = None

    def answer(self, reply: TextReply) -> dict[str, Any]:
        reason = self.stop_reasons[reply.finish]
        message = {"role": "assistant", "content": reply.text}
        choices = [
            {"index": i, "message": message, "finish_reason": reason} for i in range(reply.answers)
        ]
        kind = {"object": self.objects[0]} if self.objects else {}
        return {"id": _answer_id(reply), **kind, "choices": choices, "usage": _usage(reply)}

    def piece(self, reply: TextReply, answer: int, at: int) -> dict[str, Any]:
        delta = {"role": "assistant"} if at == 0 else {}
        delta["content"] = reply.pieces[at]
        choice = {"index": answer, "delta": delta, "finish_reason": None}
        return {**self._chunk_head(reply), "choices": [choice]}

    def end(self, reply: TextReply) -> dict[str, Any]:
        reason = self.stop_reasons[reply.finish]
        ends = [{"index": i, "delta": {}, "finish_reason": reason} for i in range(reply.answers)]
        return {**self._chunk_head(reply), "choices": ends, "usage": _usage(reply)}

    def _chunk_head(self, reply: TextReply) -> dict[str, Any]:
        kind = {"object": self.objects[1]} if self.objects else {}
        return {"id": _answer_id(reply), **kind}


class Jamba(OpenAIChat):
    answers_key = "n"
    schema: ClassVar[Mapping[str, Check]] = {
        "messages": check_messages,
        "max_tokens": check_integer(0),
        "n": check_integer(1, JAMBA_MOST_ANSWERS),
        "stop": check_strings,
        "temperature": check_number,
        "top_p": check_number,
        "frequency_penalty": check_number,
        "presence_penalty": check_number,
        "response_format": check_object_of_any,
        "documents": check_array,
        "tools": check_array,
    }

    def default_max_tokens(self, model: str) -> int:
        return JAMBA_MAX_TOKENS


class Palmyra(OpenAIChat):
    objects = ("chat.completion", "chat.completion.chunk")
    schema: ClassVar[Mapping[str, Check]] = {
        "messages": check_messages,
        "max_tokens": check_integer(1),
        "min_tokens": check_integer(0),
        "temperature": check_number,
        "top_p": check_number,
        "stop": check_strings,
        "seed": check_integer(),
        "presence_penalty": check_number,
        "frequency_penalty": check_number,
    }

    def default_max_tokens(self, model: str) -> int:
        return PALMYRA_MAX_TOKENS


def _answer_id(reply: TextReply) -> str:
    """An id of the answer, the same for the same reply (the mock stays deterministic)."""
    return f"chatcmpl-mock-{zlib.crc32(reply.text.encode()):08x}"


def _usage(reply: TextReply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


MISTRAL_CHAT = MistralChat()
JAMBA = Jamba()
PALMYRA = Palmyra()
