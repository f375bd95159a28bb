"""A client that times out on a slow non-streamed answer, through the real Envoy, Valkey
and the mock provider, with the official openai client.

The client gives up before the provider's answer comes back and hangs up; the provider
goes on generating the answer and bills it. Before, the gateway charged such a request
nothing (``aborted``, 0 tokens, its reservation given back), on the lean response path
and on the full one alike. Now every ledger holds the quota's estimate for it: the log
line (``usage_estimated``, ``outcome`` ``aborted``, status 0), ``tokens_consumed_total``
and the cost counter, the usage rollup, and the key's quota counter. A client that gives
up while the gateway is still deciding (a slow guardrail webhook) reached no provider and
is still charged nothing.

A streamed request the client gives up on before its first chunk (the provider slow to
send its status, or to send its first chunk after it: a long prompt's prefill) is charged
its prompt: the provider read it and bills it, and nothing was streamed. Before, it was
charged nothing when the gateway saw no status (the lean path always, the full path when
none came).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from tests.integration.conftest import (
    GatewayLog,
    JsonStandIn,
    default_config,
    metric,
    running_stack_calling,
    scrape,
    usage_rows,
    wait_for,
)

# The client waits this long; the provider (or the guard) takes longer.
CLIENT_TIMEOUT_S = 1.5
SLOW = {"x-mock-fault": "delay=4"}
# 40 characters in one message: the quota's prompt estimate is 40 / 4 + 4 tokens.
MESSAGES = [{"role": "user", "content": "x" * 40}]
PROMPT = 14
ALLOWANCE = 300
# gpt-4o-mini in the default config: $0.15 and $0.60 per million input and output tokens.
MINI_COST = (PROMPT * 0.15 + ALLOWANCE * 0.60) / 1_000_000
# The status and headers at once, the first chunk later than the client waits (a long
# prompt's prefill, a slow first token).
SLOW_FIRST_CHUNK = {"x-mock-fault": "first_chunk_delay=4"}
STREAM_KEYS = (
    "stream-lean-silent",
    "stream-lean-waiting",
    "stream-full-silent",
    "stream-full-waiting",
)
KEYS = ("left-lean", "left-full", "left-deciding", "left-429", *STREAM_KEYS)
# The provider's 429: its status and headers at once, its body later than the client
# waits (an overloaded provider slow to write its error).
SLOW_429 = {"x-mock-fault": "status=429;hold_body=4"}


class SlowGuard(JsonStandIn):
    """A guardrail webhook that takes longer to decide than the client waits."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.json_body()
        time.sleep(3.0)
        self.answer_json({"action": {}})


def timeout_config(port: int) -> dict[str, Any]:
    """The default config, a key per case under a daily token budget, and the slow guard
    on the ``/openai`` route only."""
    raw = default_config()
    raw["auth"]["api_keys"] += [{"id": key, "key": f"{key}-secret"} for key in KEYS]
    raw["quotas"] = {"rules": [{"name": "day", "subject": "api_key", "tokens_per_day": 10**9}]}
    hook = {"host": "127.0.0.1", "port": port, "timeout_ms": 4000, "failure_mode": "fail_open"}
    raw["guardrails"] = {
        "webhooks": [{"name": "slow", **hook}],
        "policies": [{"name": "slow", "request": [{"name": "slow", "webhook": "slow"}]}],
    }
    [route] = [route for route in raw["routes"] if route["name"] == "openai"]
    route["guardrails"] = "slow"
    return raw


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("client-timeout")
    with running_stack_calling(SlowGuard, workdir, timeout_config) as running:
        yield running


def give_up(
    stack: LocalStack, key: str, model: str, path: str = "/v1", fault: dict[str, str] = SLOW
) -> str:
    """The openai client asks ``model`` for a non-streamed answer and times out: the
    request id, from the line of the key's one request."""
    client = OpenAI(
        base_url=f"{stack.base_url}{path}",
        api_key=f"{key}-secret",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=ALLOWANCE, extra_headers=fault
        )
    return only_request_of(stack, key)


def give_up_streaming(stack: LocalStack, key: str, model: str, fault: dict[str, str]) -> str:
    """The openai client asks ``model`` for a stream and times out before its first chunk
    (on the status, or after it, reading), closing the stream: the request id."""
    client = OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=f"{key}-secret",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    with (
        pytest.raises(openai.APITimeoutError),
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=ALLOWANCE, stream=True, extra_headers=fault
        ) as stream,
    ):
        chunks = list(stream)
        pytest.fail(f"the stream came, {len(chunks)} chunks")
    return only_request_of(stack, key)


def only_request_of(stack: LocalStack, key: str) -> str:
    """The request id on the line of the key's one request, once it is written."""
    log = GatewayLog(stack.gateway_log)
    lines = wait_for(lambda: [each for each in log.lines() if each["api_key_id"] == key])
    [line] = lines
    return str(line["request_id"])


