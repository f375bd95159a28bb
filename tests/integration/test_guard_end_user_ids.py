"""An end user's identifier a mask guard matches is removed, through the real Envoy.

Apps often set OpenAI's ``user`` (or ``safety_identifier``, Anthropic's
``metadata.user_id``) to the user's e-mail address. On a route with an e-mail mask guard
every such request was refused (403 "... cannot be masked"), which broke the app. Now the
field is taken out of the body: the official clients get their answer, the provider (the
mock records what it received) gets the request as one naming no end user, and the log
records the guard's ``mask``. A ``REJECT`` guard matching there still refuses.

Where the gateway translates the request for a provider that gets none of these fields
(embeddings for Titan on Bedrock), they are not read: a metadata key holding an address,
which a mask cannot rewrite, was refused though Bedrock would never get it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    guarded_config,
    mock_requests,
    running_stack,
    write_config,
)

KEY = "team1-key"
EMAIL = "jane@example.com"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
GUARDS: dict[str, Any] = {
    "name": "end-users",
    "request": [
        {"name": "aws-keys", "patterns": [{"pattern": r"AKIA[0-9A-Z]{16}", "name": "AWS_KEY"}]},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    ],
}
MASKED = {"guard": "pii", "phase": "request", "action": "mask"}


@pytest.fixture(scope="module")
def ids_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-end-user-ids")
    raw = guarded_config(
        GUARDS, "openai-chat", "openai-responses", "anthropic-messages", "openai-embeddings"
    )
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=30)


def decisions(stack: LocalStack, request_id: str | None) -> list[dict[str, str]]:
    assert request_id is not None
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    found: list[dict[str, str]] = line["guardrails"]
    return found


def test_a_chat_users_address_is_removed_and_the_request_answered(ids_stack: LocalStack) -> None:
    raw = client(ids_stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Summarise my week."}],
        user=EMAIL,
        prompt_cache_key="weekly-summary",
    )
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    sent = mock_requests(ids_stack)[-1]["json"]
    assert "user" not in sent and EMAIL not in json.dumps(sent)
    assert sent["prompt_cache_key"] == "weekly-summary"
    assert MASKED in decisions(ids_stack, raw.headers.get("x-request-id"))


def test_a_responses_safety_identifier_address_is_removed(ids_stack: LocalStack) -> None:
    raw = client(ids_stack).responses.with_raw_response.create(
        model="gpt-4o-mini", input="Summarise my week.", safety_identifier=EMAIL, store=False
    )
    assert raw.status_code == 200
    sent = mock_requests(ids_stack)[-1]["json"]
    assert "safety_identifier" not in sent and EMAIL not in json.dumps(sent)
    assert MASKED in decisions(ids_stack, raw.headers.get("x-request-id"))


def test_an_anthropic_user_id_address_is_removed_with_its_metadata(ids_stack: LocalStack) -> None:
    claude = anthropic.Anthropic(base_url=ids_stack.base_url, api_key=KEY, max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        messages=[{"role": "user", "content": "Summarise my week."}],
        metadata={"user_id": EMAIL},
    )
    assert raw.status_code == 200 and raw.parse().content
    sent = mock_requests(ids_stack)[-1]["json"]
    assert "metadata" not in sent and EMAIL not in json.dumps(sent)
    assert MASKED in decisions(ids_stack, raw.headers.get("x-request-id"))


def test_a_reject_guard_matching_the_user_still_refuses(ids_stack: LocalStack) -> None:
    calls_before = len(mock_requests(ids_stack))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(ids_stack).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            user=f"{EMAIL}:{ACCESS_KEY}",
        )
    assert refused.value.status_code == 403
    message = refused.value.body["message"]  # type: ignore[index]
    assert message == "Rejected by guardrail 'aws-keys': it contains AWS_KEY"
    assert len(mock_requests(ids_stack)) == calls_before, "the user reached the provider"
    request_id = refused.value.response.headers["x-request-id"]
    assert {"guard": "aws-keys", "phase": "request", "action": "reject"} in decisions(
        ids_stack, request_id
    )


def test_embeddings_for_titan_are_not_refused_for_metadata_bedrock_never_gets(
    ids_stack: LocalStack,
) -> None:
    raw = client(ids_stack).embeddings.with_raw_response.create(
        model="amazon.titan-embed-text-v2:0",
        input="Summarise my week.",
        user=EMAIL,
        extra_body={"metadata": {EMAIL: ACCESS_KEY}, "prompt_cache_key": f"conv-{EMAIL}"},
    )
    assert raw.status_code == 200 and raw.parse().data[0].embedding
    sent = mock_requests(ids_stack)[-1]["json"]
    assert sent == {"inputText": "Summarise my week."}
    actions = {found["action"] for found in decisions(ids_stack, raw.headers.get("x-request-id"))}
    assert actions == {"pass"}
