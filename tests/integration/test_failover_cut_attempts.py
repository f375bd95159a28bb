"""Failover attempts whose provider started answering (its 200 came back) and never finished.

A non-streamed answer after a failover is read whole by the per-attempt filter before its
status goes on, so for Envoy's router it has not started while its body is in flight: a
provider that resets mid-body, or stalls past the attempt's timeout, is retried on the
next model. The provider billed what it generated all the same. The stand-in provider
below answers 200 and half a JSON body, then resets the connection (or holds it); the
fallback is the stack's mock Anthropic provider. The official OpenAI SDK is the client.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pytest
from openai import APIStatusError, OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.quota.estimate import estimate_prompt_tokens
from tests.integration.conftest import (
    GatewayLog,
    metric,
    mock_requests,
    run_cli,
    running_stack,
    scrape,
    wait_for,
)
from tests.integration.failover_support import rollup_by_provider

MESSAGES = [{"role": "user", "content": "fail over please"}]
REPLY = "Mock reply to: fail over please"
MAX_TOKENS = 50
# USD per million input and output tokens of the models whose providers cut their answers.
CUT_PRICE = (Decimal(50), Decimal(100))
KEYS = {name: f"{name}-client-secret" for name in ("facts", "charged", "every")}
# Half of a chat completion: the body a provider had started sending when it broke off.
_HALF = (
    b'{"id":"chatcmpl-cut","object":"chat.completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Half an ans'
)


class HalfAnswer:
    """A provider that answers 200 and half a JSON body, then resets the connection
    (``reset``) or holds it until the gateway gives up (``stall``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.asked = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            self._read_request(connection)
            self.asked += 1
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: 400\r\n\r\n" + _HALF
            )
        except OSError:
            connection.close()
            return
        if self.mode == "stall":
            self._held.append(connection)
            return
        # SO_LINGER 0: close with a reset, as a provider's crashed connection ends.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                raise OSError("closed before the request's headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                raise OSError("closed before the request's body")
            body += chunk

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


@dataclass
class Stack:
    gateway: LocalStack
    reset: HalfAnswer
    reset_too: HalfAnswer
    stall: HalfAnswer


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("failover-cut-attempts")
    reset, reset_too, stall = HalfAnswer("reset"), HalfAnswer("reset"), HalfAnswer("stall")
    providers = f"""
  - {{name: preset, base_url: "{reset.url}", api_key: preset-provider-key}}
  - {{name: preset-too, base_url: "{reset_too.url}", api_key: preset-too-provider-key}}
  - {{name: pstall, base_url: "{stall.url}", api_key: pstall-provider-key, timeout_s: 1}}
"""
    models = """
  - {name: mreset, provider: preset, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mstall, provider: pstall, fallbacks: [claude-3-5-haiku-latest]}
  - {name: mreset-too, provider: preset-too}
  - {name: mreset-twice, provider: preset, fallbacks: [mreset-too]}
"""
    price_in, price_out = CUT_PRICE
    prices = "".join(
        f"    {model}: {{input_per_million: {price_in}, output_per_million: {price_out}}}\n"
        for model in ("mreset", "mstall", "mreset-too", "mreset-twice")
    )
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + models, 1)
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    # The pricing table's own models, after its server tool prices.
    head, pricing, table = text.partition("\npricing:\n")
    text = head + pricing + table.replace("  models:\n", "  models:\n" + prices, 1)
    quotas = (
        "\nquotas:\n  rules:\n    - {name: budget, subject: api_key, tokens_per_day: 1000000}\n"
    )
    config = workdir / "gateway.yaml"
    config.write_text(text + quotas)
    try:
        with running_stack(workdir, config) as running:
            yield Stack(running, reset, reset_too, stall)
    finally:
        for provider in (reset, reset_too, stall):
            provider.close()


def openai_client(stack: Stack, key: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.gateway.base_url}/v1", api_key=KEYS[key], max_retries=0, timeout=30
    )


def ask(stack: Stack, key: str, model: str) -> Any:
    return openai_client(stack, key).chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
    )


def log_line(stack: Stack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway.gateway_log).for_request(request_id)
    return line


