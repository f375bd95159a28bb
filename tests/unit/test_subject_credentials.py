"""A key sent in a header that a quota counts by is refused, never counted or recorded.

A rule on ``header:x-team`` with ``match: "*"`` counts each value of the header: the
value names the store's counters, is listed by ``extproc quota list``, labels the
``aigw_quota_*`` gauges and is quoted by the limit's 429. A client that set the header
from the wrong setting (its key where its team goes) had its key counted and recorded in
all of them. Now such a request is a 400 ``credential_in_header`` naming the header,
never the value, as a key named as the model is.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig, parse_config
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_agents_review import immediate, with_limits
from tests.unit.test_query_credential_shapes import GATEWAY_KEY, GITHUB, JWT
from tests.unit.test_query_secrets import sent_to_a_provider

EACH_TEAM = """
quotas:
  rules:
    - {name: each-team, subject: "header:x-team", requests_per_minute: 9}
    - {name: limited-users, subject: "header:x-user-type", match: limited, requests_per_minute: 2}
"""
CONFIG = parse_config(DEFAULT_CONFIG + EACH_TEAM, "gateway.yaml", {})
OWN = {"authorization": "Bearer team1-key"}
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
# The request's own key, another team's key of the config, and well-known shapes.
SECRETS = {
    "own": ("team1-key", "this request's API key or token"),
    "org": ("team2-key", "an API key of this gateway"),
    "aigw": (GATEWAY_KEY, "an API key of this gateway"),
    "github": (GITHUB, "a GitHub token"),
    "jwt": (JWT, "a JSON Web Token"),
}


async def stored_keys(quota_store: QuotaStore) -> str:
    """Every key of the store, joined: where a subject's counters are named."""
    client: Any = quota_store._client
    keys = [key async for key in client.scan_iter("*")]
    return " ".join(key.decode() if isinstance(key, bytes) else key for key in keys)


async def chat(quota_store: QuotaStore, headers: dict[str, str]) -> tuple[list[Any], Services]:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    messages = [request_headers("/v1/chat/completions", headers={**OWN, **headers})]
    answers = await run_stream(processor_for(CONFIG, services), [*messages, request_body(CHAT)])
    return answers, services


@pytest.mark.parametrize(("secret", "kind"), SECRETS.values(), ids=SECRETS.keys())
async def test_a_credential_in_a_counted_header_is_refused_and_never_counted(
    quota_store: QuotaStore, secret: str, kind: str
) -> None:
    answers, services = await chat(quota_store, {"x-team": f"blue, {secret}"})
    assert not sent_to_a_provider(answers)
    refusal = answers[-1].immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)["error"]
    assert error["code"] == "credential_in_header"
    assert error["message"].startswith(f"header 'x-team' holds {kind}")
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == 400
    for shown in (refusal.body.decode(), orjson.dumps(line).decode()):
        assert secret not in shown
    # Nothing was counted: no counter of the store is named after it, nor after the
    # other value beside it (the request was refused before any was).
    keys = await stored_keys(quota_store)
    assert secret not in keys and "blue" not in keys


async def test_a_team_name_is_still_counted(quota_store: QuotaStore) -> None:
    answers, _ = await chat(quota_store, {"x-team": "blue"})
    assert sent_to_a_provider(answers)
    assert "blue" in await stored_keys(quota_store)


async def test_a_header_value_no_rule_counts_is_not_looked_at(quota_store: QuotaStore) -> None:
    # x-user-type counts "limited" alone: another value is counted nowhere, and
    # recorded nowhere, so the request is not refused for it.
    answers, _ = await chat(quota_store, {"x-user-type": GITHUB})
    assert sent_to_a_provider(answers)
    assert GITHUB not in await stored_keys(quota_store)


async def test_an_agent_limit_on_a_header_refuses_a_credential_the_same_way(
    config: GatewayConfig, quota_store: QuotaStore
) -> None:
    rule = {"name": "per-team", "subject": "header:x-team", "requests_per_day": 5}
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    processor = processor_for(with_limits(config, rule), services)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    headers = {"authorization": "Bearer team2-key", "x-team": GATEWAY_KEY}
    answers = await run_stream(
        processor, [request_headers("/mcp", headers=headers), request_body(orjson.dumps(call))]
    )
    refusal = immediate(answers)
    assert refusal is not None
    status, body = refusal
    assert status == 400
    assert "header 'x-team' holds an API key of this gateway" in orjson.dumps(body).decode()
    assert GATEWAY_KEY not in orjson.dumps(body).decode()
    assert GATEWAY_KEY not in await stored_keys(quota_store)
