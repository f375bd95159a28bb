"""Routing review 2: a request reaches only what its route and its caller's rules allow.

Bedrock serves one model under several ids: its own
(``anthropic.claude-3-haiku-20240307-v1:0``), a cross-region inference profile's
(``us.``, ``eu.``, ``global.``... before it) and the ARN of either. On a route that sends
any model id to Bedrock (``/bedrock/<id>``, ``/model/<id>/converse``), each of them
reaches the same model, so an access rule or a quota rule naming the model (or its
alias) must cover every one, and the price table price it.

A route kept to one provider (``routes[].provider``) refuses another provider's models
by name, so its failover must not reach them either. An SDK based at ``/openai`` lists
its models there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.auth.access import AccessPolicy
from extproc.config.auth_model import AccessRule
from extproc.config.loader import parse_config
from extproc.context import Identity, Usage
from extproc.headers import CLUSTER
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG

KEY = {"authorization": "Bearer team1-key"}  # key team1, group engineering
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"  # alias haiku, on mock-bedrock
# The same model under the other ids Bedrock serves it by.
OTHER_IDS = [
    f"us.{HAIKU}",
    f"global.{HAIKU}",
    f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
    f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.{HAIKU}",
    f"US.{HAIKU.upper()}",
]
# Claude 3 Haiku for marketing alone: engineering's key may not use it.
HAIKU_FOR_MARKETING = """auth:
  access_rules:
    - {name: haiku-for-marketing, models: [haiku], groups: [marketing]}
"""
ONE_HAIKU_A_DAY = """
quotas:
  rules:
    - {name: one-haiku, subject: api_key, models: [haiku], requests_per_day: 1}
"""


def chat_body(model: str | None = None) -> bytes:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


def converse_body() -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


@asynccontextmanager
async def gateway_on(text: str, services: Services) -> AsyncIterator[Processor]:
    runtime = Runtime(parse_config(text, "t", {}), services)
    await runtime.start()  # the Bedrock provider's AWS credentials
    try:
        yield Processor(lambda: runtime, default_stages())
    finally:
        await runtime.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Processor]:
    """The default config, Claude 3 Haiku kept to marketing by an access rule."""
    text = DEFAULT_CONFIG.replace("auth:\n", HAIKU_FOR_MARKETING, 1)
    async with gateway_on(text, Services(GatewayMetrics(), MemoryLog())) as running:
        yield running


def status_and_cluster(answers: list[ext.ProcessingResponse]) -> tuple[int, str | None]:
    """The gateway's own answer (0: none, the request goes on) and the provider cluster
    it sent the request to."""
    for answer in answers:
        if answer.HasField("immediate_response"):
            return answer.immediate_response.status.code, None
    mutation = answers[-1].request_body.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    return 0, set_headers.get(CLUSTER)


async def send(gateway: Processor, path: str, body: bytes) -> tuple[int, str | None]:
    answers = await run_stream(gateway, [request_headers(path, headers=KEY), request_body(body)])
    return status_and_cluster(answers)


@pytest.mark.parametrize("model", OTHER_IDS)
async def test_an_access_rule_on_a_bedrock_model_covers_its_profile_and_arn_ids(
    gateway: Processor, model: str
) -> None:
    # The rule holds by the alias and the model's own id...
    assert (await send(gateway, "/bedrock/haiku", chat_body()))[0] == 403
    assert (await send(gateway, "/v1/chat/completions", chat_body(HAIKU)))[0] == 403
    # ...and by every other id that reaches the same model at Bedrock.
    path = "/bedrock/" + model.replace("/", "%2F")
    assert (await send(gateway, path, chat_body()))[0] == 403
    converse = "/model/" + model.replace("/", "%2F").replace(":", "%3A") + "/converse"
    assert (await send(gateway, converse, converse_body()))[0] == 403


async def test_other_bedrock_models_and_names_are_not_caught_by_the_rule(
    gateway: Processor,
) -> None:
    for path, body in [
        ("/bedrock/titan", chat_body()),
        ("/bedrock/us.meta.llama3-8b-instruct-v1:0", chat_body()),
        ("/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse", converse_body()),
    ]:
        assert await send(gateway, path, body) == (0, "provider_mock_bedrock"), path


@pytest.mark.parametrize("model", OTHER_IDS[:3])
async def test_a_quota_rule_on_a_bedrock_model_counts_its_profile_ids(
    quota_store: QuotaStore, model: str
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    async with gateway_on(DEFAULT_CONFIG + ONE_HAIKU_A_DAY, services) as gateway:
        first = await send(gateway, "/bedrock/haiku", chat_body())
        assert first == (0, "provider_mock_bedrock")
        # The day's one Claude 3 Haiku request is spent, whatever id the next one uses.
        status, _ = await send(gateway, "/bedrock/" + model.replace("/", "%2F"), chat_body())
    assert status == 429


async def test_a_key_allowed_a_bedrock_model_keeps_to_the_ids_it_lists() -> None:
    """A key's own ``allowed_models`` narrows, so it stays with the names it lists: a
    profile id reaches other regions (``global.``) than the model's own id does."""
    keys = (
        f"  api_keys:\n    - {{id: haiku-only, key: haiku-only-key, allowed_models: [{HAIKU}]}}\n"
    )
    text = DEFAULT_CONFIG.replace("  api_keys:\n", keys, 1)
    only_haiku = {"authorization": "Bearer haiku-only-key"}
    async with gateway_on(text, Services(GatewayMetrics(), MemoryLog())) as gateway:
        for path, served in [(f"/bedrock/{HAIKU}", True), (f"/bedrock/global.{HAIKU}", False)]:
            answers = await run_stream(
                gateway, [request_headers(path, headers=only_haiku), request_body(chat_body())]
            )
            assert status_and_cluster(answers)[0] == (0 if served else 403), path


