"""A finished request's series recorded in one call (``record_finished``): the very series
and values the four calls it stands for record, with every request shape the accounting
stage sees, the label budget included."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.config import load_config
from extproc.telemetry.metrics import GatewayMetrics, TokenUse
from tests.unit.test_metrics import samples

KEY = ("team1", "alice", "engineering")
USAGE: TokenUse = ("chat", "openai", "gpt-4o-mini-2024-07-18", 152, 9)
# One request each, as the accounting stage sees them.
REQUESTS: list[dict[str, Any]] = [
    # Answered, priced, streamed (a time to first token).
    dict(route="openai-chat", provider="mock", model="gpt-4o-mini", status="200",
         duration_s=0.25, ttft_s=0.05, identity=KEY, usage=USAGE, picousd=28_200_000),
    # The same again: the series found once add up.
    dict(route="openai-chat", provider="mock", model="gpt-4o-mini", status="200",
         duration_s=0.003, ttft_s=None, identity=KEY, usage=USAGE, picousd=1),
    # Unpriced; no completion (embeddings); a response model of another name.
    dict(route="openai-embeddings", provider="mock", model="text-embedding-3-small",
         status="200", duration_s=0.01, ttft_s=None, identity=KEY,
         usage=("embeddings", "openai", "", 12, 0), picousd=0),
    # Refused before a provider: no model label on the request series, no usage.
    dict(route="openai-chat", provider="", model="made-up", status="401", duration_s=0.001,
         ttft_s=None, identity=("", "", ""), usage=None, picousd=0),
    # Not accounted (a model list): no duration.
    dict(route="openai-models", provider="", model="", status="200", duration_s=None,
         ttft_s=None, identity=KEY, usage=None, picousd=0),
    # Aborted, charged an estimate, Bedrock (the OpenTelemetry provider name).
    dict(route="bedrock", provider="mock-bedrock", model="titan", status="aborted",
         duration_s=1.5, ttft_s=None, identity=KEY,
         usage=("chat", "bedrock", "", 40, 7), picousd=9_000_000),
    # A provider failure inside a 200, labelled as its status word.
    dict(route="openai-chat", provider="mock", model="gpt-4o", status="stream_error",
         duration_s=2.0, ttft_s=0.2, identity=("team2", "bob", "marketing"),
         usage=("chat", "openai", "gpt-4o", 0, 3), picousd=120),
]  # fmt: skip


def one_by_one(metrics: GatewayMetrics, request: dict[str, Any]) -> None:
    """What the accounting stage recorded before ``record_finished``: the four calls."""
    identity, model, provider = request["identity"], request["model"], request["provider"]
    metrics.observe_request(
        route=request["route"], provider=provider, model=model, status=request["status"],
        duration_s=request["duration_s"], ttft_s=request["ttft_s"],
    )  # fmt: skip
    if request["usage"] is not None:
        operation, provider_type, response_model, prompt, completion = request["usage"]
        metrics.observe_token_usage(
            operation=operation, provider_type=provider_type, request_model=model,
            response_model=response_model, prompt=prompt, completion=completion,
        )  # fmt: skip
        metrics.count_tokens(
            identity=identity, model=model, provider=provider, prompt=prompt,
            completion=completion,
        )  # fmt: skip
    if request["picousd"]:
        metrics.count_cost(
            identity=identity, model=model, provider=provider, picousd=request["picousd"]
        )


@pytest.mark.parametrize("max_label_values", [1000, 2])
def test_the_series_of_finished_requests_are_those_of_the_four_calls(
    max_label_values: int,
) -> None:
    before, after = GatewayMetrics(max_label_values), GatewayMetrics(max_label_values)
    for _ in range(3):
        for request in REQUESTS:
            one_by_one(before, request)
            after.record_finished(**request)
    assert samples(after.registry) == samples(before.registry)


def test_a_config_admitting_a_folded_model_gets_its_own_series_again() -> None:
    config = load_config("config/gateway.yaml", environ={})
    before, after = GatewayMetrics(max_label_values=1), GatewayMetrics(max_label_values=1)
    chat = REQUESTS[0]
    for model in ("made-up-a", "gpt-4.1-nano", "gpt-4.1-nano"):
        one_by_one(before, {**chat, "model": model})
        after.record_finished(**{**chat, "model": model})
    before.admit_config(config)
    after.admit_config(config)
    one_by_one(before, {**chat, "model": "gpt-4.1-nano"})
    after.record_finished(**{**chat, "model": "gpt-4.1-nano"})
    found = samples(after.registry)
    assert found == samples(before.registry)
    named = {labels for name, labels in found if name == "aigw_requests_total"}
    assert ("model", "gpt-4.1-nano") in set().union(*named)
