"""Model groups: a name clients ask for, served by one of several models drawn by weight
among those the route and the caller's access rules allow, passing over a member whose
provider failed lately (docs/providers.md#load-balancing-across-deployments).

Through the processor with real ext_proc messages; the balancer's chance and clock are
the test's own (``Services.balancer``), so nothing here depends on luck or sleeps."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import generate_latest

from extproc import headers
from extproc.config import parse_config
from extproc.config.budget_prices import unpriced_budget_warnings
from extproc.config.load_warnings import config_warnings
from extproc.config.loader import ConfigError
from extproc.context import PhaseOutput
from extproc.envoy_failover import failover_cluster_name
from extproc.model_groups import Balancer
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.server import Gateway
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import ResponseOwner, ResponseOwners
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_anthropic_failover import running
from tests.unit.test_failover_cut_attempts import attempt
from tests.unit.test_openai_failover import DEFAULT, admitted
from tests.unit.test_openai_failover import attempt as failover_attempt
from tests.unit.test_span_cache_tokens import span_attributes

CONFIG = """
providers:
  - {name: east, base_url: 'http://127.0.0.1:1/v1', api_key: k-east-123456}
  - {name: west, base_url: 'http://127.0.0.1:2/v1', api_key: k-west-123456}
  - {name: claude-direct, type: anthropic, base_url: 'http://127.0.0.1:3/v1', api_key: k-c-123456}
models:
  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}
  - {name: gpt-west, provider: west, upstream_model: gpt-4o}
  - {name: claude-a, provider: claude-direct, upstream_model: claude-sonnet-4-0}
  - {name: emb, provider: east, kind: embeddings}
model_groups:
  - name: gpt-4o
    members:
      - {model: gpt-east, weight: 3}
      - {model: gpt-west, weight: 1}
    cooldown_s: 10
  - name: mixed
    members: [{model: gpt-east}, {model: claude-a}]
pricing:
  models:
    gpt-east: {input_per_million: 1.0, output_per_million: 1.0}
    gpt-west: {input_per_million: 2.0, output_per_million: 2.0}
auth:
  api_keys:
    - {id: team1, key: team1-key, user_id: alice, group_id: engineering}
    - {id: team2, key: team2-key, user_id: bob, group_id: marketing}
    - {id: west-key, key: west-only-key, user_id: carol, allowed_models: [gpt-west]}
    - {id: group-key, key: group-only-key, user_id: dave, group_id: engineering,
       allowed_models: [gpt-4o]}
  access_rules:
    - {name: east-for-engineering, models: [gpt-east], groups: [engineering]}
quotas:
  rules:
    - {name: four-per-day, subject: api_key, models: [gpt-4o], requests_per_day: 4}
routes:
  - {name: chat, path: /v1/chat/completions}
  - {name: messages, path: /v1/messages, api: anthropic_messages}
  - {name: west-chat, path: /west/v1/chat/completions, provider: west}
  - {name: embeddings, path: /v1/embeddings, api: openai_embeddings}
  - {name: forced, path: /forced/v1/chat/completions, model: gpt-4o}
  - {name: models, path: /v1/models, api: openai_models}
"""


class Draws:
    """The balancer's chance: the values given, in turn, then 0.0."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0) if self.values else 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def services_with(balancer: Balancer) -> Services:
    return Services(metrics=GatewayMetrics(), access_log=MemoryLog(), balancer=balancer)


def chat(model: str, key: str = "team1-key", path: str = "/v1/chat/completions") -> list[Any]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return [
        request_headers(path, headers={"authorization": f"Bearer {key}"}),
        request_body(body),
    ]


def set_header(answer: Any, name: str) -> str | None:
    for option in answer.request_body.response.header_mutation.set_headers:
        if option.header.key == name:
            return str(option.header.raw_value.decode())
    return None


def served_by(answer: Any) -> str:
    """The provider the gateway pointed Envoy at (its cluster), or the refusal's status."""
    if answer.HasField("immediate_response"):
        return str(answer.immediate_response.status.code)
    cluster = set_header(answer, headers.CLUSTER)
    assert cluster is not None
    return cluster.removeprefix("provider_")


def refusal(answer: Any) -> tuple[int, dict[str, Any]]:
    assert answer.HasField("immediate_response"), answer
    return answer.immediate_response.status.code, orjson.loads(answer.immediate_response.body)