@pytest.mark.parametrize(
    ("pattern", "model", "covered"),
    [
        ("us.*", f"us.{HAIKU}", True),
        ("us.*", HAIKU, False),  # a rule on the US profiles keeps to them
        (f"us.{HAIKU}", f"arn:aws:bedrock:us-east-1:1:inference-profile/us.{HAIKU}", True),
        (f"us.{HAIKU}", f"eu.{HAIKU}", False),
        ("anthropic.*", f"global.{HAIKU}", True),
        ("gpt-4o", "us.gpt-4o", False),  # not a Bedrock id: another model
        ("abc", "arn:aws:bedrock:us-east-1:1:provisioned-model/abc", False),
    ],
)
def test_which_bedrock_ids_a_rule_covers(pattern: str, model: str, covered: bool) -> None:
    rule = AccessRule(name="kept", models=(pattern,), groups=("marketing",))
    engineering = Identity("api_key", "team1", "alice", "engineering", groups=("engineering",))
    assert (AccessPolicy([rule]).denial(engineering, model, "bedrock") is not None) is covered


# --- a route kept to one provider ----------------------------------------------------------

# Claude Sonnet on Anthropic, failing over to Claude 3 Haiku on Bedrock.
SONNET_FAILS_OVER = (
    "  - name: claude-sonnet-4-0\n"
    "    provider: ${ANTHROPIC_PROVIDER:-mock-anthropic}\n"
    f"    fallbacks: [{HAIKU}]\n"
)


def chain_of(answers: list[ext.ProcessingResponse]) -> list[str]:
    """The providers the request's attempts may reach, in order."""
    body = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    return [provider for provider, _, _ in body["x-aigw-failover-chain"]]


@pytest.mark.parametrize(
    ("path", "headers", "providers"),
    [
        ("/v1/chat/completions", KEY, ["mock-anthropic", "mock-bedrock"]),
        ("/anthropic", KEY, ["mock-anthropic"]),
        # The workshop's Anthropic host, whose route names the provider too.
        ("/v1/chat/completions", {**KEY, ":authority": "anthropic.gateway.local"},
         ["mock-anthropic"]),
    ],
)  # fmt: skip
async def test_a_route_kept_to_one_provider_never_fails_over_to_another(
    path: str, headers: dict[str, str], providers: list[str]
) -> None:
    """``/anthropic`` refuses Bedrock's Haiku by name (404): its failover must not serve
    it either."""
    marker = "  - name: claude-sonnet-4-0\n    provider: ${ANTHROPIC_PROVIDER:-mock-anthropic}\n"
    assert marker in DEFAULT_CONFIG
    text = DEFAULT_CONFIG.replace(marker, SONNET_FAILS_OVER, 1)
    async with gateway_on(text, Services(GatewayMetrics(), MemoryLog())) as gateway:
        assert await send(gateway, "/anthropic", chat_body(HAIKU)) == (404, None)
        answers = await run_stream(
            gateway,
            [
                request_headers(path, headers=headers),
                request_body(chat_body("claude-sonnet-4-0")),
            ],
        )
    assert chain_of(answers) == providers


# --- an SDK based at /openai ----------------------------------------------------------------


@pytest.mark.parametrize("built_in", [False, True], ids=["default-config", "built-in-routes"])
@pytest.mark.parametrize("path", ["/openai/v1/models", "/openai/models"])
async def test_an_sdk_based_at_the_openai_prefix_lists_its_models(
    path: str, built_in: bool
) -> None:
    """``OpenAI(base_url=<gateway>/openai/v1).models.list()``, which chat UIs call to
    fill their model picker, gets the gateway's list, not a 405 asking for POST; with
    the config's routes and with the built-in ones (a config without ``routes``)."""
    raw = yaml.safe_load(DEFAULT_CONFIG)
    if built_in:
        del raw["routes"]
    gateway = processor_for(parse_config(yaml.safe_dump(raw), "t", {}))
    [answer] = await run_stream(gateway, [request_headers(path, "GET", KEY, True)])
    assert answer.immediate_response.status.code == 200, answer.immediate_response.body
    listed = orjson.loads(answer.immediate_response.body)
    assert listed["object"] == "list"
    assert "gpt-4o" in [model["id"] for model in listed["data"]]


@pytest.mark.parametrize("model", OTHER_IDS)
def test_a_bedrock_model_called_by_its_profile_or_arn_is_priced_as_the_model(
    model: str,
) -> None:
    """Called by another id, the model is billed at its price, not as an unpriced one
    at 0 (the chargeback report's cost of every Claude Code request on Bedrock)."""
    runtime = Runtime(
        parse_config(DEFAULT_CONFIG, "t", {}), Services(GatewayMetrics(), MemoryLog())
    )
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=0)
    assert runtime.prices.cost(model, usage) == runtime.prices.cost(HAIKU, usage)
    assert runtime.prices.cost(model, usage).picousd > 0
    # A profile of a model the table does not price stays unpriced.
    assert runtime.prices.prices("us.anthropic.claude-opus-4-1-20250805-v1:0") is None
