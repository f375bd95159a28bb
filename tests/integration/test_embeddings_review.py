"""Review of the embeddings support through the real stack: Envoy, the gateway, Valkey, the
mock provider and an OTLP receiver. One embeddings call must carry the same tokens in every
ledger an operator reconciles (the log line, tokens_consumed_total, the cost counter,
gen_ai_client_token_usage, the span, the usage rollup and the quota's counter), whether the
provider reported its count or not, on the lean and the full response path, with one
gateway process or two workers; and a request the gateway refuses as bad input must
neither spend a request limit nor end in a 500."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_tracing import traced_config

MODEL = "text-embedding-3-small"
ROUTE = "openai-embeddings"
ADMIN_TOKEN = "dev-admin-token"
# The mock counts this text as 41 tokens; the gateway's estimate (one token per four
# characters) is 50, so a ledger that mixes the two shows it.
TEXT = "Embed me " * 20 + "x" * 20
REPORTED = 41
ESTIMATED = len(TEXT) // 4
# text-embedding-3-small in the default config: $0.02 per million input tokens.
PRICE_PER_TOKEN = 0.02 / 1_000_000


@pytest.fixture(scope="module", params=["lean", "full-two-workers"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    collector: OtlpReceiver,
) -> Iterator[LocalStack]:
    """The default config, traced, with a token budget for team1 and two requests a
    day for team2; on the lean response path with one process, or on the full path
    (``envoy.lean_responses: false``) with two workers."""
    workdir = tmp_path_factory.mktemp("embeddings-review")
    raw = traced_config(workdir, collector.endpoint, content=False)
    raw["quotas"] = {
        "rules": [
            {"name": "budget", "subject": "api_key", "match": ["team1"],
             "tokens_per_day": 1_000_000},
            {"name": "two-a-day", "subject": "api_key", "match": ["team2"],
             "requests_per_day": 2},
        ]
    }  # fmt: skip
    lean = request.param == "lean"
    raw["envoy"]["lean_responses"] = lean
    with running_stack(workdir, write_config(workdir, raw), workers=1 if lean else 2) as running:
        yield running


def embed(
    stack: LocalStack, body: dict[str, Any], key: str = "team1-key", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/embeddings",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=30.0,
    )


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def extproc(stack: LocalStack, *args: str) -> Any:
    """An `extproc` command as an operator runs it against the stack, read as JSON."""
    argv = [sys.executable, "-m", "extproc", *args, "--format", "json",
            "--config", str(stack.config_path)]  # fmt: skip
    done = subprocess.run(argv, env=stack.env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def quota_used(stack: LocalStack) -> int:
    """What team1's `budget` counter holds, as `extproc quota get` shows it."""
    found = extproc(stack, "quota", "get", "--kind", "api_key", "--subject", "team1",
                    "--token", ADMIN_TOKEN)  # fmt: skip
    [limit] = [limit for limit in found["limits"] if limit["rule"] == "budget"]
    return int(limit["used"])


def rollup(stack: LocalStack, *api: str) -> dict[str, Any]:
    """The model's row of `extproc usage report --by model`, from the store or, with
    ``--api``, from the gateway's management API."""
    found = extproc(stack, "usage", "report", "--by", "model", *api)
    rows = [row for row in found["rows"] if row["model"] == MODEL]
    return rows[0] if rows else {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def ledgers(stack: LocalStack) -> dict[str, float]:
    samples = scrape(stack.metrics_url)
    row = rollup(stack)
    return {
        "tokens_consumed_total": metric(samples, "tokens_consumed_total", model=MODEL,
                                        token_type="prompt"),
        "cost_usd_total": metric(samples, "aigw_cost_usd_total", model=MODEL),
        "gen_ai_input": metric(samples, "gen_ai_client_token_usage_sum",
                               gen_ai_operation_name="embeddings", gen_ai_token_type="input",
                               gen_ai_request_model=MODEL),
        "rollup_requests": row["requests"],
        "rollup_prompt_tokens": row["prompt_tokens"],
        "quota": quota_used(stack),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "charged", "reported"),
    [(None, REPORTED, True), ("no_usage=1", ESTIMATED, False), ("garbage=1", ESTIMATED, False)],
    ids=["reported", "no-usage", "garbage"],
)
def test_every_ledger_charges_an_embeddings_call_the_same_tokens(
    stack: LocalStack,
    collector: OtlpReceiver,
    fault: str | None,
    charged: int,
    reported: bool,
) -> None:
    assert count_tokens(TEXT) == REPORTED
    before = ledgers(stack)
    faults = {"x-mock-fault": fault} if fault else {}
    answer = embed(stack, {"model": MODEL, "input": TEXT}, **faults)
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]

    line = log_line(stack, request_id)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        charged,
        0,
        charged,
    )
    assert line["usage_reported"] is reported and line["usage_estimated"] is not reported
    assert line["cost_usd"] == pytest.approx(charged * PRICE_PER_TOKEN)

    # The rollup and the quota's settlement are written off the response path: every
    # ledger is read again until both have moved (a read runs two `extproc` commands,
    # so one wait for both, not one for each).
    def settled() -> dict[str, float] | None:
        found = ledgers(stack)
        moved = found["rollup_requests"] > before["rollup_requests"]
        return found if moved and found["quota"] != before["quota"] else None

    after = wait_for(settled) or ledgers(stack)
    grown = {name: after[name] - before[name] for name in after}
    assert grown == {
        "tokens_consumed_total": charged,
        "cost_usd_total": pytest.approx(line["cost_usd"]),
        "gen_ai_input": charged,
        "rollup_requests": 1,
        "rollup_prompt_tokens": charged,
        "quota": charged,
    }
    # The management API reports the rollup the store holds.
    assert (
        rollup(stack, "--api", "--token", ADMIN_TOKEN)["prompt_tokens"]
        == after["rollup_prompt_tokens"]
    )

    span = collector.request_span(request_id)
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert int(span.attributes["gen_ai.usage.input_tokens"]) == charged
    assert int(span.attributes["gen_ai.usage.output_tokens"]) == 0


# Bodies the gateway refuses once it knows the model's provider (Titan embeds one text per
# call; Anthropic has no embeddings API), with the code each gets.
UNSERVED = [
    ({"model": "titan-embed", "input": ["one", "two"]}, "unsupported_input"),
    ({"model": "titan-embed", "input": [101, 2023]}, "unsupported_input"),
    ({"model": "claude-3-5-haiku-latest", "input": "one"}, "unsupported_model_for_route"),
]


def test_a_request_its_provider_cannot_serve_spends_no_request_of_a_limit(
    stack: LocalStack,
) -> None:
    sent = len(mock_requests(stack))
    for body, code in UNSERVED:
        refused = embed(stack, body, key="team2-key")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == code
    assert len(mock_requests(stack)) == sent
    # team2 may send two requests a day: the refusals above were none of them.
    for left in ("1", "0"):
        served = embed(stack, {"model": MODEL, "input": "fine"}, key="team2-key")
        assert served.status_code == 200
        assert served.headers["x-ratelimit-remaining-requests"] == left
    assert embed(stack, {"model": MODEL, "input": "fine"}, key="team2-key").status_code == 429


@pytest.mark.parametrize("value", [[], {}, ["base64"]])
def test_an_encoding_format_that_is_no_string_is_a_400_not_a_500(
    stack: LocalStack, value: Any
) -> None:
    refused = embed(stack, {"model": MODEL, "input": "x", "encoding_format": value})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "encoding_format")
    line = log_line(stack, refused.headers["x-request-id"])
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0
