"""`extproc serve --workers 2` billed like one process: after bursts that Envoy spread over
both workers, the supervisor's /metrics, the log lines and `extproc usage report` agree
request for request; no counter on the page ever goes back while a worker is killed and
restarted; a quota in the shared store holds across workers; a reload reaches every worker
and the merged page. (A worker that cannot take its port stops the whole server:
tests/integration/test_lifecycle_review.py.)"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import httpx
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)

# A small label budget (2: the two demo keys, users and groups fit) so that made-up
# model names fill it, as a flood of them would fill the default 1000.
# Written into the default config's own telemetry section (a second one would be a
# repeated key, which the loader refuses).
TELEMETRY = """
  metrics:
    max_label_values: 2
"""
SETTINGS = """
quotas:
  time_zone: Europe/Berlin
  rules:
    - name: gpt-4o-daily
      subject: api_key
      match: team2
      models: [gpt-4o]
      requests_per_day: 7
"""
KEYS = {"team1": "team1-key", "team2": "team2-key"}
NEW_MODEL = "gpt-4o-reviewed"
# Requests sent to the module's stack so far: each must have exactly one log line.
SENT = [0]
# Models the tests send that the config names (after the reload, NEW_MODEL too).
CONFIGURED = ("gpt-4o-mini", "gpt-4o", NEW_MODEL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("workers-review")
    config = workdir / "gateway.yaml"
    default = DEFAULT_CONFIG.read_text().replace("\ntelemetry:\n", "\ntelemetry:\n" + TELEMETRY, 1)
    config.write_text(default + SETTINGS)
    with running_stack(workdir, config_path=config, workers=2) as running:
        yield running


def chat(stack: LocalStack, key: str, model: str, stream: bool) -> int:
    """One request as the OpenAI SDK sends it; the HTTP status the client saw."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS[key], max_retries=0)
    messages: Any = [{"role": "user", "content": "Bill me once, whichever worker you are"}]
    SENT[0] += 1
    try:
        if stream:
            chunks = client.chat.completions.create(
                model=model, messages=messages, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            assert [chunk for chunk in chunks if chunk.usage is not None]
        else:
            assert client.chat.completions.create(model=model, messages=messages).usage
    except Exception as exc:  # the SDK's APIStatusError carries the status
        return int(exc.status_code)  # type: ignore[attr-defined]
    return 200


def worker_streams(stack: LocalStack) -> dict[str, int]:
    """Envoy's request count per endpoint of the ext_proc cluster (one per worker)."""
    text = httpx.get(f"{stack.envoy_admin_url}/clusters").text
    found = re.findall(r"^extproc::([\d.]+:\d+)::rq_total::(\d+)$", text, re.MULTILINE)
    return {endpoint: int(count) for endpoint, count in found}


def worker_pids(stack: LocalStack) -> dict[int, int]:
    text = (stack.workdir / "gateway.err").read_text()
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", text)}


def restarted(stack: LocalStack, index: int, victim: int) -> bool:
    return worker_pids(stack)[index] != victim


def ready(stack: LocalStack) -> bool:
    return httpx.get(stack.metrics_url.replace("/metrics", "/readyz")).status_code == 200


def logged(stack: LocalStack, count: int) -> list[dict[str, Any]]:
    """The gateway's log lines, once there are ``count`` of them."""
    log = GatewayLog(stack.gateway_log)
    lines: list[dict[str, Any]] = wait_for(
        lambda: found if len(found := log.lines()) >= count else None, timeout_s=20.0
    )
    assert lines is not None and len(lines) == count, (count, len(log.lines()))
    return lines


def assert_page_equals_log_lines(stack: LocalStack, lines: list[dict[str, Any]]) -> None:
    """What an operator bills from the page is what the log lines say: per key, and per
    key and configured model (made-up names past the label budget fold into `other`)."""
    page = scrape(stack.metrics_url)
    tokens: dict[tuple[str, str, str], int] = defaultdict(int)
    cost: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in lines:
        if not line.get("provider"):
            continue  # refused before a provider: no tokens, no cost
        key, model = line["api_key_id"], line["model"]
        for kind in ("prompt", "completion"):
            tokens[(key, model, kind)] += line[f"{kind}_tokens"]
            tokens[(key, "", kind)] += line[f"{kind}_tokens"]
        cost[(key, model)] += Decimal(str(line["cost_usd"]))
    for (key, model, kind), expected in tokens.items():
        if model in CONFIGURED:
            found = metric(page, "tokens_consumed_total", api_key_id=key, model=model,
                           token_type=kind)  # fmt: skip
            assert found == expected, (key, model, kind)
        elif not model:
            found = metric(page, "tokens_consumed_total", api_key_id=key, token_type=kind)
            assert found == expected, (key, kind)
    for (key, model), usd in cost.items():
        if model in CONFIGURED:
            assert metric(page, "aigw_cost_usd_total", api_key_id=key, model=model) == float(usd)
    assert metric(page, "aigw_requests_total") == len(lines)
    for status in {str(line["http_status_code"]) for line in lines}:
        assert metric(page, "aigw_requests_total", status_code=status) == sum(
            1 for line in lines if str(line["http_status_code"]) == status
        )


def assert_report_equals_log_lines(stack: LocalStack, lines: list[dict[str, Any]]) -> None:
    """`extproc usage report --by api_key` (the rollups, written by both workers)."""
    expected: dict[str, tuple[int, int, Decimal]] = {}
    for key in KEYS:
        mine = [line for line in lines if line.get("api_key_id") == key and line.get("provider")]
        expected[key] = (
            sum(line["prompt_tokens"] for line in mine),
            sum(line["completion_tokens"] for line in mine),
            sum((Decimal(str(line["cost_usd"])) for line in mine), Decimal()),
        )

    def reported() -> dict[str, tuple[int, int, Decimal]] | None:
        rows = usage_rows(stack, "api_key")
        found = {
            key: (row["prompt_tokens"], row["completion_tokens"], Decimal(row["cost_usd"]))
            for key, row in rows.items()
            if key in KEYS
        }
        return found if found == expected else None

    # The rollups land with each worker's next flush.
    assert wait_for(reported, timeout_s=20.0), (usage_rows(stack, "api_key"), expected)


def test_a_burst_over_both_workers_is_counted_once_in_metrics_logs_and_rollups(
    stack: LocalStack,
) -> None:
    for index in range(30):
        key = "team1" if index % 3 else "team2"
        assert chat(stack, key, "gpt-4o-mini", stream=index % 2 == 0) == 200
    streams = worker_streams(stack)
    assert len(streams) == 2 and all(count >= 10 for count in streams.values()), streams
    lines = logged(stack, SENT[0])
    assert_page_equals_log_lines(stack, lines)
    assert_report_equals_log_lines(stack, lines)
    rows = usage_rows(stack, "api_key")
    assert rows["team1"]["requests"] + rows["team2"]["requests"] == 30


def test_merged_histograms_count_each_request_once_with_cumulative_buckets(
    stack: LocalStack,
) -> None:
    lines = logged(stack, SENT[0])
    page = scrape(stack.metrics_url)
    served = [line for line in lines if line.get("provider")]
    assert metric(page, "aigw_request_duration_seconds_count") == len(served)
    assert metric(page, "aigw_time_to_first_token_seconds_count") == sum(
        1 for line in served if line["stream"]
    )
    assert metric(page, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        line["prompt_tokens"] for line in served
    )
    for name in ("aigw_request_duration_seconds", "gen_ai_client_token_usage"):
        by_series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        for (sample, labels), value in page.items():
            if sample == f"{name}_bucket":
                rest = tuple(pair for pair in labels if pair[0] != "le")
                by_series[rest].append((float(dict(labels)["le"]), value))
        assert by_series
        for rest, buckets in by_series.items():
            counts = [value for _, value in sorted(buckets)]
            assert counts == sorted(counts), (name, rest)  # cumulative, as Prometheus reads them
            assert buckets and max(buckets)[0] == float("inf")
            assert counts[-1] == page[(f"{name}_count", rest)], (name, rest)


def test_a_quota_in_the_shared_store_holds_across_workers(stack: LocalStack) -> None:
    before = worker_streams(stack)
    statuses = [chat(stack, "team2", "gpt-4o", stream=False) for _ in range(12)]
    after = worker_streams(stack)
    assert all(after[endpoint] > before[endpoint] for endpoint in before), (before, after)
    assert statuses.count(200) == 7 and statuses.count(429) == 5, statuses


class Scraper(threading.Thread):
    """Scrapes the page like Prometheus does, far more often (every ``PAUSE_S`` after
    the last answer, so some tens of times while a worker restarts), and notes every
    counter sample that went down or vanished since the scrape before."""

    # Back to back, the scrapes kept a core busy merging and parsing pages.
    PAUSE_S = 0.05

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(daemon=True)
        self._url = stack.metrics_url
        self._done = threading.Event()
        self.scrapes = 0
        self.drops: list[str] = []

    def run(self) -> None:
        last: dict[Any, float] = {}
        while not self._done.is_set():
            try:
                page = scrape(self._url)
            except httpx.HTTPError:
                continue
            counters = {
                key: value
                for key, value in page.items()
                if key[0].endswith(("_total", "_bucket", "_count", "_sum"))
            }
            for key, value in last.items():
                now = counters.get(key)
                if now is None or now < value:
                    self.drops.append(f"{key}: {value} -> {now}")
            last = counters
            self.scrapes += 1
            self._done.wait(self.PAUSE_S)

    def stop(self) -> None:
        self._done.set()
        self.join(10)


def test_no_counter_goes_back_while_a_worker_is_killed_and_restarted(stack: LocalStack) -> None:
    scraper = Scraper(stack)
    scraper.start()
    try:
        for pid_index in (1, 0):
            # Killed once what it served is logged and rolled up: a SIGKILL loses the
            # last few ms of both (docs/operations.md), which is not what this checks.
            assert_report_equals_log_lines(stack, logged(stack, SENT[0]))
            victim = worker_pids(stack)[pid_index]
            os.kill(victim, signal.SIGKILL)
            assert wait_for(partial(restarted, stack, pid_index, victim), timeout_s=30.0)
            assert wait_for(lambda: ready(stack), timeout_s=60.0)
            statuses = [
                chat(stack, "team1", "gpt-4o-mini", stream=index % 2 == 0) for index in range(6)
            ]
            assert statuses == [200] * 6, statuses
    finally:
        scraper.stop()
    assert scraper.scrapes > 5
    assert not scraper.drops, scraper.drops[:10]
    lines = logged(stack, SENT[0])
    assert_page_equals_log_lines(stack, lines)
    assert_report_equals_log_lines(stack, lines)


def test_a_reload_reaches_every_worker_and_the_merged_page_admits_its_models(
    stack: LocalStack,
) -> None:
    """Made-up `claude-` names fill the label budget; then the operator adds a model
    and sends SIGHUP. Both workers serve it, and its tokens show under its own name on
    the merged page (docs/metrics.md: configured models never fold into `other`)."""
    for name in ("claude-made-up-1", "claude-made-up-2", "claude-made-up-3"):
        chat(stack, "team1", name, stream=False)
    scrape(stack.metrics_url)  # the supervisor's budget sees them
    config = stack.config_path
    text = config.read_text()
    reloads = (stack.workdir / "gateway.err").read_text().count("config reloaded")
    config.write_text(
        text.replace(
            "models:\n  - name: gpt-4o-mini\n",
            f"models:\n  - name: {NEW_MODEL}\n    provider: mock\n  - name: gpt-4o-mini\n",
            1,
        ).replace(
            "  models:\n    gpt-4o-mini:",
            f"  models:\n    {NEW_MODEL}: {{input_per_million: 1.5, output_per_million: 7}}\n"
            "    gpt-4o-mini:",
            1,
        )
    )
    stack.process("gateway").send_signal(signal.SIGHUP)
    # Both workers and the supervisor (the file watch may beat SIGHUP; either is fine).
    assert wait_for(
        lambda: (stack.workdir / "gateway.err").read_text().count("config reloaded") >= reloads + 3,
        timeout_s=30.0,
    ), "not every process reloaded"
    before = worker_streams(stack)
    assert [chat(stack, "team1", NEW_MODEL, stream=i % 2 == 0) for i in range(6)] == [200] * 6
    after = worker_streams(stack)
    assert all(after[endpoint] > before[endpoint] for endpoint in before), (before, after)
    lines = logged(stack, SENT[0])
    new = [line for line in lines if line.get("model") == NEW_MODEL]
    assert len(new) == 6 and all(Decimal(str(line["cost_usd"])) > 0 for line in new)
    assert_page_equals_log_lines(stack, lines)
    assert_report_equals_log_lines(stack, lines)
