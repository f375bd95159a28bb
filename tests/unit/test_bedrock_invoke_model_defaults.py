"""An InvokeModel body naming no output limit, under a hard-capped token budget: the
quota reserves what the model generates by default (Bedrock's model-parameter pages:
Llama's and Titan Text's 512, Mistral 7B's and Mixtral's 512, Mistral Small's and
Large's 8,192, Cohere Command's 20), never more than ``quotas.default_max_tokens``, and a
hard cap writes a limit into the body only when the budget has less room than that
(docs/quotas.md).

Before, such a body reserved ``quotas.default_max_tokens`` (1,000 here), and a hard cap
wrote up to that into it: a Llama call that would have stopped at 512 tokens was sent
``max_gen_len: 1000``, and a Cohere Command call asking for Command's short default
answer (20 tokens) was sent ``max_tokens: 1000``, both billed for the longer answer and
charged to the budget they were meant to stay inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.bedrock_invoke_bodies import estimate_prompt_tokens
from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.headers import FAILOVER_CHAIN_KEY, FAILOVER_REQUEST_KEY
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import used_tokens
from tests.unit.test_bedrock_invoke_allowances import (
    ASK,
    AUTH,
    NOVA_MESSAGES,
    invoke,
    invoke_path,
    sent,
    written,
)

LLAMA = "meta.llama3-8b-instruct-v1:0"
MISTRAL_7B = "mistral.mistral-7b-instruct-v0:2"
MISTRAL_LARGE = "mistral.mistral-large-2402-v1:0"
MISTRAL_LARGE_2 = "mistral.mistral-large-2407-v1:0"
# (model id, a body naming no limit, what the model generates by default, the field a
# hard cap writes into the body)
OWN_DEFAULTS: list[tuple[str, dict[str, Any], int, tuple[str, ...]]] = [
    (LLAMA, {"prompt": ASK, "temperature": 0.5}, 512, ("max_gen_len",)),
    ("us.meta.llama3-3-70b-instruct-v1:0", {"prompt": ASK}, 512, ("max_gen_len",)),
    ("amazon.titan-text-express-v1",
     {"inputText": ASK, "textGenerationConfig": {"topP": 0.9}}, 512,
     ("textGenerationConfig", "maxTokenCount")),
    ("mistral.mistral-7b-instruct-v0:2", {"prompt": ASK}, 512, ("max_tokens",)),
    ("mistral.mixtral-8x7b-instruct-v0:1", {"prompt": ASK}, 512, ("max_tokens",)),
    ("cohere.command-text-v14", {"prompt": ASK}, 20, ("max_tokens",)),
    ("cohere.command-light-text-v14", {"prompt": ASK, "temperature": 0.8}, 20, ("max_tokens",)),
    ("writer.palmyra-x4-v1:0", {"messages": [{"role": "user", "content": ASK}]}, 16,
     ("max_tokens",)),
]  # fmt: skip


@pytest.mark.parametrize(("model", "body", "default", "path"), OWN_DEFAULTS)
async def test_a_body_naming_no_limit_reserves_the_models_own_default(
    quota_store: QuotaStore, model: str, body: dict[str, Any], default: int, path: tuple[str, ...]
) -> None:
    answer = await invoke(quota_store, 100_000, model, orjson.dumps(body))

    assert sent(answer) is None  # the client's bytes: the model's default fits
    assert await used_tokens(quota_store, 100_000) == estimate_prompt_tokens(body) + default


@pytest.mark.parametrize(("model", "body", "default", "path"), OWN_DEFAULTS)
async def test_a_hard_cap_with_room_for_the_models_default_leaves_the_body_alone(
    quota_store: QuotaStore, model: str, body: dict[str, Any], default: int, path: tuple[str, ...]
) -> None:
    """Room for the model's default and more, less than quotas.default_max_tokens: the
    cap used to write the budget's room into the body, raising the model's default."""
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2)
    budget = estimate_prompt_tokens(body) + default + 200

    answer = await invoke(quota_store, budget, model, raw)

    assert sent(answer) is None  # byte-identical: nothing written


@pytest.mark.parametrize(("model", "body", "default", "path"), OWN_DEFAULTS)
async def test_a_hard_cap_with_less_room_than_the_default_writes_the_room(
    quota_store: QuotaStore, model: str, body: dict[str, Any], default: int, path: tuple[str, ...]
) -> None:
    room = default // 2
    budget = estimate_prompt_tokens(body) + room

    answer = await invoke(quota_store, budget, model, orjson.dumps(body))

    assert sent(answer) == written(body, path, room)


@pytest.mark.parametrize(
    ("model", "body", "path"),
    [
        # Mistral Large 24.02 generates up to 8,192 tokens by default: more than the
        # operator's default, which bounds it.
        ("mistral.mistral-large-2402-v1:0", {"prompt": ASK}, ("max_tokens",)),
        ("mistral.mistral-small-2402-v1:0", {"prompt": ASK}, ("max_tokens",)),
        # AI21 Jamba generates up to 4,096.
        ("ai21.jamba-1-5-mini-v1:0", {"messages": [{"role": "user", "content": ASK}]},
         ("max_tokens",)),
        # Families whose pages name no default: as before, the operator's default.
        ("amazon.nova-lite-v1:0", {"messages": NOVA_MESSAGES}, ("inferenceConfig", "maxTokens")),
        ("cohere.command-r-v1:0", {"message": ASK}, ("max_tokens",)),
        ("us.deepseek.r1-v1:0", {"prompt": ASK}, ("max_tokens",)),
    ],
)  # fmt: skip
async def test_a_model_that_may_generate_more_than_the_operators_default_is_bounded_by_it(
    quota_store: QuotaStore, model: str, body: dict[str, Any], path: tuple[str, ...]
) -> None:
    prompt = estimate_prompt_tokens(body)

    assert sent(await invoke(quota_store, 100_000, model, orjson.dumps(body))) == written(
        body, path, 1000
    )
    assert await used_tokens(quota_store, 100_000) == prompt + 1000


async def test_a_limit_the_client_named_is_reserved_and_lowered_as_before(
    quota_store: QuotaStore,
) -> None:
    """Above the model's default or below it, the client's limit is the allowance."""
    body = {"prompt": ASK, "max_gen_len": 900}
    prompt = estimate_prompt_tokens(body)
    assert sent(await invoke(quota_store, 100_000, LLAMA, orjson.dumps(body))) is None
    assert await used_tokens(quota_store, 100_000) == prompt + 900

    budget = (prompt + 900) + prompt + 600
    assert sent(await invoke(quota_store, budget, LLAMA, orjson.dumps(body))) == written(
        body, ("max_gen_len",), 600
    )


def mistral_chains(budget: int) -> GatewayConfig:
    """The default config, key team1's daily budget ``budget`` tokens hard-capped, with
    Mistral 7B (``mistral-7b``) failing over to Mistral Large 24.02 (``mistral-large``),
    then to Mistral Large 2 (``mistral-large-2``), each on a Bedrock account of its own;
    and Mistral Large 2 failing over to Mistral Large 24.02, then to Mistral 7B. The
    Bedrock Runtime route
    takes every configured model (no provider of its own)."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    bedrock = next(p for p in raw["providers"] if p["name"] == "mock-bedrock")
    raw["providers"] += [{**bedrock, "name": name} for name in ("bedrock-a", "bedrock-b")]
    raw["models"] += [
        {"name": "mistral-7b", "provider": "mock-bedrock", "upstream_model": MISTRAL_7B,
         "fallbacks": ["mistral-large", "mistral-large-2"]},
        {"name": "mistral-large", "provider": "bedrock-a", "upstream_model": MISTRAL_LARGE},
        {"name": "mistral-large-2", "provider": "bedrock-b", "upstream_model": MISTRAL_LARGE_2,
         "fallbacks": ["mistral-large", "mistral-7b"]},
    ]  # fmt: skip
    for route in raw["routes"]:
        if route["name"] == "bedrock-converse":
            del route["provider"]
    raw["quotas"] = {
        "default_max_tokens": 1000,
        "rules": [{"name": "team-cap", "subject": "api_key", "tokens_per_day": budget,
                   "hard_cap": True}],
    }  # fmt: skip
    return parse_config(yaml.safe_dump(raw), "test", {})


