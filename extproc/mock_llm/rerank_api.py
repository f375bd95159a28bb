"""The mock's rerank endpoints (``POST .../v1/rerank`` and ``.../v2/rerank``), deterministic
by word overlap.

Requests are checked as Cohere checks them: ``model`` (any name), ``query`` (a non-empty
string), ``documents`` (a non-empty array of at most 1,000 strings or ``{"text"}``
objects), ``top_n`` (an integer >= 1) and ``return_documents`` (a boolean).

Scores: a document's share of the query's distinct words (lower-cased runs of letters and
digits) that it holds, rounded to four places, so a document holding all of them scores
1.0 and one holding none 0.0. Results are sorted by score, highest first, ties by index;
``top_n`` keeps that many; each carries ``{"text"}`` of its document when
``return_documents`` is true.

Usage, as each version's providers report it:

- ``/v2/rerank`` answers as Cohere's v2 does: ``meta.billed_units.search_units``, one per
  100 documents (at least one), and no tokens.
- ``/v1/rerank`` answers as Jina, Voyage and vLLM do: ``usage.total_tokens``, the
  query's tokens plus each document's (``tokens.count_tokens``).

Faults: ``no_usage`` leaves both out; ``garbage`` sends a body that is no JSON.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from extproc.mock_llm.faults import Fault
from extproc.mock_llm.openai_api import (
    InvalidRequestError,
    error_response,
    json_request,
    precheck,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

MAX_DOCUMENTS = 1000
DOCUMENTS_PER_SEARCH = 100

_JSON_HEADERS = {"Content-Type": "application/json"}
_GARBAGE = b'{"results": [{"index": 0, this is not json'
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def score(query: str, document: str) -> float:
    """The share of the query's distinct words ``document`` holds (the module's rule)."""
    asked = words(query)
    if not asked:
        return 0.0
    return round(len(asked & words(document)) / len(asked), 4)


def parse_rerank_request(body: Body) -> tuple[dict[str, Any], str, list[str]]:
    """The request, its query and its documents' texts; InvalidRequestError as Cohere's."""
    doc, _ = json_request(body)
    query = doc.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidRequestError("invalid request: query must be a non-empty string", "query")
    documents = doc.get("documents")
    if not isinstance(documents, list) or not documents:
        raise InvalidRequestError("invalid request: list of documents must not be empty")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidRequestError(
            f"invalid request: a maximum of {MAX_DOCUMENTS} documents is supported"
        )
    texts = []
    for each in documents:
        text = each.get("text") if isinstance(each, dict) else each
        if not isinstance(text, str):
            raise InvalidRequestError("invalid request: documents must be strings or {text}")
        texts.append(text)
    top_n = doc.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise InvalidRequestError("invalid request: top_n must be a positive integer", "top_n")
    returned = doc.get("return_documents")
    if returned is not None and not isinstance(returned, bool):
        raise InvalidRequestError("invalid request: return_documents must be a boolean")
    return doc, query, texts


def answer_document(
    doc: dict[str, Any], query: str, texts: list[str], *, v2: bool, with_usage: bool
) -> dict[str, Any]:
    ranked = sorted(
        ((score(query, text), index) for index, text in enumerate(texts)),
        key=lambda pair: (-pair[0], pair[1]),
    )
    top_n = doc.get("top_n")
    if isinstance(top_n, int):
        ranked = ranked[:top_n]
    results: list[dict[str, Any]] = []
    for relevance, index in ranked:
        result: dict[str, Any] = {"index": index, "relevance_score": relevance}
        if doc.get("return_documents") is True:
            result["document"] = {"text": texts[index]}
        results.append(result)
    answer: dict[str, Any] = {"id": f"rerank-mock-{len(texts)}-{len(query)}", "results": results}
    if v2:
        meta: dict[str, Any] = {"api_version": {"version": "2"}}
        if with_usage:
            searches = max(1, -(-len(texts) // DOCUMENTS_PER_SEARCH))
            meta["billed_units"] = {"search_units": searches}
        answer["meta"] = meta
    elif with_usage:
        tokens = count_tokens(query) + sum(count_tokens(text) for text in texts)
        answer["model"] = doc.get("model")
        answer["usage"] = {"total_tokens": tokens}
    return answer


class RerankEndpoint:
    def __init__(self, *, default_fault: Fault) -> None:
        self._default_fault = default_fault

    async def create(self, request: web.Request, body: Body) -> web.StreamResponse:
        fault = await precheck(request, self._default_fault)
        if isinstance(fault, web.Response):
            return fault
        try:
            doc, query, texts = parse_rerank_request(body)
        except InvalidRequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=_JSON_HEADERS)
        v2 = request.path.endswith("/v2/rerank")
        document = answer_document(doc, query, texts, v2=v2, with_usage=not fault.no_usage)
        return web.Response(body=orjson.dumps(document), headers=_JSON_HEADERS)
