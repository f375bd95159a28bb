"""Failover of an InvokeModel call to Mistral's models: each takes the text completion's
``prompt`` body, the chat completion's ``messages`` body, or both (Bedrock's Mistral
pages: Mistral 7B, Mixtral 8x7B and Mistral Small a prompt; Mistral Large 24.02 either;
Mistral Large 2, 24.07, messages), and a fallback serves the body only when it takes
its kind (docs/providers.md, failover).

Before, every ``mistral.*`` model counted as one body family: a Mistral 7B call
failed over to Mistral Large 2 with its ``prompt`` body, which Bedrock refuses (a 400
the client got in place of the answer the chain's other members could give), and a
Mistral Large 2 call to Mistral 7B with its ``messages``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.backends import serves_invoke_body
from extproc.headers import FAILOVER_CHAIN_KEY
from extproc.quota.store import QuotaStore
from tests.unit.test_bedrock_invoke_model_defaults import (
    MISTRAL_7B,
    MISTRAL_LARGE,
    MISTRAL_LARGE_2,
    client_body,
    invoke_chain,
)

PROMPT_BODY = {"prompt": "<s>[INST] Fail over, please. [/INST]", "max_tokens": 50}
MESSAGES_BODY = {"messages": [{"role": "user", "content": "Fail over, please."}], "max_tokens": 50}
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
MISTRAL_SMALL = "mistral.mistral-small-2402-v1:0"
PIXTRAL = "mistral.pixtral-large-2502-v1:0"


def chain(sent_on: dict[str, Any]) -> list[str]:
    """The chain's members by model name, in order."""
    return [model for _, model, _ in sent_on[FAILOVER_CHAIN_KEY]]


async def test_a_prompt_body_fails_over_to_the_mistral_models_that_take_a_prompt(
    quota_store: QuotaStore,
) -> None:
    sent_on = await invoke_chain(quota_store, 100_000, "mistral-7b", orjson.dumps(PROMPT_BODY))

    # Mistral Large 2 takes messages alone: left out.
    assert chain(sent_on) == ["mistral-7b", "mistral-large"]
    assert client_body(sent_on) == PROMPT_BODY


async def test_a_messages_body_fails_over_to_the_mistral_models_that_take_messages(
    quota_store: QuotaStore,
) -> None:
    sent_on = await invoke_chain(
        quota_store, 100_000, "mistral-large-2", orjson.dumps(MESSAGES_BODY)
    )

    # Mistral 7B takes a prompt alone: left out; Mistral Large 24.02 takes either.
    assert chain(sent_on) == ["mistral-large-2", "mistral-large"]
    assert client_body(sent_on) == MESSAGES_BODY


@pytest.mark.parametrize(
    ("named", "fallback", "body", "served"),
    [
        (MISTRAL_7B, MIXTRAL, PROMPT_BODY, True),
        (MISTRAL_7B, MISTRAL_SMALL, PROMPT_BODY, True),
        (MISTRAL_7B, MISTRAL_LARGE, PROMPT_BODY, True),
        (MISTRAL_7B, MISTRAL_LARGE_2, PROMPT_BODY, False),
        (MISTRAL_LARGE, MISTRAL_LARGE_2, PROMPT_BODY, False),
        (MISTRAL_LARGE, MISTRAL_LARGE_2, MESSAGES_BODY, True),
        (MISTRAL_LARGE, MIXTRAL, MESSAGES_BODY, False),
        (MISTRAL_LARGE_2, MISTRAL_LARGE, MESSAGES_BODY, True),
        (MISTRAL_LARGE_2, MISTRAL_SMALL, MESSAGES_BODY, False),
        # A body naming both kinds: a model that takes both alone.
        (MISTRAL_LARGE, MISTRAL_7B, {**PROMPT_BODY, **MESSAGES_BODY}, False),
        # The same model in another region or account, through its inference profile.
        (MISTRAL_LARGE_2, f"us.{MISTRAL_LARGE_2}", MESSAGES_BODY, True),
        # A Mistral model whose bodies the gateway does not know: its own model alone.
        (PIXTRAL, MISTRAL_LARGE_2, MESSAGES_BODY, False),
        (MISTRAL_LARGE_2, PIXTRAL, MESSAGES_BODY, False),
        (PIXTRAL, f"eu.{PIXTRAL}", MESSAGES_BODY, True),
        # Other families are as they were.
        (MISTRAL_7B, "meta.llama3-8b-instruct-v1:0", PROMPT_BODY, False),
        ("meta.llama3-8b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0", PROMPT_BODY, True),
        # AI21 Jamba's and Writer Palmyra's bodies are each one family's.
        ("ai21.jamba-1-5-mini-v1:0", "ai21.jamba-1-5-large-v1:0", MESSAGES_BODY, True),
        ("writer.palmyra-x4-v1:0", "us.writer.palmyra-x5-v1:0", MESSAGES_BODY, True),
        ("ai21.jamba-1-5-mini-v1:0", "writer.palmyra-x5-v1:0", MESSAGES_BODY, False),
    ],
)
def test_a_mistral_fallback_serves_the_kinds_of_body_its_page_lists(
    named: str, fallback: str, body: dict[str, Any], served: bool
) -> None:
    assert serves_invoke_body(body, named, fallback) is served
