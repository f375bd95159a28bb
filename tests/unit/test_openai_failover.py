"""Failover for OpenAI's Responses API, legacy text completions and embeddings, one
ext_proc stream at a time: the downstream filter sends a request for a model with
fallbacks to its chain, less the fallbacks that cannot answer it (the Responses API and
text completions: OpenAI-compatible providers alone; embeddings: the same model
elsewhere alone, whose vectors compare); each attempt sends the client's body to its own
provider with that provider's key, and the answer is logged, priced and recorded as the
member that answered. A Responses API request that builds on context one provider keeps
goes to that provider's member alone. Also: the client's query survives every attempt,
and a failed attempt that Envoy retries counts in aigw_upstream_errors_total."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml

from extproc import headers
from extproc.config import parse_config
from extproc.config.model import GatewayConfig, cluster_name
from extproc.context import PhaseOutput, RequestContext
from extproc.devstack import envoy_binary
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.envoy_failover import UPSTREAM_FILTER, failover_cluster_name, pinned_cluster_name
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.stages.pipeline import default_stages
from extproc.store.response_owners import ResponseOwner
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
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_anthropic_failover import config as anthropic_config
from tests.unit.test_anthropic_failover import running
from tests.unit.test_gemini_bedrock_failover import answered, only_log_line
from tests.unit.test_gemini_bedrock_failover import config as bedrock_config

DEFAULT = Path("config/gateway.yaml").read_text(encoding="utf-8")
CLIENT = {"authorization": "Bearer team1-key"}  # key team1, user alice
ALICE = "user:alice"  # whom the records name as her responses' owner
PROMPT = "fail over please"
# The fallback in Europe, priced apart from the primary (the default's gpt-4o-mini).
EU_PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
STORED = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
RESPONSE_ANSWER = {
    "id": "resp_68aa00000000000000000000000000000000000000000001",
    "object": "response",
    "status": "completed",
    "model": "gpt-4o-mini",
    "output": [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi"}],
        }
    ],
    "usage": {"input_tokens": 1_000_000, "output_tokens": 1_000_000, "total_tokens": 2_000_000},
}


def config() -> GatewayConfig:
    """The default config with ``gpt-main`` (gpt-4o-mini on the mock) failing over to
    Claude (no Responses API, no text completions), then to gpt-4o-mini in Europe, an
    OpenAI-compatible account of its own; ``embed-main`` (text-embedding-3-small)
    failing over to another embeddings model in Europe, Titan's on Bedrock, then the
    same model in the US."""
    raw = yaml.safe_load(DEFAULT)
    mock = next(p for p in raw["providers"] if p["name"] == "mock")
    raw["providers"] += [
        {**mock, "name": "mock-eu", "base_url": "http://127.0.0.1:1/eu/v1", "api_key": "eu-key"},
        {**mock, "name": "mock-us", "base_url": "http://127.0.0.1:1/us/v1", "api_key": "us-key"},
    ]
    raw["models"] += [
        {"name": "gpt-main", "provider": "mock", "upstream_model": "gpt-4o-mini",
         "fallbacks": ["claude-3-5-haiku-latest", "gpt-eu"]},
        {"name": "gpt-eu", "provider": "mock-eu", "upstream_model": "gpt-4o-mini"},
        {"name": "embed-main", "provider": "mock", "upstream_model": "text-embedding-3-small",
         "kind": "embeddings",
         "fallbacks": ["embed-large-eu", "amazon.titan-embed-text-v2:0", "embed-us"]},
        {"name": "embed-large-eu", "provider": "mock-eu", "kind": "embeddings",
         "upstream_model": "text-embedding-3-large"},
        {"name": "embed-us", "provider": "mock-us", "kind": "embeddings",
         "upstream_model": "text-embedding-3-small"},
    ]  # fmt: skip
    raw["pricing"]["models"]["gpt-eu"] = EU_PRICE
    return parse_config(yaml.safe_dump(raw), "test", {})


class Owners:
    """The stored responses' records, in memory (``store.response_owners``' interface)."""

    def __init__(self, records: dict[str, ResponseOwner] | None = None) -> None:
        self.records = dict(records or {})

    async def find(self, response_id: str) -> ResponseOwner | None:
        return self.records.get(response_id)

    async def record(self, response_id: str, owner: ResponseOwner) -> None:
        self.records[response_id] = owner

    def record_soon(self, response_id: str, owner: ResponseOwner, *_: Any) -> None:
        self.records[response_id] = owner


def with_owners(owners: Owners) -> Services:
    return Services(GatewayMetrics(), MemoryLog(), response_owners=cast(Any, owners))


async def admitted(
    cfg: GatewayConfig, services: Services, path: str, body: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The cluster the downstream filter sends the client's request to, and its body."""
    answers = await run_stream(
        processor_for(cfg, services),
        [request_headers(path, headers=CLIENT), request_body(orjson.dumps(body))],
    )
    mutation = answers[-1].request_body.response
    set_headers = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }
    sent = mutation.body_mutation.body or orjson.dumps(body)
    return set_headers[headers.CLUSTER], orjson.loads(sent)


