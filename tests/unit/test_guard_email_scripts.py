# ruff: noqa: RUF001  (addresses and punctuation of other scripts, on purpose)
"""The EMAIL builtin finds internationalised addresses in Arabic, Hebrew, Devanagari,
Thai, Korean and Japanese letters, and cuts them where the sentence around goes on.

Before, ``مستخدم@مثال.مصر``, ``उपयोगकर्ता@उदाहरण.भारत`` or ``사용자@예시.한국`` in a prompt
reached the provider whole, as did ``jane@例子.中国``: the builtin took Latin, Greek and
Cyrillic letters only.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import Builtin
from extproc.guardrails.detectors import builtin
from tests.unit.guard_helpers import masked_openai_stream, openai_stream_text


def masked(text: str) -> str:
    spans = list(builtin(Builtin.EMAIL).find(text))
    for span in reversed(spans):
        text = text[: span.start] + "<EMAIL>" + text[span.end :]
    return text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Arabic: the comma and question mark of the script end the address.
        ("راسلني على مستخدم@مثال.مصر، شكرا", "راسلني على <EMAIL>، شكرا"),
        ("هل هذا مستخدم@مثال.مصر؟", "هل هذا <EMAIL>؟"),
        ("بريدي user@مثال.مصر اليوم", "بريدي <EMAIL> اليوم"),
        # Arabic letters with vowel marks (harakat) are one address.
        ("اكتب إلى مُستخدِم@مثال.مصر.", "اكتب إلى <EMAIL>."),
        # Hebrew, its sof pasuq ending the sentence.
        ("כתבו אל משתמש@דוגמה.ישראל׃", "כתבו אל <EMAIL>׃"),
        ("משתמש@דוגמה.ישראל, תודה", "<EMAIL>, תודה"),
        # Devanagari: vowel signs and viramas are marks inside the words; the danda ends.
        ("मेरा पता उपयोगकर्ता@उदाहरण.भारत है।", "मेरा पता <EMAIL> है।"),
        ("लिखें उपयोगकर्ता@उदाहरण.भारत।", "लिखें <EMAIL>।"),
        # Thai, with its tone marks and vowel signs, set off by spaces as Thai does.
        ("ติดต่อ ผู้ใช้@ตัวอย่าง.ไทย ได้เลย", "ติดต่อ <EMAIL> ได้เลย"),
        # An ASCII address in Thai text takes no Thai letters.
        ("ติดต่อjane@example.comได้เลย", "ติดต่อ<EMAIL>ได้เลย"),
        # Korean and Japanese local parts and domains.
        ("메일은 사용자@예시.한국 입니다", "메일은 <EMAIL> 입니다"),
        # Korean is written with spaces: a Hangul local part may end in digits.
        ("메일은 사용자12@예시.한국 입니다", "메일은 <EMAIL> 입니다"),
        ("連絡先: ユーザー@例え.テスト。", "連絡先: <EMAIL>。"),
        ("メール：ゆーざー@れい.jp まで", "メール：<EMAIL> まで"),
        # An ASCII local part at a domain in Chinese, and a sentence's full stop.
        ("请发邮件到jane@例子.中国。", "请发邮件到<EMAIL>。"),
        ("请联系jane@example.com。", "请联系<EMAIL>。"),
        # A QQ address (digits) in Chinese text: the Chinese before it is no address.
        ("我的邮箱是123456@qq.com，谢谢", "我的邮箱是<EMAIL>，谢谢"),
        # The longest label DNS allows.
        ("to a@" + "b" * 63 + ".com now", "to <EMAIL> now"),
        # Punycode top-level domain.
        ("مستخدم@مثال.xn--wgbh1c", "<EMAIL>"),
    ],
)
def test_an_address_in_these_scripts_is_masked_and_the_sentence_kept(
    text: str, expected: str
) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a@b",
        "x@y.",
        "تابعونا على @مستخدم اليوم",
        "تابعونا@مستخدم",
        "עקבו אחרי @משתמש",
        "@उपयोगकर्ता को लिखें",
        "ติดตาม @ผู้ใช้",
        "사용자@예시",
        # A domain label longer than DNS allows (63 characters).
        "a@" + "b" * 64 + ".com",
        "مستخدم@" + "م" * 64 + ".مصر",
    ],
)
def test_what_is_no_address_is_not_masked(text: str) -> None:
    assert masked(text) == text


ADDRESSES = [
    "مستخدم@مثال.مصر",
    "משתמש@דוגמה.ישראל",
    "उपयोगकर्ता@उदाहरण.भारत",
    "ผู้ใช้@ตัวอย่าง.ไทย",
    "사용자@예시.한국",
    "ユーザー@例え.テスト",
    "jane@例子.中国",
    "müller@bücher.de",
    "jane.doe@example.com",
]
# What ends or sets off a sentence in these scripts (and in Latin ones). A Latin full
# stop is left out: followed at once by a letter it goes on to a domain's next label.
PUNCTUATION = ["،", "؛", "؟", "۔", "׃", "׀", "।", "॥", "。", "，", "、", "！", "？", "：",
               "」", "）", ",", "!", "?", ";", ":", ")", " ", "\n"]  # fmt: skip
WORDS = ["שלום", "مرحبا", "नमस्ते", "안녕", "hello", "добрый", "", " "]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(WORDS),
    st.sampled_from([" ", "\n", "(", "「", "«", ": "]),
    st.sampled_from(ADDRESSES),
    st.lists(st.sampled_from(PUNCTUATION), min_size=1, max_size=3).map("".join),
    st.sampled_from(WORDS),
)
def test_an_address_never_takes_the_punctuation_around_it(
    before: str, opening: str, address: str, closing: str, after: str
) -> None:
    text = before + opening + address + closing + after
    assert masked(text) == before + opening + "<EMAIL>" + closing + after


def test_an_arabic_address_cut_over_stream_chunks_is_masked() -> None:
    out = masked_openai_stream(["EMAIL"], ["راسلني على مست", "خدم@مث", "ال.مصر، شكرا"])
    assert openai_stream_text(out) == "راسلني على <EMAIL>، شكرا"
    assert "مثال".encode() not in out
