# ruff: noqa: RUF001  (Chinese and Thai answers, on purpose)
"""A Chinese or Thai answer streamed under an EMAIL response guard flows as it is written.

The stream guard holds back the end of the text that may still become an address. Every
Chinese, Japanese or Thai letter may be one of a local part's, so it held the whole run of
them, up to 253 characters: a Chinese answer reached the client a clause at a time, and
one written without punctuation all at its end. Only a local part can be in progress
where no "@" came yet, and SMTP carries at most 64 octets of one: the guard now holds the
last 21 Chinese letters at most (three octets each), and releases what is before them, as
the address found in the whole answer cannot begin before them either.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import Builtin, GuardConfig
from extproc.guardrails.detectors import builtin
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.testing import client_body
from tests.unit.guard_helpers import (
    config_with,
    masked_openai_stream,
    openai_chunk,
    openai_stream_text,
)
from tests.unit.sse_play import play_sse
from tests.unit.test_guard_flow import Gateway

# "The quarterly report covers revenue, hiring plans and next year's roadmap", without
# punctuation, as a model writes a long clause.
ANSWER = "季度报告涵盖收入招聘计划和明年的路线图以及各部门的预算安排和人员变动情况"
THAI = "รายงานประจำไตรมาสครอบคลุมรายได้แผนการจ้างงานและแผนงานสำหรับปีหน้า"


def pieces(text: str, size: int = 2) -> list[str]:
    return [text[index : index + size] for index in range(0, len(text), size)]


def email_matchers() -> Matchers:
    guard = GuardConfig(name="pii", builtins=["EMAIL"], action="mask")
    return Matchers((MatcherGuard(guard, 256),))


def test_a_run_of_chinese_letters_is_held_21_letters_at_most() -> None:
    matchers = email_matchers()
    assert matchers.holdback(ANSWER) == 21
    assert matchers.holdback(THAI) == 21
    # What may still be an address is held as before: a short run, and a run holding an
    # "@" (its domain may go on), whole.
    assert matchers.holdback("请联系招聘") == 5
    assert matchers.holdback("请写信给jane@例子") == len("请写信给jane@例子")
    assert matchers.holdback("季度报告，") == 0


async def test_a_chinese_answer_streams_through_the_processor_as_it_is_written() -> None:
    policies = {"policies": [{"name": "p", "response": [
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
    gateway = Gateway(config_with(policies, {"openai-chat": {"guardrails": "p"}}))
    request = {"model": "gpt-4o-mini", "stream": True,
               "messages": [{"role": "user", "content": "总结一下"}]}  # fmt: skip
    chunks = [
        *(openai_chunk(piece) for piece in pieces(ANSWER)),
        openai_chunk(None, "stop"),
        b"data: [DONE]\n\n",
    ]
    answers = await play_sse(
        gateway.processor,
        "/v1/chat/completions",
        {"authorization": "Bearer team1-key"},
        orjson.dumps(request),
        chunks,
    )
    bodies = [b for b in answers if b.WhichOneof("response") == "response_body"]
    shown = [
        openai_stream_text(client_body([chunk], [body]))
        for chunk, body in zip(chunks, bodies, strict=True)
    ]
    # Each chunk after the first 21 letters releases as much as it brings; before, every
    # letter waited for the stop chunk.
    before_the_end = [text for text in shown[: len(pieces(ANSWER))] if text]
    assert len(before_the_end) >= len(pieces(ANSWER)) - 11
    assert "".join(shown) == ANSWER


def masked(text: str) -> str:
    for span in reversed(list(builtin(Builtin.EMAIL).find(text))):
        text = text[: span.start] + "<EMAIL>" + text[span.end :]
    return text


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["", "请联系", ANSWER, ANSWER * 3, "季度报告，", "คุณ", THAI]),
    st.sampled_from(
        ["用户@例子.中国", "jane@example.com", "ผู้ใช้@ตัวอย่าง.ไทย", "中" * 25 + "@例子.公司"]
    ),
    st.sampled_from(["", "。谢谢", "请回复", " ได้เลย"]),
    st.integers(min_value=1, max_value=7),
)
def test_an_address_in_a_streamed_answer_is_masked_as_in_the_whole_answer(
    before: str, address: str, after: str, size: int
) -> None:
    # Released sooner, the text before the address is what the whole answer leaves too:
    # no letter of an address reaches the client.
    text = before + address + after
    out = masked_openai_stream(["EMAIL"], pieces(text, size))
    assert openai_stream_text(out) == masked(text)
