"""`extproc serve --workers 2` behind the real Envoy: streams spread over both workers,
one merged /metrics page with exact counters, quota gauges from the store, a dead
worker restarted, a graceful stop; the page passes `promtool check metrics`, and the
Grafana dashboard uses only names this gateway and its Envoy export."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
import yaml
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.exported_metrics import (
    DASHBOARD,
    PROMETHEUS_SERIES,
    code_series,
    dashboard_expressions,
    promql_metric_names,
    recording_rules,
)
from tests.integration.conftest import counted_page, metric, running_stack, scrape, wait_for

# Fast refreshes so the test sees the gauges move; production defaults are 5 s / 15 s.
# Written into the default config's own telemetry section (a second one would be a
# repeated key, which the loader refuses).
TELEMETRY = """
  metrics:
    quota_gauges:
      refresh_interval_s: 0.3
      subject_flush_interval_s: 0.2
"""
SETTINGS = """
quotas:
  time_zone: Europe/Berlin
  rules:
    - name: group-monthly
      subject: group
      token_quota:
        limit: 100000
        period: calendar_month
"""
GAUGES = (
    "aigw_quota_used",
    "aigw_quota_limit",
    "aigw_quota_remaining",
    "aigw_quota_reset_timestamp_seconds",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("workers")
    config = workdir / "gateway.yaml"
    default = DEFAULT_CONFIG.read_text().replace("\ntelemetry:\n", "\ntelemetry:\n" + TELEMETRY, 1)
    config.write_text(default + SETTINGS)
    with running_stack(workdir, config_path=config, workers=2) as running:
        yield running


def chat(stack: LocalStack, key: str, stream: bool) -> tuple[int, int]:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Count the workers, please"}]
    if not stream:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        assert reply.usage is not None
        return reply.usage.prompt_tokens, reply.usage.completion_tokens
    chunks = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1
    return usage[0].prompt_tokens, usage[0].completion_tokens


def counted(stack: LocalStack) -> float:
    """``aigw_requests_total`` once no worker has a request in progress. A worker counts
    a request once Envoy has closed its stream, which can be just after the client read
    the answer: a scrape at once may miss the last request."""
    return metric(counted_page(stack.metrics_url), "aigw_requests_total")


def worker_streams(stack: LocalStack) -> dict[str, int]:
    """Envoy's per-endpoint request count in the ext_proc cluster."""
    text = httpx.get(f"{stack.envoy_admin_url}/clusters").text
    found = re.findall(r"^extproc::([\d.]+:\d+)::rq_total::(\d+)$", text, re.MULTILINE)
    return {endpoint: int(count) for endpoint, count in found}


def series_names(url: str) -> set[str]:
    """The series names of a Prometheus page as Prometheus stores them (raw, unparsed)."""
    lines = httpx.get(url, timeout=10.0).text.splitlines()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if line and line[0] != "#"}


def worker_pids(stack: LocalStack) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    text = (stack.workdir / "gateway.err").read_text()
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", text)}


SENT: dict[str, list[int]] = {"team1": [0, 0], "team2": [0, 0]}


