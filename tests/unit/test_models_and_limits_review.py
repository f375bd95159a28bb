"""The model list's per-route decisions and the reset values of the ``x-ratelimit-*``
headers, without a stack (the end-to-end checks are in
``tests/integration/test_models_and_limits_review.py``)."""

from __future__ import annotations

import pytest

from extproc.chargeback.pricing import PriceTable
from extproc.config import parse_config
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity, Usage
from extproc.devstack import DEFAULT_CONFIG
from extproc.quota.rules import RuleSet
from extproc.runtime import Runtime, Services
from extproc.stages.model_list import usable_names
from extproc.stages.quota import openai_duration

DEFAULT = DEFAULT_CONFIG.read_text()
ENGINEER = Identity(
    method="api_key", api_key_id="team1", group_id="engineering", groups=("engineering",)
)


def runtime_of(text: str, services: Services) -> Runtime:
    return Runtime(parse_config(text, "gateway.yaml", {}), services)


def only_routes(*routes: str) -> str:
    """The default config with just these routes (YAML list items)."""
    start, end = DEFAULT.index("\nroutes:\n"), DEFAULT.index("\nmanagement:\n")
    return DEFAULT[:start] + "\nroutes:\n" + "".join(f"  - {r}\n" for r in routes) + DEFAULT[end:]


MODELS_ROUTE = "{name: models, path: /v1/models, api: openai_models}"


def test_an_anthropic_only_gateway_lists_the_models_its_messages_route_serves(
    services: Services,
) -> None:
    """/v1/messages is served by Claude alone, on Anthropic or on Bedrock (or Vertex): a
    GPT model, Titan or Llama is unusable there."""
    text = only_routes(
        MODELS_ROUTE, "{name: messages, path: /v1/messages, api: anthropic_messages}"
    )
    names = usable_names(runtime_of(text, services), ENGINEER)
    assert names == [
        "claude-3-5-haiku-latest",
        "claude-sonnet-4-0",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "haiku",
    ]


def test_a_route_with_a_fixed_model_makes_only_that_name_usable(services: Services) -> None:
    text = only_routes(MODELS_ROUTE, "{name: haiku-only, path: /haiku, model: haiku}")
    assert usable_names(runtime_of(text, services), ENGINEER) == ["haiku"]


def test_a_key_kept_to_some_routes_sees_what_those_routes_serve(services: Services) -> None:
    text = only_routes(
        MODELS_ROUTE,
        "{name: openai-chat, path: /v1/chat/completions}",
        "{name: bedrock, path_prefix: /bedrock, model_from_path: true, provider: mock-bedrock}",
    )
    bedrock_only = Identity(method="api_key", api_key_id="b", allowed_routes=("bedrock",))
    assert usable_names(runtime_of(text, services), bedrock_only) == [
        "amazon.titan-text-express-v1",
        "titan",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "haiku",
        "meta.llama3-8b-instruct-v1:0",
        "llama",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3599, "59m59s"),
        (3600, "1h0m0s"),
        (47_045, "13h4m5s"),
        (2_340_000, "650h0m0s"),
    ],
)
def test_resets_are_written_as_openai_writes_them(seconds: int, text: str) -> None:
    assert openai_duration(seconds) == text


def test_another_spelling_of_a_model_is_covered_by_its_quota_rule() -> None:
    """A provider that reads `Claude-3-5-Haiku-Latest ` as the configured model serves it:
    the rule naming that model counts it too, as the access rules do."""
    rule = LimitRule(
        name="haiku-day", subject="user", models=("claude-3-5-haiku-latest",), requests_per_day=9
    )
    rules = RuleSet(QuotasConfig(rules=(rule,)))
    alice = Identity(method="api_key", api_key_id="k1", user_id="alice")
    for spelling in (
        "Claude-3-5-Haiku-Latest",
        "claude-3-5-haiku-latest ",
        "CLAUDE-3-5-HAIKU-LATEST",
    ):
        assert rules.limits_for(alice, {}, spelling, 1_800_000_000.0), spelling
    assert not rules.limits_for(alice, {}, "claude-sonnet-4-0", 1_800_000_000.0)


def test_another_spelling_of_a_priced_model_is_billed_at_its_price() -> None:
    """Priced as the name it spells, not as an unpriced model that costs 0."""
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {})
    table = PriceTable(config.pricing, config.models)
    usage = Usage(1000, 100, 1100)
    configured = table.cost("claude-3-5-haiku-latest", usage)
    assert configured.priced and configured.picousd > 0
    for spelling in ("Claude-3-5-Haiku-Latest", " claude-3-5-haiku-latest"):
        assert table.cost(spelling, usage) == configured, spelling
    assert not table.cost("claude-made-up", usage).priced
