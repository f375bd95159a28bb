"""A billing team's month-end run against a real gateway: a group whose name holds a comma,
quotes and a line break is billed under exactly that name in the CSV export, read from the
store and through the management API alike; the totals equal the log lines to the
picodollar; and periods the rollups cannot answer are refused with a reason, never a crash.
"""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from tests.integration.conftest import (
    GatewayLog,
    config_with_admin_token,
    run_cli,
    running_stack,
    wait_for,
)

ADMIN_TOKEN = "chargeback-review-admin-token"
GROUP = 'Sales, "EMEA"\nWest'
GROUP_KEY = "emea-billing-secret"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "bill me"}]


@pytest.fixture(scope="module")
def billing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("billing")
    config = config_with_admin_token(workdir, ADMIN_TOKEN)
    # A group of the config's (or an identity provider's): the management API refuses one
    # with a control character, the config and a JWT's claims can still name it.
    key = f"    - {{id: emea-bot, key: {GROUP_KEY}, group_id: {orjson.dumps(GROUP).decode()}}}\n"
    text = config.read_text()
    config.write_text(text.replace("  api_keys:\n", "  api_keys:\n" + key, 1))
    with running_stack(workdir, config) as running:
        yield running


def usage(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`extproc usage ...` as the billing team runs it, with the stack's config."""
    return run_cli(stack, "usage", *args, admin_token=ADMIN_TOKEN)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_an_odd_group_name_is_billed_under_its_exact_name(billing_stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{billing_stack.base_url}/v1", api_key=GROUP_KEY, max_retries=0)
    request_ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        request_ids.append(raw.headers["x-request-id"])
    log = GatewayLog(billing_stack.gateway_log)
    lines = [log.for_request(request_id)[0] for request_id in request_ids]
    assert {line["group_id"] for line in lines} == {GROUP}
    billed = sum(Decimal(str(line["cost_usd"])) for line in lines)
    assert billed > 0

    def group_row(*source: str) -> dict[str, str] | None:
        done = usage(billing_stack, "export", "--day", today(), "--by", "group", *source)
        assert done.returncode == 0, done.stderr
        rows = {row["group_id"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
        row = rows.get(GROUP)
        return row if row is not None and row["requests"] == "2" else None

    # The rollups land with the next flush (0.5 s).
    from_store = wait_for(group_row)
    assert from_store is not None
    assert Decimal(from_store["cost_usd"]) == billed
    assert int(from_store["prompt_tokens"]) == sum(line["prompt_tokens"] for line in lines)
    assert group_row("--api") == from_store

    report = usage(billing_stack, "report", "--day", today(), "--by", "group,model", "--format",
                   "json")  # fmt: skip
    document = orjson.loads(report.stdout)
    assert sum(Decimal(row["cost_usd"]) for row in document["rows"]) == Decimal(
        document["totals"]["cost_usd"]
    )


REFUSED = [
    (("--day", "9999-12-31"), {"day": "9999-12-31"}, "years 1 to 9999"),
    (
        ("--from", "0001-01-01T00:00:00Z", "--to", "9999-12-31T00:00:00Z"),
        {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"},
        "at most 3660 days",
    ),
    (
        ("--from", "2026-03-02T00:00:00Z", "--to", "2026-03-01T00:00:00Z"),
        {"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        "before its end",
    ),
    (
        ("--from", "2026-10-25T02:00", "--to", "2026-10-26T00:00", "--time-zone", "Europe/Berlin"),
        {"start": "2026-10-25T02:00", "end": "2026-10-26T00:00", "time_zone": "Europe/Berlin"},
        "happens twice",
    ),
    (("--from", "yesterday"), {"start": "yesterday"}, "not an ISO 8601"),
]


@pytest.mark.parametrize(("cli", "api", "reason"), REFUSED)
def test_a_period_the_rollups_cannot_answer_is_refused_with_its_reason(
    billing_stack: LocalStack, cli: tuple[str, ...], api: dict[str, str], reason: str
) -> None:
    # Through the gateway's management API, as another host would ask ...
    address = f"127.0.0.1:{billing_stack.ports.management}"
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.UsageReportsStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetUsageReport(
                pb.UsageReportRequest(**api),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
                timeout=30,
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (refused.value.details() or "")
    # ... and with the CLI: one line, exit 2, no traceback.
    done = usage(billing_stack, "report", *cli)
    assert done.returncode == 2
    assert reason in done.stderr and "Traceback" not in done.stderr
