"""A rerank's search units in every ledger, not the log line alone.

Cohere bills a rerank by searches (``meta.billed_units.search_units``: one a query of up
to 100 documents), and its invoice counts them. The log line had them and ``cost_usd``
priced them, but the hourly rollup, the report (table, CSV, JSON), the management API's
``UsageRow`` and the metrics did not: an operator billing teams for reranks saw the
dollars and could check them against nothing. Each test plays requests through the
processor (real ext_proc messages) with a real Valkey for the rollup, and reads every
ledger: Cohere-style v2 reranks (the mock provider's own answer) count their searches,
summed per hour and over requests; a rerank billed by its tokens and a chat request
count none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.config.loader import parse_config
from extproc.management.usage import rows_from_report, usage_report
from extproc.management.v1 import management_pb2 as pb
from extproc.mock_llm.rerank_api import answer_document
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import StoreClient
from extproc.store.usage import (
    MEASURES,
    UsageEntry,
    UsageRow,
    UsageStore,
    spool_rows,
    totals_from_spool,
    totals_of,
)
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    sample,
)
from tests.unit.conftest import MemoryLog

# The store fixture (a real Valkey, flushed), re-exported so pytest finds it here.
from tests.unit.test_accounting_review_streams import store as store

AUTH = {"authorization": "Bearer team1-key"}
JSON = {"content-type": "application/json"}
DEFAULT_CONFIG = (
    Path("config/gateway.yaml")
    .read_text(encoding="utf-8")
    .replace("store:\n", "store:\n  timeout_ms: 4000\n", 1)
)
MODEL = "rerank-v3.5"
QUERY = "capital of the United States"
# 150 documents: two searches each, as Cohere bills them (one per 100 documents), so a
# sum of searches is told from a count of requests.
DOCUMENTS = [f"Document {index} about the capital of a state." for index in range(150)]
SEARCHES = 2
# The report's JSON and CSV columns of the search units, after every earlier one.
SEARCH_COLUMN = "search_units"


def rerank_body() -> dict[str, Any]:
    return {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, "top_n": 3}


def mock_answer(v2: bool) -> bytes:
    """The mock provider's answer: v2 as Cohere's (search units), v1 as Jina's (tokens)."""
    return orjson.dumps(answer_document(rerank_body(), QUERY, DOCUMENTS, v2=v2, with_usage=True))


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
CHAT_ANSWER = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
)


@dataclass
class Gateway:
    """The processor, its services and the rollup its writer adds to."""

    processor: Processor
    services: Services
    usage: UsageStore
    writer: UsageWriter

    async def send(self, path: str, body: dict[str, Any], answer: bytes) -> dict[str, Any]:
        """One request answered with ``answer``: its log line."""
        before = len(self.services.access_log.lines())  # type: ignore[attr-defined]
        await run_stream(
            self.processor,
            [
                request_headers(path, headers=AUTH),
                request_body(orjson.dumps(body)),
                response_headers(200, JSON),
                response_body(answer),
            ],
        )
        lines = self.services.access_log.lines()  # type: ignore[attr-defined]
        [line] = lines[before:]
        return line  # type: ignore[no-any-return]

    async def rows(
        self, line: dict[str, Any], by: tuple[str, ...]
    ) -> tuple[list[UsageRow], Period]:
        """The rollup of the hour ``line`` started in, grouped ``by``, and that hour."""
        assert await self.writer.flush() is True
        hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0, microsecond=0)
        period = Period(hour, hour + timedelta(hours=1))
        return await self.usage.query(period.start, period.end, by), period


