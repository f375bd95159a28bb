"""A provider (or a proxy in front of it) answering a redirect, through the real Envoy.

Envoy passes an upstream 3xx on. The stand-in provider answers every call 307 with a
whole completion and a ``location`` pointing at another stand-in, which answers a
completion too. Before, the gateway logged it
``completed`` and billed the completion's usage, and the official OpenAI client followed
the ``location`` past the gateway, sending its gateway key to the host it named. Where
the gateway answers the response headers, the client now gets a 502 it knows
(``InternalServerError``), nothing is billed and a failover chain moves on; on the lean
path (headers already sent) the client gets the redirect's status, unbilled, without its
``location``, which Envoy's route to the provider removes: the SDK raises instead of
following it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, JsonStandIn, running_stack, serving

KEY = "team1-key"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
# The route whose answers a guard reads: the full path, whatever the model.
GUARDED = "/guarded/v1"


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


class RedirectTarget(JsonStandIn):
    """Where the redirect points: a server that speaks OpenAI's API, outside the gateway."""

    port: ClassVar[int] = 0
    seen_credentials: ClassVar[list[str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.seen_credentials.append(self.headers.get("authorization", ""))
        self.answer_json(completion(self.json_body().get("model", "")))


class Redirecting(JsonStandIn):
    """An OpenAI-compatible server that answers 307 to RedirectTarget, with a whole
    completion."""

    seen_credentials: ClassVar[list[str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.seen_credentials.append(self.headers.get("authorization", ""))
        payload = orjson.dumps(completion(self.json_body().get("model", "")))
        self.send_response(307)
        target = f"http://127.0.0.1:{RedirectTarget.port}/v1/chat/completions"
        self.send_header("location", target)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("upstream-redirects")
    with serving(RedirectTarget) as target, serving(Redirecting) as port:
        RedirectTarget.port = target
        provider = (
            f'  - {{name: pmoved, type: openai, base_url: "http://127.0.0.1:{port}/v1",'
            " api_key: pmoved-provider-key}\n"
        )
        models = (
            "  - {name: mmoved, provider: pmoved}\n"
            "  - {name: mmoved-chain, provider: pmoved, fallbacks: [gpt-4.1-nano]}\n"
        )
        route = (
            "  - {name: guarded-chat, path: /guarded/v1/chat/completions, guardrails: answers}\n"
        )
        guards = (
            "guardrails:\n  policies:\n    - name: answers\n"
            "      response: [{name: no-falcon, literals: [project falcon]}]\n"
        )
        text = DEFAULT_CONFIG.read_text()
        text = text.replace("\nproviders:\n", "\nproviders:\n" + provider, 1)
        text = text.replace("\nmodels:\n", "\nmodels:\n" + models, 1)
        text = text.replace("\nroutes:\n", "\nroutes:\n" + route, 1)
        text = text.replace("\nroutes:\n", "\n" + guards + "\nroutes:\n", 1)
        config = workdir / "gateway.yaml"
        config.write_text(text)
        with running_stack(workdir, config) as running:
            yield running


def line_of(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


@pytest.fixture(autouse=True)
def nothing_seen_yet() -> None:
    Redirecting.seen_credentials.clear()
    RedirectTarget.seen_credentials.clear()


def test_the_client_gets_a_502_and_is_not_billed(stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{GUARDED}", api_key=KEY, max_retries=0)

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="mmoved", messages=MESSAGES)

    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_error"
    assert "redirect (HTTP 307)" in raised.value.message
    assert "location" not in raised.value.response.headers
    # The provider heard from the gateway alone, never with the client's key.
    assert Redirecting.seen_credentials == ["Bearer pmoved-provider-key"]
    assert RedirectTarget.seen_credentials == []
    line = line_of(stack, raised.value.response.headers["x-request-id"])
    found = (line["http_status_code"], line["upstream_status_code"], line["outcome"])
    assert found == (502, 307, "upstream_error")
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0.0)


def test_a_failover_chain_moves_on_past_the_redirect(stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(model="mmoved-chain", messages=MESSAGES)

    assert raw.parse().choices[0].message.content == "Mock reply to: hi"
    assert raw.headers["x-envoy-attempt-count"] == "2"
    line = line_of(stack, raw.headers["x-request-id"])
    assert (line["http_status_code"], line["provider"]) == (200, "mock")


def test_on_the_lean_path_the_redirect_is_passed_on_unbilled(stack: LocalStack) -> None:
    answer = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "mmoved", "messages": MESSAGES},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30.0,
    )

    assert answer.status_code == 307
    assert "location" not in answer.headers
    line = line_of(stack, answer.headers["x-request-id"])
    found = (line["http_status_code"], line["outcome"], line["total_tokens"])
    assert found == (307, "upstream_error", 0)


def test_on_the_lean_path_the_sdk_does_not_follow_the_redirect(stack: LocalStack) -> None:
    # /v1 is the lean path for a pass-through model: the gateway answers before it sees
    # the response headers, so Envoy's route is what keeps the location from the client.
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="mmoved", messages=MESSAGES)

    assert raised.value.status_code == 307
    assert "location" not in raised.value.response.headers
    # One call, the gateway's; the client's key went nowhere past the gateway.
    assert Redirecting.seen_credentials == ["Bearer pmoved-provider-key"]
    assert RedirectTarget.seen_credentials == []
    line = line_of(stack, raised.value.response.headers["x-request-id"])
    found = (line["http_status_code"], line["outcome"], line["total_tokens"], line["cost_usd"])
    assert found == (307, "upstream_error", 0, 0.0)
