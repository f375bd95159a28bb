"""Several enrichment messages keep the order the route lists them in, in every API."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.config.guard_model import EnrichmentConfig
from extproc.guardrails.enrichment import enrich

_ENRICHMENT = EnrichmentConfig.model_validate(
    {
        "prepend": [
            {"role": "system", "content": "first rule"},
            {"role": "system", "content": "second rule"},
            {"role": "user", "content": "first note"},
            {"role": "user", "content": "second note"},
        ],
        "append": [
            {"role": "user", "content": "first tail"},
            {"role": "user", "content": "second tail"},
        ],
    }
)


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [block["text"] for block in blocks]


@pytest.mark.parametrize("converse", [False, True])
def test_prepended_blocks_keep_the_routes_order_in_messages_and_converse(converse: bool) -> None:
    text = {"text": "hello"} if converse else {"type": "text", "text": "hello"}
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [text]}]}

    enrich(body, _ENRICHMENT, {}, anthropic=not converse, converse=converse)

    assert _texts(body["system"]) == ["first rule", "second rule"]
    assert _texts(body["messages"][0]["content"]) == [
        "first note",
        "second note",
        "hello",
        "first tail",
        "second tail",
    ]


def test_prepended_user_blocks_keep_their_order_when_the_body_has_no_user_turn() -> None:
    body: dict[str, Any] = {"messages": []}

    enrich(body, _ENRICHMENT, {}, anthropic=True)

    assert [_texts(m["content"]) for m in body["messages"]] == [
        ["first note", "second note", "first tail", "second tail"]
    ]


def test_openai_chat_messages_keep_the_routes_order() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}

    enrich(body, _ENRICHMENT, {}, anthropic=False)

    assert [m["content"] for m in body["messages"]] == [
        "first rule",
        "second rule",
        "first note",
        "second note",
        "hello",
        "first tail",
        "second tail",
    ]