def attempt(
    runtime: Runtime, provider: str, path: str, body: dict[str, Any]
) -> tuple[RequestContext, PhaseOutput, AttemptStage]:
    """One attempt at ``provider`` of the request the client sent to ``path``."""
    ctx = RequestContext(runtime=runtime)
    ctx.attributes = attempt_on(provider)
    ctx.path = path
    ctx.request_headers = {":path": path, headers.REQUEST_ID: "req-5"}
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    out = PhaseOutput()
    stage.request_body(ctx, out, orjson.dumps(body))
    return ctx, out, stage


def sent(out: PhaseOutput) -> dict[str, Any]:
    assert out.body is not None
    found: dict[str, Any] = orjson.loads(out.body)
    return found


def upstream_errors(services: Services) -> dict[tuple[str, str, str], float]:
    found: dict[tuple[str, str, str], float] = {}
    for family in services.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "aigw_upstream_errors_total":
                labels = sample.labels
                key = (labels["provider"], labels["model"], labels["status_code"])
                found[key] = sample.value
    return found


# --- Which members a request's chain keeps ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "api"),
    [
        ("/v1/responses", {"input": PROMPT}, "openai_responses"),
        ("/v1/responses", {"input": PROMPT, "stream": True}, "openai_responses"),
        ("/v1/responses/compact", {"input": PROMPT}, "openai_responses_compact"),
        ("/v1/completions", {"prompt": PROMPT}, "openai_completions"),
        ("/v1/completions", {"prompt": PROMPT, "stream": True}, "openai_completions"),
    ],
)
async def test_responses_and_text_completions_fail_over_to_openai_compatible_members_alone(
    services: Services, path: str, body: dict[str, Any], api: str
) -> None:
    cluster, sent_body = await admitted(config(), services, path, {"model": "gpt-main", **body})
    # Claude (Anthropic's API has neither) is left out of the chain.
    assert cluster == failover_cluster_name("gpt-main", (0,))
    assert sent_body[headers.FAILOVER_CHAIN_KEY] == [
        ["mock", "gpt-main", "gpt-4o-mini"],
        ["mock-eu", "gpt-eu", "gpt-4o-mini"],
    ]
    assert sent_body[headers.FAILOVER_REQUEST_KEY] == {"api": api, "headers": {}}


async def test_embeddings_fail_over_to_the_same_model_alone(services: Services) -> None:
    cluster, sent_body = await admitted(
        config(), services, "/v1/embeddings", {"model": "embed-main", "input": PROMPT}
    )
    # Another model's vectors (text-embedding-3-large, Titan's) would not compare.
    assert cluster == failover_cluster_name("embed-main", (0, 1))
    assert sent_body[headers.FAILOVER_CHAIN_KEY] == [
        ["mock", "embed-main", "text-embedding-3-small"],
        ["mock-us", "embed-us", "text-embedding-3-small"],
    ]


async def test_a_responses_token_count_goes_to_its_models_provider_alone(
    services: Services,
) -> None:
    cluster, sent_body = await admitted(
        config(), services, "/v1/responses/input_tokens", {"model": "gpt-main", "input": PROMPT}
    )
    assert cluster == cluster_name(config().provider("mock"))
    assert headers.FAILOVER_CHAIN_KEY not in sent_body


