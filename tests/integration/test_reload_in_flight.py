"""A config reload while requests are in flight, as users and an operator see it.

`extproc serve --workers 2` behind the real Envoy, its store an embedded Valkey,
the mock provider driven by the official OpenAI client. The operator rewrites the
config file (atomically, then SIGHUP) while streams are open. A request finishes,
and is accounted, under the config it started with: its quota reservation is
settled on the counter it reserved on, it is priced at the prices it was sent
under, its log line, metrics and rollup name its route, provider and model, even
when the reload removed them, their price, the quota rule or the caller's key.
Requests that start after the reload, on either worker, see only the new config;
so does every request after a storm of reloads. A reload that moves the store
moves nothing before a restart; one refused for a key file not written yet is
applied when the file comes. A failover retry made after a reload serves the
fallback the request was admitted with (the chain travels in its body).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from openai import AuthenticationError, NotFoundError, OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
)
from tests.integration.forked import run_extproc_text
from tests.integration.test_failover import BlackHole
from tests.integration.test_workers import worker_streams

WORKERS = 2
ADMIN_TOKEN = "reload-in-flight-admin-token"
KEYS = {name: f"{name}-secret-key" for name in ("leaver", "stayer", "revoked-later")}
# Long enough that a reload lands while the stream is still being answered (~6 s; a
# reload takes a tenth of a second). A whole number of the reply's 10 pieces, so the
# answer ends on its last word, "reload".
LONG_STREAM = "chunks=200;interval=0.03"
# The primary's provider never answers; Envoy gives up on it after this and fails over.
# The reload must land in that wait (it takes a tenth of a second).
SLOW_TIMEOUT_S = 5
# The provider that never answers; started with the stack.
HOLE: BlackHole | None = None
# What the retiring route's guardrail policy makes of the word "reload".
HUSHED = "[hushed]"
# USD per million (input, output) tokens in the config the streams start under.
OLD_PRICES = {
    "retiring-model": (Decimal("1.00"), Decimal("2.00")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
}


@dataclass(frozen=True)
class Edit:
    """The module's config as an operator edits it: each field one thing a reload changes."""

    keys: tuple[str, ...] = tuple(KEYS)
    retiring_model: bool = True
    quota_rule: bool = True
    gpt_4o_price: tuple[Decimal, Decimal] = OLD_PRICES["gpt-4o"]
    primary_slow: bool = True
    # A provider whose credential file the operator has not written yet.
    late_key_file: Path | None = None
    # Another store (`store` settings change only on restart).
    store: dict[str, str] | None = None

    def text(self) -> str:
        assert HOLE is not None, "the stack fixture starts the provider that never answers"
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        config["management"]["admin_tokens"] = [{"id": "ops", "token": ADMIN_TOKEN}]
        config["auth"]["api_keys"] += [{"id": name, "key": KEYS[name]} for name in self.keys]
        never_answers = f"http://127.0.0.1:{HOLE.port}/v1"
        providers, models = config["providers"], config["models"]
        providers.append({"name": "slow", "base_url": never_answers, "api_key": "slow-key-123",
                          "timeout_s": SLOW_TIMEOUT_S})  # fmt: skip
        if self.late_key_file is not None:
            providers.append(
                {"name": "late", "base_url": never_answers, "api_key_file": str(self.late_key_file)}
            )
        prices = config["pricing"]["models"]
        prices["gpt-4o"] = price(*self.gpt_4o_price)
        if self.retiring_model:
            # A model on a provider of its own, behind a route of its own whose
            # guardrail policy masks a word of the mock's answers: all retired together.
            mock = next(p for p in providers if p["name"] == "mock")
            providers.append({**mock, "name": "retiring-provider"})
            models.append({"name": "retiring-model", "provider": "retiring-provider",
                           "upstream_model": "gpt-4o-mini"})  # fmt: skip
            prices["retiring-model"] = price(*OLD_PRICES["retiring-model"])
            config["routes"].append(
                {"name": "retiring", "path_prefix": "/retiring", "guardrails": "hush"}
            )
            config["guardrails"] = {"policies": [{"name": "hush", "response": [
                {"name": "no-reload", "literals": ["reload"], "action": "MASK",
                 "replacement": HUSHED}]}]}  # fmt: skip
        if self.primary_slow:
            models.append({"name": "primary-slow", "provider": "slow",
                           "fallbacks": ["claude-3-5-haiku-latest"]})  # fmt: skip
        if self.quota_rule:
            config["quotas"] = {"rules": [{"name": "daily-budget", "subject": "api_key",
                                           "match": ["leaver", "stayer"],
                                           "tokens_per_day": 1_000_000}]}  # fmt: skip
        if self.store is not None:
            config["store"].update(self.store)
        text: str = yaml.safe_dump(config, sort_keys=False)
        return text