async def ask(services: Services, messages: list[Any], config: str = CONFIG) -> Any:
    processor = processor_for(parse_config(config, "gateway.yaml", {}), services)
    return (await run_stream(processor, messages))[-1]


async def test_each_draw_picks_the_member_its_weight_covers() -> None:
    # Weights 3:1: draws below 3/4 land on gpt-east, the rest on gpt-west.
    services = services_with(Balancer(draw=Draws(0.0, 0.74, 0.76, 0.99)))
    picks = [served_by(await ask(services, chat("gpt-4o"))) for _ in range(4)]
    assert picks == ["east", "east", "west", "west"]


async def test_picks_follow_the_weights_over_many_requests() -> None:
    services = services_with(Balancer(draw=random.Random(20261207).random))
    picks = Counter([served_by(await ask(services, chat("gpt-4o"))) for _ in range(400)])
    assert set(picks) == {"east", "west"}
    # 3:1, 400 draws: 300 expected for east, sd about 8.7; the band is over 5 sd wide.
    assert 255 <= picks["east"] <= 345, picks


async def test_the_log_line_names_the_group_and_the_member_and_bills_the_members_price() -> None:
    services = services_with(Balancer(draw=Draws(0.9)))  # gpt-west
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0, "total_tokens": 1_000_000}
    answer = {"id": "c", "object": "chat.completion", "choices": [], "usage": usage}
    processor = processor_for(parse_config(CONFIG, "gateway.yaml", {}), services)
    await run_stream(
        processor,
        [*chat("gpt-4o"), response_headers(200), response_body(orjson.dumps(answer))],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["group_member"], line["provider"]) == ("gpt-4o", "gpt-west", "west")
    assert line["upstream_model"] == "gpt-4o"
    assert line["cost_usd"] == 2.0  # gpt-west's price, not gpt-east's
    page = generate_latest(services.metrics.registry).decode()
    assert 'aigw_requests_total{model="gpt-4o",provider="west",route="chat"' in page


async def test_a_request_for_a_member_by_name_logs_no_group() -> None:
    services = services_with(Balancer())
    processor = processor_for(parse_config(CONFIG, "gateway.yaml", {}), services)
    await run_stream(processor, [*chat("gpt-west"), response_headers(200), response_body(b"{}")])
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["group_member"]) == ("gpt-west", None)


async def test_access_rules_narrow_the_members() -> None:
    # gpt-east is engineering's alone: marketing's requests all go to gpt-west.
    services = services_with(Balancer(draw=Draws(0.0, 0.0, 0.0)))
    assert [served_by(await ask(services, chat("gpt-4o", "team2-key"))) for _ in range(3)] == [
        "west"
    ] * 3
    # A key allowed one member reaches that one only; a key allowed the group, both.
    assert served_by(await ask(services, chat("gpt-4o", "west-only-key"))) == "west"
    services = services_with(Balancer(draw=Draws(0.0, 0.9)))
    assert served_by(await ask(services, chat("gpt-4o", "group-only-key"))) == "east"
    assert served_by(await ask(services, chat("gpt-4o", "group-only-key"))) == "west"


async def test_a_caller_no_member_is_allowed_gets_403_naming_the_group() -> None:
    config = CONFIG.replace(
        "    - {name: east-for-engineering, models: [gpt-east], groups: [engineering]}\n",
        "    - {name: gpt-for-engineering, models: [gpt-4o], groups: [engineering]}\n",
    )
    services = services_with(Balancer())
    status, body = refusal(await ask(services, chat("gpt-4o", "team2-key"), config))
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["group_member"], line["provider"]) == ("gpt-4o", None, None)
    assert "'gpt-4o'" in body["error"]["message"]
    assert "gpt-for-engineering" in body["error"]["message"]
    # The rule naming the group covers its members asked for by their own names too.
    status, _ = refusal(await ask(services_with(Balancer()), chat("gpt-west", "team2-key"), config))
    assert status == 403


