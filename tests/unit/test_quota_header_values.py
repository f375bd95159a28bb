"""A header subject whose header comes with several values: sent twice (Envoy hands each
on; HTTP reads them as one comma-separated list) or as one comma-separated value. Each
value is a subject of its own, so a limit on ``x-user-type: limited`` holds for a
request whose header also carries another value (a client's own, before the one a
proxy in front appends)."""

from __future__ import annotations

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.agents.limits import AgentLimits
from extproc.config.agents_model import AgentLimitRule
from extproc.config.loader import parse_config
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.errors import BadRequestError
from extproc.processor import Processor
from extproc.quota.rules import MAX_HEADER_SUBJECTS, RuleSet
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

NOW = 1_800_000_000.0
LIMITED = LimitRule(name="limited", subject="header:x-user-type", match="limited",
                    requests_per_minute=2)  # fmt: skip
EACH_TEAM = LimitRule(name="each-team", subject="header:x-team", requests_per_minute=9)
TWO_A_MINUTE = """
quotas:
  rules:
    - {name: limited-users, subject: "header:x-user-type", match: limited, requests_per_minute: 2}
"""
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def subjects(rule: LimitRule, headers: dict[str, str]) -> list[str]:
    rules = RuleSet(QuotasConfig(rules=(rule,)))
    found = rules.limits_for(Identity(method="api_key"), headers, "gpt-4o", NOW)
    return sorted(limit.subject for limit in found)


def test_a_value_among_several_is_selected() -> None:
    assert subjects(LIMITED, {"x-user-type": "premium,limited"}) == ["limited"]
    assert subjects(LIMITED, {"x-user-type": "premium, limited"}) == ["limited"]
    assert subjects(LIMITED, {"x-user-type": "premium"}) == []


def test_each_value_counts_once_and_empty_ones_not_at_all() -> None:
    assert subjects(EACH_TEAM, {"x-team": "blue, red,blue,, "}) == ["blue", "red"]
    assert subjects(EACH_TEAM, {"x-team": " , "}) == []


def test_a_header_with_more_values_than_a_quota_counts_is_a_400_naming_it() -> None:
    many = ",".join(f"team-{n}" for n in range(MAX_HEADER_SUBJECTS + 1))
    with pytest.raises(BadRequestError, match="header 'x-team' carries 17 values") as refused:
        subjects(EACH_TEAM, {"x-team": many})
    assert refused.value.status == 400
    # As many as it counts are counted, each.
    at_most = ",".join(f"team-{n}" for n in range(MAX_HEADER_SUBJECTS))
    assert len(subjects(EACH_TEAM, {"x-team": at_most})) == MAX_HEADER_SUBJECTS


def test_an_agent_limit_reads_a_headers_values_the_same_way() -> None:
    rule = AgentLimitRule(name="limited", subject="header:x-user-type", match="limited",
                          requests_per_minute=2)  # fmt: skip
    limits = AgentLimits([rule], QuotasConfig())
    found = limits.limits_for(
        Identity(method="api_key"), {"x-user-type": "premium,limited"}, "tools", "deploy", NOW
    )
    assert [(limit.subject, limit.limit) for limit in found] == [("limited", 2)]


def headers_sent_twice(name: str, *values: str) -> ext.ProcessingRequest:
    """Envoy's request headers with ``name`` repeated, once per value, as a client (or a
    proxy appending to the client's) sent them."""
    message = ext.ProcessingRequest()
    pairs = [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "gateway"),
             (":scheme", "http"), ("authorization", "Bearer team1-key"),
             *((name, value) for value in values)]  # fmt: skip
    for key, value in pairs:
        header = message.request_headers.headers.headers.add()
        header.key = key
        header.raw_value = value.encode()
    return message


async def test_a_client_cannot_escape_a_header_limit_by_sending_the_header_twice(
    quota_store: QuotaStore,
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + TWO_A_MINUTE, "t", {}), services)
    gateway = Processor(lambda: runtime, default_stages())
    statuses = []
    for _ in range(3):
        answers = await run_stream(
            gateway, [headers_sent_twice("x-user-type", "premium", "limited"), request_body(BODY)]
        )
        last = answers[-1]
        statuses.append(
            last.immediate_response.status.code if last.HasField("immediate_response") else 200
        )
    assert statuses == [200, 200, 429]


async def test_a_request_whose_header_carries_too_many_values_gets_a_400_not_a_500(
    quota_store: QuotaStore,
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + TWO_A_MINUTE, "t", {}), services)
    values = [f"kind-{n}" for n in range(MAX_HEADER_SUBJECTS)] + ["limited"]
    answers = await run_stream(
        Processor(lambda: runtime, default_stages()),
        [headers_sent_twice("x-user-type", *values), request_body(BODY)],
    )
    refused = answers[-1].immediate_response
    assert refused.status.code == 400
    assert orjson.loads(refused.body)["error"]["code"] == "too_many_header_values"


def test_a_header_rule_for_another_model_reads_no_header_values() -> None:
    other_model = LimitRule(name="minis", subject="header:x-team", models=("gpt-4o-mini*",),
                            requests_per_minute=9)  # fmt: skip
    many = ",".join(f"team-{n}" for n in range(MAX_HEADER_SUBJECTS + 1))
    # The request is for gpt-4o: the rule does not apply, and its header is no 400.
    assert subjects(other_model, {"x-team": many}) == []
