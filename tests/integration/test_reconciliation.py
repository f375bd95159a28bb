"""Reconciliation: the log lines, the metrics and the usage report agree exactly.

Five hundred and fifty mixed requests go through the real Envoy, gateway, Valkey and
mock provider, sent concurrently by the official clients: OpenAI chat (plain,
streamed, with cached prompt tokens), Anthropic's Messages API (with prompt-cache
writes, 5-minute and 1-hour, and web searches and fetches), OpenAI to Anthropic
and to Bedrock (translated, SigV4-signed), a model without a price,
API keys and JWT users in several groups, a key whose quota refuses most of
its requests, upstream errors and streams cut mid-way by the provider. Then,
per (api_key, user, group, model), the sums of the JSON log lines, the
``tokens_consumed_total``, ``aigw_token_parts_total`` (the cached and cache-written
tokens) and ``aigw_cost_usd_total`` counters of the real
/metrics page, and ``extproc usage report --format json`` are the same
numbers, to the token and to the picodollar, and the report counts the cache
writes and server tool requests the log lines do.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import anthropic
import openai
import orjson
import pytest

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig
from extproc.config.pricing_model import ModelPrice
from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, running_stack, scrape, wait_for
from tests.integration.jwt_tokens import ISSUER, SigningKey

REQUESTS = 550
# aigw_token_parts_total's token types and the log line's field each one counts.
PARTS = {
    "cached": "cached_tokens",
    "cache_write": "cache_write_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "prompt_audio": "prompt_audio_tokens",
    "cached_audio": "cached_audio_tokens",
    "completion_audio": "completion_audio_tokens",
    "completion_image": "completion_image_tokens",
    "prompt_image": "prompt_image_tokens",
    "image_generation_input": "image_generation_input_tokens",
    "image_generation_input_image": "image_generation_input_image_tokens",
    "image_generation_output": "image_generation_output_tokens",
    "image_generation_output_image": "image_generation_output_image_tokens",
}
CONCURRENCY = 24
SIGNER = SigningKey("recon-rsa", "RS256")
# api key id -> (secret, user, group)
KEYS = {
    "recon-a": ("recon-a-secret", "ann", "finance"),
    "recon-b": ("recon-b-secret", "ben", "finance"),
    "recon-c": ("recon-c-secret", "cat", "research"),
    "recon-q": ("recon-q-secret", "quinn", "research"),
}
JWT_USERS = {"jill": "ops", "joe": "ops"}
QUOTA = """
quotas:
  rules:
    - name: recon-q-small
      subject: api_key
      match: recon-q
      requests_per_minute: 15
guardrails:
  policies:
    - name: recon-guard
      request:
        - {name: banned, literals: ["forbidden-zeta"], action: REJECT}
