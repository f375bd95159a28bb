"""Chargeback with real data: requests of keys whose ids, users and groups hold colons,
unicode, commas, quotes, tabs and line breaks go through the real Envoy, gateway, Valkey
and mock provider; then the log lines, the /metrics counters and every way of reading the
rollups (the report by each dimension, the CSV and JSON exports, the management API) bill
the same money to the same team, over periods named in zones a half or three quarters of
an hour off UTC, with the end of a period left out."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    running_stack,
    scrape,
    wait_for,
    write_config,
)

ADMIN_TOKEN = "chargeback-review-admin"
LONG_ID = "k" + "x" * 127  # the longest id a key may have
# id -> (secret, user, group): what a finance team sees in its columns.
KEYS: dict[str, tuple[str, str | None, str | None]] = {
    "team:eng:svc-1": ("review-secret-1", "zoë@例え.jp", 'Sales, "EMEA"'),
    LONG_ID: ("review-secret-2", "tab\there", "multi\nline\rgroup"),
    "plain": ("review-secret-3", None, None),
}
# model -> how many requests each key sends; claude-review-unpriced has no price.
MODELS = {"gpt-4o-mini": 3, "gpt-4o": 2, "claude-review-unpriced": 1}


def _config(stack_dir: Any) -> Any:
    raw = default_config()
    raw["auth"]["api_keys"] = [
        {"id": key_id, "key": secret, **({"user_id": user} if user else {}),
         **({"group_id": group} if group else {})}
        for key_id, (secret, user, group) in KEYS.items()
    ]  # fmt: skip
    raw["management"]["admin_tokens"] = [{"id": "finance", "token": ADMIN_TOKEN}]
    return write_config(stack_dir, raw)


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, list[Any]]]:
    """A stack that served every key's requests, and the log lines of those requests."""
    workdir = tmp_path_factory.mktemp("chargeback-review")
    with running_stack(workdir, _config(workdir)) as stack:
        log = GatewayLog(stack.gateway_log)
        sent = 0
        with httpx.Client(base_url=stack.base_url, timeout=30.0) as client:
            for secret, _, _ in KEYS.values():
                for model, count in MODELS.items():
                    for index in range(count):
                        prompt = f"bill me {index} " * (index + 1)
                        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
                        answer = client.post(
                            "/v1/chat/completions",
                            json=body,
                            headers={"authorization": f"Bearer {secret}"},
                        )
                        assert answer.status_code == 200, answer.text
                        sent += 1
        lines = wait_for(lambda: len(found := log.lines()) >= sent and found, 30)
        yield stack, lines


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "extproc", "usage", *args, "--config", str(stack.config_path)]
    env = {**stack.env, "AIGW_ADMIN_TOKEN": ADMIN_TOKEN}
    # Bytes, decoded as they are: text mode would turn a CSV value's "\r" into "\n".
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def report(stack: LocalStack, *args: str) -> dict[str, Any]:
    done = cli(stack, "report", "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = orjson.loads(done.stdout)
    return document


def served_hours(lines: list[Any]) -> tuple[datetime, datetime]:
    """The first whole hour the requests started in, and the hour after the last."""
    moments = [datetime.fromisoformat(line["timestamp"]) for line in lines]
    first = min(moments).replace(minute=0, second=0, microsecond=0)
    return first, max(moments).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def log_sums(lines: list[Any], *names: str) -> dict[tuple[str | None, ...], dict[str, Any]]:
    sums: dict[tuple[str | None, ...], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0),
                 "unpriced_requests": 0}
    )  # fmt: skip
    for line in lines:
        if line["provider"] is None or line["error_type"] is not None:
            continue
        # A missing identity reads null in the JSON report (and "(none)" in CSV).
        found = sums[tuple(line[name] or None for name in names)]
        found["requests"] += 1
        found["prompt_tokens"] += line["prompt_tokens"]
        found["completion_tokens"] += line["completion_tokens"]
        found["cost"] += Decimal(str(line["cost_usd"]))
        found["unpriced_requests"] += 0 if line["cost_priced"] else 1
    return sums


def rows_by(document: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(row[name] for name in document["group_by"]): row for row in document["rows"]}


