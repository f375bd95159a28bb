"""Chat fields beyond the conversation that the Claude and Converse translations decide on.

An OpenAI chat body (and vLLM's extension of it) carries fields that Anthropic's Messages
API and Bedrock's Converse have no field of the same name for. Left out without a word,
the client got an answer it had not asked for, billed as if it had. Each is decided by
what it asks of the answer (``docs/providers.md`` lists the decisions):

- What changes what the answer must be and cannot be honoured is refused with a 400
  naming the field (``refuse_audio_output``): ``modalities`` asking for audio and
  ``audio`` (the voice and format of spoken output). Claude and Converse answer in text
  only; a text answer to a request for speech is not what the client asked for.
- What has a counterpart is carried over: ``web_search_options`` as Anthropic's server
  web search tool (``web_search_tool``), its ``user_location`` as the tool's; vLLM's
  ``documents`` (a RAG prompt's documents, ``title`` and ``text`` by convention, which
  ``chat_template_kwargs.documents`` overrides as vLLM lets it) as plain-text documents
  the model reads before the conversation (``chat_documents``): Anthropic's ``document``
  blocks, Converse's ``txt`` documents.
- What is a hint only is left out: ``prediction`` (OpenAI's predicted output, a latency
  hint that never changes the answer), ``web_search_options.search_context_size``
  (how much retrieved text the model reads: Anthropic's tool has no such knob, Claude
  decides), ``chat_template_kwargs`` other than ``documents`` (settings of a vLLM
  model's chat template, ``enable_thinking`` say; Claude's thinking has
  ``reasoning_effort``), and a message's ``name`` (Anthropic's and Converse's turns
  have no author; the gateway writes no text the client did not, such as a ``name:``
  prefix, into the prompt).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from extproc.errors import BadRequestError, quoted
from extproc.translators.pdf_parts import document_name

# Anthropic's web search tool: the version every Claude model with web search takes, and
# the name it is called by (a function of that name would clash with it).
WEB_SEARCH_TOOL = "web_search_20250305"
WEB_SEARCH_NAME = "web_search"
# Vertex AI's Claude takes the web search tool behind this beta header (Google's docs for
# Claude's web search on Vertex AI); Anthropic's own API takes it without one.
VERTEX_WEB_SEARCH_BETA = "web-search-2025-03-05"
_SEARCH_CONTEXT_SIZES = ("low", "medium", "high")
# OpenAI's approximate location fields, which Anthropic's takes under the same names.
_LOCATION_FIELDS = ("city", "region", "country", "timezone")
# How much of a refused modality the error quotes: it is the client's own input.
_QUOTED_CHARS = 40
_DOCUMENTS = "documents"
_TEMPLATE_KWARGS = "chat_template_kwargs"


@dataclass(frozen=True, slots=True)
class ChatDocument:
    """One of vLLM's documents: its text, its title, and its other fields as context
    lines (``url: ...``), which a RAG template writes beside the text too."""

    text: str
    title: str | None
    context: str | None


def refuse_audio_output(body: dict[str, Any], model: str) -> None:
    """A 400 naming ``modalities`` or ``audio`` for a request that asks for spoken output:
    ``model`` (how the client is told who answers, ``Claude``) answers in text only."""
    modalities = body.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            raise BadRequestError("'modalities' must be an array of strings", param="modalities")
        others = [m for m in modalities if m != "text"]
        if others:
            raise BadRequestError(
                f"{model} answers in text only: it cannot answer in "
                f"{quoted(others[0], _QUOTED_CHARS)}. "
                "Send modalities ['text'], or leave it out",
                param="modalities",
            )
    if body.get("audio") is not None:
        raise BadRequestError(
            f"{model} answers in text only: 'audio' (the spoken answer's voice and "
            "format) cannot be honoured; leave it out",
            param="audio",
        )


def web_search_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's web search tool for ``web_search_options`` (None when absent or null).

    ``user_location`` (``{"type": "approximate", "approximate": {city, region, country,
    timezone}}``) becomes the tool's (``{"type": "approximate", city, ...}``);
    ``search_context_size`` is checked and left out (no counterpart). A malformed value
    is a 400 naming it, as OpenAI refuses it."""
    options = body.get("web_search_options")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise BadRequestError("'web_search_options' must be an object", param="web_search_options")
    size = options.get("search_context_size")
    if size is not None and size not in _SEARCH_CONTEXT_SIZES:
        raise BadRequestError(
            "'search_context_size' must be 'low', 'medium' or 'high'",
            param="web_search_options.search_context_size",
        )
    tool: dict[str, Any] = {"type": WEB_SEARCH_TOOL, "name": WEB_SEARCH_NAME}
    location = _user_location(options.get("user_location"))
    if location is not None:
        tool["user_location"] = location
    return tool


