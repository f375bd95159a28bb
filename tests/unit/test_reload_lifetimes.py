"""What a reload changes in a running gateway, and what it keeps until a restart.

In-process, no store and no Envoy: a ``Gateway`` built from the default config,
reloaded with ``apply`` as the reloader does. ``server`` and ``store`` settings
stay as started (the operator is warned on every reload that changes them, by
field name, never by value); a replaced config's clients (the webhook and
moderation HTTP session) stay open while a stream that started on it is open,
and are closed as soon as the last such stream has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.server import Gateway

STORE_PASSWORD = "s3cret-store-password"


def gateway_config(**sections: dict[str, Any]) -> GatewayConfig:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["guardrails"] = {
        "webhooks": [{"name": "civility", "host": "127.0.0.1", "port": 9}],
        "policies": [
            {"name": "watched", "response": [{"name": "civility-out", "webhook": "civility"}]}
        ],
    }
    raw["routes"].append({"name": "watched", "path_prefix": "/watched", "guardrails": "watched"})
    for name, values in sections.items():
        raw[name] = {**(raw.get(name) or {}), **values}
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


async def wait_until(probe: Any, rounds: int = 200) -> bool:
    for _ in range(rounds):
        if probe():
            return True
        await asyncio.sleep(0.01)
    return bool(probe())


class Stream:
    """One ext_proc stream held open, as Envoy holds it while an answer streams."""

    def __init__(self, gateway: Gateway) -> None:
        self._end = asyncio.Event()
        self.started = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(gateway))

    async def _messages(self) -> AsyncIterator[Any]:
        self.started.set()
        await self._end.wait()
        return
        yield  # an async generator that sends nothing: the stream just stays open

    async def _run(self, gateway: Gateway) -> None:
        async for _ in gateway.processor.process(self._messages()):
            pass

    async def end(self) -> None:
        self._end.set()
        await self.task


async def test_every_reload_that_moves_the_store_warns_and_keeps_the_running_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway(gateway_config(), None)
    started_store, started_server = gateway.config.store, gateway.config.server
    moved = {"url": f"redis://:{STORE_PASSWORD}@127.0.0.1:1/0", "timeout_ms": 20}
    try:
        with caplog.at_level(logging.WARNING, logger="extproc.server"):
            # The operator moves the store and lengthens the drain, then reloads again
            # (another edit): the running process stays where it started, and says so
            # each time.
            for _ in range(2):
                await gateway.apply(gateway_config(store=moved, server={"grace_period_s": 99}))
        warnings = [r.getMessage() for r in caplog.records if "only on restart" in r.getMessage()]
        assert len(warnings) == 2, warnings
        # Requests (their quota and key look-ups use the store timeout), readiness and
        # the drain on stop use the settings the store client and listeners were made with.
        assert gateway.config.store == started_store
        assert gateway.config.server == started_server
        assert gateway.runtime.config.store.timeout_ms == started_store.timeout_ms
        # The fields are named; their values (a URL holds the password) are not.
        for warning in warnings:
            for field in ("store.url", "store.timeout_ms", "server.grace_period_s"):
                assert field in warning
            assert STORE_PASSWORD not in warning
    finally:
        await gateway.runtime.close()


async def test_a_reload_that_changes_neither_section_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway(gateway_config(), None)
    try:
        with caplog.at_level(logging.WARNING, logger="extproc.server"):
            await gateway.apply(gateway_config())
        assert not [r for r in caplog.records if "only on restart" in r.getMessage()]
    finally:
        await gateway.runtime.close()


async def test_a_replaced_config_keeps_its_webhook_session_until_its_last_stream_ends() -> None:
    gateway = Gateway(gateway_config(), None)
    await gateway.runtime.start()
    old = gateway.runtime
    # The session the old config's response guards call the webhook with.
    session = old.guardrails.session.get()
    stream = Stream(gateway)
    await stream.started.wait()
    await gateway.apply(gateway_config())
    later = Stream(gateway)  # starts on the new config: does not hold the old one
    await later.started.wait()
    await asyncio.sleep(0.05)
    assert not session.closed, "the open stream's guard calls would be cut"

    await stream.end()
    assert await wait_until(lambda: session.closed), "the old config's session stays open"
    assert not gateway.runtime.guardrails.session.get().closed
    await later.end()
    await gateway.stop()


async def test_a_replaced_config_with_no_open_stream_closes_its_session_at_once() -> None:
    gateway = Gateway(gateway_config(), None)
    await gateway.runtime.start()
    session = gateway.runtime.guardrails.session.get()
    await gateway.apply(gateway_config())
    assert await wait_until(lambda: session.closed)
    await gateway.stop()


async def test_stopping_closes_a_replaced_config_a_stream_still_held() -> None:
    gateway = Gateway(gateway_config(), None)
    await gateway.runtime.start()
    session = gateway.runtime.guardrails.session.get()
    stream = Stream(gateway)
    await stream.started.wait()
    await gateway.apply(gateway_config())
    await gateway.stop()
    assert session.closed, "an HTTP session left open at exit"
    await stream.end()


async def test_a_reload_that_adds_a_provider_says_envoy_needs_its_bootstrap_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Envoy has no cluster for a provider the reload added: requests routed to it fail
    until the bootstrap is rendered again. A model added for a provider Envoy knows
    needs nothing of Envoy, and is not warned about."""
    gateway = Gateway(gateway_config(), None)
    base = gateway_config()
    more_models = base.model_copy(
        update={"models": (*base.models, base.models[0].model_copy(update={"name": "gpt-5"}))}
    )
    provider = base.providers[0].model_copy(
        update={"name": "azure", "base_url": "https://example.openai.azure.com/openai/v1"}
    )
    new_provider = more_models.model_copy(
        update={
            "providers": (*base.providers, provider),
            "models": (
                *base.models,
                base.models[0].model_copy(update={"name": "gpt-5", "provider": "azure"}),
            ),
        }
    )
    try:
        with caplog.at_level(logging.WARNING, logger="extproc.server"):
            await gateway.apply(more_models)
            assert not [r for r in caplog.records if "Envoy bootstrap" in r.getMessage()]
            await gateway.apply(new_provider)
        [warning] = [r.getMessage() for r in caplog.records if "Envoy bootstrap" in r.getMessage()]
        assert "cluster provider_azure" in warning
        assert "render-envoy" in warning
        # The gateway serves the new config all the same: the model is routed to it.
        assert gateway.config.provider("azure").name == "azure"
    finally:
        await gateway.runtime.close()
