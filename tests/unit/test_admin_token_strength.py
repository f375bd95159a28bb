"""A guessable admin token on a management API other hosts can reach: warned of at load
and by check-config (named by place and id, never the token), never refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.cli import main
from extproc.config import GatewayConfig, parse_config
from extproc.config.load_warnings import config_warnings

DEMO = "dev-admin-token"


def config(address: str, **token: str) -> GatewayConfig:
    raw: dict[str, Any] = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["management"] = {"address": address, "admin_tokens": [{"id": "ops", **token}]}
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def token_warnings(found: GatewayConfig) -> list[str]:
    return [line for line in config_warnings(found) if "management.admin_tokens" in line]


def test_the_demo_token_on_an_address_other_hosts_reach_is_warned_of() -> None:
    [warning] = token_warnings(config("0.0.0.0:9465", token=DEMO))
    assert warning.startswith("management.admin_tokens[0] (ops): its token is the documented")
    assert "0.0.0.0:9465 takes connections from other hosts" in warning
    assert DEMO not in warning


def test_a_short_token_there_is_warned_of_without_quoting_it() -> None:
    [warning] = token_warnings(config("10.1.2.3:9465", token="s3cr3t-but-short"[:12]))
    assert "is shorter than 16 characters" in warning
    assert "s3cr3t-but-s" not in warning


@pytest.mark.parametrize(
    ("address", "token"),
    [
        ("127.0.0.1:9465", DEMO),  # the default: only this host's users reach it
        ("[::1]:9465", "short"),
        ("localhost:9465", "short"),
        ("0.0.0.0:9465", "9f2c4e1b7a5d3f8e6c0b2a4d6f8e1c3b"),  # random and long enough
    ],
)
def test_loopback_or_a_strong_token_earns_no_warning(address: str, token: str) -> None:
    assert token_warnings(config(address, token=token)) == []


def test_a_token_file_is_not_judged_at_load(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("short\n", encoding="utf-8")
    assert token_warnings(config("0.0.0.0:9465", token_file=str(path))) == []


def test_check_config_prints_the_warning_and_accepts_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw: dict[str, Any] = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["management"]["address"] = "0.0.0.0:9465"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "management.admin_tokens[0] (ops): its token is the documented demo token" in out + err
    assert DEMO not in out + err
