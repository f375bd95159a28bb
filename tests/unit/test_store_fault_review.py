"""Store trouble as users meet it: what the gateway refuses at load so that a frozen
store still gets each quota rule its configured answer."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from extproc.config.model import GatewayConfig


def gateway(**sections: Any) -> GatewayConfig:
    raw: dict[str, Any] = {
        "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
        "models": [{"name": "gpt-4o", "provider": "openai"}],
    }
    raw.update(sections)
    return GatewayConfig.model_validate(raw)


def test_a_store_timeout_envoy_would_cut_short_is_refused_at_load() -> None:
    # Envoy gives the gateway envoy.message_timeout_ms per answer. A store wait as long
    # made a frozen store cost every request Envoy's 504, where its quota rules said
    # fail_open (let it through) or fail_closed (503 quota_store_unavailable).
    with pytest.raises(ValidationError, match=r"store\.timeout_ms"):
        gateway(store={"timeout_ms": 5000}, envoy={"message_timeout_ms": 5000})
    with pytest.raises(ValidationError, match=r"store\.timeout_ms"):
        gateway(store={"timeout_ms": 3000}, envoy={"message_timeout_ms": 2000})


def test_a_store_timeout_within_envoys_wait_loads() -> None:
    assert gateway(store={"timeout_ms": 1500}, envoy={"message_timeout_ms": 2000})
    assert gateway().store.timeout_ms < gateway().envoy.message_timeout_ms
