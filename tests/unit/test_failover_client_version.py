"""Failover for an OpenAI chat client that names its own ``anthropic-version``: the
version decides what the translation for Claude sends (from 2026-10-21 no sampling
parameters), so the attempt that reaches Anthropic must go out with the version the
admission check read, not the provider's default."""

from __future__ import annotations

from typing import Any

import orjson

from extproc.runtime import Runtime, Services
from extproc.translators.openai_anthropic import SAMPLING_REMOVED_IN
from tests.unit.test_anthropic_failover import admitted, attempt, config, sent_json

CHAT_HEADERS = {"authorization": "Bearer team1-key", "anthropic-version": SAMPLING_REMOVED_IN}
THINKING_WITH_TEMPERATURE: dict[str, Any] = {
    "model": "sonnet",
    "messages": [{"role": "user", "content": "think, then fail over"}],
    "reasoning_effort": "low",
    "temperature": 0.5,
}


async def test_an_openai_clients_anthropic_version_goes_out_with_its_failover_attempt(
    services: Services,
) -> None:
    cfg = config()
    _, body = await admitted(
        cfg, services, "/v1/chat/completions", THINKING_WITH_TEMPERATURE, CHAT_HEADERS
    )
    # Envoy replays an earlier attempt's changes: another provider's version.
    replayed = {":path": "/v1/chat/completions", "anthropic-version": "2023-06-01"}
    _, out, _ = attempt(Runtime(cfg, services), "mock-anthropic", body, replayed)
    assert out.set_headers["anthropic-version"] == SAMPLING_REMOVED_IN
    sent = sent_json(out)
    # At that version Claude takes no temperature: left out, and the thinking asked for
    # is sent (with the provider's default version the attempt refused the request).
    assert "temperature" not in sent
    assert sent["thinking"]["type"] == "enabled"


async def test_an_openai_client_without_a_version_gets_the_providers_on_each_attempt(
    services: Services,
) -> None:
    cfg = config()
    request = {**THINKING_WITH_TEMPERATURE}
    del request["temperature"]
    _, body = await admitted(
        cfg, services, "/v1/chat/completions", request, {"authorization": "Bearer team1-key"}
    )
    replayed = {":path": "/v1/chat/completions", "anthropic-version": "2099-01-01"}
    _, out, _ = attempt(Runtime(cfg, services), "mock-anthropic", body, replayed)
    assert out.set_headers["anthropic-version"] == "2023-06-01"
    assert orjson.loads(out.body or b"{}")["model"] == "claude-sonnet-4-0"
