"""Envoy's production limits, seen by clients: many failovers at once, answers of
several megabytes, streams longer than the provider timeout, a full gateway.

A real Envoy, gateway, Valkey and mock provider (``extproc.devstack``). Every limit
is one a busy LLM gateway reaches where a web proxy would not; load stays small
by lowering the configured limit instead of opening thousands of streams.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.errors import RESPONSE_TOO_LARGE_MESSAGE
from tests.integration.conftest import (
    GatewayLog,
    envoy_stat,
    metric,
    running_stack,
    scrape,
    wait_for,
)
from tests.integration.test_failover import BlackHole

KEY = "team1-key"
MESSAGES = [{"role": "user", "content": "limits"}]
# Every provider's timeout unless it sets its own: short, so that the failover
# through hanging providers below takes seconds rather than minutes.
UPSTREAM_TIMEOUT_S = 8
HOLES = 4
# The hanging providers' own timeout, which is every attempt's in their chain (the
# primary's), and the gateway's slack over the longest wait: the chain's attempts
# (4 x 3 s and an answer 1.8 s into the last) outlast the longest provider timeout
# plus the slack (8 + 1 s), as the default 30 s slack would take 40 s of them to.
HOLE_TIMEOUT_S = 3
REQUEST_SLACK_S = 1


def limits_config(workdir: Path, dead_port: int, hole_port: int, envoy: str = "") -> Path:
    hole = (
        f'base_url: "http://127.0.0.1:{hole_port}/v1", api_key: hole-key-123,'
        f" timeout_s: {HOLE_TIMEOUT_S}"
    )
    holes = "".join(f"  - {{name: hole-{i}, {hole}}}\n" for i in range(1, HOLES + 1))
    providers = (
        f'  - {{name: dead, base_url: "http://127.0.0.1:{dead_port}/v1", api_key: dead-key-123}}\n'
        '  - {name: brief, base_url: "http://${MOCK_LLM_ADDRESS}/v1", api_key: brief-key-123,'
        " timeout_s: 2}\n" + holes
    )
    hole_models = [f"hole-model-{i}" for i in range(2, HOLES + 1)]
    models = (
        "  - {name: primary-dead, provider: dead, fallbacks: [gpt-4.1-nano]}\n"
        "  - {name: brief-model, provider: brief}\n"
        f"  - {{name: hole-model-1, provider: hole-1, fallbacks: [{', '.join(hole_models)},"
        " gpt-4.1-nano]}\n"
        + "".join(f"  - {{name: {m}, provider: hole-{m[-1]}}}\n" for m in hole_models)
    )
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:\n" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + models, 1)
    settings = (
        f"  upstream_timeout_s: {UPSTREAM_TIMEOUT_S}\n  request_slack_s: {REQUEST_SLACK_S}\n{envoy}"
    )
    text = text.replace("\nenvoy:\n", "\nenvoy:\n" + settings, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def hole() -> Iterator[BlackHole]:
    found = BlackHole()
    yield found
    found.close()


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port that refuses connections for the whole module: bound, never listening.
    A port merely free when picked could be taken by another test process's stack, whose
    answer (a 401 for an unknown key) then came back from the "dead" primary."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield reserved.getsockname()[1]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, hole: BlackHole, dead_port: int
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("envoy-limits")
    with running_stack(workdir, limits_config(workdir, dead_port, hole.port)) as running:
        yield running


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=90)


def chat(stack: LocalStack, model: str, fault: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, **fields}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {KEY}", "x-mock-fault": fault},
        timeout=90.0,
    )


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_every_request_fails_over_when_many_fail_over_at_once(stack: LocalStack) -> None:
    """The primary refuses connections; eight calls fail over together to a fallback
    that takes a while. Envoy's default allowed three retries in flight per cluster:
    the other five got the primary's 503, and the failover was silently not made."""
    answers: list[httpx.Response] = []
    calls = [
        threading.Thread(target=lambda: answers.append(chat(stack, "primary-dead", "delay=2")))
        for _ in range(8)
    ]
    for call in calls:
        call.start()
    for call in calls:
        call.join(60)
    assert [answer.status_code for answer in answers] == [200] * 8
    assert {answer.json()["model"] for answer in answers} == {"gpt-4.1-nano"}
    assert envoy_stat(stack, "upstream_rq_retry_overflow") == 0


