# ruff: noqa: RUF001  (a Chinese answer, on purpose)
"""A Chinese answer streamed through the real Envoy under an EMAIL response guard reaches
the official OpenAI client as it is written, and an address in it is still masked.

The mock provider writes the answer two letters per event (``x-mock-reply``), events
apart (``x-mock-fault: interval``) so each reaches the gateway on its own. Before, the
guard held every Chinese letter that might still be part of an address's local part: a
clause without punctuation reached the client all at once, with the stop chunk. Now it
holds the last 21 letters at most (64 octets, the longest local part SMTP carries), and
the client counts the chunks carrying text before the end of the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import guarded_config, running_stack, write_config
from tests.integration.test_guard_tool_calls import gpt

ANSWER_GUARD = {
    "name": "answer-pii",
    "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}],
}
# "The quarterly report covers revenue, hiring plans and next year's roadmap, and each
# department's budget and staff changes", as a model writes a long clause.
ANSWER = "季度报告涵盖收入招聘计划和明年的路线图以及各部门的预算安排和人员变动情况"


def pieces(text: str) -> list[str]:
    return [text[index : index + 2] for index in range(0, len(text), 2)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-email-stream-cjk")
    raw = guarded_config(ANSWER_GUARD, "openai-chat")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def streamed(stack: LocalStack, reply: list[str]) -> tuple[list[str], str]:
    """The content of each chunk the OpenAI client got before the one that ends the
    answer, and the whole content."""
    stream = gpt(stack).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "总结一下"}],
        stream=True,
        extra_headers={"x-mock-reply": json.dumps(reply), "x-mock-fault": "interval=0.05"},
    )
    before_the_end: list[str] = []
    whole = ""
    for chunk in stream:
        for choice in chunk.choices:
            text = choice.delta.content or ""
            whole += text
            if text and choice.finish_reason is None:
                before_the_end.append(text)
    return before_the_end, whole


def test_a_chinese_answer_reaches_the_client_as_it_is_written(guarded: LocalStack) -> None:
    before_the_end, whole = streamed(guarded, pieces(ANSWER))
    assert whole == ANSWER
    # 18 events of two letters: all but the first ten or so release their text at once.
    assert len(before_the_end) >= len(pieces(ANSWER)) - 11


def test_an_address_in_a_chinese_answer_is_still_masked(guarded: LocalStack) -> None:
    # "... Mailbox: user@example.China." cut two letters at a time, the address too.
    _, whole = streamed(guarded, pieces(ANSWER + "。邮箱：用户@例子.中国。"))
    assert whole == ANSWER + "。邮箱：<EMAIL>。"