def price(input_price: Decimal, output_price: Decimal) -> dict[str, str]:
    return {"input_per_million": str(input_price), "output_per_million": str(output_price)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    global HOLE
    HOLE = BlackHole()
    workdir = tmp_path_factory.mktemp("reload-in-flight")
    config = workdir / "gateway.yaml"
    config.write_text(Edit().text())
    try:
        with running_stack(workdir, config, workers=WORKERS) as running:
            yield running
    finally:
        HOLE.close()


@pytest.fixture(autouse=True)
def original_config(stack: LocalStack) -> Iterator[None]:
    """Each test starts, and leaves the stack, on the module's original config."""
    yield
    reload(stack, Edit())


def worker_log_count(stack: LocalStack, what: str) -> list[int]:
    """How often each worker logged ``what`` from its config reloader."""
    text = (stack.workdir / "gateway.err").read_text()
    return [text.count(f"worker-{index} extproc.config.reload: {what}") for index in range(WORKERS)]


def write_config(stack: LocalStack, edit: Edit) -> None:
    """Write the file as a careful operator does: a rename, never half a file."""
    written = stack.config_path.with_suffix(".new")
    written.write_text(edit.text())
    written.replace(stack.config_path)


def reload(stack: LocalStack, edit: Edit, outcome: str = "config reloaded") -> None:
    """Write the file, send SIGHUP, and wait until every worker has logged ``outcome``."""
    before = worker_log_count(stack, outcome)
    write_config(stack, edit)
    stack.process("gateway").send_signal(signal.SIGHUP)
    done = wait_for(
        lambda: all(a > b for a, b in zip(worker_log_count(stack, outcome), before, strict=True)),
        timeout_s=30.0,
    )
    assert done, f"not every worker logged {outcome!r}"


def client(stack: LocalStack, key: str, path: str = "/v1") -> OpenAI:
    return OpenAI(base_url=stack.base_url + path, api_key=KEYS[key], max_retries=0)


MESSAGES = [{"role": "user", "content": "a long answer across a reload"}]


class OpenStream:
    """A streamed chat completion the client has started to read."""

    def __init__(self, stack: LocalStack, key: str, model: str, path: str = "/v1") -> None:
        chat = client(stack, key, path).chat.completions
        self._context = chat.with_streaming_response.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-fault": LONG_STREAM},
        )
        response = self._context.__enter__()
        self.request_id: str = response.headers["x-request-id"]
        self._chunks = iter(response.parse())
        first = next(self._chunks)
        self.text = "".join(choice.delta.content or "" for choice in first.choices)

    def finish(self) -> Any:
        """Read the rest; the usage the provider reported, as the client got it."""
        usage = None
        for chunk in self._chunks:
            self.text += "".join(choice.delta.content or "" for choice in chunk.choices)
            usage = chunk.usage or usage
        self._context.__exit__(None, None, None)
        assert usage is not None, "the stream ended without its usage chunk"
        return usage