async def test_a_route_kept_to_one_provider_serves_its_member_only() -> None:
    services = services_with(Balancer(draw=Draws(0.0, 0.0)))
    path = "/west/v1/chat/completions"
    assert served_by(await ask(services, chat("gpt-4o", path=path))) == "west"
    # An Anthropic Messages route cannot send to an OpenAI-compatible provider: Claude.
    body = orjson.dumps(
        {"model": "mixed", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    )
    messages = [
        request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
        request_body(body),
    ]
    assert served_by(await ask(services, messages)) == "claude_direct"


async def test_no_member_on_the_route_is_the_groups_404_or_400() -> None:
    config = CONFIG.replace(
        "  - {name: west-chat, path: /west/v1/chat/completions, provider: west}\n",
        "  - {name: west-chat, path: /west/v1/chat/completions, provider: claude-direct}\n",
    )
    status, body = refusal(
        await ask(
            services_with(Balancer()), chat("gpt-4o", path="/west/v1/chat/completions"), config
        )
    )
    assert status == 404 and "'gpt-4o'" in body["error"]["message"]
    # On the Messages route, neither OpenAI-compatible member speaks Anthropic's API.
    body_bytes = orjson.dumps(
        {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    )
    messages = [
        request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
        request_body(body_bytes),
    ]
    status, body = refusal(await ask(services_with(Balancer()), messages))
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "'gpt-4o'" in body["error"]["message"]
    # A chat group on the embeddings route: the kind's refusal, naming the group.
    embed = [
        request_headers("/v1/embeddings", headers={"authorization": "Bearer team1-key"}),
        request_body(orjson.dumps({"model": "gpt-4o", "input": "hi"})),
    ]
    status, body = refusal(await ask(services_with(Balancer()), embed))
    assert status == 400 and body["error"]["code"] == "unsupported_model_for_route"
    assert "'gpt-4o'" in body["error"]["message"]


async def test_a_route_whose_own_model_is_a_group_draws_from_it() -> None:
    services = services_with(Balancer(draw=Draws(0.0, 0.9)))
    path = "/forced/v1/chat/completions"
    assert served_by(await ask(services, chat("whatever", path=path))) == "east"
    assert served_by(await ask(services, chat("whatever", path=path))) == "west"


async def test_a_failed_member_is_passed_over_for_its_cooldown_then_drawn_again() -> None:
    clock = Clock()
    balancer = Balancer(clock=clock, draw=Draws())  # every draw 0.0: gpt-east when it may
    services = services_with(balancer)
    processor = processor_for(parse_config(CONFIG, "gateway.yaml", {}), services)
    # gpt-east's provider answers 503: counted in aigw_upstream_errors_total, and cooling.
    await run_stream(processor, [*chat("gpt-4o"), response_headers(503), response_body(b"{}")])
    assert served_by(await ask(services, chat("gpt-4o"))) == "west"
    clock.now += 9.9
    assert served_by(await ask(services, chat("gpt-4o"))) == "west"
    clock.now += 0.2  # past cooldown_s (10)
    assert served_by(await ask(services, chat("gpt-4o"))) == "east"
    # A 429 cools it too; a 400 (the client's own fault) does not.
    await run_stream(processor, [*chat("gpt-4o"), response_headers(429), response_body(b"{}")])
    assert served_by(await ask(services, chat("gpt-4o"))) == "west"
    clock.now += 11
    await run_stream(processor, [*chat("gpt-4o"), response_headers(400), response_body(b"{}")])
    assert served_by(await ask(services, chat("gpt-4o"))) == "east"
    # Each request that went elsewhere for it is counted, under the group and the provider.
    assert passed_over(services, "east") == 3


def passed_over(services: Services, provider: str) -> float:
    value = services.metrics.registry.get_sample_value(
        "aigw_model_group_passed_over_total", {"model": "gpt-4o", "provider": provider}
    )
    return value or 0.0


async def test_when_every_member_is_cooling_all_are_drawn_by_weight() -> None:
    clock = Clock()
    balancer = Balancer(clock=clock, draw=Draws(0.0, 0.9))
    balancer.provider_failed("east")
    balancer.provider_failed("west")
    services = services_with(balancer)
    assert served_by(await ask(services, chat("gpt-4o"))) == "east"
    assert served_by(await ask(services, chat("gpt-4o"))) == "west"
    # None was passed over: none went elsewhere for it.
    assert passed_over(services, "east") == passed_over(services, "west") == 0


async def test_a_cooldown_of_0_never_passes_a_member_over() -> None:
    balancer = Balancer(clock=Clock(), draw=Draws())
    balancer.provider_failed("east")
    config = CONFIG.replace("    cooldown_s: 10\n", "    cooldown_s: 0\n")
    assert served_by(await ask(services_with(balancer), chat("gpt-4o"), config)) == "east"


async def test_a_member_with_fallbacks_fails_over_along_its_own_chain() -> None:
    config = CONFIG.replace(
        "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}\n",
        "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat,"
        " fallbacks: [gpt-west]}\n",
    )
    answer = await ask(services_with(Balancer(draw=Draws(0.0))), chat("gpt-4o"), config)
    assert set_header(answer, headers.CLUSTER) == failover_cluster_name("gpt-east")


async def test_a_quota_rule_naming_the_group_counts_every_member(
    quota_store: Any,
) -> None:
    services = services_with(Balancer(draw=Draws(0.0, 0.9, 0.0, 0.9, 0.0)))
    services.quota_store = quota_store
    processor = processor_for(parse_config(CONFIG, "gateway.yaml", {}), services)
    picks = [served_by((await run_stream(processor, chat("gpt-4o")))[-1]) for _ in range(4)]
    assert picks == ["east", "west", "east", "west"]
    # A request for a member by its own name counts against the group's rule too.
    status, body = refusal((await run_stream(processor, chat("gpt-west")))[-1])
    assert status == 429, body


async def listed(key: str, config: str = CONFIG) -> list[str]:
    answer = await ask(
        services_with(Balancer()),
        [request_headers("/v1/models", "GET", {"authorization": f"Bearer {key}"}, True)],
        config,
    )
    assert answer.immediate_response.status.code == 200, answer
    return [entry["id"] for entry in orjson.loads(answer.immediate_response.body)["data"]]


async def test_the_model_list_names_the_group_to_callers_who_may_use_a_member() -> None:
    assert "gpt-4o" in await listed("team1-key")
    assert "gpt-4o" in await listed("west-only-key")  # gpt-west is its member
    config = CONFIG.replace(
        "    - {name: east-for-engineering, models: [gpt-east], groups: [engineering]}\n",
        "    - {name: gpt-for-engineering, models: [gpt-4o], groups: [engineering]}\n",
    )
    assert "gpt-4o" not in await listed("team2-key", config)


def test_the_group_name_is_an_admitted_metrics_label() -> None:
    metrics = GatewayMetrics()
    metrics.admit_config(parse_config(CONFIG, "gateway.yaml", {}))
    assert "gpt-4o" in metrics.labels._admitted["model"]


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        (
            "  - {name: g, members: [{model: gpt-eats}]}\n",
            "model_groups[0].members[0].model: unknown model 'gpt-eats'; did you mean 'gpt-east'?",
        ),
        (
            "  - {name: gpt-east, members: [{model: gpt-west}]}\n",
            "model_groups[0].name: 'gpt-east' is already a model's name",
        ),
        (
            # As rules read names: one name to every rule naming either.
            "  - {name: GPT-East, members: [{model: gpt-west}]}\n",
            "model_groups[0].name: 'GPT-East' is already a model's name ('gpt-east')",
        ),
        (
            "  - {name: g, members: [{model: gpt-west}]}\n"
            "  - {name: g, members: [{model: gpt-east}]}\n",
            "model_groups[1].name: 'g' is already the name of model_groups[0]",
        ),
        ("  - {name: g, members: [{model: gpt-west, weight: 0}]}\n", "weight"),
        ("  - {name: g, members: [{model: gpt-west, weight: 1.5}]}\n", "weight"),
        ("  - {name: g, members: []}\n", "members"),
        (
            "  - {name: g, members: [{model: gpt-west}, {model: gpt-west, weight: 2}]}\n",
            "model_groups[0].members[1].model: 'gpt-west' is a member twice",
        ),
        (
            "  - {name: g, members: [{model: gpt-east}, {model: emb}]}\n",
            "model_groups[0].members: a group's members must be of one kind",
        ),
        ("  - {name: g, members: [{model: gpt-west}], cooldown_s: -1}\n", "cooldown_s"),
    ],
)
def test_config_errors_name_the_field(groups: str, problem: str) -> None:
    text = CONFIG.replace(CONFIG[CONFIG.index("model_groups:") : CONFIG.index("pricing:")], "")
    text = text.replace("pricing:\n", f"model_groups:\n{groups}pricing:\n")
    text = text.replace(
        "models: [gpt-4o], requests_per_day", "models: [gpt-east], requests_per_day"
    )
    text = text.replace(", model: gpt-4o}", "}")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gateway.yaml", {})
    assert problem in str(raised.value)