# --- Context a provider keeps -------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        {"conversation": "conv_123"},
        {"prompt": {"id": "pmpt_123"}},
        {"previous_response_id": STORED},
    ],
)
async def test_a_response_building_on_the_primarys_stored_context_does_not_fail_over(
    context: dict[str, Any],
) -> None:
    owners = Owners({STORED: ResponseOwner(ALICE, "mock", 10)})
    cluster, sent_body = await admitted(
        config(), with_owners(owners), "/v1/responses", {"model": "gpt-main", **context}
    )
    assert cluster == cluster_name(config().provider("mock"))
    assert headers.FAILOVER_CHAIN_KEY not in sent_body


async def test_a_response_a_fallback_stored_is_continued_at_that_fallback_alone() -> None:
    owners = Owners({STORED: ResponseOwner(ALICE, "mock-eu", 10)})
    body = {"model": "gpt-main", "input": PROMPT, "previous_response_id": STORED}
    cluster, sent_body = await admitted(config(), with_owners(owners), "/v1/responses", body)
    assert cluster == pinned_cluster_name("gpt-main", 1)
    assert sent_body[headers.FAILOVER_CHAIN_KEY] == [["mock-eu", "gpt-eu", "gpt-4o-mini"]]


# --- One attempt -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/responses", "/eu/v1/responses"),
        ("/v1/responses/compact", "/eu/v1/responses/compact"),
        ("/v1/completions", "/eu/v1/completions"),
    ],
)
async def test_an_attempt_sends_the_clients_body_to_its_own_provider_with_its_key(
    services: Services, path: str, endpoint: str
) -> None:
    cfg = config()
    body = {"model": "gpt-main", "input" if "responses" in path else "prompt": PROMPT}
    _, admitted_body = await admitted(cfg, services, path, body)
    ctx, out, _ = attempt(Runtime(cfg, services), "mock-eu", path, admitted_body)
    assert out.set_headers[":path"] == endpoint
    assert out.set_headers["authorization"] == "Bearer eu-key"
    assert sent(out)["model"] == "gpt-4o-mini"
    assert out.body is not None and b"x-aigw" not in out.body
    assert ctx.model == "gpt-eu"


async def test_a_bedrock_embeddings_attempt_answers_in_openais_shape(services: Services) -> None:
    """Titan in another Bedrock account: the same model, translated both ways."""
    raw = yaml.safe_load(DEFAULT)
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    europe = {"region": "eu-west-1", "access_key_id": "AKIDEUROPE", "secret_access_key": "eu"}
    raw["providers"].append({**bedrock, "name": "bedrock-eu", "aws": europe})
    titan = "amazon.titan-embed-text-v2:0"
    raw["models"] += [
        {"name": "titan-main", "provider": "bedrock-eu", "upstream_model": titan,
         "kind": "embeddings", "fallbacks": [titan]},
    ]  # fmt: skip
    cfg = parse_config(yaml.safe_dump(raw), "test", {})
    _, body = await admitted(cfg, services, "/v1/embeddings", {"model": "titan-main", "input": "x"})
    async with running(cfg, services) as runtime:
        ctx, out, stage = attempt(runtime, "mock-bedrock", "/v1/embeddings", body)
    assert out.set_headers[":path"].endswith("/invoke")
    assert "us-east-1/bedrock" in out.set_headers["authorization"]
    answer = PhaseOutput()
    stage.response_headers(ctx, answer, {":status": "200", "content-type": "application/json"})
    vectors = PhaseOutput()
    stage.response_body(
        ctx, vectors, orjson.dumps({"embedding": [0.5], "inputTextTokenCount": 3}), True
    )
    assert vectors.body is not None
    assert orjson.loads(vectors.body)["data"][0]["embedding"] == [0.5]


