"""Which text family answers an InvokeModel call: the model id says (an inference
profile's prefix removed by the caller), and for Mistral Large the body's kind, the text
completion's ``prompt`` or the chat completion's ``messages``.

The families live in ``bedrock_text_models`` (Llama, Mistral's text body, Titan Text,
Nova), ``bedrock_chat_bodies`` (Mistral's chat body, AI21 Jamba, Writer Palmyra) and
``bedrock_cohere_command``; this module only picks one and answers with it.
"""

from __future__ import annotations

from collections.abc import Mapping

from extproc.mock_llm.bedrock_chat_bodies import JAMBA, MISTRAL_CHAT, MISTRAL_CHAT_MODELS, PALMYRA
from extproc.mock_llm.bedrock_cohere_command import COHERE_COMMAND
from extproc.mock_llm.bedrock_embeddings import MalformedInputError, json_object
from extproc.mock_llm.bedrock_text_models import (
    LLAMA,
    MISTRAL,
    NOVA,
    TITAN_TEXT,
    TextFamily,
    TextInvocation,
    text_reply,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import ScriptError, scripted_pieces

# By the start of the base model id.
_FAMILIES: tuple[tuple[str, TextFamily], ...] = (
    ("meta.llama", LLAMA),
    ("mistral.mistral-", MISTRAL),
    ("mistral.mixtral-", MISTRAL),
    ("amazon.titan-text-", TITAN_TEXT),
    ("amazon.nova-micro", NOVA),
    ("amazon.nova-lite", NOVA),
    ("amazon.nova-pro", NOVA),
    ("amazon.nova-premier", NOVA),
    ("amazon.nova-2-lite", NOVA),
    ("amazon.nova-2-pro", NOVA),
    ("cohere.command-text", COHERE_COMMAND),
    ("cohere.command-light-text", COHERE_COMMAND),
    ("ai21.jamba", JAMBA),
    ("writer.palmyra", PALMYRA),
)


def text_model_family(model: str) -> TextFamily | None:
    """The family that serves ``model`` (an id, its inference profile's prefix removed);
    None for a model none of them serves."""
    return next((family for start, family in _FAMILIES if model.startswith(start)), None)


def body_family(family: TextFamily, model: str, doc: Mapping[str, object]) -> TextFamily:
    """The family that reads ``doc``: Mistral's chat body for a ``messages`` body to a
    Mistral model that takes one; any other body its model's family, which refuses a
    body of the wrong kind as Bedrock does."""
    if family is MISTRAL and "messages" in doc and model.startswith(MISTRAL_CHAT_MODELS):
        return MISTRAL_CHAT
    return family


def invoke_text_model(
    family: TextFamily, model: str, body: Body, headers: Mapping[str, str], fault: Fault
) -> TextInvocation:
    """The answer to an InvokeModel(-WithResponseStream) request for a text model, with the
    scripted reply the test headers ask for. Raises MalformedInputError (a
    ValidationException) for a request Bedrock refuses, or a malformed script."""
    doc = json_object(body)
    reader = body_family(family, model, doc)
    req = reader.parse(model, doc)
    try:
        scripted = scripted_pieces(headers)
    except ScriptError as exc:
        raise MalformedInputError(str(exc)) from None
    return TextInvocation(reader, text_reply(req, fault, scripted))