def log_line(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def still_open(stack: LocalStack, *streams: OpenStream) -> bool:
    """No log line yet: the gateway has not finished any of these requests."""
    ids = {stream.request_id for stream in streams}
    return not any(line.get("request_id") in ids for line in GatewayLog(stack.gateway_log).lines())


def cost(model: str, usage: Any) -> Decimal:
    input_price, output_price = OLD_PRICES[model]
    total = usage.prompt_tokens * input_price + usage.completion_tokens * output_price
    return total / Decimal(1_000_000)


def quota_used(stack: LocalStack, key: str) -> int:
    """`extproc quota get` as an operator runs it: the key's daily-budget counter."""
    argv = [sys.executable, "-m", "extproc", "quota", "get", "--kind", "api_key",
            "--subject", key, "--config", str(stack.config_path), "--token", ADMIN_TOKEN,
            "--format", "json"]  # fmt: skip
    done = run_extproc_text(argv, stack.env)
    assert done.returncode == 0, done.stderr
    [limit] = orjson.loads(done.stdout)["limits"]
    assert limit["rule"] == "daily-budget"
    used: int = limit["used"]
    return used


def test_streams_open_across_a_reload_finish_and_are_accounted_under_their_config(
    stack: LocalStack,
) -> None:
    retiring = OpenStream(stack, "leaver", "retiring-model", path="/retiring")
    repriced = OpenStream(stack, "stayer", "gpt-4o")
    # The reload takes away the first stream's model, provider, price, route, guardrail
    # policy and caller's key, the quota rule both streams reserved on, and raises the
    # second stream's price tenfold.
    reload(
        stack,
        Edit(
            keys=("stayer", "revoked-later"),
            retiring_model=False,
            quota_rule=False,
            gpt_4o_price=(Decimal("25.00"), Decimal("100.00")),
        ),
    )
    assert still_open(stack, retiring, repriced), "a stream ended before the reload landed"

    # New requests see the new config at once...
    with pytest.raises(AuthenticationError):
        client(stack, "leaver").models.list()
    with pytest.raises(NotFoundError):
        client(stack, "stayer").chat.completions.create(
            model="retiring-model",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    # ...while the open streams run to their end under the old one: the whole answer,
    # still masked by the retired policy after the reload, logged and priced as sent.
    usages = {"retiring-model": retiring.finish(), "gpt-4o": repriced.finish()}
    assert "reload" not in retiring.text
    assert retiring.text.endswith(HUSHED)
    assert repriced.text.startswith("Mock reply to: a long answer across a reload")
    for stream, model, route in (
        (retiring, "retiring-model", "retiring"),
        (repriced, "gpt-4o", "openai-chat"),
    ):
        line = log_line(stack, stream.request_id)
        assert (line["http_status_code"], line["model"], line["route"]) == (200, model, route)
        usage = usages[model]
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert line["cost_priced"] is True
        assert line["cost_usd"] == pytest.approx(float(cost(model, usage)), rel=1e-9)
    assert log_line(stack, retiring.request_id)["provider"] == "retiring-provider"
    # tokens_consumed_total names the retired model and key, once.
    page = scrape(stack.metrics_url)
    counted = {
        kind: metric(page, "tokens_consumed_total", api_key_id="leaver", model="retiring-model",
                     provider="retiring-provider", token_type=kind)
        for kind in ("prompt", "completion")
    }  # fmt: skip
    retired_usage = usages["retiring-model"]
    assert counted == {
        "prompt": retired_usage.prompt_tokens,
        "completion": retired_usage.completion_tokens,
    }

    # The rollup has the retired model's usage, at the price it was sent under.
    retired = wait_for(lambda: usage_rows(stack, "model").get("retiring-model"))
    assert retired, "the retired model's usage never reached the rollup"
    assert retired["total_tokens"] == usages["retiring-model"].total_tokens
    assert Decimal(retired["cost_usd"]) == cost("retiring-model", usages["retiring-model"])

    # With the rule back, its counters hold what each stream used: the reservations
    # were settled with the real usage on the counters they were made on.
    reload(stack, Edit())
    for stream, key in ((retiring, "leaver"), (repriced, "stayer")):
        line = log_line(stack, stream.request_id)
        assert wait_for(lambda key=key, line=line: quota_used(stack, key) == line["total_tokens"])


def test_a_key_removed_by_a_reload_is_refused_by_every_worker(stack: LocalStack) -> None:
    assert client(stack, "revoked-later").models.list().data
    reload(stack, Edit(keys=("leaver", "stayer")))
    before = worker_streams(stack)
    for _ in range(8):
        with pytest.raises(AuthenticationError):
            client(stack, "revoked-later").models.list()
    after = worker_streams(stack)
    assert all(after[endpoint] > before.get(endpoint, 0) for endpoint in after), (
        "the refusals did not reach every worker"
    )


def test_a_storm_of_reloads_answers_every_request_and_leaves_the_last_file_serving(
    stack: LocalStack,
) -> None:
    answered: list[Any] = []

    def ask() -> None:
        chat = client(stack, "stayer").chat.completions
        for _ in range(6):
            answered.append(
                chat.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,  # type: ignore[arg-type]
                    extra_headers={"x-mock-fault": "chunks=20;interval=0.02"},
                )
            )

    asking = threading.Thread(target=ask)
    asking.start()
    gateway = stack.process("gateway")
    # Ten versions in quick succession, each with its SIGHUP; the last revokes a key.
    for index in range(10):
        write_config(stack, Edit(keys=("leaver", "stayer")) if index % 2 else Edit())
        gateway.send_signal(signal.SIGHUP)
    asking.join(timeout=120.0)
    assert len(answered) == 6
    for raw in answered:
        reply = raw.parse()
        line = log_line(stack, raw.headers["x-request-id"])
        assert reply.usage is not None
        assert (line["http_status_code"], line["total_tokens"]) == (200, reply.usage.total_tokens)

    def refused_everywhere() -> bool:
        refused = 0
        for _ in range(8):
            try:
                client(stack, "revoked-later").models.list()
            except AuthenticationError:
                refused += 1
        return refused == 8

    assert wait_for(refused_everywhere, timeout_s=30.0), "the last file is not what serves"


def test_a_reload_waiting_for_a_secret_file_applies_once_the_file_is_written(
    stack: LocalStack,
) -> None:
    """The operator revokes a key and adds a provider whose key file comes a moment
    later (a Secret mounted after its ConfigMap, a file copied after the config)."""
    key_file = stack.workdir / "late-provider.key"
    edit = Edit(keys=("leaver", "stayer"), late_key_file=key_file)
    reload(stack, edit, outcome="config reload rejected")
    # The running config keeps serving meanwhile: the key is still good.
    assert client(stack, "revoked-later").models.list().data
    applied = worker_log_count(stack, "config reloaded")
    key_file.write_text("late-provider-key-123\n")
    took_effect = wait_for(
        lambda: all(
            a > b for a, b in zip(worker_log_count(stack, "config reloaded"), applied, strict=True)
        ),
        timeout_s=15.0,
    )
    assert took_effect, "the config waiting for its key file was never applied"
    with pytest.raises(AuthenticationError):
        client(stack, "revoked-later").models.list()
    key_file.unlink()


def test_a_reload_that_changes_the_store_keeps_every_request_on_the_running_store(
    stack: LocalStack,
) -> None:
    before = quota_used(stack, "stayer")
    stream = OpenStream(stack, "stayer", "gpt-4o")
    # Nothing listens there: a request sent to that store would fail or be lost.
    reload(stack, Edit(store={"url": "redis://127.0.0.1:1/0", "key_prefix": "elsewhere:"}))
    assert still_open(stack, stream), "the stream ended before the reload landed"
    warned = (stack.workdir / "gateway.err").read_text()
    assert "server and store settings change only on restart" in warned
    streamed = stream.finish()
    answered = client(stack, "stayer").chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert answered.usage is not None
    # Both were charged on the running store's counters, the one admitted before the
    # reload and the one after it.
    expected = before + streamed.total_tokens + answered.usage.total_tokens
    assert wait_for(lambda: quota_used(stack, "stayer") == expected)


def test_a_failover_attempt_after_a_reload_serves_the_request_under_its_config(
    stack: LocalStack,
) -> None:
    assert HOLE is not None
    held = len(HOLE.held)
    answers: list[Any] = []

    def ask() -> None:
        try:
            answers.append(
                client(stack, "stayer").chat.completions.with_raw_response.create(
                    model="primary-slow",
                    messages=MESSAGES,  # type: ignore[arg-type]
                )
            )
        except Exception as error:  # the client's error is the finding
            answers.append(error)

    asking = threading.Thread(target=ask)
    asking.start()
    # The first attempt is at the provider that never answers: the request is admitted.
    assert wait_for(lambda: len(HOLE.held) > held, timeout_s=10.0)
    # The operator retires the model while the request waits on it.
    reload(stack, Edit(primary_slow=False))
    assert not answers, "the request was answered before the reload landed: inconclusive"
    asking.join(timeout=60.0)
    [raw] = answers
    assert not isinstance(raw, Exception), f"the admitted request failed: {raw!r}"
    reply = raw.parse()
    assert reply.choices[0].message.content.startswith("Mock reply to:")
    line = log_line(stack, raw.headers["x-request-id"])
    assert line["provider"] == "mock-anthropic"