async def test_an_anthropic_attempt_after_a_bedrock_one_keeps_the_clients_query(
    services: Services,
) -> None:
    """The Anthropic SDK's ``?beta=true``: Envoy gives the second attempt the first's
    path (Bedrock's, without it)."""
    cfg = anthropic_config()
    path = "/v1/messages?beta=true"
    body = {"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    _, admitted_body = await admitted(cfg, services, path, body)
    async with running(cfg, services) as runtime:
        replayed_path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
        _, out, _ = attempt(runtime, "mock-anthropic", replayed_path, admitted_body)
    assert out.set_headers[":path"] == "/v1/messages?beta=true"


# --- The answer --------------------------------------------------------------------------


async def test_a_responses_answer_is_logged_priced_and_recorded_as_the_member_that_answered() -> (
    None
):
    owners = Owners()
    services = with_owners(owners)
    await run_stream(
        Processor(lambda: Runtime(config(), services), default_stages()),
        [
            request_headers("/v1/responses", headers=CLIENT),
            request_body(orjson.dumps({"model": "gpt-main", "input": PROMPT})),
            response_headers(200, answered("mock-eu", "gpt-eu", "gpt-4o-mini")),
            response_body(orjson.dumps(RESPONSE_ANSWER)),
        ],
    )
    line = only_log_line(services)
    assert (line["model"], line["provider"], line["upstream_model"]) == (
        "gpt-main",
        "mock-eu",
        "gpt-4o-mini",
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1_000_000, 1_000_000)
    assert line["cost_usd"] == pytest.approx(3.0)  # gpt-eu's price
    # A later retrieve or continuation goes to the provider that stores the response.
    assert owners.records[RESPONSE_ANSWER["id"]].provider == "mock-eu"  # type: ignore[index]


async def test_a_failed_attempt_envoy_retries_counts_as_an_upstream_error(
    services: Services,
) -> None:
    cfg = config()
    _, body = await admitted(cfg, services, "/v1/completions", {"model": "gpt-main", "prompt": "x"})
    runtime = Runtime(cfg, services)
    ctx, _, stage = attempt(runtime, "mock", "/v1/completions", body)
    stage.response_headers(ctx, PhaseOutput(), {":status": "429"})
    # The last member's error is the client's answer, counted downstream: not here.
    last, _, last_stage = attempt(runtime, "mock-eu", "/v1/completions", body)
    last_stage.response_headers(last, PhaseOutput(), {":status": "503"})
    assert upstream_errors(services) == {("mock", "gpt-main", "429"): 1.0}


async def test_a_bedrock_attempt_that_failed_before_the_last_counts_too(
    services: Services,
) -> None:
    """The same for every failover API: Llama in Europe, throttled, then Llama here."""
    body = {"messages": [{"role": "user", "content": [{"text": "x"}]}]}
    llama = "meta.llama3-8b-instruct-v1:0"
    chain = [["bedrock-eu", "llama-eu", llama], ["mock-bedrock", llama, llama]]
    note = {"api": "bedrock_converse", "headers": {}, "stream": False}
    noted = {**body, headers.FAILOVER_CHAIN_KEY: chain, headers.FAILOVER_REQUEST_KEY: note}
    async with running(bedrock_config(), services) as runtime:
        path = "/model/llama-eu/converse"
        ctx, _, stage = attempt(runtime, "bedrock-eu", path, noted)
        stage.response_headers(ctx, PhaseOutput(), {":status": "429"})
    assert upstream_errors(services) == {("bedrock-eu", "llama-eu", "429"): 1.0}


# --- The bootstrap -----------------------------------------------------------------------


def test_each_openai_fallback_has_a_pinned_route_through_the_attempt_filter(
    tmp_path: Path,
) -> None:
    cfg = config()
    bootstrap = render_bootstrap(cfg)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    routes = {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    pinned = routes[pinned_cluster_name("gpt-main", 1)]
    assert pinned["route"]["cluster"] == cluster_name(cfg.provider("mock-eu"))
    assert pinned["route"]["retry_policy"]["num_retries"] == 0
    assert UPSTREAM_FILTER not in pinned.get("typed_per_filter_config", {})
    # Claude's provider stores no Responses API response: nothing to pin to.
    assert pinned_cluster_name("gpt-main", 0) not in routes
    path = tmp_path / "envoy.yaml"
    path.write_text(render_bootstrap_yaml(cfg))
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
