"""A failover chain is checked against the request's body, member by member, before any
attempt is planned.

The early checks a model's provider makes (``backends.check_pair``) and the refusals of
its translation used to run for the primary alone: a fallback on a translated provider
was tried with whatever the client sent, after the primary had failed. Seen with Envoy
1.40, the OpenAI SDK asking ``gpt-4o`` (OpenAI, falling back to Claude) while OpenAI was
down: ``n: 2`` came back as a 400 "this model returns one choice per request" that the
log line charged to the primary, which never answered; ``tool_choice: "required"``
without tools came back as Claude's text, the forced call dropped by the translation.

Now a fallback that cannot be sent the body is skipped, never tried, as one the caller
may not use is (the gateway's diagnostic log says which, and for which field), and a
request the primary itself cannot be sent is refused by the downstream filter with the
400 it gets without fallbacks.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_failover import failover_cluster_name
from extproc.runtime import Services
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

CLIENT = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "fail over please"}]
OPENAI = ["mock", "gpt-4o", "gpt-4o"]
CLAUDE = ["mock-anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"]
TITAN = ["mock-bedrock", "amazon.titan-text-express-v1", "amazon.titan-text-express-v1"]


def config(
    model: str = "gpt-4o",
    fallbacks: str = "[claude-3-5-haiku-latest, amazon.titan-text-express-v1]",
) -> str:
    """The default config with ``model`` failing over to ``fallbacks``: by default OpenAI's
    gpt-4o to Claude on Anthropic, then Titan on Bedrock."""
    return DEFAULT_CONFIG.read_text().replace(
        f"  - name: {model}\n    provider: ",
        f"  - name: {model}\n    fallbacks: {fallbacks}\n    provider: ",
        1,
    )


def parsed(text: str) -> GatewayConfig:
    return parse_config(text, "gateway.yaml", {})


async def admit(cfg: GatewayConfig, body: dict[str, Any], services: Services | None = None) -> Any:
    """The downstream filter's answer to the request body of a chat completion."""
    answers = await run_stream(
        processor_for(cfg, services),
        [
            request_headers("/v1/chat/completions", headers=CLIENT),
            request_body(orjson.dumps({"model": "gpt-4o", "messages": PROMPT, **body})),
        ],
    )
    return answers[-1]


async def chain_of(body: dict[str, Any]) -> tuple[str, list[list[str]], dict[str, Any]]:
    """The failover route Envoy is told to take for a gpt-4o request with ``body``, the
    chain its attempts read, and the body they start from."""
    answer = await admit(parsed(config()), body)
    mutation = answer.request_body.response
    found = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }
    sent = orjson.loads(mutation.body_mutation.body)
    chain = sent.pop(headers.FAILOVER_CHAIN_KEY)
    sent.pop(headers.FAILOVER_REQUEST_KEY)
    return found[headers.CLUSTER], chain, sent


@pytest.mark.parametrize(
    "body",
    [
        {"n": 1, "tool_choice": "auto"},
        # A JSON schema: each member constrains its answer to it (Converse's outputConfig).
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
    ],
)
async def test_a_request_every_member_serves_keeps_the_whole_chain(body: dict[str, Any]) -> None:
    cluster, chain, _ = await chain_of(body)
    assert cluster == failover_cluster_name("gpt-4o")
    assert chain == [OPENAI, CLAUDE, TITAN]


@pytest.mark.parametrize(
    "body",
    [
        # OpenAI answers two choices; Claude and Converse one per request. Tried, each
        # answered a 400 for a request gpt-4o takes, after gpt-4o had failed.
        {"n": 2},
        # OpenAI's own 400; Claude's translation dropped the choice and answered text to
        # a client waiting for a tool call.
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "lookup"}}},
        # Neither returns log probabilities.
        {"logprobs": True},
        # Neither has a mode for "any JSON object"; both constrain answers to a schema.
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_a_fallback_that_cannot_serve_the_body_is_left_out_of_the_chain(
    body: dict[str, Any],
) -> None:
    cluster, chain, _ = await chain_of(body)
    # gpt-4o alone: its own answer (its error included) is the client's.
    assert cluster == failover_cluster_name("gpt-4o", (0, 1))
    assert chain == [OPENAI]


@pytest.mark.parametrize(
    ("body", "skipped", "kept"),
    [
        # Anthropic refuses a stop sequence of whitespace alone; Converse takes it.
        ({"stop": ["\n"]}, (0,), [OPENAI, TITAN]),
    ],
)
async def test_each_fallback_is_checked_for_its_own_provider(
    body: dict[str, Any], skipped: tuple[int, ...], kept: list[list[str]]
) -> None:
    cluster, chain, _ = await chain_of(body)
    assert cluster == failover_cluster_name("gpt-4o", skipped)
    assert chain == kept


async def test_a_skipped_fallback_is_named_in_the_gateways_log_without_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await chain_of({"n": 2, "messages": [{"role": "user", "content": "my secret plan"}]})
    said = "\n".join(record.getMessage() for record in caplog.records)
    assert "fallback 'claude-3-5-haiku-latest' of 'gpt-4o' skipped" in said
    assert "provider 'mock-bedrock' cannot serve its 'n'" in said
    assert "secret" not in said


async def test_the_checks_leave_the_body_the_attempts_start_from_as_the_client_sent_it() -> None:
    """Each member's translation is made and thrown away: the body every attempt starts
    from (the primary's own, sent as it is) is the client's, tool history, system prompt
    and image included."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    body = {"messages": messages, "tools": tools, "stop": "END"}
    _, chain, sent = await chain_of(body)
    assert chain == [OPENAI, CLAUDE, TITAN]
    assert sent == {"model": "gpt-4o", **body}


async def test_a_body_the_translated_primary_cannot_take_is_refused_as_without_fallbacks(
    services: Services,
) -> None:
    """Claude with an OpenAI fallback, asked for two choices: the 400 a request for Claude
    gets without fallbacks (the translation's, in the client's shape), from the
    downstream filter, which logs it as the gateway's refusal. It used to go to the
    chain, and Claude's attempt refused it in Envoy's upstream filter: a 400 the log line
    called the provider's error."""
    body = {"model": "claude-3-5-haiku-latest", "messages": PROMPT, "n": 2}
    refused = {}
    for text in (config("claude-3-5-haiku-latest", "[gpt-4o]"), DEFAULT_CONFIG.read_text()):
        answers = await run_stream(
            processor_for(parsed(text), services),
            [
                request_headers("/v1/chat/completions", headers=CLIENT),
                request_body(orjson.dumps(body)),
            ],
        )
        answer = answers[-1]
        assert answer.WhichOneof("response") == "immediate_response"
        refused[text] = (
            answer.immediate_response.status.code,
            orjson.loads(answer.immediate_response.body)["error"]["param"],
        )
    assert set(refused.values()) == {(400, "n")}
    assert isinstance(services.access_log, MemoryLog)
    lines = services.access_log.lines()
    assert [(line["outcome"], line["upstream_status_code"]) for line in lines] == [
        ("rejected", None),
        ("rejected", None),
    ]