def searches_the_web(request: dict[str, Any]) -> bool:
    """Whether a translated Anthropic request declares the web search tool."""
    tools = request.get("tools")
    return any(
        isinstance(tool, dict) and tool.get("type") == WEB_SEARCH_TOOL
        for tool in (tools if isinstance(tools, list) else ())
    )


def _user_location(value: Any) -> dict[str, Any] | None:
    where = "web_search_options.user_location"
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "approximate") != "approximate":
        raise BadRequestError(
            "'user_location' must be an object of type 'approximate'", param=where
        )
    approximate = value.get("approximate")
    if approximate is None:
        return None
    if not isinstance(approximate, dict):
        raise BadRequestError("'approximate' must be an object", param=f"{where}.approximate")
    location: dict[str, Any] = {"type": "approximate"}
    for field in _LOCATION_FIELDS:
        found = approximate.get(field)
        if found is None:
            continue
        if not isinstance(found, str):
            raise BadRequestError(
                f"'{field}' must be a string", param=f"{where}.approximate.{field}"
            )
        if found.strip():
            location[field] = found
    return location if len(location) > 1 else None


def refuse_web_search(body: dict[str, Any], where: str) -> None:
    """A 400 naming ``web_search_options`` where Claude's web search is not offered
    (``where``: ``Bedrock``...), rather than an answer from the model's memory that the
    client would take for one from the web."""
    if body.get("web_search_options") is not None:
        raise BadRequestError(
            f"web search is not available for this model on {where}: leave "
            "'web_search_options' out, or send the request to a model that searches",
            param="web_search_options",
        )


def chat_documents(body: dict[str, Any]) -> list[ChatDocument]:
    """vLLM's documents for the model to read (empty when there are none): the body's
    ``documents``, or ``chat_template_kwargs.documents``, which vLLM lets override it.
    Each is an object of strings with a non-empty ``text``; anything else is a 400
    naming it (a document the model cannot be given is no document left out)."""
    kwargs = body.get(_TEMPLATE_KWARGS)
    if isinstance(kwargs, dict) and kwargs.get(_DOCUMENTS) is not None:
        value, field = kwargs[_DOCUMENTS], f"{_TEMPLATE_KWARGS}.{_DOCUMENTS}"
    else:
        value, field = body.get(_DOCUMENTS), _DOCUMENTS
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError(f"'{field}' must be an array of objects", param=field)
    return [_document(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _document(item: Any, where: str) -> ChatDocument:
    if not isinstance(item, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in item.items()
    ):
        raise BadRequestError("a document must be an object of strings", param=where)
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequestError(
            "a document needs its 'text' (the text the model is to read)", param=f"{where}.text"
        )
    title = item.get("title")
    context = "\n".join(
        f"{key}: {value}"
        for key, value in item.items()
        if key not in ("text", "title") and value.strip()
    )
    return ChatDocument(text, title if title and title.strip() else None, context or None)


def anthropic_document_blocks(documents: list[ChatDocument]) -> list[dict[str, Any]]:
    """Anthropic's plain-text ``document`` blocks for vLLM's documents."""
    blocks: list[dict[str, Any]] = []
    for document in documents:
        block: dict[str, Any] = {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": document.text},
        }
        if document.title is not None:
            block["title"] = document.title
        if document.context is not None:
            block["context"] = document.context
        blocks.append(block)
    return blocks


def converse_document_blocks(documents: list[ChatDocument]) -> list[dict[str, Any]]:
    """Converse's ``txt`` document blocks for vLLM's documents, named from their titles
    (``pdf_parts.name_documents`` keeps the names of one request apart). Converse's
    document has no place for context lines: they open the text."""
    blocks: list[dict[str, Any]] = []
    for document in documents:
        text = document.text
        if document.context is not None:
            text = f"{document.context}\n\n{text}"
        # The title is a whole name: a dot in it ("Python 3.12") is no file extension.
        name = document_name(f"{document.title}.txt" if document.title else None)
        source = {"bytes": base64.b64encode(text.encode()).decode()}
        blocks.append({"document": {"format": "txt", "name": name, "source": source}})
    return blocks


def before_the_conversation(blocks: list[dict[str, Any]], turns: list[dict[str, Any]]) -> None:
    """Put ``blocks`` (documents) at the start of the first user turn, where long
    documents serve best (before the questions about them); in a turn of their own
    when the conversation opens with the assistant."""
    if not blocks:
        return
    if turns and turns[0]["role"] == "user":
        turns[0]["content"][:0] = blocks
    else:
        turns.insert(0, {"role": "user", "content": blocks})
