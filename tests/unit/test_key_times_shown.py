"""The key commands write a moment as ``--json`` gives it: UTC, ISO 8601, to the millisecond.

Before, the tables and sentences cut every moment to the second: a rotation's grace (its
moment plus the grace) read as ending up to a second before the ``previous_expires_at``
of ``--json``, and a key typed to expire at ``...:00.5Z`` was shown as expired on the
second while it still worked. Through a real Valkey (the store's clock set), the
management API and the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest

from extproc.auth.stored_keys import StoredKeys
from extproc.config import GatewayConfig
from extproc.management import client as admin_cli
from extproc.management import service as admin_api
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.utc_moments import utc_moment
from tests.unit.test_stored_keys import PREFIX, Api, Clock, client, serve_api

__all__ = ["client"]  # test_stored_keys's fixture
HOUR_S = 3600.0
STORE_NOW = 4_103_683_200.25  # 2100-01-15T08:00:00.250Z


class _ClockModule:
    """What the CLI and the management API read of the ``time`` module: ``clock``'s time."""

    def __init__(self, clock: Clock) -> None:
        self.time = clock


@pytest.fixture
async def api_at(
    config: GatewayConfig, client: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    """The management API of a gateway whose store's clock reads 2100-01-15T08:00:00.250Z,
    the API and the CLI telling a key's status by the same clock. By the real clock, these
    tests failed once their fixed moments had passed: a rotation's grace read as over, and
    a key could no longer be created to expire then."""
    clock = Clock()
    # Ahead of any day the tests run: the store (a real Valkey, on the real clock)
    # forgets a rotated secret's record when its grace ends, so a grace that had ended by
    # the real clock would be listed as none.
    clock.now = STORE_NOW
    monkeypatch.setattr(admin_cli, "time", _ClockModule(clock))
    monkeypatch.setattr(admin_api, "time", _ClockModule(clock))
    keys = StoredKeys(client, PREFIX, clock=clock)
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False), stored_keys=keys))
    async with serve_api(runtime, client, keys) as served:
        yield served


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_an_old_secrets_grace_reads_as_the_moment_json_gives(api_at: Api) -> None:
    await api_at.cli("keys", "create", "--id", "ci-bot")

    code, out, _ = await api_at.cli("keys", "rotate", "--id", "ci-bot", "--grace", "1h")

    assert code == 0
    assert "the old secret works until 2100-01-15T09:00:00.250Z" in out
    code, out, _ = await api_at.cli("keys", "list", "--source", "store", "--json")
    [listed] = orjson.loads(out)
    assert listed["previous_expires_at"] == STORE_NOW + HOUR_S
    code, out, _ = await api_at.cli("keys", "list", "--source", "store")
    assert "active, old secret until 2100-01-15T09:00:00.250Z" in out


async def test_a_fractional_expiry_is_shown_whole_and_a_whole_one_as_before(api_at: Api) -> None:
    code, out, _ = await api_at.cli(
        "keys", "create", "--id", "ci-bot", "--expires", "2131-01-01T00:00:00.5Z", "--json"
    )  # fmt: skip
    assert code == 0
    assert orjson.loads(out)["info"]["expires_at"] == unix("2131-01-01T00:00:00.5+00:00")
    await api_at.cli("keys", "create", "--id", "nightly", "--expires", "2131-01-01T00:00:00Z")

    code, out, _ = await api_at.cli("keys", "list", "--source", "store")

    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["ci-bot"][5] == "2131-01-01T00:00:00.500Z"
    assert rows["nightly"][5] == "2131-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("unix_s", "shown"),
    [
        (1_800_000_000.0, "2027-01-15T08:00:00Z"),
        (1_800_000_000.25, "2027-01-15T08:00:00.250Z"),
        (1_800_000_000.9996, "2027-01-15T08:00:00.999Z"),  # as isoformat cuts microseconds
        (float("inf"), "inf (unix seconds, no date)"),
        (1e20, "1e+20 (unix seconds, no date)"),
    ],
)
def test_a_moment_is_written_in_utc_to_the_millisecond_it_has(unix_s: float, shown: str) -> None:
    assert utc_moment(unix_s) == shown