"""
# Sent now and then on /v1/chat/completions, whose route the guard above protects.
BANNED = "forbidden-zeta"
# The identity columns and the model: what every source is compared by.
Key = tuple[str, str, str, str]


@pytest.fixture(scope="module")
def recon_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("reconciliation")
    text = DEFAULT_CONFIG.read_text()
    keys = "".join(
        f"    - {{id: {key_id}, key: {secret}, user_id: {user}, group_id: {group}}}\n"
        for key_id, (secret, user, group) in KEYS.items()
    )
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    jwks = orjson.dumps({"keys": [SIGNER.jwk()]}).decode()
    provider = (
        f"  jwt_providers:\n    - name: idp\n      issuer: {ISSUER}\n"
        f"      jwks: {{inline: {jwks}}}\n      algorithms: [RS256]\n"
    )
    text = text.replace("\nauth:\n", "\nauth:\n" + provider, 1)
    chat_route = "  - name: openai-chat\n    path: /v1/chat/completions\n"
    assert chat_route in text
    text = text.replace(chat_route, chat_route + "    guardrails: [recon-guard]\n", 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTA)
    with running_stack(workdir, config) as running:
        yield running


class Traffic:
    """The official clients, one per credential and API, and the mixed requests they send."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.credentials = [secret for secret, _, _ in KEYS.values()]
        self.credentials += [SIGNER.token(sub=u, group=g) for u, g in JWT_USERS.items()]
        timeout = 60.0
        self._openai: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self._anthropic: dict[str, anthropic.AsyncAnthropic] = {}
        self._timeout = timeout

    def openai(self, credential: str, path: str = "/v1") -> openai.AsyncOpenAI:
        found = self._openai.get((credential, path))
        if found is None:
            found = self._openai[(credential, path)] = openai.AsyncOpenAI(
                base_url=self.base + path, api_key=credential, max_retries=0,
                timeout=self._timeout,
            )  # fmt: skip
        return found

    def anthropic(self, credential: str) -> anthropic.AsyncAnthropic:
        found = self._anthropic.get(credential)
        if found is None:
            # A bearer token, so JWTs and API keys go the same way.
            found = self._anthropic[credential] = anthropic.AsyncAnthropic(
                base_url=self.base, auth_token=credential, max_retries=0, timeout=self._timeout
            )
        return found

    async def close(self) -> None:
        for client in self._openai.values():
            await client.close()
        for other in self._anthropic.values():
            await other.close()


def _fault(rng: random.Random, errors: str) -> dict[str, str]:
    """Now and then a cached prompt, an upstream error or a stream cut by the provider."""
    roll = rng.random()
    if roll < 0.07:
        return {"x-mock-fault": errors}
    if roll < 0.09:
        return {"x-mock-fault": "reset_after=2"}
    if roll < 0.40:
        return {"x-mock-fault": f"cached={rng.randint(1, 12)}"}
    return {}


def _cache_and_tools(rng: random.Random, provider: str) -> dict[str, str]:
    """Now and then prompt-cache writes (Anthropic, Bedrock) and server tool requests
    (Anthropic only: Bedrock documents no such count), as the mock reports them on
    request. A random source of its own, so the rest of the mix stays as it was."""
    headers: dict[str, str] = {}
    if rng.random() < 0.4:
        headers["x-mock-cache-write"] = f"5m={rng.randint(0, 6)};1h={rng.randint(0, 6)}"
    if provider == "anthropic" and rng.random() < 0.4:
        headers["x-mock-server-tool-use"] = (
            f"web_search={rng.randint(0, 4)};web_fetch={rng.randint(0, 3)}"
        )
    return headers


async def _openai_chat(
    client: openai.AsyncOpenAI, model: str | None, text: str, stream: bool, headers: dict[str, str]
) -> None:
    messages: Any = [{"role": "user", "content": text}]
    extra: dict[str, Any] = {"extra_headers": headers}
    if model is None:
        model = "ignored"  # the route's path names the model
    if stream:
        chunks = await client.chat.completions.create(
            model=model, messages=messages, stream=True, **extra,
            stream_options={"include_usage": True} if len(text) % 2 else openai.NOT_GIVEN,
        )  # fmt: skip
        async for _ in chunks:
            pass
    else:
        await client.chat.completions.create(model=model, messages=messages, **extra)


async def _anthropic_message(
    client: anthropic.AsyncAnthropic, text: str, stream: bool, headers: dict[str, str]
) -> None:
    messages: Any = [{"role": "user", "content": text}]
    model = "claude-3-5-haiku-latest"
    if stream:
        events = await client.messages.create(
            model=model, max_tokens=200, messages=messages, stream=True, extra_headers=headers
        )
        async for _ in events:
            pass
    else:
        await client.messages.create(
            model=model, max_tokens=200, messages=messages, extra_headers=headers
        )