def test_a_group_named_like_an_alias_is_refused() -> None:
    text = CONFIG.replace(
        "  - {name: gpt-west, provider: west, upstream_model: gpt-4o}\n",
        "  - {name: gpt-west, provider: west, upstream_model: gpt-4o, aliases: [mixed]}\n",
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gateway.yaml", {})
    assert "model_groups[1].name: 'mixed' is already an alias of model 'gpt-west'" in str(
        raised.value
    )


async def test_a_reload_changes_the_groups_and_keeps_the_providers_failures() -> None:
    gateway = Gateway(parse_config(CONFIG, "gateway.yaml", {}), None)
    clock = Clock()
    gateway.services.balancer = Balancer(clock=clock, draw=Draws())
    await gateway.runtime.start()
    try:
        gateway.services.balancer.provider_failed("east")
        assert served_by((await run_stream(gateway.processor, chat("gpt-4o")))[-1]) == "west"
        # The reloaded file makes gpt-4o gpt-east's alone, and adds a group.
        reloaded = CONFIG.replace("      - {model: gpt-west, weight: 1}\n", "").replace(
            "model_groups:\n",
            "model_groups:\n  - {name: west-pool, members: [{model: gpt-west}]}\n",
        )
        await gateway.apply(parse_config(reloaded, "gateway.yaml", {}))
        # Only member, and cooling: drawn all the same (every member is cooling).
        assert served_by((await run_stream(gateway.processor, chat("gpt-4o")))[-1]) == "east"
        assert served_by((await run_stream(gateway.processor, chat("west-pool")))[-1]) == "west"
        # Removed by a reload, a group is an unknown model again.
        await gateway.apply(parse_config(CONFIG, "gateway.yaml", {}))
        status, _ = refusal((await run_stream(gateway.processor, chat("west-pool")))[-1])
        assert status == 404
    finally:
        await gateway.runtime.close()
        for retired in gateway._retired:
            await retired.wait_closed()


def test_a_budget_naming_a_group_warns_of_its_unpriced_members() -> None:
    text = CONFIG.replace(
        "models: [gpt-4o], requests_per_day: 4}",
        "models: [mixed], cost_quota: {limit_usd: 5, period: calendar_month}}",
    )
    [warning] = unpriced_budget_warnings(parse_config(text, "gateway.yaml", {}))
    assert "counts models without a price as free: claude-a " in warning


async def test_a_request_its_fallback_answered_cools_the_member_it_was_sent_to() -> None:
    # Envoy could not reach gpt-east's provider (no answer of its own to count) and the
    # chain's next member, gpt-west, answered: gpt-east is passed over for a while.
    config = CONFIG.replace(
        "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}\n",
        "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat,"
        " fallbacks: [gpt-west]}\n",
    )
    clock = Clock()
    services = services_with(Balancer(clock=clock, draw=Draws()))
    processor = processor_for(parse_config(config, "gateway.yaml", {}), services)
    answered = {
        headers.ANSWERED_BY_PROVIDER: "west",
        headers.ANSWERED_BY_MODEL: "gpt-west",
        headers.ANSWERED_UPSTREAM_MODEL: "gpt-4o",
    }
    await run_stream(processor, [*chat("gpt-4o"), response_headers(200, answered)])
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["group_member"], line["provider"]) == ("gpt-4o", "gpt-west", "west")
    assert served_by(await ask(services, chat("gpt-4o"), config)) == "west"
    clock.now += 10
    answer = await ask(services, chat("gpt-4o"), config)
    assert set_header(answer, headers.CLUSTER) == failover_cluster_name("gpt-east")


