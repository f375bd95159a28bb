"""Rerank through the gateway (POST /v1/rerank and /v2/rerank): httpx (no official rerank
client is in the dev extras), real Envoy, the gateway, embedded Valkey and the mock
provider. A RAG pipeline's rerank calls are authenticated, limited and billed like its
chat calls: by tokens where the answer reports them (v1: Jina, Voyage, vLLM), by
Cohere's search units where it reports those (v2)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    counted_page,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)

MODEL = "rerank-v3.5"
QUERY = "capital of the United States"
DOCUMENTS = [
    "Carson City is the capital city of the American state of Nevada.",
    "Washington, D.C. is the capital of the United States.",
    "The Northern Mariana Islands are a group of islands in the Pacific Ocean.",
]


def rerank(
    http: httpx.Client, path: str = "/v1/rerank", key: str = "team1-key", **fields: Any
) -> httpx.Response:
    body = {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, **fields}
    return http.post(path, json=body, headers={"authorization": f"Bearer {key}"})


def rerank_requests(stack: LocalStack) -> list[dict[str, Any]]:
    return [r for r in mock_requests(stack) if r["path"].endswith("/rerank")]


def test_a_v1_rerank_is_answered_as_the_provider_ranks_and_billed_by_its_tokens(
    stack: LocalStack, http: httpx.Client, gateway_log: GatewayLog
) -> None:
    answer = rerank(http, top_n=2, return_documents=True)

    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [each["index"] for each in results] == [1, 0]
    assert results[0]["relevance_score"] == 1.0
    assert results[0]["document"] == {"text": DOCUMENTS[1]}
    tokens = count_tokens(QUERY) + sum(count_tokens(each) for each in DOCUMENTS)
    assert answer.json()["usage"] == {"total_tokens": tokens}

    upstream = rerank_requests(stack)[-1]
    assert upstream["path"] == "/v1/rerank"
    assert upstream["headers"]["authorization"] == "Bearer mock-provider-key"
    assert "team1-key" not in orjson.dumps(upstream).decode()

    [line] = gateway_log.for_request(answer.headers["x-request-id"])
    assert (line["route"], line["model"], line["provider"]) == ("rerank", MODEL, "mock")
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (tokens, 0)
    assert line["usage_reported"] is True and line["search_units"] is None
    assert (line["api_key_id"], line["user_id"], line["group_id"]) == (
        "team1",
        "alice",
        "engineering",
    )


def test_a_v2_rerank_is_billed_by_coheres_search_units(
    stack: LocalStack, http: httpx.Client, gateway_log: GatewayLog
) -> None:
    answer = rerank(http, "/v2/rerank", key="team2-key")

    assert answer.status_code == 200
    assert [each["index"] for each in answer.json()["results"]] == [1, 0, 2]
    assert answer.json()["meta"]["billed_units"] == {"search_units": 1}
    assert rerank_requests(stack)[-1]["path"] == "/v2/rerank"

    [line] = gateway_log.for_request(answer.headers["x-request-id"])
    assert (line["route"], line["api_key_id"], line["user_id"]) == ("rerank-v2", "team2", "bob")
    assert line["search_units"] == 1 and line["usage_reported"] is True
    # $2.00 per 1,000 searches.
    assert line["cost_usd"] == 0.002 and line["cost_priced"] is True


def report_rows(stack: LocalStack, *options: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``extproc usage report`` as JSON, by route and API key (for this model only)."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", "route,api_key,model",
         "--format", "json", "--config", str(stack.config_path), *options],
        env=stack.env, capture_output=True, check=True,
    )  # fmt: skip
    rows = orjson.loads(result.stdout)["rows"]
    return {(row["route"], row["api_key_id"]): row for row in rows if row["model"] == MODEL}


def test_the_searches_of_the_log_lines_are_in_the_usage_report_and_the_metrics(
    stack: LocalStack, http: httpx.Client, gateway_log: GatewayLog
) -> None:
    """Cohere's invoice counts searches: the report (from the store and through the
    management API) and aigw_search_units_total carry the searches the log lines have,
    summed over requests; a rerank billed by its tokens adds none."""
    cohere, by_tokens = ("rerank-v2", "team2"), ("rerank", "team1")
    before = report_rows(stack)
    samples = scrape(stack.metrics_url)
    counted_before = metric(samples, "aigw_search_units_total", model=MODEL)
    team1_before = metric(samples, "aigw_search_units_total", api_key_id="team1", model=MODEL)
    searched = [rerank(http, "/v2/rerank", key="team2-key") for _ in range(2)]
    tokened = rerank(http)
    assert all(answer.status_code == 200 for answer in (*searched, tokened))
    lines = [gateway_log.for_request(answer.headers["x-request-id"])[0] for answer in searched]
    searches = sum(line["search_units"] for line in lines)
    assert searches == 2
    [token_line] = gateway_log.for_request(tokened.headers["x-request-id"])
    assert token_line["search_units"] is None

    def grown(rows: dict[tuple[str, str], dict[str, Any]], key: tuple[str, str], by: int) -> bool:
        return rows.get(key, {}).get("requests", 0) == before.get(key, {}).get("requests", 0) + by

    def reported() -> dict[tuple[str, str], dict[str, Any]] | None:
        rows = report_rows(stack)
        return rows if grown(rows, cohere, 2) and grown(rows, by_tokens, 1) else None

    after = wait_for(reported, 20)
    assert after, "no rollup of the three reranks"

    def added(rows: dict[tuple[str, str], dict[str, Any]], key: tuple[str, str]) -> int:
        return int(rows[key]["search_units"]) - int(before.get(key, {}).get("search_units", 0))

    assert added(after, cohere) == searches
    assert added(after, by_tokens) == 0
    # The same rows through the management API (`usage report --api`).
    through_api = report_rows(stack, "--api", "--token", "dev-admin-token")
    assert through_api[cohere]["search_units"] == after[cohere]["search_units"]
    assert through_api[by_tokens]["search_units"] == after[by_tokens]["search_units"]

    samples = counted_page(stack.metrics_url)
    labels = {"model": MODEL, "api_key_id": "team2", "provider": "mock"}
    assert metric(samples, "aigw_search_units_total", model=MODEL) - counted_before == searches
    assert metric(samples, "aigw_search_units_total", **labels) >= searches
    team1 = metric(samples, "aigw_search_units_total", api_key_id="team1", model=MODEL)
    assert team1 == team1_before


def test_a_bad_rerank_is_a_400_that_never_reaches_the_provider(
    stack: LocalStack, http: httpx.Client
) -> None:
    before = len(rerank_requests(stack))
    answer = rerank(http, documents=[])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "documents")
    assert len(rerank_requests(stack)) == before


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The default config with a lifetime budget of 60 tokens for team2's reranks."""
    raw = default_config()
    raw["quotas"] = {
        "rules": [
            {
                "name": "team2-rerank",
                "subject": "api_key",
                "match": ["team2"],
                "models": [MODEL],
                "token_quota": {"limit": 60, "period": "lifetime"},
            }
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("rerank-quota"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def test_a_token_budget_settles_on_the_providers_count_and_then_refuses_with_429(
    quota_stack: LocalStack,
) -> None:
    tokens = count_tokens(QUERY) + sum(count_tokens(each) for each in DOCUMENTS)
    # The first call settles at the provider's count, leaving less than another: the
    # second is admitted (a budget refuses only once nothing remains) and spends the rest.
    assert 30 < tokens < 60
    with httpx.Client(base_url=quota_stack.base_url, timeout=30.0) as http:
        for _ in range(2):
            answer = rerank(http, key="team2-key")
            assert answer.status_code == 200

        def spent() -> httpx.Response | None:
            refused = rerank(http, key="team2-key")
            return refused if refused.status_code == 429 else None

        refused = wait_for(spent)
        assert refused is not None
        error = refused.json()["error"]
        assert error["code"] == "insufficient_quota" and "team2-rerank" in error["message"]
        assert len(rerank_requests(quota_stack)) == 2
        # Another key's reranks are not under the rule.
        assert rerank(http).status_code == 200