def plan(traffic: Traffic, seed: int = 20261201) -> list[Callable[[], Awaitable[None]]]:
    """The requests to send: every kind, every credential, deterministic."""
    rng = random.Random(seed)
    extras = random.Random(seed + 1)
    calls: list[Callable[[], Awaitable[None]]] = []
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    for _ in range(REQUESTS):
        credential = rng.choice(traffic.credentials)
        text = " ".join(rng.choices(words, k=rng.randint(1, 30)))
        stream = rng.random() < 0.5
        kind = rng.random()
        if kind < 0.35:
            model = rng.choice(["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"])
            headers = _fault(rng, rng.choice(["status=500", "status=429"]))
            if rng.random() < 0.1:
                text += " " + BANNED  # refused by the route's guard: costs nothing
            client = traffic.openai(credential)
            calls.append(partial(_openai_chat, client, model, text, stream, headers))
        elif kind < 0.55:
            headers = {**_fault(rng, "status=529"), **_cache_and_tools(extras, "anthropic")}
            messages = traffic.anthropic(credential)
            calls.append(partial(_anthropic_message, messages, text, stream, headers))
        elif kind < 0.65:
            headers = {**_fault(rng, "status=500"), **_cache_and_tools(extras, "anthropic")}
            client = traffic.openai(credential, "/anthropic")
            calls.append(partial(_openai_chat, client, "claude-sonnet-4-0", text, stream, headers))
        elif kind < 0.92:
            alias = rng.choice(["haiku", "titan", "llama"])
            headers = {**_fault(rng, "status=503"), **_cache_and_tools(extras, "bedrock")}
            client = traffic.openai(credential, f"/bedrock/{alias}")
            calls.append(partial(_openai_chat, client, None, text, stream, headers))
        else:
            # Served by the claude- prefix, but without a price: costs 0, flagged unpriced.
            client = traffic.openai(credential)
            calls.append(partial(_openai_chat, client, "claude-3-opus-latest", text, stream, {}))
    return calls


async def send_all(base: str) -> list[str]:
    """Send every planned request, CONCURRENCY at a time; what each client raised, if any."""
    traffic = Traffic(base)
    calls = plan(traffic)
    limit = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with limit:
            try:
                await call()
            except Exception as exc:
                # Refusals, upstream errors and cut streams, as each client reports
                # them (a cut stream can surface as its HTTP library's own error).
                failures.append(type(exc).__name__)

    try:
        await asyncio.gather(*(one(call) for call in calls))
    finally:
        await traffic.close()
    return failures


def exact(value: float) -> Decimal:
    """A float as the decimal it prints as (its shortest repr), which is what was exact."""
    return Decimal(repr(value))


def key_of(source: dict[str, Any]) -> Key:
    api_key, user, group, model = (
        source.get(name) or "" for name in ("api_key_id", "user_id", "group_id", "model")
    )
    return api_key, user, group, model


def usage_report(stack: LocalStack, *options: str) -> dict[Key, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", "api_key,user,group,model",
         "--format", "json", "--config", str(stack.config_path), *options],
        env=stack.env, capture_output=True, check=True,
    )  # fmt: skip
    rows = orjson.loads(result.stdout)["rows"]
    return {key_of(row): row for row in rows}


def price_of(config: GatewayConfig, model: str) -> ModelPrice | None:
    """The model's prices straight from the config's table."""
    names = {model}
    for entry in config.models:
        if model in (entry.name, *entry.aliases):
            names |= {entry.name, *entry.aliases}
    for name in names:
        price = config.pricing.models.get(name)
        if price is not None:
            return price
    return None


def expected_cost(config: GatewayConfig, price: ModelPrice, line: dict[str, Any]) -> Decimal:
    """A log line's cost by hand: each part of the prompt at its price, per million
    tokens, and each server tool request at its price per thousand."""
    cached, written = line["cached_tokens"], line["cache_write_tokens"]
    written_1h = line["cache_write_1h_tokens"]
    tokens: Decimal = (
        (line["prompt_tokens"] - cached - written) * price.input_per_million
        + cached * price.cached_input
        + (written - written_1h) * price.cache_write_input
        + written_1h * price.cache_write_1h_input
        + line["completion_tokens"] * price.output_per_million
    ) / 1_000_000  # fmt: skip
    tool_prices = {**config.pricing.server_tools_per_thousand, **price.server_tools_per_thousand}
    tools = sum(
        (count * tool_prices[tool] / 1000 for tool, count in used_tools(line).items()),
        Decimal(0),
    )
    return tokens + tools