# Found in review: what the request does once drawn must not depend on the draw.


def posted(path: str, key: str, body: dict[str, Any]) -> list[Any]:
    return [
        request_headers(path, headers={"authorization": f"Bearer {key}"}),
        request_body(orjson.dumps(body)),
    ]


WITH_FALLBACK = CONFIG.replace(
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}\n",
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat,"
    " fallbacks: [gpt-west]}\n",
).replace("pricing:\n", "model_prefixes:\n  - {prefix: gpt-, provider: east}\npricing:\n")


def test_a_group_reads_its_answers_headers_where_any_member_must() -> None:
    # `gpt-` names east's models: the group's own name resolved to east without
    # fallbacks, and its requests skipped the answer's headers, where gpt-east's chain
    # must read them (which member answered: the log line, the price).
    runtime = Runtime(parse_config(WITH_FALLBACK, "gateway.yaml", {}), services_with(Balancer()))
    chat_route = runtime.routes.named("chat")
    assert chat_route is not None
    assert not runtime.lean_response(chat_route, "gpt-east")
    assert not runtime.lean_response(chat_route, "gpt-4o")
    # Members that are each lean keep their group lean.
    runtime = Runtime(
        parse_config(WITH_FALLBACK.replace(", fallbacks: [gpt-west]", ""), "gateway.yaml", {}),
        services_with(Balancer()),
    )
    assert runtime.lean_response(chat_route, "gpt-4o")


