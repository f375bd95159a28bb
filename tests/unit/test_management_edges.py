"""The management CLI and usage reports at their edges, as an operator meets them: a
store the CLI cannot start, flags of the management API given without ``--api``, a
``--to`` alone across a DST change, and a diagnostic log level that does not exist.

Each is one line on stderr and exit 2 (never a traceback), or the period the docs
promise (``--to`` alone: the 24 hours before it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from extproc.chargeback.period import resolve_period
from extproc.cli import main
from extproc.store import embedded
from extproc.store.embedded import EmbeddedStartError, free_port
from extproc.store.usage import UsageEntry, UsageStore
from tests.unit.test_usage_report_finance import TOKEN as FINANCE_TOKEN
from tests.unit.test_usage_report_finance import management, store_url, write_entries

# The fixtures pointing config/gateway.yaml's store at the test Valkey, and a gateway's
# management API over it (its admin token FINANCE_TOKEN).
__all__ = ["management", "store_url"]

REPOSITORY = Path(__file__).resolve().parents[2]
# Nothing listens here: a command that called it would say "cannot reach".
NOBODY = f"127.0.0.1:{free_port()}"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``extproc <argv>`` in this process: its exit status, stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# -- a report whose embedded store cannot be started -----------------------------------------


@pytest.fixture
def unusable_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """config/gateway.yaml with no store.url and a data dir that cannot be made (under a
    file): what an operator meets running the report as another user than the gateway's,
    whose data dir they cannot write (no lock file, no AOF)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("EXTPROC_DATA_DIR", str(blocker / "valkey"))
    return blocker / "valkey"


@pytest.mark.parametrize("command", ["report", "export"])
def test_a_data_dir_the_report_cannot_use_is_one_line_and_exit_2(
    command: str, unusable_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["usage", command, "--by", "group"], capsys)

    assert code == 2
    assert out == ""
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert str(unusable_data_dir) in err and "Not a directory" in err
    assert "--api" in err  # what else the operator can do


def test_an_embedded_store_that_does_not_start_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("EXTPROC_DATA_DIR", str(tmp_path / "valkey"))

    def exits(data_dir: Path, port: int) -> None:
        raise EmbeddedStartError("the embedded Valkey exited with 1 while starting")

    monkeypatch.setattr(embedded, "_launch", exits)

    code, out, err = run(["usage", "report"], capsys)

    assert code == 2
    assert out == ""
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "exited with 1 while starting" in err
    # The lock on the data dir is given back: a gateway can start there afterwards.
    os.close(embedded._lock(tmp_path / "valkey"))


# -- management API flags without --api -------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [["--address", NOBODY], ["--token", "some-admin-token"], ["--timeout", "5"]],
    ids=["address", "token", "timeout"],
)
def test_a_report_given_the_apis_flags_without_api_does_not_read_the_local_store(
    flags: list[str], store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--address gateway.internal:9465` without `--api` was ignored: the report came from
    # the store of the local config, a bill of another gateway's usage (or of none).
    started = datetime.now(UTC) - timedelta(minutes=5)
    local = UsageEntry(started.timestamp(), {"group_id": "local-team"}, 10, 5)
    asyncio.run(write_entries(store_url, [local]))

    code, out, err = run(["usage", "report", "--by", "group", *flags], capsys)

    assert code == 2
    assert out == ""  # nothing from the local store
    assert err.startswith(f"error: {flags[0]} names a gateway's management API: add --api")
    assert "some-admin-token" not in err


def test_two_of_the_apis_flags_without_api_are_named_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["usage", "report", "--address", NOBODY, "--token", "t"], capsys)

    assert code == 2
    assert out == ""
    assert err.startswith("error: --address and --token name a gateway's management API")


def test_the_apis_flags_with_api_still_ask_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["usage", "report", "--api", "--address", NOBODY, "--token", "t", "--timeout", "2"],
        capsys,
    )

    assert code == 2
    assert out == ""
    assert f"cannot reach the management API at {NOBODY}" in err


# -- --to alone across a DST change -----------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "start"),
    [
        # The day after the clocks went forward: a day back on the wall clock is 23 hours.
        ("2026-03-30T00:00", datetime(2026, 3, 28, 22, tzinfo=UTC)),
        # The day after they went back, from a time of the day after: 25 hours.
        ("2026-10-26T02:00", datetime(2026, 10, 25, 1, tzinfo=UTC)),
        # A day back from this falls in the hour the clocks skip (02:00 on 03-29).
        ("2026-03-30T02:00", datetime(2026, 3, 29, 0, tzinfo=UTC)),
    ],
    ids=["spring", "autumn", "into-the-gap"],
)
def test_a_to_alone_in_a_zone_is_the_24_hours_before_it(end: str, start: datetime) -> None:
    period = resolve_period(end=end, zone_name="Europe/Berlin")

    assert period.start == start
    assert period.hours == 24


def test_a_to_alone_in_utc_is_still_the_24_hours_before_it() -> None:
    period = resolve_period(end="2026-11-02T00:00:00Z")

    assert (period.start, period.hours) == (datetime(2026, 11, 1, tzinfo=UTC), 24)


# -- the diagnostic log level -----------------------------------------------------------------


def extproc(*argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process of its own: logging is set up once a process, and pytest's
    own set-up would hide what a level the CLI cannot use does there."""
    environ = {**os.environ, "AIGW_ADMIN_TOKEN": "t"}
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *argv],
        capture_output=True, text=True, env=environ, cwd=REPOSITORY, timeout=60, check=False,
    )  # fmt: skip


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    done = extproc("--log-level", "verbose", "keys", "list", "--address", NOBODY)

    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "--log-level" in done.stderr and "'verbose'" in done.stderr
    assert "DEBUG" in done.stderr  # the levels it takes


@pytest.mark.parametrize("level", ["debug", "WARNING", "Error"])
def test_known_log_levels_are_taken_in_any_case(level: str) -> None:
    done = extproc("--log-level", level, "keys", "list", "--address", NOBODY, "--timeout", "2")

    assert done.returncode == 2  # nobody answers there: the command itself ran
    assert f"cannot reach the management API at {NOBODY}" in done.stderr


# -- an admin token read from a file with a Windows line end -----------------------------------


async def test_a_token_with_the_line_end_of_its_file_is_the_token_the_gateway_reads(
    management: tuple[str, UsageStore],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `export AIGW_ADMIN_TOKEN="$(cat token)"` keeps the "\r" of a file with CRLF line ends
    # (the shell strips only "\n"). The gateway reads its token_file stripped, so the
    # same file worked there, while the CLI refused the token as unsendable.
    address, _ = management
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", f"{FINANCE_TOKEN}\r")

    code = await asyncio.to_thread(
        main, ["usage", "report", "--api", "--address", address, "--format", "json"]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert '"totals"' in captured.out


def test_a_blank_token_is_refused_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["keys", "list", "--address", NOBODY, "--token", " \r "], capsys)

    assert code == 2
    assert out == ""
    assert "admin token is blank" in err and "cannot reach" not in err
