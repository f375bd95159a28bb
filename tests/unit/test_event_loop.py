"""`server.event_loop`: the servers run on uvloop by default, on asyncio's loop on request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from extproc import event_loop
from extproc.config.loader import ConfigError, load_config


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_default_runs_on_uvloop_which_the_gateway_installs() -> None:
    assert event_loop.uvloop_available()
    assert event_loop.run(_loop_module()).startswith("uvloop")
    assert event_loop.run(_loop_module(), "uvloop").startswith("uvloop")


def test_asyncio_opts_out_of_uvloop() -> None:
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_the_coroutine_result_and_its_errors_come_back() -> None:
    async def fails() -> None:
        raise LookupError("from the loop")

    with pytest.raises(LookupError, match="from the loop"):
        event_loop.run(fails())


def test_an_unknown_loop_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "version: 1\nserver:\n  event_loop: tokio\n"
        "providers: [{name: mock, base_url: 'http://127.0.0.1:8089/v1'}]\n"
        "models: [{name: m, provider: mock}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "server.event_loop" in str(raised.value)
    assert "tokio" in str(raised.value)