async def test_a_body_one_members_translation_refuses_goes_to_the_others() -> None:
    # Claude takes one choice: `n: 2` goes to gpt-east whatever the draw says.
    body = {"model": "mixed", "n": 2, "messages": [{"role": "user", "content": "hi"}]}
    messages = posted("/v1/chat/completions", "team1-key", body)
    services = services_with(Balancer(draw=Draws(0.0, 0.99)))
    assert [served_by(await ask(services, messages)) for _ in range(2)] == ["east", "east"]


async def test_a_key_allowed_the_group_keeps_its_members_failover() -> None:
    # group-only-key may use gpt-west as a member of gpt-4o: gpt-east's chain keeps it.
    answer = await ask(
        services_with(Balancer(draw=Draws(0.0))), chat("gpt-4o", "group-only-key"), WITH_FALLBACK
    )
    assert set_header(answer, headers.CLUSTER) == failover_cluster_name("gpt-east")


async def test_a_stored_response_continues_at_the_member_whose_provider_keeps_it(
    quota_store: Any, valkey: EmbeddedValkey
) -> None:
    client = connect(valkey.url, 2.0)
    owners = ResponseOwners(client, "test:", 30)
    created = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    await owners.record(created, ResponseOwner("user:alice", "west", 10))
    responses_route = "  - {name: responses, path: /v1/responses, api: openai_responses}\n"
    config = CONFIG.replace("  - {name: models,", responses_route + "  - {name: models,")
    services = services_with(Balancer(draw=Draws(0.0, 0.0)))  # gpt-east, twice
    services.response_owners = owners
    body = {"model": "gpt-4o", "input": "And then?", "previous_response_id": created}
    try:
        answer = await ask(services, posted("/v1/responses", "team1-key", body), config)
        assert served_by(answer) == "west"
        # A caller who may not use the member there is told where the response is.
        await owners.record(created, ResponseOwner("user:bob", "east", 10))
        answer = await ask(services, posted("/v1/responses", "team2-key", body), config)
        status, refused = refusal(answer)
        assert (status, refused["error"]["code"]) == (400, "previous_response_elsewhere")
        assert "model 'gpt-4o'" in refused["error"]["message"]
    finally:
        await client.aclose()


def test_a_price_under_the_groups_name_is_warned_of() -> None:
    # Billed at the member's prices: one under the group's name prices nothing.
    text = CONFIG.replace(
        "pricing:\n  models:\n",
        "pricing:\n  models:\n    MIXED: {input_per_million: 1.0, output_per_million: 1.0}\n",
    )
    [warning] = config_warnings(parse_config(text, "gateway.yaml", {}))
    assert warning.startswith("pricing.models.MIXED: prices model group 'mixed'")
    assert "price its members (gpt-east, claude-a)" in warning
    assert config_warnings(parse_config(CONFIG, "gateway.yaml", {})) == []


# What an operator graphs per model: every series of a group's request under the group.

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
    }
)
ANSWERED_BY_WEST = {
    headers.ANSWERED_BY_PROVIDER: "west",
    headers.ANSWERED_BY_MODEL: "gpt-west",
    headers.ANSWERED_UPSTREAM_MODEL: "gpt-4o",
}


async def failed_over(
    services: Services, model: str = "gpt-4o", config: str = WITH_FALLBACK
) -> list[Any]:
    """A request for ``model`` (by default the group, drawn to gpt-east) whose provider
    answers 503: Envoy retries on gpt-west (gpt-east's fallback), which answers. The
    downstream filter's answers; each attempt runs through the processor's attempt stages
    as Envoy runs it."""
    runtime = Runtime(parse_config(config, "gateway.yaml", {}), services)
    processor = Processor(lambda: runtime, default_stages(), attempt_stages())
    answers: list[Any] = []

    async def envoy() -> AsyncIterator[Any]:
        for message in chat(model):
            yield message
        sent = answers[-1].request_body.response.body_mutation.body
        await attempt(processor, "east", sent, 503, b'{"error": {"message": "overloaded"}}')
        await attempt(processor, "west", sent, 200, ANSWER)
        yield response_headers(200, ANSWERED_BY_WEST)
        yield response_body(ANSWER)

    async for answer in processor.process(envoy()):
        answers.append(answer)
    return answers


