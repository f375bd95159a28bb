"""The gateway's CLI and config as an operator meets them in production, at their edges.

An admin token no gRPC client can send (an accented letter, a line break inside a
token file) is refused at load, naming its field and never its value, instead of
loading and leaving the management API refusing every call. ``serve`` on a data dir
the embedded Valkey cannot use (a read-only root filesystem) says so in one line
with exit 2. A YAML alias inside the anchor it names, or a file nested a hundred
levels deep, is a config mistake named by its path, for ``check-config`` and for a
reload alike. ``render-envoy -o`` to a path that cannot be written is one line and
exit 2. None of them is a traceback. A header subject pasted with spaces around it
addresses the subject requests count.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extproc.cli import main
from extproc.config import GatewayConfig, parse_config
from extproc.config.reload import ConfigReloader
from extproc.context import Identity
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.service import AdminTokens
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.store import Denial, Reservation
from extproc.server import Gateway
from extproc.store import embedded
from extproc.store.embedded import EmbeddedStartError, EmbeddedValkey, free_port
from tests.unit.test_management import TOKEN, Api, early_in_the_minute, running_api

ADMIN_TOKEN_LINE = "      token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``extproc <argv>`` in this process: its exit status, stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- admin tokens no client can send --------------------------------------------------------


@pytest.mark.parametrize("token", ["pässwört-of-the-ops-team", "ops-token\twith-a-tab"])
def test_an_inline_admin_token_no_client_can_send_is_refused_at_load(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # gRPC metadata carries printable ASCII only: this token loaded, and every call of
    # the CLI (or grpcurl) was refused before it left the client.
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", token)

    code, out, err = run(["check-config", "-c", str(DEFAULT_CONFIG)], capsys)

    assert code == 2
    assert out == ""
    assert "management.admin_tokens[0]: token holds a character no gRPC client can send" in err
    assert token not in err and "Traceback" not in err


def test_a_token_file_holding_two_lines_is_refused_naming_the_file_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Secret written with two lines (the token, then a comment or a second token):
    # spaces and line ends around it are dropped, the line break inside it stays.
    token_file = tmp_path / "admin-token"
    token_file.write_text("first-admin-token\nsecond-line\n")
    text = DEFAULT_CONFIG.read_text().replace(ADMIN_TOKEN_LINE, f"      token_file: {token_file}")

    code, out, err = run(["check-config", "-c", str(config_file(tmp_path, text))], capsys)

    assert code == 2
    assert out == ""
    assert "management.admin_tokens[0] (ops).token_file: the token holds a character" in err
    assert "first-admin-token" not in err and "second-line" not in err


async def test_a_rotated_token_file_no_client_can_send_is_refused_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = Gateway(parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {}), None)
    token_file = tmp_path / "admin-token"
    token_file.write_text("rotated-tökén\n")
    text = DEFAULT_CONFIG.read_text().replace(ADMIN_TOKEN_LINE, f"      token_file: {token_file}")
    try:
        await gateway.apply(parse_config(text, "gateway.yaml", {}))

        # The token the rotation replaced is not in force (nor is the unsendable one):
        # the warning says which field to mend, never the token.
        tokens = AdminTokens(gateway.config.management, reloaded=True)
        assert tokens.caller([("authorization", "Bearer dev-admin-token")]) is None
        assert "token_file: the token holds a character no gRPC client can send" in caplog.text
        assert "tökén" not in caplog.text
    finally:
        await gateway.runtime.close()


def test_a_token_with_a_space_inside_still_loads() -> None:
    # Printable ASCII, so sendable: `authorization: Bearer two words` carries it whole.
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {"AIGW_ADMIN_TOKEN": "a b"})

    assert config.management.admin_tokens[0].token is not None


# -- serve on a data dir the embedded Valkey cannot use --------------------------------------


@pytest.fixture
def own_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """config/gateway.yaml's listeners on ports of this test, its store embedded."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name in ("EXTPROC_GRPC_ADDRESS", "EXTPROC_HTTP_ADDRESS", "EXTPROC_MANAGEMENT_ADDRESS"):
        monkeypatch.setenv(name, f"127.0.0.1:{free_port()}")


def test_serve_on_a_data_dir_it_cannot_make_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    own_ports: None,
) -> None:
    # A container with a read-only root filesystem and no volume at the data dir.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("EXTPROC_DATA_DIR", str(blocker / "valkey"))
    monkeypatch.setenv("EXTPROC_SPOOL_DIR", str(tmp_path / "spool"))

    code, out, err = run(["serve", "-c", str(DEFAULT_CONFIG)], capsys)

    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "embedded Valkey" in line]
    assert str(blocker / "valkey") in line and "Not a directory" in line
    assert "store.data_dir" in line and "store.url" in line


