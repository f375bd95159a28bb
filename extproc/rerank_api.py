"""Rerank requests (``POST /v1/rerank``, ``/v2/rerank``): what a valid body is, what
its input costs, and where it goes.

The wire format is the one Cohere defined and Jina, Voyage, vLLM and others serve:
``{"model", "query", "documents": [str | {"text": str}], "top_n"?,
"return_documents"?, "max_tokens_per_doc"?}`` in, ``{"results": [{"index",
"relevance_score", "document"?}], "meta"?, "usage"?}`` out. A rerank generates no
text: the provider bills its input alone, by tokens (``usage.total_tokens``: Jina,
Voyage, vLLM) or by searches (``meta.billed_units.search_units``: Cohere, one search a
query of up to 100 documents), and the gateway reserves, settles, counts and prices
those (``translators.openai_rerank``).

The checks are the ones that decide what the gateway counts: a body the provider would
refuse anyway is refused here first (400, naming the field) before it reserves quota
or reaches the provider. The input is estimated at one token per four characters of
the query and the documents, as chat prompts are (``quota.estimate``); an answer that
reports neither tokens nor searches is charged that estimate, and the searches it
would have been (``estimated_search_units``), ``usage_estimated``.

The request goes on as it came, under the provider's name for the model, to the
client's own version of the path at the provider (``upstream_path``): Cohere and vLLM
serve both, and their answers differ (Cohere's v1 and v2 bodies differ in a few
fields), so a v2 client gets a v2 answer.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.errors import BadRequestError
from extproc.openai_inputs import positive_int
from extproc.quota.estimate import CHARS_PER_TOKEN

# Cohere's limit on the documents of one request (its v2 API recommends fewer than 1,000).
MAX_DOCUMENTS = 1000
# The documents one search unit covers, as Cohere bills them.
DOCUMENTS_PER_SEARCH = 100
# A trailing API version in a provider's base URL path (``/v1``, ``/v2``).
_VERSION = re.compile(r"/v\d+$")


def check_rerank_body(body: dict[str, Any]) -> None:
    """Refuse a body whose ``query``, ``documents`` or ``top_n`` is no rerank's."""
    if "messages" in body:
        raise BadRequestError(
            "this is a rerank route: send 'query' and 'documents', not 'messages' "
            "(chat completions are served on /v1/chat/completions)",
            param="messages",
        )
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise BadRequestError("'query' is required: a non-empty string", param="query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise BadRequestError(
            "'documents' is required: a non-empty array of strings or of objects with "
            "a 'text' string",
            param="documents",
        )
    if len(documents) > MAX_DOCUMENTS:
        raise BadRequestError(
            f"'documents' has {len(documents)} entries; the limit is {MAX_DOCUMENTS}",
            param="documents",
        )
    for index, document in enumerate(documents):
        if _text(document) is None:
            raise BadRequestError(
                f"'documents[{index}]' must be a string or an object with a 'text' string",
                param=f"documents[{index}]",
            )
    top_n = body.get("top_n")
    if top_n is not None and not positive_int(top_n):
        raise BadRequestError("'top_n' must be an integer >= 1", param="top_n")
    if body.get("stream") not in (None, False):
        raise BadRequestError("a rerank cannot be streamed", param="stream")


def _text(document: Any) -> str | None:
    if isinstance(document, str):
        return document
    if isinstance(document, dict):
        text = document.get("text")
        if isinstance(text, str):
            return text
    return None


def estimate_rerank_tokens(body: dict[str, Any]) -> int:
    """The input's tokens: the query's and the documents' characters, four a token."""
    query = body.get("query")
    characters = len(query) if isinstance(query, str) else 0
    documents = body.get("documents")
    if isinstance(documents, list):
        characters += sum(len(text) for each in documents if (text := _text(each)) is not None)
    return -(-characters // CHARS_PER_TOKEN)


def estimated_search_units(body: dict[str, Any] | None) -> int:
    """The searches Cohere would bill the request: one per 100 documents (at least one)."""
    documents = body.get("documents") if body is not None else None
    count = len(documents) if isinstance(documents, list) else 0
    return max(1, -(-count // DOCUMENTS_PER_SEARCH))


def upstream_path(provider_prefix: str, client_path: str) -> str:
    """Where a rerank goes at the provider: the client's versioned path
    (``/v1/rerank``, ``/v2/rerank``) under the provider's base URL path, the version
    that path ends with (``https://api.cohere.com/v1``, ``http://vllm:8000/v1``) left
    out, so the client's version is the provider's."""
    path = client_path.partition("?")[0].rstrip("/")
    version = "/v2" if path.endswith("/v2/rerank") else "/v1"
    return _VERSION.sub("", provider_prefix) + version + "/rerank"