def sample(services: Services, name: str, **labels: str) -> float:
    return services.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_members_failover_counts_under_the_group_as_its_requests_do() -> None:
    services = services_with(Balancer(draw=Draws(0.0)))  # gpt-east
    await failed_over(services)
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["group_member"], line["provider"]) == ("gpt-4o", "gpt-west", "west")
    # The attempt Envoy retried, the failover and the request: one model, the group's,
    # so that errors / requests per model holds for a group; the providers the members'.
    errors = {"model": "gpt-4o", "provider": "east", "status_code": "503"}
    assert sample(services, "aigw_upstream_errors_total", **errors) == 1
    failovers = {"model": "gpt-4o", "to_model": "gpt-west"}
    assert sample(services, "aigw_failovers_total", **failovers) == 1
    requests = {"route": "chat", "model": "gpt-4o", "provider": "west", "status_code": "200"}
    assert sample(services, "aigw_requests_total", **requests) == 1
    page = generate_latest(services.metrics.registry).decode()
    assert 'model="gpt-east"' not in page


async def test_the_span_names_the_member_that_served() -> None:
    # Drawn gpt-west, no failover: the member drawn.
    services = services_with(Balancer(draw=Draws(0.9)))
    processor = processor_for(parse_config(CONFIG, "gateway.yaml", {}), services)
    answers = await run_stream(
        processor, [*chat("gpt-4o"), response_headers(200), response_body(ANSWER)]
    )
    span = span_attributes(answers)
    assert (span["gen_ai.request.model"], span["aigw.group_member"]) == ("gpt-4o", "gpt-west")
    assert span["aigw.provider"] == "west"
    # After failover, the chain member that answered, as the log line's group_member.
    span = span_attributes(await failed_over(services_with(Balancer(draw=Draws(0.0)))))
    assert (span["gen_ai.request.model"], span["aigw.group_member"]) == ("gpt-4o", "gpt-west")
    # A request that named no group has none.
    answers = await run_stream(
        processor, [*chat("gpt-west"), response_headers(200), response_body(ANSWER)]
    )
    assert "aigw.group_member" not in span_attributes(answers)


async def translated_fallback_answer_model(
    asked: str, aliases: list[str] | None = None, group: str | None = None
) -> str:
    """The model a fallback's translated answer names: Titan in another Bedrock account
    (with ``aliases``, in model group ``group``), asked for as ``asked``, falling over to
    Titan in the usual one (Bedrock's answer names no model: the gateway writes it)."""
    raw = yaml.safe_load(DEFAULT)
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    europe = {"region": "eu-west-1", "access_key_id": "AKIDEUROPE", "secret_access_key": "eu"}
    raw["providers"].append({**bedrock, "name": "bedrock-eu", "aws": europe})
    titan = "amazon.titan-embed-text-v2:0"
    raw["models"].append(
        {"name": "titan-main", "provider": "bedrock-eu", "upstream_model": titan,
         "kind": "embeddings", "aliases": aliases or [], "fallbacks": [titan]}
    )  # fmt: skip
    if group is not None:
        raw["model_groups"] = [{"name": group, "members": [{"model": "titan-main"}]}]
    cfg = parse_config(yaml.safe_dump(raw), "test", {})
    services = services_with(Balancer())
    _, body = await admitted(cfg, services, "/v1/embeddings", {"model": asked, "input": "x"})
    async with running(cfg, services) as runtime:
        ctx, _, stage = failover_attempt(runtime, "mock-bedrock", "/v1/embeddings", body)
    stage.response_headers(
        ctx, PhaseOutput(), {":status": "200", "content-type": "application/json"}
    )
    vectors = PhaseOutput()
    stage.response_body(
        ctx, vectors, orjson.dumps({"embedding": [0.5], "inputTextTokenCount": 3}), True
    )
    assert vectors.body is not None
    model: str = orjson.loads(vectors.body)["model"]
    return model


async def test_a_fallbacks_translated_answer_names_the_group() -> None:
    # The fallback's translated answer names what the client asked for, as the member's does.
    assert await translated_fallback_answer_model("titan-pool", group="titan-pool") == "titan-pool"
