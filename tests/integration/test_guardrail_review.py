"""Webhook guardrails on streams, moderation and enrichment through the real Envoy.

A webhook server written here (kgateway's guardrail API), the mock provider's
moderation endpoint, a real Valkey for the quota, and the official ``openai`` SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    GatewayLog,
    JsonStandIn,
    default_config,
    mock_requests,
    running_stack_calling,
    wait_for,
)

KEY = "team1-key"
# Long enough that the quota's estimate of it (one token per four characters) shows.
ENRICHMENT = "Return the response in JSON format. " * 10
HARD_BUDGET = 1000


class StreamWebhook(JsonStandIn):
    """Masks "secret" with a longer text; refuses an answer saying "forbidden"."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        payload = self.json_body()
        contents = [c["message"]["content"] for c in payload["body"]["choices"]]
        action: dict[str, Any] = {}
        if any("forbidden" in c for c in contents):
            action = {"body": "That answer is withheld.", "status_code": 451}
        elif any("secret" in c for c in contents):
            masked = [c.replace("secret", "[a longer masked part]") for c in contents]
            action = {"body": {"choices": [
                {"message": {"role": "assistant", "content": c}} for c in masked
            ]}}  # fmt: skip
        self.answer_json({"action": action})


def review_config(webhook_port: int) -> dict[str, Any]:
    raw = default_config()
    mock = "${MOCK_LLM_ADDRESS:-127.0.0.1:8089}"
    raw["guardrails"] = {
        "webhooks": [{"name": "answers", "host": "127.0.0.1", "port": webhook_port}],
        "moderation": [{"name": "openai-moderation", "base_url": f"http://{mock}/v1",
                        "api_key": "mock-key"}],
        "policies": [
            {"name": "hooked", "response": [{"name": "answers", "webhook": "answers"}]},
            {"name": "moderated",
             "request": [{"name": "moderation", "moderation": "openai-moderation"}]},
        ],
    }  # fmt: skip
    raw["routes"] = [
        {"name": "hooked", "path_prefix": "/hooked", "guardrails": "hooked"},
        {"name": "moderated", "path_prefix": "/moderated", "guardrails": "moderated"},
        {"name": "enriched", "path_prefix": "/enriched",
         "enrichment": {"prepend": [{"role": "system", "content": ENRICHMENT}]}},
        *raw["routes"],
    ]  # fmt: skip
    # team2 sends one request, on the enriched route: what its budget leaves the
    # completion shows the estimate the reservation was made with.
    raw["quotas"] = {
        "rules": [{"name": "team2-budget", "subject": "api_key", "match": "team2",
                   "tokens_per_hour": HARD_BUDGET, "hard_cap": True}],
    }  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def review_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guardrail-review")
    with running_stack_calling(StreamWebhook, workdir, review_config) as running:
        yield running


def client(stack: LocalStack, prefix: str, key: str = KEY, **headers: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.base_url}{prefix}/v1", api_key=key, max_retries=0, timeout=30.0,
        default_headers=headers or None,
    )  # fmt: skip


def line_for(stack: LocalStack, request_id: str) -> dict[str, Any]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    return line


def test_a_streamed_answer_is_masked_by_the_webhook_to_a_longer_text(
    review_stack: LocalStack,
) -> None:
    pieces = orjson.dumps(["The ", "secret plan", " is ready."]).decode()
    paced = {"x-mock-reply": pieces, "x-mock-fault": "interval=0.1"}
    chunks = client(review_stack, "/hooked", **paced).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "plan?"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The [a longer masked part] plan is ready."


def test_a_stream_refused_by_the_webhook_mid_way_still_counts_its_tokens(
    review_stack: LocalStack,
) -> None:
    pieces = orjson.dumps(["Fine so far. ", "forbidden words", " and more."]).decode()
    # Paced, so the pieces reach the gateway as separate body chunks (as an LLM's do).
    paced = {"x-mock-reply": pieces, "x-mock-fault": "interval=0.2"}
    shown = []
    stream = client(review_stack, "/hooked", **paced).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True
    )
    with pytest.raises(openai.APIError, match="That answer is withheld"):
        for chunk in stream:
            shown.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(shown) == "Fine so far. "
    line = wait_for(
        lambda: next(
            (
                entry
                for entry in reversed(GatewayLog(review_stack.gateway_log).lines())
                if entry.get("route") == "hooked" and entry.get("guardrails")
                and entry["guardrails"][0]["action"] == "reject"
            ),
            None,
        )
    )  # fmt: skip
    assert line["http_status_code"] == 200
    # The SDK hangs up on the error event, which cuts the upstream stream: what the
    # provider produced up to there is charged as for any cut stream (estimated at four
    # characters a token), the refused text included, though the client never saw it.
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] >= len("Fine so far. forbidden words") // 4


def test_a_flagged_prompt_never_reaches_the_provider_and_costs_nothing(
    review_stack: LocalStack,
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(review_stack, "/moderated").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "how to build a bomb"}]
        )
    assert refused.value.status_code == 403
    assert refused.value.body["message"] == (  # type: ignore[index]
        "Rejected by guardrail 'moderation': flagged for illicit/violent"
    )
    assert refused.value.body["code"] == "guardrail_rejected"  # type: ignore[index]
    # The moderation call was the last thing the provider saw: no chat completion.
    assert mock_requests(review_stack)[-1]["path"].endswith("/moderations")
    request_id = refused.value.response.headers["x-request-id"]
    line = line_for(review_stack, request_id)
    assert (line["prompt_tokens"], line["total_tokens"], line["http_status_code"]) == (0, 0, 403)
    assert line["quota_decision"] in (None, "none")  # refused before any reservation


def test_enrichment_is_counted_in_the_log_line(review_stack: LocalStack) -> None:
    def ask(prefix: str) -> Any:
        return client(review_stack, prefix).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}]
        )

    plain, enriched = ask(""), ask("/enriched")
    sent = mock_requests(review_stack)[-1]["json"]
    assert sent["messages"][0] == {"role": "system", "content": ENRICHMENT}
    # The provider counts the added message (the mock: its tokens + 4 per message).
    plain_line = line_for(review_stack, plain.headers["x-request-id"])
    enriched_line = line_for(review_stack, enriched.headers["x-request-id"])
    added = count_tokens(ENRICHMENT) + 4
    assert enriched_line["prompt_tokens"] - plain_line["prompt_tokens"] == added
    assert enriched_line["total_tokens"] - plain_line["total_tokens"] == added


def test_the_quota_reserves_for_the_enriched_prompt(review_stack: LocalStack) -> None:
    answer = client(review_stack, "/enriched", key="team2-key").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert answer.choices[0].message.content
    # The hard-capped budget leaves the completion what the prompt's estimate does not
    # take (one token per four characters + 4 per message): the enriched prompt's.
    estimate = (len(ENRICHMENT) // 4 + 4) + (len("Hello there") // 4 + 4)
    sent = mock_requests(review_stack)[-1]["json"]
    assert sent["max_completion_tokens"] == HARD_BUDGET - estimate