def used_tools(line: dict[str, Any]) -> dict[str, int]:
    tools: dict[str, int] = line["server_tool_requests"] or {}
    return tools


@pytest.mark.timeout(300)  # a loaded CI machine; typically 30-40 s
def test_logs_metrics_and_usage_report_agree_exactly(recon_stack: LocalStack) -> None:
    log = GatewayLog(recon_stack.gateway_log)
    before = len(log.lines())
    failures = asyncio.run(send_all(recon_stack.base_url))

    lines = wait_for(lambda: (new := log.lines()[before:]) and len(new) >= REQUESTS and new, 60)
    assert len(lines) == REQUESTS, "one log line per request"

    # What happened is the mix the test meant: every provider, refusals, errors, cache hits.
    outcomes = {line["outcome"] for line in lines}
    assert {"completed", "rejected", "upstream_error"} <= outcomes
    assert any(line["error_type"] == "rate_limit_error" for line in lines)
    assert any(line["error_code"] == "guardrail_rejected" for line in lines)
    assert {line["provider"] for line in lines} >= {"mock", "mock-anthropic", "mock-bedrock"}
    assert any(line["stream"] and line["usage_reported"] for line in lines)
    assert any(line["cached_tokens"] for line in lines)
    assert any(line["cache_write_1h_tokens"] for line in lines)
    assert any(line["cache_write_tokens"] > line["cache_write_1h_tokens"] for line in lines)
    assert any(used_tools(line).get("web_search") for line in lines)
    assert any(line["auth_method"] == "jwt" for line in lines)
    assert any(
        not line["cost_priced"] and line["model"] == "claude-3-opus-latest" for line in lines
    )
    assert failures, "refusals and upstream errors reach the clients as errors"
    # ...and only as errors of the clients, never a mistake of this test.
    assert not {"TypeError", "AttributeError", "KeyError", "NameError"} & set(failures)

    # Each line's cost is its tokens at the config's prices, exactly.
    config = load_config(recon_stack.config_path, {})
    for line in lines:
        price = price_of(config, line["model"]) if line["model"] else None
        cost = exact(line["cost_usd"])
        if price is None:
            assert cost == 0
            continue
        assert cost == expected_cost(config, price, line), line

    # The log's sums, per subject and model, over the requests the rollup counts
    # (those that reached a provider; refusals cost nothing and carry no tokens).
    from_logs: dict[Key, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "prompt": 0, "completion": 0, "cached": 0, "cost": Decimal(0),
                 "writes": 0, "writes_1h": 0, "tools": Counter(), "parts": Counter(),
                 "searches": 0}
    )  # fmt: skip
    for line in lines:
        reached = line["provider"] is not None and line["error_type"] is None
        if not reached:
            assert line["prompt_tokens"] == line["completion_tokens"] == 0
            assert line["cost_usd"] == 0
            continue
        sums = from_logs[key_of(line)]
        sums["requests"] += 1
        sums["prompt"] += line["prompt_tokens"]
        sums["completion"] += line["completion_tokens"]
        sums["cached"] += line["cached_tokens"]
        sums["cost"] += exact(line["cost_usd"])
        sums["writes"] += line["cache_write_tokens"]
        sums["writes_1h"] += line["cache_write_1h_tokens"]
        sums["tools"].update(used_tools(line))
        for part, field in PARTS.items():
            sums["parts"][part] += line[field]
        # A rerank's searches (null for a request billed by tokens: every one here).
        sums["searches"] += line["search_units"] or 0
    assert len(from_logs) >= 20

    # The report, once the batching writer has flushed everything.
    expected_requests = sum(sums["requests"] for sums in from_logs.values())
    report = wait_for(
        lambda: (
            (found := usage_report(recon_stack))
            and sum(row["requests"] for row in found.values()) >= expected_requests
            and found
        ),
        30,
    )
    assert set(report) == set(from_logs)
    samples = scrape(recon_stack.metrics_url)
    metrics = metric_sums(samples)
    for key, sums in from_logs.items():
        row = report[key]
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"],
                row["cached_tokens"]) == (sums["requests"], sums["prompt"], sums["completion"],
                                          sums["cached"]), key  # fmt: skip
        assert Decimal(row["cost_usd"]) == sums["cost"], key
        # What explains the cost beyond plain tokens: the cache writes, the tools' requests.
        assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (
            sums["writes"], sums["writes_1h"],
        ), key  # fmt: skip
        assert row["server_tool_requests"] == dict(sums["tools"]), key
        assert row["search_units"] == sums["searches"], key
        assert row["latency_p50_ms"] is not None and row["latency_p95_ms"] is not None
        counted = metrics.get(key, {"prompt": 0.0, "completion": 0.0, "cost": 0.0})
        assert (counted["prompt"], counted["completion"]) == (sums["prompt"], sums["completion"])
        # The cache's parts of the prompt, which the dashboard's cache share reads: the
        # same integers as the lines' (a series only for a part some request had).
        counted_parts = {part: counted.get(f"part:{part}", 0.0) for part in PARTS}
        assert counted_parts == {part: sums["parts"][part] for part in PARTS}, key
        assert exact(counted["cost"]) == sums["cost"], key
        assert counted.get("searches", 0.0) == sums["searches"], key
        unpriced = key[3] == "claude-3-opus-latest"
        assert row["unpriced_requests"] == (row["requests"] if unpriced else 0)
    # No series counts anything the logs do not.
    assert set(metrics) <= set(from_logs)

    # The management API serves the very same report (the demo admin token of the config).
    assert usage_report(recon_stack, "--api", "--token", "dev-admin-token") == report

    # The billing export, by group, adds up to the same money.
    export = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "export", "--by", "group", "--config",
         str(recon_stack.config_path)],
        env=recon_stack.env, capture_output=True, check=True, text=True,
    )  # fmt: skip
    rows = csv.DictReader(io.StringIO(export.stdout))
    by_group = {row["group_id"]: Decimal(row["cost_usd"]) for row in rows}
    for group in ("finance", "research", "ops"):
        expected = sum((s["cost"] for k, s in from_logs.items() if k[2] == group), Decimal(0))
        assert by_group[group] == expected


def metric_sums(samples: dict[Any, float]) -> dict[Key, dict[str, float]]:
    """tokens_consumed_total, aigw_token_parts_total (as ``part:<token_type>``),
    aigw_cost_usd_total and aigw_search_units_total (as ``searches``) per identity and
    model."""
    found: dict[Key, dict[str, float]] = defaultdict(
        lambda: {"prompt": 0.0, "completion": 0.0, "cost": 0.0}
    )
    for (name, pairs), value in samples.items():
        labels = dict(pairs)
        if name == "tokens_consumed_total" and labels.get("token_type") in ("prompt", "completion"):
            found[key_of(labels)][labels["token_type"]] += value
        elif name == "aigw_token_parts_total":
            assert labels["token_type"] in PARTS, labels
            sums = found[key_of(labels)]
            part = f"part:{labels['token_type']}"
            sums[part] = sums.get(part, 0.0) + value
        elif name == "aigw_cost_usd_total":
            # One series per identity, model and provider; a model has one provider here.
            assert found[key_of(labels)]["cost"] == 0.0
            found[key_of(labels)]["cost"] = value
        elif name == "aigw_search_units_total":
            sums = found[key_of(labels)]
            sums["searches"] = sums.get("searches", 0.0) + value
    return found
