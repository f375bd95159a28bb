"""Usage reports at their edges, as a billing team meets them: the note about hours whose
rollups expired names the first hour still kept; JSON asked through the management API
lists each row's dimensions in the order ``--by`` gave them; a count the store cannot hold
loses that count alone, not the other teams' usage flushed with it; a negative count in an
OpenAI or Anthropic answer is no count, never a credit; a price given under another
spelling of a model's name prices its aliases too."""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from extproc import usage_report
from extproc.chargeback.pricing import PriceTable
from extproc.cli import main
from extproc.config import GatewayConfig
from extproc.config.model import MAX_USAGE_RETENTION_DAYS
from extproc.context import Usage
from extproc.devstack import DEFAULT_CONFIG
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_usage_report_finance import (
    CLI_PREFIX,
    TOKEN,
    management,
    store,
    store_url,
    write_entries,
)

# The fixtures of the finance tests: the management API, a usage store, the CLI's store.
__all__ = ["management", "store", "store_url"]

NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)
DIMENSIONS = {"route": "openai-chat", "model": "gpt-4o-mini", "provider": "mock",
              "api_key_id": "k1", "user_id": "ann", "group_id": "finance"}  # fmt: skip


def usage(started: datetime, cost_picousd: int = 1_000_000, **dimensions: str) -> UsageEntry:
    return UsageEntry(
        started.timestamp(), {**DIMENSIONS, **dimensions}, 100, 10, cost_picousd=cost_picousd
    )


def ask_api(address: str, *args: str) -> list[str]:
    return ["usage", "report", "--api", "--address", address, "--token", TOKEN, *args]


