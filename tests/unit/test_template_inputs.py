"""vLLM's ``documents`` and ``chat_template_kwargs``: read by the guards, counted by the quota.

vLLM hands a chat body's ``documents`` (a RAG prompt's documents) and its
``chat_template_kwargs`` to the model's chat template, which writes them into the
prompt. Neither was guarded nor estimated: a card number in a document reached the model
unmasked, a refused topic unrefused, the log line said ``pass``, and 1,000 tokens of
documents reserved nothing, so a hard-capped budget of 500 tokens admitted them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.guardrails.template_inputs import template_slots
from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_prompt_tokens
from extproc.quota.store import QuotaStore
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_compatible_parts import CARD, CHAT, POLICIES, USER
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body
from tests.unit.test_quota_review import OPENAI_AUTH, gateway, refusal

PASSAGE = "Revenue grew in every region while operating costs stayed flat. " * 64
PASSAGE_TOKENS = len(PASSAGE) // CHARS_PER_TOKEN


def rag(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [USER], **fields}


def guarded() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "p"}}))


async def test_a_card_in_a_document_reaches_vllm_masked() -> None:
    documents = [
        {"title": "Billing", "text": f"The customer pays with {CARD}."},
        {"title": "Contact", "text": "Write to jane@example.com."},
    ]
    gateway = guarded()
    answers = await gateway.send(CHAT, orjson.dumps(rag(documents=documents)))
    sent = upstream_body(answers[1])
    assert sent["documents"] == [
        {"title": "Billing", "text": "The customer pays with <CREDIT_CARD>."},
        {"title": "Contact", "text": "Write to <EMAIL>."},
    ]
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]


@pytest.mark.parametrize(
    "fields",
    [
        {"documents": [{"title": "Project Falcon", "text": "Launch plan."}]},
        # vLLM lets the kwargs' documents override the field.
        {"chat_template_kwargs": {"documents": [{"text": "About project falcon."}]}},
        {"chat_template_kwargs": {"system_note": "project falcon", "enable_thinking": False}},
    ],
    ids=["documents", "kwargs-documents", "kwargs-string"],
)
async def test_a_refused_word_in_what_the_template_reads_is_refused(fields: dict[str, Any]) -> None:
    status, body = immediate((await guarded().send(CHAT, orjson.dumps(rag(**fields))))[-1])
    assert status == 403
    assert body["error"]["code"] == "guardrail_rejected"


def test_the_kwargs_names_and_settings_are_no_text() -> None:
    """A template variable's name and a flag are not read: only text the template writes."""
    body = rag(chat_template_kwargs={"enable_thinking": False, "thinking_budget": 100})
    assert template_slots(body) == []
    assert template_slots(rag()) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"documents": [{"title": "Report", "text": PASSAGE}]},
        {"chat_template_kwargs": {"documents": [{"title": "Report", "text": PASSAGE}]}},
    ],
    ids=["documents", "kwargs-documents"],
)
def test_documents_are_estimated(fields: dict[str, Any]) -> None:
    body = rag(**fields)
    assert PASSAGE_TOKENS <= estimate_prompt_tokens(body) <= PASSAGE_TOKENS + 20
    guarded = sum(slot.chars for slot in template_slots(body))
    assert estimate_prompt_tokens(body) >= guarded // CHARS_PER_TOKEN


async def test_a_hard_cap_refuses_documents_larger_than_the_budget(
    quota_store: QuotaStore,
) -> None:
    quotas = """
quotas:
  rules:
    - {name: minute, subject: api_key, match: team1, tokens_per_minute: 500, hard_cap: true}
"""
    processor, _ = gateway(quota_store, quotas)
    body = rag(documents=[{"title": "Report", "text": PASSAGE}])
    answers = await run_stream(
        processor,
        [request_headers(CHAT, headers=OPENAI_AUTH), request_body(orjson.dumps(body))],
    )
    found = refusal(answers[-1])
    assert found is not None, f"about {PASSAGE_TOKENS} tokens of documents went past 500"
    assert found[0] == 429
    assert "Prompt too large" in found[1]["error"]["message"]
