"""The management CLI under review: what an operator types that the API cannot carry, and a
usage report asked of a remote gateway from a host without its config.

A number past what the API's int64 fields hold and an argument that is not UTF-8 text
(a byte the shell passed from a file name or a paste) are one line on stderr and exit 2,
never a traceback. ``extproc usage report --api --address ...`` from an operator's
laptop, which has no gateway config, prints the report (docs/chargeback.md's "From
another host" example), as ``extproc quota`` and ``extproc keys`` do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from extproc import cli
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.store.usage import UsageEntry, UsageStore
from tests.unit.usage_api import management_api

TOKEN = "unit-mgmt-review-admin-token"
PREFIX = "mr:"
# Python hands a byte of argv that is not UTF-8 to the program as a lone surrogate.
NOT_UTF8 = "team\udcff"
# Nothing listens here: a command that got as far as calling would say "cannot reach".
NOBODY = f"127.0.0.1:{free_port()}"
SUBJECT = ("--kind", "api_key", "--subject", "team1")
LIMIT = (*SUBJECT, "--rule", "keys-5-rpm", "--counter", "requests_per_minute")


def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """``extproc <argv>`` in this process: its exit code, stdout and stderr."""
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", TOKEN)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["quota", "set", *LIMIT, "--limit", str(2**64)], "limit"),
        (["quota", "adjust", *LIMIT, "--delta", str(-(2**63) - 1)], "delta"),
    ],
    ids=["limit", "delta"],
)
def test_a_number_too_large_to_send_is_a_usage_error_not_a_traceback(
    argv: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run_cli([*argv, "--address", NOBODY], capsys, monkeypatch)

    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert says in err and "out of range" in err
    assert "cannot reach" not in err  # refused before any call


@pytest.mark.parametrize(
    "argv",
    [
        ["quota", "get", "--kind", "api_key", "--subject", NOT_UTF8],
        ["quota", "reset", *SUBJECT, "--rule", NOT_UTF8],
        ["keys", "create", "--id", "k1", "--label", f"team={NOT_UTF8}"],
        ["keys", "create", "--id", "k1", "--model", NOT_UTF8],
        ["keys", "revoke", "--id", NOT_UTF8],
        ["keys", "list", "--address", f"{NOT_UTF8}:9465"],
    ],
    ids=["subject", "rule", "label", "model", "key-id", "address"],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = [] if "--address" in argv else ["--address", NOBODY]
    code, _, err = run_cli([*argv, *address], capsys, monkeypatch)

    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "UTF-8" in err
    assert "cannot reach" not in err


@pytest.fixture
async def remote_gateway(valkey: EmbeddedValkey) -> AsyncIterator[tuple[str, UsageStore]]:
    """A gateway's management API (usage reports) with its store: another host's."""
    async with management_api(valkey.url, TOKEN, PREFIX, 3660) as api:
        yield api


async def test_a_usage_report_through_the_api_needs_no_local_config(
    remote_gateway: tuple[str, UsageStore],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, store = remote_gateway
    moment = datetime(2026, 2, 10, 9, 30, tzinfo=UTC).timestamp()
    dims = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock", "group_id": "sales"}
    await store.record(UsageEntry(moment, dims, 100, 20, cost_picousd=5))
    # The operator's laptop: no config/gateway.yaml in the working directory.
    monkeypatch.chdir(tmp_path)
    argv = ["usage", "report", "--api", "--address", address, "--month", "2026-02",
            "--by", "group", "--format", "json"]  # fmt: skip

    # The CLI's channel is synchronous: it runs beside the server's event loop.
    code, out, err = await asyncio.to_thread(run_cli, argv, capsys, monkeypatch)

    assert (code, err) == (0, "")
    report = orjson.loads(out)
    assert [(row["group_id"], row["requests"]) for row in report["rows"]] == [("sales", 1)]
