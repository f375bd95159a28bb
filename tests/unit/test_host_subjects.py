"""Quota and agent rules whose subject is the request's host.

Envoy moves HTTP/1.1's ``Host`` into ``:authority`` before any filter, so a rule on
``header:host`` read a header no request carried: it loaded and limited no one. And a
rule on ``header::authority`` read the value as the client spelt it, so ``GATEWAY.local``,
``gateway.local:80`` or ``gateway.local.`` (all on ``gateway.local``'s routes) escaped a
rule matching ``gateway.local``. Both names are now the one host subject, whose value is
the host as routes read it (lower case, no port, no trailing dot), ``match`` included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from extproc import cli
from extproc.config import parse_config
from extproc.config.quota_model import HOST_SUBJECT
from extproc.context import Identity
from extproc.devstack import DEFAULT_CONFIG as DEVSTACK_CONFIG
from extproc.management.quotas import normalize_kind
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.rules import RuleSet
from extproc.quota.store import Denial, QuotaStore, Reservation
from extproc.store.embedded import EmbeddedValkey
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_management import TOKEN, Api, early_in_the_minute, running_api
from tests.unit.test_quota_review import OPENAI_AUTH, chat, gateway, refusal

TEAM1 = Identity(method="api_key", api_key_id="team1")
# One request a day for each host, and one for gateway.local (spelt oddly).
BY_HOST = """
quotas:
  rules:
    - {name: by-host, subject: %s, requests_per_day: 1}
"""
ONE_HOST = """
quotas:
  rules:
    - {name: one-host, subject: 'header::authority', match: ['Gateway.Local:10000', 'x.example.'],
       requests_per_minute: 1}
"""


@pytest.mark.parametrize("subject", ["'header:host'", "'header:Host'", "'header::authority'"])
def test_the_host_is_one_subject_however_the_rule_names_it(subject: str) -> None:
    config = parse_config(DEFAULT_CONFIG + BY_HOST % subject, "g.yaml", {})
    [rule] = config.quotas.rules
    assert rule.subject == HOST_SUBJECT == "header::authority"


def test_a_host_match_is_spelt_as_routes_read_hosts() -> None:
    config = parse_config(DEFAULT_CONFIG + ONE_HOST, "g.yaml", {})
    [rule] = config.quotas.rules
    assert rule.match == ("gateway.local", "x.example")


def test_an_agent_limit_on_the_host_is_the_same_subject() -> None:
    agents = """
agents:
  limits:
    - {name: tools-by-host, subject: 'header:host', match: Tools.Gateway.Local,
       requests_per_minute: 1}
"""
    config = parse_config(DEFAULT_CONFIG + agents, "g.yaml", {})
    [rule] = config.agents.limits
    assert (rule.subject, rule.match) == (HOST_SUBJECT, "tools.gateway.local")


@pytest.mark.parametrize(
    "authority", ["gateway.local", "GATEWAY.local", "gateway.local:10000", "gateway.local."]
)
def test_the_rule_counts_the_host_the_routes_see(authority: str) -> None:
    config = parse_config(DEFAULT_CONFIG + ONE_HOST, "g.yaml", {})
    limits = RuleSet(config.quotas).limits_for(TEAM1, {":authority": authority}, "gpt-4o-mini", 0.0)
    assert [limit.subject for limit in limits] == ["gateway.local"]


def test_the_management_api_names_the_host_subject_as_the_config_does() -> None:
    assert normalize_kind("header:Host") == HOST_SUBJECT
    assert normalize_kind(" header::authority ") == HOST_SUBJECT
    assert normalize_kind("header:X-Team") == "header:x-team"


async def test_a_rule_on_header_host_limits_each_host(quota_store: QuotaStore) -> None:
    processor, _ = gateway(quota_store, BY_HOST % "'header:host'")

    async def send(authority: str) -> int | None:
        headers = {**OPENAI_AUTH, ":authority": authority}
        answers = await run_stream(
            processor,
            [request_headers("/v1/chat/completions", headers=headers), request_body(chat())],
        )
        refused = refusal(answers[-1])
        return refused[0] if refused else None

    assert await send("a.example") is None
    assert await send("A.Example:10000") == 429  # the same host, its day's request spent
    assert await send("b.example") is None  # another host: its own count


MANAGED_HOST = """
quotas:
  rules:
    - {name: gateway-host, subject: 'header:host', match: gateway.local, requests_per_minute: 5}
"""


@pytest.fixture
async def host_api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    config = parse_config(
        DEVSTACK_CONFIG.read_text() + MANAGED_HOST, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )
    async with running_api(valkey, config) as running:
        yield running


async def test_the_management_api_reads_and_changes_the_host_as_requests_count_it(
    host_api: Api,
) -> None:
    early_in_the_minute()
    now = host_api.quota_store.now()
    limits = host_api.runtime.quota_rules.limits_for(
        TEAM1, {":authority": "gateway.local:10000"}, "gpt-4o-mini", now
    )
    assert isinstance(await host_api.quota_store.reserve(limits, 10), Reservation)

    # An operator names the host as a client spelt it: the counter requests wrote.
    state = await host_api.call(
        "GetQuota", pb.GetQuotaRequest(subject_kind="header:Host", subject="Gateway.Local:10000")
    )
    assert (state.subject_kind, state.subject) == (HOST_SUBJECT, "gateway.local")
    assert [limit.used for limit in state.limits] == [1]

    lowered = pb.SetLimitRequest(
        subject_kind="header::authority", subject="GATEWAY.local.", rule="gateway-host",
        counter="requests_per_minute", limit=1,
    )  # fmt: skip
    state = await host_api.call("SetLimit", lowered)
    assert (state.subject, state.limits[0].limit) == ("gateway.local", 1)
    # The next request to that host is checked against the lowered limit.
    refused = await host_api.quota_store.reserve(limits, 10)
    assert isinstance(refused, Denial) and refused.effective_limit == 1
    [line] = host_api.audit_lines()
    assert line["subject"] == "gateway.local"


async def test_the_cli_names_the_host_as_a_client_spells_it(
    host_api: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    early_in_the_minute()
    now = host_api.quota_store.now()
    limits = host_api.runtime.quota_rules.limits_for(
        TEAM1, {":authority": "gateway.local"}, "gpt-4o-mini", now
    )
    assert isinstance(await host_api.quota_store.reserve(limits, 10), Reservation)
    argv = ["quota", "get", "--kind", "header:host", "--subject", "Gateway.Local:10000",
            "--address", host_api.address, "--format", "json"]  # fmt: skip
    # Not --token: a token on the command line is warned about on stderr.
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", TOKEN)

    # The CLI's channel is synchronous: it runs beside the server's event loop.
    code = await asyncio.to_thread(cli.main, argv)

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    state = orjson.loads(out)
    assert (state["subject"], state["limits"][0]["used"]) == ("gateway.local", 1)