async def invoke_chain(quota_store: QuotaStore, budget: int, model: str, body: bytes) -> Any:
    """What the gateway sends on for key team1's InvokeModel call of ``model`` (one of
    ``mistral_chains``' models): the request's JSON with its failover chain beside the
    client's body, when it fails over."""
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(mistral_chains(budget), services)
    await runtime.start()
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [request_headers(invoke_path(model), headers=AUTH), request_body(body)],
        )
    finally:
        await runtime.close()
    answer = answers[-1]
    assert answer.WhichOneof("response") == "request_body", answer
    return orjson.loads(answer.request_body.response.body_mutation.body)


def client_body(sent_on: dict[str, Any]) -> dict[str, Any]:
    """The client's body (as the attempts send it) in the failover request's JSON."""
    return {
        name: value
        for name, value in sent_on.items()
        if name not in (FAILOVER_CHAIN_KEY, FAILOVER_REQUEST_KEY)
    }


async def test_a_chain_reserves_the_largest_default_of_its_members_and_caps_for_it(
    quota_store: QuotaStore,
) -> None:
    """Mistral 7B stops at 512 tokens unbounded, its fallback Mistral Large 24.02 at
    8,192: the one body may reach either, so the request reserves the operator's bound
    (1,000) and a hard cap below Large's default writes the room in. Reserved as 7B's
    512 alone and left unwritten, the body would let Large answer with 8,192 tokens
    into a budget that had room for 700."""
    body = {"prompt": ASK}
    prompt = estimate_prompt_tokens(body)

    sent_on = await invoke_chain(quota_store, 100_000, "mistral-7b", orjson.dumps(body))
    assert client_body(sent_on) == {**body, "max_tokens": 1000}
    assert await used_tokens(quota_store, 100_000) == prompt + 1000

    budget = (prompt + 1000) + prompt + 700
    sent_on = await invoke_chain(quota_store, budget, "mistral-7b", orjson.dumps(body))
    assert client_body(sent_on) == {**body, "max_tokens": 700}
