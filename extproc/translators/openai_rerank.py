"""Rerank answers, passed through from an OpenAI-compatible provider (Cohere, Jina,
Voyage, vLLM): the answer reaches the client unchanged; the gateway reads its usage.

Providers report it in these places, and the reader takes each:

- ``usage.total_tokens`` (Jina, Voyage, vLLM; ``usage.prompt_tokens`` where given): the
  input's tokens, billed at the model's input price; a rerank generates nothing.
- ``meta.billed_units.search_units`` (Cohere): the searches billed, one a query of up to
  100 documents, priced at the model's ``search_units_per_thousand``. Cohere counts no
  tokens for a rerank, so the tokens token limits and counters carry are the gateway's
  estimate of the input (``estimate``), the searches the bill. An answer with both is
  read with both (``meta.billed_units.input_tokens`` is no rerank count: not read).
- ``usage.search_units`` (OpenRouter, reselling Cohere's rerank: beside
  ``usage.total_tokens``): the same searches, read where ``meta`` reports none.
- ``meta.billed_units.total_tokens`` (a LiteLLM proxy, which answers every provider's
  rerank in Cohere's shape: a Jina reranker's tokens there): the input's tokens, read
  where ``usage`` reports none.

An answer with neither leaves ``usage`` None: the request is charged the gateway's
estimate (``stages.cut_answer``), ``usage_estimated``.
"""

from __future__ import annotations

from typing import Any

from extproc.context import Usage
from extproc.translators.base import BufferedBodyReader
from extproc.translators.token_counts import token_count


def usage_from_rerank(answer: Any, estimate: int) -> Usage | None:
    """The usage a rerank answer reports (the module says how); None when it reports
    none, or nothing that is a count."""
    if not isinstance(answer, dict):
        return None
    tokens = None
    usage = answer.get("usage")
    if isinstance(usage, dict):
        # A count left null (GPUStack's ``"prompt_tokens": null``) is no count: the other
        # one is read.
        tokens = token_count(usage.get("prompt_tokens"))
        if tokens is None:
            tokens = token_count(usage.get("total_tokens"))
    searches = None
    meta = answer.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    if isinstance(billed, dict):
        searches = token_count(billed.get("search_units"))
        if tokens is None:
            tokens = token_count(billed.get("total_tokens"))
    if searches is None and isinstance(usage, dict):
        searches = token_count(usage.get("search_units"))
    if tokens is None and searches is None:
        return None
    prompt = estimate if tokens is None else tokens
    return Usage(prompt, 0, prompt, search_units=searches)


class RerankReader(BufferedBodyReader):
    """A buffered rerank answer (small: indexes and scores, the documents when asked
    back): parsed once, its usage read, its bytes passed through."""

    def __init__(self, estimate: int) -> None:
        super().__init__()
        self._estimate = estimate

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        result = super().feed(chunk, end_of_stream)
        if end_of_stream:
            self.usage = usage_from_rerank(self.answer, self._estimate)
        return result

    @staticmethod
    def read_usage(value: Any) -> Usage | None:
        return None  # read from the whole answer in ``feed``: it may be in ``meta``