def test_streams_spread_over_both_workers_and_counters_merge_exactly(stack: LocalStack) -> None:
    for index in range(24):
        key = "team1" if index % 3 else "team2"
        prompt, completion = chat(stack, f"{key}-key", stream=index % 2 == 0)
        SENT[key][0] += prompt
        SENT[key][1] += completion
    streams = worker_streams(stack)
    assert len(streams) == 2, streams
    # Round robin over two endpoints: each served a fair share.
    assert all(count >= 6 for count in streams.values()), streams
    page = counted_page(stack.metrics_url)
    for key, (prompt, completion) in SENT.items():
        assert metric(page, "tokens_consumed_total", api_key_id=key, token_type="prompt") == prompt
        assert (
            metric(page, "tokens_consumed_total", api_key_id=key, token_type="completion")
            == completion
        )
    assert metric(page, "aigw_requests_total", status_code="200") == 24
    assert metric(page, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(
        prompt for prompt, _ in SENT.values()
    )
    assert metric(page, "gen_ai_client_token_usage_count", gen_ai_token_type="output") == 24
    assert metric(page, "aigw_time_to_first_token_seconds_count") == 12
    assert metric(page, "aigw_request_duration_seconds_count") == 24


def test_quota_gauges_show_the_groups_usage_from_the_store(stack: LocalStack) -> None:
    marketing = sum(SENT["team2"])
    assert marketing

    def gauges() -> dict[str, float] | None:
        page = scrape(stack.metrics_url)
        found = {
            name: metric(page, name, subject="marketing", counter="token_quota") for name in GAUGES
        }
        return found if found["aigw_quota_used"] == marketing else None

    found = wait_for(gauges, timeout_s=20.0)
    assert found, f"aigw_quota_used never reached {marketing}"
    assert found["aigw_quota_limit"] == 100000
    assert found["aigw_quota_remaining"] == 100000 - marketing
    now = datetime.now(ZoneInfo("Europe/Berlin"))
    next_month = (now.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    assert found["aigw_quota_reset_timestamp_seconds"] == next_month.timestamp()


def test_the_80_percent_alert_fires_from_the_real_page(stack: LocalStack, tmp_path: Path) -> None:
    """An operator lowers marketing's quota (management API, served by worker 0) so its
    usage is 85% of it; the series scraped from the real page, fed to promtool with the
    shipped rules, fire AigwQuotaNearlyUsed for marketing and nothing else."""
    used = sum(SENT["team2"])
    limit = math.ceil(used / 0.85)
    subprocess.run(
        [sys.executable, "-m", "extproc", "quota", "set", "--config", str(stack.config_path),
         "--kind", "group", "--subject", "marketing", "--rule", "group-monthly",
         "--counter", "token_quota", "--limit", str(limit)],
        env={**stack.env, "AIGW_ADMIN_TOKEN": "dev-admin-token"}, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    page = wait_for(
        lambda: (
            (found := scrape(stack.metrics_url))
            and metric(found, "aigw_quota_limit", subject="marketing", counter="token_quota")
            == limit
            and found
        ),
        timeout_s=20.0,
    )
    assert page, "the override never reached the gauges"
    # As Prometheus stores a scrape: the page's labels plus the target's.
    target = (("instance", "gateway:9464"), ("job", "aigw-gateway"))
    series = [
        {
            "series": name + "{" + ",".join(f'{k}="{v}"' for k, v in (*labels, *target)) + "}",
            "values": f"{value:g}x10",
        }
        for (name, labels), value in page.items()
        if name in ("aigw_quota_limit", "aigw_quota_used")
    ]
    ratio = used / limit
    test = {
        "rule_files": [str(Path("deploy/prometheus/rules").resolve() / name)
                       for name in ("aigw-recording.yml", "aigw-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{
                "eval_time": "5m",
                "alertname": "AigwQuotaNearlyUsed",
                "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "rule": "group-monthly",
                                   "subject_kind": "group", "subject": "marketing",
                                   "counter": "token_quota", "mode": "enforce"},
                    "exp_annotations": {
                        "summary": f"group marketing has used {_percentage(ratio)} of its "
                        "token quota (rule group-monthly)",
                        "description": NEARLY_USED_DESCRIPTION,
                    },
                }],
            }],
        }],
    }  # fmt: skip
    path = tmp_path / "real-page-test.yml"
    path.write_text(yaml.safe_dump(test))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (see .ci/run)"
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


NEARLY_USED_DESCRIPTION = (
    "Requests are refused with 429 insufficient_quota once the quota is used up, until the "
    "period resets. Raise it with `extproc quota set` if intended."
)


def _percentage(ratio: float) -> str:
    """Prometheus' humanizePercentage: the ratio in percent with 4 significant digits."""
    return f"{ratio * 100:.4g}%"


