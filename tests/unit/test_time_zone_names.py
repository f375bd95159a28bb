"""Time zones an operator may write for calendar quotas and reports: one name, one calendar.

``localtime`` opened as the host's own zone: gateway replicas on hosts in different zones
counted one quota window key (``cd:<day>@localtime``) over days that begin at different
hours, and `extproc usage report --api --time-zone localtime` checked the laptop's day and
summed the gateway host's. An offset written as a zone (``UTC+2``) was "unknown" with no
word of the name that has it, whose sign POSIX inverts."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.cli import main
from extproc.config import ConfigError, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.windows import WindowKind, window_for
from extproc.runtime import Runtime, Services
from extproc.store.usage import UsageStore
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.test_usage_report_expiry_api import ask
from tests.unit.test_usage_report_finance import management, store_url

__all__ = ["management", "store_url"]

QUOTAS = """
quotas:
  time_zone: %s
  rules:
    - {name: sales-monthly, subject: group, token_quota: {limit: 100, period: calendar_month}}
    - {name: ops-daily, subject: group,
       token_quota: {limit: 100, period: calendar_day, time_zone: %s}}
"""


def config_problems(zone: str, rule_zone: str) -> list[str]:
    text = DEFAULT_CONFIG.read_text() + QUOTAS % (zone, rule_zone)
    config = parse_config(text, "gateway.yaml", {})
    with pytest.raises(ConfigError) as refused:
        Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    return refused.value.problems


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory"])
def test_a_quota_zone_of_the_host_is_refused_naming_its_field(name: str) -> None:
    [problem] = config_problems("UTC", name)
    assert problem.startswith(
        f"quotas: rules[1].token_quota.time_zone (rule 'ops-daily'): time zone {name!r} is"
    )
    assert "use an IANA name such as 'UTC' or 'Europe/Berlin'" in problem

    [problem] = config_problems(name, "Europe/Paris")
    assert problem.startswith(f"quotas: time_zone: time zone {name!r} is")


def test_an_offset_written_as_a_quota_zone_is_refused_with_the_zone_that_has_it() -> None:
    [problem] = config_problems("UTC+2", "Europe/Paris")
    assert problem.startswith("quotas: time_zone: unknown time zone 'UTC+2'")
    assert "use 'Etc/GMT-2' for a fixed UTC+2" in problem


def test_an_empty_default_quota_zone_is_refused_naming_its_field() -> None:
    [problem] = config_problems("''", "Europe/Paris")
    assert problem.startswith("quotas: time_zone: unknown time zone '' (empty)")


@pytest.mark.parametrize(
    ("zone", "hint"),
    [
        ("localtime", "is the zone of whichever host reads it"),
        ("LOCALTIME", "is the zone of whichever host reads it"),
        ("UTC+2", "use 'Etc/GMT-2' for a fixed UTC+2"),
        ("GMT-05:00", "use 'Etc/GMT+5' for a fixed UTC-5"),
        ("UTC+05:30", "such as 'Asia/Kolkata' for +05:30"),
        ("", "unknown time zone '' (empty)"),
    ],
)
def test_a_report_in_such_a_zone_is_one_line_of_error_and_exit_2(
    zone: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["usage", "report", "--day", "2026-03-10", "--time-zone", zone])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and hint in line


async def test_the_management_api_refuses_localtime_as_invalid_argument(
    management: tuple[str, UsageStore],
) -> None:
    address, _ = management
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ask(address, pb.UsageReportRequest(day="2026-03-10", time_zone="localtime"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'localtime' is the zone of whichever host reads it" in (refused.value.details() or "")


def test_etc_gmt_plus_five_is_five_hours_behind_utc_in_reports_and_quotas() -> None:
    # The documented meaning of an Etc/GMT zone: POSIX's sign, so +5 is UTC-5, its day
    # from 05:00 UTC to 05:00 UTC, in a report's --day and a quota's calendar day alike.
    period = resolve_period(day="2026-03-10", zone_name="Etc/GMT+5")
    assert period.start == datetime(2026, 3, 10, 5, tzinfo=UTC)
    assert period.end == datetime(2026, 3, 11, 5, tzinfo=UTC)

    now = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
    window = window_for(WindowKind.CALENDAR_DAY, now, "Etc/GMT+5")
    assert (window.start, window.end) == (period.start.timestamp(), period.end.timestamp())
    assert window.key == "cd:2026-03-10@Etc/GMT+5"


def test_a_report_zone_is_still_read_in_any_case() -> None:
    assert resolve_period(day="2026-03-10", zone_name="europe/berlin").start == datetime(
        2026, 3, 9, 23, tzinfo=UTC
    )
    with pytest.raises(PeriodError, match="unknown time zone 'Mars/Olympus'"):
        resolve_period(day="2026-03-10", zone_name="Mars/Olympus")