@pytest.mark.parametrize(
    ("model", "path"),
    [
        pytest.param("gpt-4o-mini", "pass-through", id="pass-through"),
        pytest.param("primary-dead", "failover", id="after-a-failover"),
        pytest.param("claude-3-5-haiku-latest", "translated", id="translated"),
    ],
)
def test_a_multi_megabyte_answer_reaches_the_client_whole_and_is_counted(
    stack: LocalStack, model: str, path: str
) -> None:
    """400,000 tokens in one JSON answer (1.3 MB; a long completion with logprobs gets
    there too). Over Envoy's 1 MiB buffer the pass-through client got a 200 whose body
    broke off, the others a 500, and the gateway counted nothing the provider billed."""
    before = scrape(stack.metrics_url)
    raw = client(stack).chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=400_000,
        extra_headers={"x-mock-fault": "chunks=400000"},
    )
    reply = raw.parse()
    assert len(raw.content) > 1024 * 1024
    assert reply.usage is not None and reply.usage.completion_tokens == 400_000
    line = log_line(stack, raw.headers["x-request-id"])
    assert (line["outcome"], line["completion_tokens"]) == ("completed", 400_000)
    after = scrape(stack.metrics_url)
    grown = metric(after, "tokens_consumed_total", token_type="completion") - metric(
        before, "tokens_consumed_total", token_type="completion"
    )
    assert grown == 400_000


def test_a_stream_longer_than_the_provider_timeout_is_served_whole(stack: LocalStack) -> None:
    """The provider's timeout (2 s here, 300 s by default) bounds the wait for its answer.
    Envoy's route timeout counted to the last byte: it cut a stream still flowing (a
    reasoning model's 10-minute answer), and the client got a broken stream."""
    with client(stack).chat.completions.with_streaming_response.create(
        model="brief-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": "chunks=12;interval=0.2"},  # ~3 s
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 12
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12
    line = log_line(stack, request_id)
    assert (line["outcome"], line["usage_reported"]) == ("completed", True)
    assert line["completion_tokens"] == 12


def test_a_provider_that_does_not_answer_still_times_out_at_its_timeout(
    stack: LocalStack,
) -> None:
    answer = chat(stack, "brief-model", "delay=6")
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"


def test_a_failover_through_hanging_providers_is_not_cut_while_it_waits(
    stack: LocalStack,
) -> None:
    """Four providers take their whole attempt timeout (3 s each) before the last model
    answers, 13.8 s in. The chain's overall timeout (the members' timeouts added up,
    15 s) ran out, and so did Envoy's stream idle timer (the longest provider timeout
    + the slack, 9 s, while nothing reached the client): a 504 while the last model
    was answering."""
    answer = chat(stack, "hole-model-1", "delay=1.8")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "gpt-4.1-nano"
    assert answer.headers["x-envoy-attempt-count"] == str(HOLES + 1)


def test_a_failover_answer_just_over_a_mebibyte_leaves_envoy_running(stack: LocalStack) -> None:
    """1.05 MB after a failover: Envoy 1.40 crashed (SIGSEGV) when the per-attempt
    filter sent the gateway a body larger than its connection's 1 MiB buffer, and
    took every request in flight with it. The last test on this stack, which it stopped."""
    answer = chat(stack, "primary-dead", "chunks=310000")
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 310_000
    assert stack.process("envoy").poll() is None
    assert chat(stack, "gpt-4o-mini", "").status_code == 200


# --- a gateway with small limits -------------------------------------------------


