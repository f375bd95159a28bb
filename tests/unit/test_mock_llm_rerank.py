"""The mock's rerank endpoints: ``/v1/rerank`` answers as Jina and vLLM do (tokens in
``usage.total_tokens``), ``/v2/rerank`` as Cohere's v2 does (``meta.billed_units``), both
ranking by word overlap, deterministically."""

from __future__ import annotations

import httpx

from extproc.mock_llm import count_tokens

AUTH = {"Authorization": "Bearer sk-test"}
QUERY = "capital of France"
DOCUMENTS = ["Berlin is in Germany.", "Paris is the capital of France.", "France is big."]


async def test_v1_ranks_by_overlap_keeps_top_n_and_reports_tokens(http: httpx.AsyncClient) -> None:
    doc = {"model": "m", "query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    answer = (await http.post("/v1/rerank", json=doc, headers=AUTH)).json()
    assert answer["results"] == [
        {"index": 1, "relevance_score": 1.0},
        {"index": 2, "relevance_score": 0.3333},
    ]
    tokens = count_tokens(QUERY) + sum(count_tokens(each) for each in DOCUMENTS)
    assert answer["usage"] == {"total_tokens": tokens} and "meta" not in answer


async def test_v2_returns_documents_and_bills_one_search_per_hundred_documents(
    http: httpx.AsyncClient,
) -> None:
    documents = [{"text": each} for each in DOCUMENTS] * 40  # 120 documents
    doc = {"model": "m", "query": QUERY, "documents": documents, "return_documents": True}
    answer = (await http.post("/v2/rerank", json=doc, headers=AUTH)).json()
    assert answer["results"][0] == {
        "index": 1,
        "relevance_score": 1.0,
        "document": {"text": DOCUMENTS[1]},
    }
    assert len(answer["results"]) == 120
    assert answer["meta"]["billed_units"] == {"search_units": 2} and "usage" not in answer


async def test_a_request_without_documents_is_a_400(http: httpx.AsyncClient) -> None:
    doc = {"model": "m", "query": QUERY, "documents": []}
    answer = await http.post("/v2/rerank", json=doc, headers=AUTH)
    assert answer.status_code == 400 and "documents" in answer.json()["error"]["message"]
