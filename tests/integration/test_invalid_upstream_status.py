"""A provider answering a status outside HTTP's 100-599, through the real Envoy.

Envoy passes any three digits on. The stand-in provider answers every call 600 with a
whole completion. Where the gateway answers the response headers, the official OpenAI
client gets a 502 it knows (``InternalServerError``), nothing is billed, and a failover
chain moves on to its next model: Envoy retries 500-599 alone, so a 600 used to end the
chain at its first member. On the lean path (a pass-through answer whose headers leave
before the gateway reads it) the client gets the status as sent. Every line is checked
against docs/log-schema.json at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, JsonStandIn, running_stack, serving

KEY = "team1-key"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
# The route whose answers a guard reads: the full path, whatever the model.
GUARDED = "/guarded/v1"


class InvalidStatus(JsonStandIn):
    """An OpenAI-compatible server that answers a whole completion with status 600."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.json_body()
        completion = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
        self.answer_json(completion, 600)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("invalid-upstream-status")
    with serving(InvalidStatus) as port:
        provider = (
            f'  - {{name: pinvalid, type: openai, base_url: "http://127.0.0.1:{port}/v1",'
            " api_key: pinvalid-provider-key}\n"
        )
        models = (
            "  - {name: minvalid, provider: pinvalid}\n"
            "  - {name: minvalid-chain, provider: pinvalid, fallbacks: [gpt-4.1-nano]}\n"
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


def client(stack: LocalStack, base_path: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base_path}", api_key=KEY, max_retries=0)


def line_of(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_the_client_gets_a_502_in_openai_shape_and_is_not_billed(stack: LocalStack) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client(stack, GUARDED).chat.completions.create(model="minvalid", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_error"
    assert "invalid HTTP status (600)" in raised.value.message
    line = line_of(stack, raised.value.response.headers["x-request-id"])
    found = (line["http_status_code"], line["upstream_status_code"], line["outcome"])
    assert found == (502, 600, "upstream_error")
    assert (line["total_tokens"], line["cost_usd"]) == (0, 0.0)


def test_a_failover_chain_moves_on_past_the_invalid_status(stack: LocalStack) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="minvalid-chain", messages=MESSAGES
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Mock reply to: hi"
    assert raw.headers["x-envoy-attempt-count"] == "2"
    line = line_of(stack, raw.headers["x-request-id"])
    assert (line["http_status_code"], line["provider"]) == (200, "mock")


def test_on_the_lean_path_the_client_gets_the_status_as_sent(stack: LocalStack) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client(stack).chat.completions.create(model="minvalid", messages=MESSAGES)
    assert raised.value.status_code == 600
    line = line_of(stack, raised.value.response.headers["x-request-id"])
    assert (line["http_status_code"], line["outcome"], line["total_tokens"]) == (
        600,
        "upstream_error",
        0,
    )