@pytest.fixture(scope="module")
def small_stack(
    tmp_path_factory: pytest.TempPathFactory, hole: BlackHole, dead_port: int
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("envoy-limits-small")
    limits = "  max_concurrent_requests: 4\n  max_response_body_bytes: 1048576\n"
    with running_stack(workdir, limits_config(workdir, dead_port, hole.port, limits)) as running:
        yield running


@pytest.mark.parametrize(
    ("model", "answered_by"),
    [
        pytest.param("primary-dead", "mock", id="after-a-failover"),
        pytest.param("claude-3-5-haiku-latest", "mock-anthropic", id="translated"),
    ],
)
def test_an_answer_over_the_response_limit_is_an_openai_shaped_502(
    small_stack: LocalStack, model: str, answered_by: str
) -> None:
    """1.3 MB against a 1 MiB limit, on paths where the gateway holds the status until
    it has read the answer: Envoy's own 500 said the gateway could not process it."""
    before = scrape(small_stack.metrics_url)
    answer = chat(small_stack, model, "chunks=400000", max_tokens=400_000)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "response_too_large")
    assert small_stack.process("envoy").poll() is None
    # The gateway's own headers naming who answered never reach the client.
    assert not [name for name in answer.headers if name.startswith("x-aigw-")]

    # The provider that answered billed its answer all the same: every ledger charges
    # the prompt estimate and the whole allowance the request gave it, to that provider.
    # After a failover the line named the primary, whose connection was refused, and
    # charged nothing: the fallback's answer never reached the gateway whole.
    line = log_line(small_stack, answer.headers["x-request-id"])
    assert (line["model"], line["provider"]) == (model, answered_by)
    assert (line["usage_estimated"], line["completion_tokens"]) == (True, 400_000)
    assert line["prompt_tokens"] > 0 and line["cost_usd"] > 0
    if model == "primary-dead":
        # Envoy's reply passes the gateway on this path: the line says what the client got.
        assert (line["http_status_code"], line["error_code"]) == (502, "response_too_large")
    charged = {"model": model, "provider": answered_by, "token_type": "completion"}
    assert wait_for(
        lambda: (
            metric(scrape(small_stack.metrics_url), "tokens_consumed_total", **charged)
            - metric(before, "tokens_consumed_total", **charged)
            == 400_000
        )
    )
    rows = wait_for(lambda: rollup_rows(small_stack, model), 15.0)
    assert [(row["provider"], row["total_tokens"]) for row in rows] == [
        (answered_by, line["total_tokens"])
    ]


def test_an_answer_over_the_response_limit_is_an_anthropic_502_to_the_anthropic_sdk(
    small_stack: LocalStack,
) -> None:
    """The same answer over the limit, from Claude on Bedrock (translated: the gateway
    holds the status until it has read the answer) to Claude Code or the anthropic SDK:
    Envoy's 502 came in Bedrock's shape (the request's path was Bedrock's), which they
    read no error type from."""
    client = anthropic.Anthropic(
        base_url=small_stack.base_url, api_key=KEY, max_retries=0, timeout=90
    )
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(
            model="anthropic.claude-3-haiku-20240307-v1:0",
            max_tokens=400_000,
            messages=[{"role": "user", "content": "limits"}],
            extra_headers={"x-mock-fault": "chunks=400000"},
        )
    assert refused.value.status_code == 502
    assert refused.value.response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": RESPONSE_TOO_LARGE_MESSAGE},
    }


def rollup_rows(stack: LocalStack, model: str) -> list[dict[str, Any]]:
    """The `extproc usage report` rows of ``model`` for the test's key."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", "api_key,model,provider",
         "--format", "json", "--config", str(stack.config_path)],
        env=stack.env, capture_output=True, check=True,
    )  # fmt: skip
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)["rows"]
    return [row for row in rows if row["model"] == model and row["api_key_id"] == "team1"]


def test_a_request_over_the_concurrency_limit_gets_a_retryable_503(
    small_stack: LocalStack,
) -> None:
    """Four streams hold the four ext_proc streams the limit allows. Envoy answered the
    fifth with a 500 `gateway_error`, as if the gateway had failed; it is a full
    gateway: a 503 that SDKs retry, and that says so."""
    started = threading.Semaphore(0)
    finished: list[int] = []

    def hold() -> None:
        with httpx.stream(
            "POST",
            f"{small_stack.base_url}/v1/chat/completions",
            content=orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}),
            headers={"authorization": f"Bearer {KEY}", "x-mock-fault": "chunks=25;interval=0.2"},
            timeout=60.0,
        ) as response:
            lines = response.iter_lines()
            next(lines)
            started.release()
            for _ in lines:
                pass
            finished.append(response.status_code)

    holders = [threading.Thread(target=hold) for _ in range(4)]
    for holder in holders:
        holder.start()
    for _ in holders:
        assert started.acquire(timeout=30)
    refused = chat(small_stack, "gpt-4o-mini", "")
    for holder in holders:
        holder.join(60)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "gateway_overloaded")
    assert finished == [200] * 4
    assert wait_for(lambda: chat(small_stack, "gpt-4o-mini", "").status_code == 200, 10)