@pytest.fixture
async def gateway(store: StoreClient) -> AsyncIterator[Gateway]:
    usage = UsageStore(store, "searches:", retention_days=1)
    writer = UsageWriter(usage, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    runtime = Runtime(parse_config(DEFAULT_CONFIG, "gateway.yaml", {}), services)
    yield Gateway(Processor(lambda: runtime, default_stages()), services, usage, writer)


async def test_cohere_searches_roll_up_and_reach_the_report_and_the_management_api(
    gateway: Gateway,
) -> None:
    """Two v2 reranks of two searches each: the hour sums four searches, which the JSON
    and CSV reports and the management API's row carry, as the log lines say; a rerank
    billed by its tokens and a chat request add none."""
    cohere = [await gateway.send("/v2/rerank", rerank_body(), mock_answer(True)) for _ in range(2)]
    by_tokens = await gateway.send("/v1/rerank", rerank_body(), mock_answer(False))
    chat = await gateway.send("/v1/chat/completions", CHAT, CHAT_ANSWER)
    assert [line["search_units"] for line in cohere] == [SEARCHES, SEARCHES]
    assert (by_tokens["search_units"], chat["search_units"]) == (None, None)
    assert by_tokens["usage_reported"] is True and by_tokens["prompt_tokens"] > 0

    by = ("route",)
    rows, period = await gateway.rows(cohere[0], by)
    found = {row.dimensions["route"]: row for row in rows}
    assert set(found) == {"rerank-v2", "rerank", "openai-chat"}
    assert found["rerank-v2"].requests == 2
    assert found["rerank-v2"].search_units == 2 * SEARCHES
    assert found["rerank"].search_units == 0 and found["openai-chat"].search_units == 0
    # The searches are the bill: the rollup's cost is the lines' ($2.00 per 1,000).
    assert found["rerank-v2"].cost_picousd == sum(
        round(line["cost_usd"] * 10**12) for line in cohere
    )

    # JSON: the count after every earlier key, in rows and totals, summed over routes.
    document = orjson.loads(render(rows, by, period, "json"))
    json_rows = {row["route"]: row for row in document["rows"]}
    for record in (*json_rows.values(), document["totals"]):
        assert list(record)[-2:] == ["image_generation_output_image_tokens", SEARCH_COLUMN]
    assert {route: row[SEARCH_COLUMN] for route, row in json_rows.items()} == {
        "rerank-v2": 2 * SEARCHES,
        "rerank": 0,
        "openai-chat": 0,
    }
    assert document["totals"][SEARCH_COLUMN] == 2 * SEARCHES

    # CSV: always the column, after the image columns (no tools this hour).
    lines = render(rows, by, period, "csv").splitlines()
    header = lines[0].split(",")
    assert header[-2:] == ["image_generation_output_image_tokens", SEARCH_COLUMN]
    cells = {line.split(",")[0]: line.split(",")[-1] for line in lines[1:]}
    assert cells == {"rerank-v2": str(2 * SEARCHES), "rerank": "0", "openai-chat": "0"}

    # The table shows the column when the period has searches.
    table = render(rows, by, period, "table")
    assert SEARCH_COLUMN in table.splitlines()[1]

    # The management API: the row's and the totals' field, carried whole over the wire,
    # so `usage report --api` prints what a report from the store prints.
    answer = pb.UsageReport.FromString(usage_report(rows, by, period).SerializeToString())
    api_rows = {row.dimensions["route"]: row for row in answer.rows}
    assert api_rows["rerank-v2"].search_units == 2 * SEARCHES
    assert api_rows["rerank"].search_units == 0 and api_rows["openai-chat"].search_units == 0
    assert answer.totals.search_units == 2 * SEARCHES
    for fmt in ("json", "csv", "table"):
        assert render(rows_from_report(answer), by, period, fmt) == render(rows, by, period, fmt)

    # The metric: the searches under the requests' identity, model and provider.
    labels = {"api_key_id": "team1", "model": MODEL, "provider": "mock"}
    assert sample(gateway.services, "aigw_search_units_total", **labels) == 2 * SEARCHES
    assert sample(gateway.services, "aigw_search_units_total") == 2 * SEARCHES
    # Not a token type: tokens_consumed_total and the token parts never hold searches.
    assert sample(gateway.services, "aigw_token_parts_total", token_type="search_units") == 0


async def test_an_estimated_search_is_counted_in_the_rollup_as_the_line_bills_it(
    gateway: Gateway,
) -> None:
    """A v2 answer that reports nothing is charged the searches it would have been (the
    line's ``usage_estimated``): the rollup and the metric count the same searches."""
    reply = orjson.dumps({"id": "r-1", "results": [{"index": 0, "relevance_score": 0.5}]})
    line = await gateway.send("/v2/rerank", rerank_body(), reply)
    assert line["usage_estimated"] is True and line["search_units"] == SEARCHES
    [row], _ = await gateway.rows(line, ("model",))
    assert row.search_units == SEARCHES
    assert sample(gateway.services, "aigw_search_units_total") == SEARCHES


async def test_a_request_without_searches_writes_no_search_field(gateway: Gateway) -> None:
    """Every non-rerank request, and a rerank billed by tokens, adds 0: nothing written
    (only non-zero measures are), no series made."""
    line = await gateway.send("/v1/chat/completions", CHAT, CHAT_ANSWER)
    await gateway.send("/v1/rerank", rerank_body(), mock_answer(False))
    [row], _ = await gateway.rows(line, ())
    assert row.requests == 2 and row.search_units == 0
    hour = datetime.fromisoformat(line["timestamp"]).strftime("%Y%m%d%H")
    fields = await gateway.usage._client.hkeys(f"searches:usage:{hour}")
    assert fields and not [name for name in fields if name.endswith(b"\tsearch_units")]
    assert sample(gateway.services, "aigw_search_units_total") == 0


async def test_an_hour_rolled_up_before_the_searches_were_counted_reads_them_as_0(
    gateway: Gateway,
) -> None:
    """An older gateway's hour (no search_units field) and a batch it spooled (fewer
    counts) read as no searches; added to a newer gateway's, the searches sum."""
    line = await gateway.send("/v2/rerank", rerank_body(), mock_answer(True))
    started = datetime.fromisoformat(line["timestamp"]).timestamp()
    dimensions = {"route": "rerank-v2", "model": MODEL, "provider": "mock"}
    old = spool_rows(totals_of([UsageEntry(started, dimensions, 40, 0)]))
    # As an earlier version spooled it: the counts up to the image generation tool's.
    old = [row[: 2 + MEASURES.index("search_units")] for row in old]
    read_back = totals_from_spool(old)
    assert [tally.counts[MEASURES.index("search_units")] for tally in read_back.values()] == [0]
    await gateway.usage.record_totals(read_back, "an-older-gateways-batch")
    [row], _ = await gateway.rows(line, ("model",))
    assert (row.requests, row.search_units) == (2, SEARCHES)
