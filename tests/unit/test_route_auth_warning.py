"""A route that asks for credentials nothing can check serves anyone: the gateway says so."""

from __future__ import annotations

import logging

import pytest

from extproc.config.loader import parse_config
from extproc.runtime import Runtime, Services
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.conftest import MemoryLog

_PROVIDER = """
providers:
  - {name: mock, type: openai, base_url: "http://127.0.0.1:1", api_key: sk-test}
models:
  - {name: gpt-4o-mini, provider: mock}
"""


def _runtime(yaml: str) -> Runtime:
    return Runtime(
        parse_config(yaml, "gateway.yaml", {}),
        Services(metrics=GatewayMetrics(), access_log=MemoryLog()),
    )


def test_a_route_asking_for_keys_none_can_check_is_named_as_anonymous(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.runtime")
    runtime = _runtime(
        _PROVIDER
        + """
routes:
  - name: partner
    path: /v1/chat/completions
    auth: {methods: [api_key]}
"""
    )

    assert [m.value for m in runtime.route_auth["partner"].methods] == ["none"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'partner'" in m and "anonymous" in m and "api_key" in m for m in warnings)


def test_a_config_without_auth_stays_quietly_anonymous(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.runtime")
    _runtime(_PROVIDER + "routes:\n  - {name: chat, path: /v1/chat/completions}\n")

    assert not [r for r in caplog.records if "anonymous" in r.getMessage()]


def test_a_route_with_keys_to_check_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.runtime")
    _runtime(
        _PROVIDER
        + """
auth:
  api_keys: [{id: team1, key: team1-key}]
routes:
  - name: partner
    path: /v1/chat/completions
    auth: {methods: [api_key]}
"""
    )

    assert not [r for r in caplog.records if "anonymous" in r.getMessage()]
