"""An address followed by a hyphen and a case suffix in another script is masked.

Bengali, Hindi, Marathi and Tamil writers join a case suffix to a Latin word with a
hyphen: ``jane@example.com-এ লিখুন`` ("write to jane@example.com"). Before, the EMAIL
builtin read the hyphen as a domain label going on and masked nothing: the address
reached the provider (or the client) whole. Now the address ends before the hyphen when
the letters after it are of another script than the top-level domain's; ``a@b.cc-dd``
(ASCII after the hyphen, a label that may go on) is still no address.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from tests.unit.guard_helpers import config_with, masked_openai_stream, openai_stream_text
from tests.unit.test_guard_flow import Gateway, chat, upstream_body


def masked(text: str) -> str:
    guard = GuardConfig(name="pii", builtins=["EMAIL"], action="mask")
    _, hits, _ = Matchers((MatcherGuard(guard, 256),)).scan_all(text)
    return apply(text, hits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jane@example.com-এ লিখুন", "<EMAIL>-এ লিখুন"),  # Bengali: "write to"
        ("jane@example.com-ला लिहा", "<EMAIL>-ला लिहा"),  # Marathi
        ("jane@example.com-க்கு அனுப்புங்கள்", "<EMAIL>-க்கு அனுப்புங்கள்"),  # Tamil
        ("jane@example.com-пу", "<EMAIL>-пу"),  # Cyrillic after a Latin domain
        ("jane@例子.中国-에게", "<EMAIL>-에게"),  # Korean after a Chinese domain
    ],
)
def test_a_hyphen_before_another_scripts_suffix_ends_the_address(text: str, expected: str) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a@b.cc-dd",  # the label may go on: cc-dd is one
        "a@b.cc-dé ok",  # Latin after a Latin top-level domain, the same
        "a@b.cc-1",
        # A Bengali top-level domain with a Bengali word after the hyphen: one script,
        # so the label may go on as far as the builtin can tell.
        "ব্যবহারকারী@উদাহরণ.বাংলা-তে",
    ],
)
def test_a_hyphen_before_the_domains_own_script_is_still_no_address(text: str) -> None:
    assert masked(text) == text


def test_a_streamed_answer_split_at_the_hyphen_is_masked() -> None:
    # The hyphen ends one chunk and the suffix begins the next: the guard holds the
    # address until it knows what follows.
    body = masked_openai_stream(["EMAIL"], ["লিখুন jane@example.com-", "এ আজ"])
    assert openai_stream_text(body) == "লিখুন <EMAIL>-এ আজ"
    kept = masked_openai_stream(["EMAIL"], ["see a@b.cc-", "dd now"])
    assert openai_stream_text(kept) == "see a@b.cc-dd now"


async def test_the_provider_gets_the_prompt_with_the_address_masked() -> None:
    policies = {"policies": [{"name": "p", "request": [
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
    gateway = Gateway(config_with(policies, {"openai-chat": {"guardrails": "p"}}))
    answers = await gateway.send("/v1/chat/completions", chat("jane@example.com-এ লিখুন"))
    sent = upstream_body(answers[1])
    assert sent["messages"][0]["content"] == "<EMAIL>-এ লিখুন"
    assert {"guard": "pii", "phase": "request", "action": "mask"} in gateway.log()["guardrails"]
    assert b"jane@" not in orjson.dumps(sent)