def test_every_grouping_bills_what_the_log_lines_add_up_to(
    billed: tuple[LocalStack, list[Any]],
) -> None:
    stack, lines = billed
    start, end = served_hours(lines)
    period = ("--from", start.isoformat(), "--to", end.isoformat())
    groupings = {
        "api_key,user,group,model": ("api_key_id", "user_id", "group_id", "model"),
        "group": ("group_id",),
        "user": ("user_id",),
        "model": ("model",),
        "provider": ("provider",),
        "route": ("route",),
    }
    every_request = sum(MODELS.values()) * len(KEYS)
    wait_for(lambda: report(stack, *period, "--by", "model")["totals"]["requests"] >= every_request)
    for by, names in groupings.items():
        expected = log_sums(lines, *names)
        document = report(stack, *period, "--by", by)
        found = rows_by(document)
        assert set(found) == set(expected), by
        for key, sums in expected.items():
            row = found[key]
            assert Decimal(row["cost_usd"]) == sums["cost"], (by, key)
            assert {name: row[name] for name in sums if name != "cost"} == {
                name: value for name, value in sums.items() if name != "cost"
            }, (by, key)
        # The totals are the rows' exact sums, and the API says the very same.
        assert Decimal(document["totals"]["cost_usd"]) == sum(
            (Decimal(row["cost_usd"]) for row in document["rows"]), Decimal(0)
        )
        assert report(stack, *period, "--by", by, "--api") == document, by
    # The identities come back as the gateway saw them.
    users = {key[0] for key in log_sums(lines, "user_id")}
    assert users == {"zoë@例え.jp", "tab\there", None}
    unpriced = log_sums(lines, "model")[("claude-review-unpriced",)]
    assert unpriced["unpriced_requests"] == unpriced["requests"] == len(KEYS)


def test_the_counters_and_the_csv_export_bill_each_group_the_same(
    billed: tuple[LocalStack, list[Any]],
) -> None:
    stack, lines = billed
    start, end = served_hours(lines)
    expected = log_sums(lines, "group_id")
    done = cli(stack, "export", "--by", "group", "--from", start.isoformat(),
               "--to", end.isoformat())  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    exported = {row["group_id"]: row for row in rows}
    # A missing group is written "(none)", never an empty cell a pivot table would merge.
    assert set(exported) == {key[0] or "(none)" for key in expected}
    samples = scrape(stack.metrics_url)
    for (group,), sums in expected.items():
        cell = exported[group or "(none)"]
        assert Decimal(cell["cost_usd"]) == sums["cost"], group
        assert int(cell["requests"]) == sums["requests"], group
        # Each series (key, user, group, model, provider) holds its exact sum; added as
        # decimals, they are the group's.
        counted = sum(
            (Decimal(repr(value)) for (name, pairs), value in samples.items()
             if name == "aigw_cost_usd_total" and ("group_id", group or "") in pairs),
            Decimal(0),
        )  # fmt: skip
        assert counted == sums["cost"], group


@pytest.mark.parametrize(("zone", "offset"), [("Asia/Kolkata", 330), ("Asia/Kathmandu", 345)])
def test_periods_named_in_zones_off_the_utc_hour_bill_whole_utc_hours(
    billed: tuple[LocalStack, list[Any]], zone: str, offset: int
) -> None:
    stack, lines = billed
    start, end = served_hours(lines)
    local = ZoneInfo(zone)
    wall_start = start.astimezone(local).replace(tzinfo=None).isoformat()
    wall_end = end.astimezone(local).replace(tzinfo=None).isoformat()
    assert start.astimezone(local).utcoffset() == timedelta(minutes=offset)
    every = report(stack, "--from", start.isoformat(), "--to", end.isoformat(), "--by", "group")

    # Local wall times that are whole UTC hours: the same hours, the same bill.
    named = report(stack, "--from", wall_start, "--to", wall_end, "--time-zone", zone,
                   "--by", "group")  # fmt: skip
    assert named["rows"] == every["rows"]
    assert (named["from"], named["to"]) == (start.isoformat(), end.isoformat())
    # The end is left out: a period ending where the requests began holds none of them.
    before = report(stack, "--to", wall_start, "--time-zone", zone, "--by", "group")
    assert before["rows"] == [] and before["totals"]["cost_usd"] == "0.00"
    # Today in that zone starts off the UTC hour: refused with the reason, never rounded.
    today = datetime.now(UTC).astimezone(local).date().isoformat()
    refused = cli(stack, "report", "--day", today, "--time-zone", zone)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "is not a whole UTC hour" in refused.stderr
    assert "falls within it" in refused.stderr