def test_serve_whose_embedded_valkey_does_not_start_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    own_ports: None,
) -> None:
    monkeypatch.setenv("EXTPROC_DATA_DIR", str(tmp_path / "valkey"))
    monkeypatch.setenv("EXTPROC_SPOOL_DIR", str(tmp_path / "spool"))

    def exits(data_dir: Path, port: int) -> None:
        raise EmbeddedStartError("the embedded Valkey exited with 1 while starting")

    monkeypatch.setattr(embedded, "_launch", exits)

    code, out, err = run(["serve", "-c", str(DEFAULT_CONFIG)], capsys)

    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert "exited with 1 while starting" in err and "store.url" in err


# -- YAML that never ends -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("x-loop: &loop [*loop]\n", "x-loop[0]: an alias (*name) inside the anchor it names"),
        ("x-loop: &loop {again: *loop}\n", "x-loop.again: an alias (*name) inside the anchor"),
        ("x-deep: " + "[" * 300 + "]" * 300 + "\n", "nested more than 64 levels deep"),
    ],
    ids=["list-alias", "mapping-alias", "nested-300-deep"],
)
def test_yaml_without_end_is_a_config_error_naming_its_path(
    tail: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, DEFAULT_CONFIG.read_text() + tail)

    code, out, err = run(["check-config", "-c", str(path)], capsys)

    assert code == 2
    assert out == ""
    assert problem in err
    assert "Traceback" not in err and "RecursionError" not in err


def test_an_alias_used_twice_is_no_loop() -> None:
    text = DEFAULT_CONFIG.read_text() + (
        "quotas:\n"
        "  rules:\n"
        "    - &per-minute {name: a, subject: group, requests_per_minute: 5}\n"
        "    - {<<: *per-minute, name: b}\n"
    )
    config = parse_config(text, "gateway.yaml", {})

    assert [rule.name for rule in config.quotas.rules] == ["a", "b"]


async def test_a_reload_of_yaml_without_end_is_refused_as_a_config_mistake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(tmp_path, DEFAULT_CONFIG.read_text())
    applied: list[GatewayConfig] = []
    results: list[bool] = []

    async def apply(config: GatewayConfig) -> None:
        applied.append(config)

    reloader = ConfigReloader(path, apply, results.append)
    path.write_text(DEFAULT_CONFIG.read_text() + "x-loop: &loop [*loop]\n", encoding="utf-8")

    with caplog.at_level(logging.ERROR, logger="extproc.config.reload"):
        assert await reloader.reload() is False

    assert applied == [] and results == [False]
    [record] = caplog.records
    # Refused as a mistake in the file, named by its path: no traceback in the log.
    assert record.exc_info is None
    assert "x-loop[0]: an alias" in record.getMessage()


# -- rendering to a file that cannot be written ---------------------------------------------


@pytest.mark.parametrize(
    "argv", [["render-envoy"], ["render-gateway-api", "--controller", "envoy-gateway"]]
)
def test_rendering_to_a_path_that_cannot_be_written_is_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*argv, "-c", str(DEFAULT_CONFIG), "-o", str(tmp_path)], capsys)

    assert code == 2
    assert out == ""
    assert err == f"error: cannot write {tmp_path}: Is a directory\n"


# -- a header subject pasted with spaces around it -------------------------------------------

HEADER_QUOTA = """
quotas:
  rules:
    - name: teams-rpm
      subject: header:x-team
      requests_per_minute: 5
"""


@pytest.fixture
async def header_api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    config = parse_config(
        DEFAULT_CONFIG.read_text() + HEADER_QUOTA, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )
    async with running_api(valkey, config) as running:
        yield running


async def send_as_team(api: Api, header: str) -> Any:
    """What the quota stage does for a request carrying ``x-team: <header>``."""
    now = api.quota_store.now()
    identity = Identity(method="api_key", api_key_id="team1")
    limits = api.runtime.quota_rules.limits_for(identity, {"x-team": header}, "gpt-4o-mini", now)
    return await api.quota_store.reserve(limits, 10)


async def test_a_header_subject_with_spaces_around_it_is_the_one_requests_count(
    header_api: Api,
) -> None:
    # Requests count each value of the header without the spaces around it; an operator
    # pasting "research " (or a value with its line end) read a subject no request ever
    # counted (nothing used), and a limit set there bound nobody.
    early_in_the_minute()
    await send_as_team(header_api, " research ")

    state = await header_api.call(
        "GetQuota", pb.GetQuotaRequest(subject_kind="header:x-team", subject="research \n")
    )
    assert (state.subject, state.limits[0].used) == ("research", 1)

    await header_api.call(
        "SetLimit",
        pb.SetLimitRequest(
            subject_kind="header:X-Team", subject=" research", rule="teams-rpm",
            counter="requests_per_minute", limit=2,
        ),
    )  # fmt: skip
    assert isinstance(await send_as_team(header_api, "research"), Reservation)
    assert isinstance(await send_as_team(header_api, "research"), Denial)
    [line] = header_api.audit_lines()
    assert (line["subject_kind"], line["subject"]) == ("header:x-team", "research")