def test_promtool_accepts_the_merged_metrics_page(stack: LocalStack) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (see .ci/run)"
    page = httpx.get(stack.metrics_url).text
    assert "tokens_consumed_total{" in page
    result = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_uses_only_names_this_gateway_and_envoy_export(stack: LocalStack) -> None:
    # Some series (Envoy's upstream histogram) appear only once traffic went upstream.
    prompt, completion = chat(stack, "team1-key", stream=False)
    SENT["team1"][0] += prompt
    SENT["team1"][1] += completion
    exported = set(code_series()) | recording_rules() | PROMETHEUS_SERIES
    exported |= series_names(stack.metrics_url)
    exported |= series_names(f"{stack.envoy_admin_url}/stats/prometheus")
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    used: set[str] = set()
    for expr in dashboard_expressions(dashboard):
        used |= promql_metric_names(expr)
    unknown = used - exported
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"
    assert {"tokens_consumed_total", "aigw_cost_usd_total", "aigw:quota_utilisation:ratio"} <= used
    assert any(name.startswith("envoy_") for name in used)


def test_a_dead_worker_is_restarted_and_its_counts_stay(stack: LocalStack) -> None:
    before = metric(scrape(stack.metrics_url), "aigw_requests_total")
    victim = worker_pids(stack)[1]
    os.kill(victim, signal.SIGKILL)
    restarted = wait_for(lambda: worker_pids(stack)[1] != victim, timeout_s=30.0)
    assert restarted, "worker 1 was not restarted"
    ready = wait_for(
        lambda: httpx.get(stack.metrics_url.replace("/metrics", "/readyz")).status_code == 200,
        timeout_s=60.0,
    )
    assert ready
    for _ in range(4):
        chat(stack, "team1-key", stream=False)
    assert counted(stack) == before + 4


def test_requests_in_progress_sums_the_workers_and_is_0_once_their_tokens_are_counted(
    stack: LocalStack,
) -> None:
    before = counted_page(stack.metrics_url)
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)

    def slow_chat() -> int:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Take your time"}],
            extra_headers={"x-mock-fault": "delay=4"},
        )
        assert reply.usage is not None
        return reply.usage.total_tokens

    with ThreadPoolExecutor(2) as pool:
        replies = [pool.submit(slow_chat) for _ in range(2)]
        both_open = wait_for(
            lambda: metric(scrape(stack.metrics_url), "aigw_requests_in_progress") == 2,
            timeout_s=10.0,
        )
        tokens = sum(reply.result() for reply in replies)
    assert both_open, "the page did not show both requests in progress"

    # 0 again means both requests are counted: no further wait for their tokens.
    after = counted_page(stack.metrics_url)
    grown = metric(after, "tokens_consumed_total", api_key_id="team1") - metric(
        before, "tokens_consumed_total", api_key_id="team1"
    )
    assert grown == tokens
    assert metric(after, "aigw_requests_total") == metric(before, "aigw_requests_total") + 2


def test_a_worker_restarted_while_the_file_holds_a_mistake_serves_like_the_others(
    stack: LocalStack,
) -> None:
    config = stack.workdir / "gateway.yaml"
    good = config.read_text()
    # A file that validates but names a key file nobody can read: the running workers
    # refuse it, and so must the supervisor, whose config restarted workers get.
    config.write_text(
        good.replace(
            "providers:\n",
            "providers:\n  - {name: broken, base_url: 'http://127.0.0.1:1/v1',"
            " api_key_file: /nonexistent/key}\n",
            1,
        )
    )
    try:
        rejected = wait_for(
            lambda: (
                (stack.workdir / "gateway.err").read_text().count("config reload rejected") >= 3
            ),
            timeout_s=30.0,
        )
        assert rejected, "the workers and the supervisor did not all refuse the file"
        victim = worker_pids(stack)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: worker_pids(stack)[0] != victim, timeout_s=30.0)
        ready = wait_for(
            lambda: httpx.get(stack.metrics_url.replace("/metrics", "/readyz")).status_code == 200,
            timeout_s=60.0,
        )
        assert ready
        for _ in range(4):  # both workers answer, the restarted one on the last good config
            assert chat(stack, "team1-key", stream=False)[0] > 0
        assert stack.process("gateway").poll() is None
    finally:
        config.write_text(good)


def test_sigterm_stops_every_worker_and_the_supervisor_cleanly(stack: LocalStack) -> None:
    pids = list(worker_pids(stack).values())
    supervisor = stack.process("gateway")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"worker {pid} still runs"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
