"""Where the admin CLI takes its token: ``--token-file``, ``--token`` (warned) or the environment.

Before, the only alternative to ``AIGW_ADMIN_TOKEN`` was ``--token``, which puts the
admin token in the command line: every user of the host reads it in the process list
while the command runs, and shell history keeps it, with no word of warning.
``--token-file PATH`` reads it from a file (its line end dropped); a file that gives no
token is one line naming the path and why, exit 2, never what the file holds; and
``--token`` still works, with a warning on stderr. Through the real management API and
store (``keys`` and ``quota``) and a real usage report over the API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.management.admin_token import ENVIRONMENT
from extproc.store.usage import UsageStore
from tests.unit.admin_cli import run_cli
from tests.unit.test_stored_keys import ADMIN, Api, api, client, keys
from tests.unit.test_usage_report_finance import TOKEN as USAGE_TOKEN
from tests.unit.test_usage_report_finance import management

# test_stored_keys's fixtures (the keys' API), and the usage reports' API
__all__ = ["api", "client", "keys", "management"]
WARNING = "warning: --token puts the admin token on the command line"


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)


async def test_a_token_file_is_read_and_its_line_end_dropped(api: Api, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(f"  {ADMIN}\r\n".encode())

    code, out, err = await run_cli(
        "keys", "create", "--id", "ci-bot", "--address", api.address,
        "--token-file", str(token_file), "--json",
    )  # fmt: skip

    assert code == 0, err
    assert orjson.loads(out)["info"]["id"] == "ci-bot"
    assert "warning" not in err
    [audit] = api.audit_lines()
    assert (audit["action"], audit["caller"]) == ("create_key", "ops")


async def test_a_token_on_the_command_line_works_with_a_warning(api: Api) -> None:
    code, out, err = await run_cli("keys", "list", "--address", api.address, "--token", ADMIN)

    assert code == 0, err
    assert "team1" in out
    [line] = err.splitlines()
    assert line.startswith(WARNING) and "--token-file" in line and ADMIN not in line


async def test_the_environment_is_read_without_a_warning(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVIRONMENT, ADMIN)

    code, out, err = await run_cli("keys", "list", "--address", api.address)

    assert (code, err) == (0, "")
    assert "team1" in out


def unreadable(tmp_path: Path) -> Path:
    path = tmp_path / "unreadable"
    path.write_text("secret-token-never-shown\n")
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (
            lambda tmp: tmp / "missing",
            "cannot read the admin token file {path}: No such file or directory",
        ),
        (lambda tmp: tmp, "cannot read the admin token file {path}: Is a directory"),
        (
            lambda tmp: (tmp / "empty").write_text(" \r\n\n") and tmp / "empty",
            "the admin token file {path} is empty",
        ),
        (
            lambda tmp: (
                (tmp / "binary").write_bytes(b"\xff\xfesecret-token-never-shown") and tmp / "binary"
            ),
            "the admin token file {path} is not text",
        ),
        (
            lambda tmp: (
                (tmp / "big").write_text("secret-token-never-shown" * 10_000) and tmp / "big"
            ),
            "the admin token file {path} is larger than 65536 bytes",
        ),
    ],
    ids=["missing", "directory", "empty", "binary", "huge"],
)
async def test_a_token_file_that_gives_no_token_is_one_line_naming_the_path(
    api: Api, tmp_path: Path, make: Any, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file is asked for: the environment's token is not used in its place.
    monkeypatch.setenv(ENVIRONMENT, ADMIN)
    path = make(tmp_path)

    code, out, err = await run_cli(
        "keys", "create", "--id", "ci-bot", "--address", api.address, "--token-file", str(path)
    )

    assert (code, out) == (2, "")
    assert err.startswith(f"error: {said.format(path=path)}")
    assert len(err.splitlines()) == 1 and "secret-token-never-shown" not in err
    assert api.audit_lines() == []  # nothing was asked of the API


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
async def test_a_token_file_this_user_cannot_read_is_named_with_the_reason(
    api: Api, tmp_path: Path
) -> None:
    path = unreadable(tmp_path)

    code, out, err = await run_cli(
        "keys", "list", "--address", api.address, "--token-file", str(path)
    )

    assert (code, out) == (2, "")
    assert err == f"error: cannot read the admin token file {path}: Permission denied\n"


async def test_a_token_file_of_two_lines_is_refused_naming_the_file(
    api: Api, tmp_path: Path
) -> None:
    path = tmp_path / "two-lines"
    path.write_text(f"{ADMIN}\nsecond-line-never-shown\n")

    code, out, err = await run_cli(
        "keys", "list", "--address", api.address, "--token-file", str(path)
    )

    assert (code, out) == (2, "")
    assert "holds a character gRPC cannot send" in err and f"check --token-file {path}" in err
    assert "second-line-never-shown" not in err


@pytest.mark.parametrize("command", [["keys", "list"], ["usage", "report", "--api"]])
async def test_token_and_token_file_together_are_refused(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "token"
    path.write_text(ADMIN)

    code, out, err = await run_cli(
        *command, "--address", "127.0.0.1:1", "--token", "x", "--token-file", str(path)
    )

    assert (code, out) == (2, "")
    assert "argument --token-file: not allowed with argument --token" in err


async def test_no_token_anywhere_names_every_way_to_give_one() -> None:
    code, out, err = await run_cli("keys", "list", "--address", "127.0.0.1:1")

    assert (code, out) == (2, "")
    assert err == (
        "error: no admin token: pass --token-file PATH, set AIGW_ADMIN_TOKEN, or pass --token\n"
    )


async def test_a_usage_report_through_the_api_takes_a_token_file(
    management: tuple[str, UsageStore], tmp_path: Path
) -> None:
    address, _ = management
    path = tmp_path / "token"
    path.write_text(f"{USAGE_TOKEN}\n")

    code, out, err = await run_cli(
        "usage", "report", "--api", "--address", address, "--token-file", str(path),
        "--format", "json",
    )  # fmt: skip

    assert (code, err) == (0, "")
    assert isinstance(orjson.loads(out), dict | list)
    code, out, err = await run_cli(
        "usage", "report", "--api", "--address", address, "--token", USAGE_TOKEN
    )
    assert code == 0 and err.startswith(WARNING)
    code, out, err = await run_cli(
        "usage", "report", "--api", "--address", address, "--token-file", str(tmp_path / "no")
    )
    assert (code, out) == (2, "")
    assert (
        err
        == f"error: cannot read the admin token file {tmp_path / 'no'}: No such file or directory\n"
    )