def quota_used(stack: Stack, key: str) -> int:
    """Tokens the key's `budget` counter holds, as `extproc quota get` shows it."""
    done = run_cli(
        stack.gateway, "quota", "get", "--kind", "api_key", "--subject", key,
        "--format", "json", admin_token="dev-admin-token",
    )  # fmt: skip
    found = orjson.loads(done.stdout)
    return next(int(limit["used"]) for limit in found["limits"] if limit["rule"] == "budget")


def cut_estimate() -> tuple[int, int]:
    """What an answer cut after its 200 is charged: the prompt as the quota estimate
    counts it, and the completion allowance the request asked for."""
    body = {"model": "mreset", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    return estimate_prompt_tokens(body), MAX_TOKENS


def cut_cost_usd() -> Decimal:
    prompt, completion = cut_estimate()
    price_in, price_out = CUT_PRICE
    return (prompt * price_in + completion * price_out) / 10**6


@pytest.mark.parametrize(("model", "provider"), [("mreset", "reset"), ("mstall", "stall")])
def test_an_answer_cut_after_its_200_is_retried_on_the_next_model(
    cut: Stack, model: str, provider: str
) -> None:
    """What Envoy does: the half-sent answer had not started for its router, so the
    request goes on to the fallback, whose answer the client gets; the log line names
    the fallback as the provider that answered, and the cut attempt apart."""
    stand_in: HalfAnswer = getattr(cut, provider)
    asked = stand_in.asked
    before = len(mock_requests(cut.gateway))
    raw = ask(cut, "facts", model)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-envoy-attempt-count"] == "2"
    assert stand_in.asked == asked + 1  # its 200 left: the provider generated an answer
    assert len(mock_requests(cut.gateway)) == before + 1
    line = log_line(cut, raw.headers["x-request-id"])
    assert (line["model"], line["provider"]) == (model, "mock-anthropic")
    assert [each["provider"] for each in line["cut_attempts"]] == ["p" + provider]
    assert "x-aigw-started" not in raw.headers


def test_the_attempt_cut_after_its_200_is_charged_beside_the_answer(cut: Stack) -> None:
    """The primary's provider billed the answer it broke off: every ledger charges it as a
    cut answer (prompt estimate and completion allowance, at its model's price and under
    its provider), in addition to the fallback's answer."""
    before = scrape(cut.gateway.metrics_url)
    raw = ask(cut, "charged", "mreset")
    usage = raw.parse().usage
    assert usage is not None
    prompt, completion = cut_estimate()
    line = log_line(cut, raw.headers["x-request-id"])
    assert line["total_tokens"] == usage.total_tokens + prompt + completion
    assert line["usage_estimated"] is True
    after = scrape(cut.gateway.metrics_url)
    labels = {"api_key_id": "charged", "model": "mreset", "provider": "preset"}
    for token_type, count in (("prompt", prompt), ("completion", completion)):
        found = metric(after, "tokens_consumed_total", token_type=token_type, **labels)
        assert found - metric(before, "tokens_consumed_total", token_type=token_type, **labels) == (
            count
        )
    cost = metric(after, "aigw_cost_usd_total", **labels) - metric(
        before, "aigw_cost_usd_total", **labels
    )
    assert Decimal(str(cost)) == cut_cost_usd()
    by = "api_key,model,provider"
    rows = wait_for(lambda: rollup_by_provider(cut.gateway, "charged", by), 15.0)
    assert rows["preset"]["model"] == "mreset"
    assert rows["preset"]["total_tokens"] == prompt + completion
    assert rows["mock-anthropic"]["total_tokens"] == usage.total_tokens
    expected = usage.total_tokens + prompt + completion
    assert wait_for(lambda: quota_used(cut, "charged") == expected, 5.0)


def test_when_every_attempt_is_cut_the_client_gets_a_502_and_each_is_charged(
    cut: Stack,
) -> None:
    with pytest.raises(APIStatusError) as raised:
        ask(cut, "every", "mreset-twice")
    assert raised.value.status_code == 502
    prompt, completion = cut_estimate()
    line = log_line(cut, raised.value.response.headers["x-request-id"])
    assert line["total_tokens"] == 2 * (prompt + completion)
    assert wait_for(lambda: quota_used(cut, "every") == 2 * (prompt + completion), 5.0)
