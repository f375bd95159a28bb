"""Guardrail and enrichment gaps, through the real Envoy with the official SDKs.

- a moderation service at its rate limit: the client gets a 429 with the service's
  ``retry-after`` (it got a 503 without one), and nothing is charged;
- a refused word inside an Anthropic document block is refused like anywhere else;
- ``client.messages.count_tokens`` on an enriched route counts what the Messages call
  sends (the count was refused: the enrichment went in as a ``system`` message);
- a card number after a code ending in a digit is masked before the provider;
- a case-insensitive word spelled with the Kelvin sign, cut over two stream chunks,
  is masked as in a buffered answer.

The moderation service at its limit is a stand-in written here; the provider is the
mock (``x-mock-reply`` chooses the streamed pieces).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, mock_requests, running_stack_calling
from tests.integration.guard_rate_limit import AtItsRateLimit, refused_before_the_provider

KEY = "team1-key"
CARD_MESSAGE = "Requests about credit card numbers are not allowed."
KELVIN = "\u212a"  # KELVIN SIGN, which case-folds to "k"


class BusyModeration(AtItsRateLimit):
    """An OpenAI-like moderation endpoint at its rate limit."""

    body = orjson.dumps({"error": {"message": "Rate limit reached", "type": "requests"}})


def gaps_config(moderation_port: int) -> dict[str, Any]:
    raw = default_config()
    raw["guardrails"] = {
        "moderation": [{"name": "busy", "base_url": f"http://127.0.0.1:{moderation_port}/v1",
                        "api_key": "moderation-key", "failure_mode": "fail_closed"}],
        "policies": [
            {"name": "limited", "request": [{"name": "moderation", "moderation": "busy"}]},
            {"name": "card-talk", "request": [
                {"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True,
                 "message": CARD_MESSAGE}]},
            {"name": "pii",
             "request": [{"name": "pii", "builtins": ["CREDIT_CARD"], "action": "mask"}],
             "response": [{"name": "codename", "literals": ["project kestrel"],
                           "case_insensitive": True, "action": "mask"}]},
        ],
    }  # fmt: skip
    enrichment = {
        "prepend": [{"role": "system", "content": "Answer as the {group_id} team."}],
        "append": [{"role": "user", "content": "Keep it to one sentence."}],
    }
    for route in raw["routes"]:
        if route["name"] == "anthropic-messages":
            route.update({"guardrails": "card-talk", "enrichment": enrichment})
        if route["name"] == "anthropic-count-tokens":
            route["enrichment"] = enrichment
    raw["routes"] += [
        {"name": "limited", "path_prefix": "/limited", "guardrails": "limited"},
        {"name": "pii", "path_prefix": "/pii", "guardrails": "pii"},
    ]
    return raw


@pytest.fixture(scope="module")
def gaps_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guardrail-gaps")
    with running_stack_calling(BusyModeration, workdir, gaps_config) as running:
        yield running


def client(stack: LocalStack, prefix: str, **headers: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.base_url}{prefix}/v1", api_key=KEY, max_retries=0, timeout=30.0,
        default_headers=headers or None,
    )  # fmt: skip


def claude(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0, timeout=30.0)


def test_a_rate_limited_moderation_service_gives_the_client_a_429_with_retry_after(
    gaps_stack: LocalStack,
) -> None:
    _, line = refused_before_the_provider(gaps_stack, client(gaps_stack, "/limited"))
    assert line["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "fail_closed"}
    ]
    assert "moderation-key" not in orjson.dumps(line).decode()


def test_a_refused_word_in_an_anthropic_document_is_refused(gaps_stack: LocalStack) -> None:
    document: Any = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain",
                   "data": "Read me every credit card number in this file."},
    }  # fmt: skip
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        claude(gaps_stack).messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": [document]}],
        )
    assert refused.value.status_code == 403
    assert CARD_MESSAGE in str(refused.value)


def test_count_tokens_counts_the_enriched_prompt_the_messages_call_sends(
    gaps_stack: LocalStack,
) -> None:
    messages: Any = [{"role": "user", "content": "What is a good name for a cat?"}]
    counted = claude(gaps_stack).messages.count_tokens(
        model="claude-3-5-haiku-latest", messages=messages
    )
    answer = claude(gaps_stack).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=50, messages=messages
    )
    assert counted.input_tokens == answer.usage.input_tokens
    sent = mock_requests(gaps_stack)[-2]["json"]
    assert sent["system"] == [{"type": "text", "text": "Answer as the engineering team."}]


def test_a_card_after_a_code_ending_in_a_digit_is_masked_before_the_provider(
    gaps_stack: LocalStack,
) -> None:
    answer = client(gaps_stack, "/pii").chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Order A1 4111 1111 1111 1111 please"}],
    )
    sent = mock_requests(gaps_stack)[-1]["json"]["messages"][0]["content"]
    assert sent == "Order A1 <CREDIT_CARD> please"
    assert "4111" not in (answer.choices[0].message.content or "")


def test_a_case_folded_codename_cut_over_two_chunks_is_masked_in_a_stream(
    gaps_stack: LocalStack,
) -> None:
    # ASCII JSON: the header carries the Kelvin sign as \u212a, the mock sends it raw.
    pieces = json.dumps([f"Status of Project {KELVIN}", "estrel: on track."])
    chunks = client(gaps_stack, "/pii", **{"x-mock-reply": pieces}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "status?"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Status of ****: on track."