def tokens_used(stack: LocalStack, key: str) -> int:
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", "dev-admin-token") as quotas:
        state = quotas.get("api_key", key)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def tokens_held(stack: LocalStack, key: str) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The (prompt, completion) tokens ``tokens_consumed_total`` and the usage rollup hold
    for ``key``, and the tokens its quota counter used."""
    samples = scrape(stack.metrics_url)
    metered = tuple(
        int(metric(samples, "tokens_consumed_total", api_key_id=key, token_type=kind))
        for kind in ("prompt", "completion")
    )
    row = usage_rows(stack, "api_key").get(key)
    rolled = (row["prompt_tokens"], row["completion_tokens"]) if row else (0, 0)
    return (metered[0], metered[1]), rolled, tokens_used(stack, key)


def cost_held(stack: LocalStack, key: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_cost_usd_total", api_key_id=key)


@pytest.mark.parametrize(
    ("key", "model"),
    [("left-lean", "gpt-4o-mini"), ("left-full", "claude-3-5-haiku-latest")],
    ids=["lean path", "full path"],
)
def test_a_client_that_timed_out_is_charged_the_estimate_in_every_ledger(
    stack: LocalStack, key: str, model: str
) -> None:
    """gpt-4o-mini answers in the client's own API (the lean path: the answer would come
    in one buffered message); Claude's is translated (the full path: its headers first)."""
    request_id = give_up(stack, key, model)
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, ALLOWANCE)
    assert line["cost_usd"] > 0
    if model == "gpt-4o-mini":
        assert line["cost_usd"] == pytest.approx(MINI_COST)
    expected = ((PROMPT, ALLOWANCE), (PROMPT, ALLOWANCE), PROMPT + ALLOWANCE)
    assert wait_for(lambda: tokens_held(stack, key) == expected, 15), tokens_held(stack, key)
    assert cost_held(stack, key) == pytest.approx(line["cost_usd"])


@pytest.mark.parametrize(
    ("key", "model", "fault", "status"),
    [
        ("stream-lean-silent", "gpt-4o-mini", SLOW, 0),
        ("stream-lean-waiting", "gpt-4o-mini", SLOW_FIRST_CHUNK, 0),
        ("stream-full-silent", "claude-3-5-haiku-latest", SLOW, 0),
        ("stream-full-waiting", "claude-3-5-haiku-latest", SLOW_FIRST_CHUNK, 200),
    ],
    ids=[
        "lean path, no status",
        "lean path, status sent",
        "full path, no status",
        "full path, status seen",
    ],
)
def test_a_stream_the_client_left_before_its_first_chunk_is_charged_its_prompt(
    stack: LocalStack, key: str, model: str, fault: dict[str, str], status: int
) -> None:
    """The provider read the prompt and bills it; nothing was streamed. The lean path sees
    no status before the first chunk, whether the provider sent it or not (Envoy's access
    log has it); the full path sees it when it came."""
    request_id = give_up_streaming(stack, key, model, fault)
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", status)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 0)
    assert line["cost_usd"] > 0
    if model == "gpt-4o-mini":
        assert line["cost_usd"] == pytest.approx(PROMPT * 0.15 / 1_000_000)
    expected = ((PROMPT, 0), (PROMPT, 0), PROMPT)
    assert wait_for(lambda: tokens_held(stack, key) == expected, 15), tokens_held(stack, key)
    assert cost_held(stack, key) == pytest.approx(line["cost_usd"])


def test_a_client_that_timed_out_while_the_gateway_decided_is_charged_nothing(
    stack: LocalStack,
) -> None:
    """The guard was still deciding when the client left: the request never went on to
    the provider, and the quota, the metrics and the rollup hold nothing of it."""
    key = "left-deciding"
    request_id = give_up(stack, key, "gpt-4o-mini", "/openai")
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["outcome"], line["http_status_code"]) == ("aborted", 0)
    assert (line["usage_estimated"], line["total_tokens"], line["cost_usd"]) == (False, 0, 0)
    assert line["upstream_status_code"] is None
    # The key's next request, answered: once the ledgers hold it, they would hold anything
    # charged before it (its line came first), so they hold that answer's usage alone.
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=f"{key}-secret", max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.usage is not None
    tokens = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    expected = (tokens, tokens, sum(tokens))
    assert wait_for(lambda: tokens_held(stack, key) == expected, 15), tokens_held(stack, key)


def test_a_429_whose_client_left_before_its_body_counts_as_the_providers_429(
    stack: LocalStack,
) -> None:
    """Claude's 429 (the full path: its status comes in its headers) whose body the
    client did not wait for: the provider failed all the same, so the upstream error
    counter has it under 429, which a panel or alert on throttling selects; before, it
    was counted as ``status_code="aborted"``. What the client got stays ``aborted``."""
    model = "claude-3-5-haiku-latest"

    def upstream_429s() -> float:
        samples = scrape(stack.metrics_url)
        return metric(samples, "aigw_upstream_errors_total", model=model, status_code="429")

    before = upstream_429s()
    request_id = give_up(stack, "left-429", model, fault=SLOW_429)
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    assert (line["outcome"], line["upstream_status_code"]) == ("aborted", 429)
    # An error generated nothing: charged nothing.
    assert (line["usage_estimated"], line["total_tokens"]) == (False, 0)
    assert wait_for(lambda: upstream_429s() == before + 1, 15), upstream_429s()