# -- the note about expired hours ------------------------------------------------------------


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tells expired hours at ``NOW``."""
    at_now = functools.partial(usage_report._note_expired_hours, now=NOW)
    monkeypatch.setattr(usage_report, "_note_expired_hours", at_now)


def test_the_expired_hours_note_names_the_first_hour_still_kept(
    store_url: str, cli_clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # An hour's hash expires store.usage_retention_days (400) after its first write, which
    # comes early in the hour: at NOW (15:42), the hour 15:00 of 400 days before is gone
    # (first written 15:00 to 15:42 on a busy gateway), the hour 16:00 is all kept. The note
    # said "hours before 15:00 have expired", so a report from 15:00 read as complete
    # while its first hour was missing.
    asyncio.run(write_entries(store_url, []))

    code = main(["usage", "report", "--from", "2025-10-10T15:00Z", "--to", "2025-10-11"])

    captured = capsys.readouterr()
    # Short of the expired hour: exit 1, as for an hour that could not be read.
    assert code == 1, captured.err
    assert "hours before 2025-10-10T16:00Z have expired" in captured.err

    assert main(["usage", "report", "--from", "2025-10-10T16:00Z", "--to", "2025-10-11"]) == 0
    assert capsys.readouterr().err == ""


def test_a_retention_of_ever_reports_without_a_traceback(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # store.usage_retention_days has no upper bound, and "keep them forever" is written
    # 999999 (the store takes that TTL). The note's arithmetic reached before the year 1:
    # every report from the store died in an OverflowError traceback.
    asyncio.run(write_entries(store_url, [usage(datetime(2026, 11, 14, 9, 5, tzinfo=UTC))]))
    config = tmp_path / "gateway.yaml"
    text = DEFAULT_CONFIG.read_text().replace(
        "store:\n", "store:\n  usage_retention_days: 999999\n", 1
    )
    config.write_text(text)

    code = main(["usage", "report", "--config", str(config), "--day", "2026-11-14",
                 "--by", "group", "--format", "json"])  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert orjson.loads(captured.out)["totals"]["cost_usd"] == "0.000001"
    assert captured.err == ""


async def test_the_longest_retention_that_loads_is_one_the_store_can_set(store_url: str) -> None:
    # Past about 10^11 days the store refuses the expiry: such a retention loaded clean
    # and then every flush of usage failed. The bound refuses it at load instead, and the
    # longest retention that loads is still one the store sets.
    client = connect(store_url, 2.0)
    try:
        await client.flushdb()
        store = UsageStore(client, CLI_PREFIX, MAX_USAGE_RETENTION_DAYS)
        await store.record(usage(datetime(2026, 11, 14, 9, 5, tzinfo=UTC)))
        # The hour's rollup, and the index of the api_key_ids it bills (usage:key_ids).
        names = await client.keys(f"{CLI_PREFIX}*")
        assert len(names) == 2
        for name in names:
            assert await client.ttl(name) > 86_400 * 36_500
    finally:
        await client.aclose()


def test_a_retention_the_store_cannot_set_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    too_long = MAX_USAGE_RETENTION_DAYS + 1
    config.write_text(
        DEFAULT_CONFIG.read_text().replace(
            "store:\n", f"store:\n  usage_retention_days: {too_long}\n", 1
        )
    )
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(config)])
    assert exited.value.code == 2
    assert "store.usage_retention_days" in capsys.readouterr().err


# -- reports through the management API ------------------------------------------------------


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
async def test_json_rows_through_the_api_name_their_dimensions_in_by_order(
    management: tuple[str, UsageStore], capsys: pytest.CaptureFixture[str]
) -> None:
    # The answer carries each row's dimensions as a protobuf map, which keeps no order: the
    # CLI's JSON rows listed them as the map iterated (group, model, key, provider, user,
    # route), not as --by asked and as a report read from the store lists them.
    address, store = management
    await store.record(usage(datetime(2026, 11, 14, 9, 5, tzinfo=UTC)))
    by = ["route", "user_id", "provider", "api_key_id", "model", "group_id"]

    code = await asyncio.to_thread(
        main, ask_api(address, "--day", "2026-11-14", "--by", ",".join(by), "--format", "json")
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = orjson.loads(captured.out)
    assert document["group_by"] == by
    [row] = document["rows"]
    assert list(row)[: len(by)] == by


# -- the rollups -----------------------------------------------------------------------------


async def test_a_count_past_what_the_store_holds_loses_no_other_usage(
    store: UsageStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A provider reporting an absurd count (an unsigned -1 from a broken server, 2**64 - 1
    # tokens) makes a cost or token sum past the store's 64-bit integers. Its HINCRBY
    # failed half way through the flush's script, after the batch id was set: the rest of
    # the flush (here another team's request) never landed, and the retry found the id and
    # took the batch for written. The finance team's usage was gone without a trace.
    started = datetime(2026, 11, 14, 9, 5, tzinfo=UTC)
    writer = UsageWriter(store, on_error=lambda: None)
    broken = UsageEntry(started.timestamp(), {**DIMENSIONS, "group_id": "research"},
                        2**64 - 1, 10, cost_picousd=(2**64 - 1) * 150_000)  # fmt: skip
    writer.add(broken)
    writer.add(usage(started, cost_picousd=7_000_000))

    with caplog.at_level(logging.ERROR, logger="extproc.store.usage"):
        assert await writer.flush() is True
    assert await writer.flush() is True

    rows = await store.query(started.replace(minute=0), started.replace(hour=10, minute=0),
                             ("group_id",))  # fmt: skip
    found = {row.dimensions["group_id"]: row for row in rows}
    assert (found["finance"].requests, found["finance"].cost_picousd) == (1, 7_000_000)
    # The broken request counts, without the counts the store cannot hold.
    assert (found["research"].requests, found["research"].completion_tokens) == (1, 10)
    assert "cost_picousd" in caplog.text and "prompt_tokens" in caplog.text


# -- the cost of a request -------------------------------------------------------------------


@pytest.mark.parametrize(
    "usage_object",
    [
        {"input_tokens": 100, "output_tokens": -1_000_000},
        {"input_tokens": -1_000_000, "output_tokens": 10},
        {"input_tokens": 100, "cache_read_input_tokens": -1_000_000, "output_tokens": 10},
        {"input_tokens": 100, "cache_creation_input_tokens": -1_000_000, "output_tokens": 10},
    ],
    ids=["output", "input", "cache_read", "cache_write"],
)
async def test_a_negative_count_in_an_anthropic_answer_is_never_a_credit(
    processor: Processor, services: Services, usage_object: dict[str, int]
) -> None:
    # OpenAI's, Gemini's and Bedrock's readers take a count only at 0 or above; Anthropic's
    # took any integer, so an answer saying output_tokens: -1000000 (a broken proxy or
    # Anthropic-compatible server) cost -$14.9997: a credit on the team's bill, its
    # rollup and its quota. A count below 0 is malformed: the answer is priced as one
    # without a count (an estimate), a malformed cache count is none.
    answer = {"type": "message", "model": "claude-sonnet-4-0", "content": [],
              "usage": usage_object}  # fmt: skip
    body = orjson.dumps({"model": "claude-sonnet-4-0", "max_tokens": 64,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    await run_stream(processor, [
        request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
        request_body(body), response_headers(200), response_body(orjson.dumps(answer)),
    ])  # fmt: skip

    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["cost_usd"] > 0
    counts = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")
    assert all(line[name] >= 0 for name in counts), line


@pytest.mark.parametrize(
    "usage_object",
    [
        {"prompt_tokens": 100, "completion_tokens": -1_000_000, "total_tokens": -999_900},
        {"prompt_tokens": -1_000_000, "completion_tokens": 10, "total_tokens": 10},
        {"prompt_tokens": True, "completion_tokens": 10, "total_tokens": 11},
    ],
    ids=["completion", "prompt", "true"],
)
async def test_a_negative_count_in_an_openai_answer_is_never_a_credit(
    processor: Processor, services: Services, usage_object: dict[str, int]
) -> None:
    # Chat completions' reader took prompt_tokens and completion_tokens as any integer
    # (JSON's true too), where its other counts and the Responses API's are taken at 0 or
    # above: completion_tokens: -1000000 cost -$0.599985; a negative prompt came out as a
    # million completion tokens and -1000000 cached ones; true went to the log line as is.
    answer = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
              "usage": usage_object}  # fmt: skip
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    await run_stream(processor, [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body), response_headers(200), response_body(orjson.dumps(answer)),
    ])  # fmt: skip

    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["cost_usd"] > 0
    counts = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")
    assert all(type(line[name]) is int and line[name] >= 0 for name in counts), line
    # Priced as an answer without a count: an estimate (docs/chargeback.md).
    assert line["usage_estimated"] is True


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        # A cross-region profile served, priced by the foundation model's id, as
        # chargeback.md's own example prices it.
        ("us.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
        # The price table's key in other case.
        ("anthropic.claude-3-haiku-20240307-v1:0", "Anthropic.Claude-3-Haiku-20240307-v1:0"),
    ],
)
def test_a_price_under_another_spelling_of_a_model_prices_its_aliases(
    config: GatewayConfig, model: str, priced_as: str
) -> None:
    # The model's own name found that price (its other spellings are documented to), but
    # its alias did not: /bedrock/haiku cost $0 (flagged unpriced), and the config check
    # warned that the model, priced at every request, had no price.
    [haiku] = [each for each in config.models if "haiku" in each.aliases]
    models = tuple(
        each.model_copy(update={"name": model}) if each is haiku else each for each in config.models
    )
    prices = dict(config.pricing.models)
    prices[priced_as] = prices.pop("anthropic.claude-3-haiku-20240307-v1:0")
    table = PriceTable(config.pricing.model_copy(update={"models": prices}), models)

    million = Usage(1_000_000, 0, 1_000_000)
    assert table.cost(model, million) == table.cost("haiku", million)
    assert table.cost("haiku", million).usd == Decimal("0.25")
    assert model not in table.unpriced_models
