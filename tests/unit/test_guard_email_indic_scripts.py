# ruff: noqa: RUF001  (addresses and punctuation of other scripts, on purpose)
"""The EMAIL builtin finds addresses in Bengali, Tamil, Telugu, Kannada, Malayalam,
Gujarati, Gurmukhi, Oriya, Sinhala, Khmer, Lao, Myanmar, Tibetan, Armenian, Georgian and
Ethiopic letters, and a domain in a script written without spaces ends after its
top-level domain.

Before, ``ব্যবহারকারী@উদাহরণ.বাংলা`` or ``អ្នកប្រើ@ឧទាហរណ៍.com`` in a prompt reached the
provider whole (their letters were no address letters), and ``jane@例子.中国请回复``
was masked with the sentence after it (``请回复``, "please reply"): a top-level domain
in Chinese took the whole run of Chinese letters after the dot.
"""

from __future__ import annotations

from typing import Any

import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import Builtin
from extproc.guardrails.detectors import EMAIL_PATTERN, builtin, email_accepted


def masked(text: str) -> str:
    spans = list(builtin(Builtin.EMAIL).find(text))
    for span in reversed(spans):
        text = text[: span.start] + "<EMAIL>" + text[span.end :]
    return text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Bengali: vowel signs and the virama (হা, ্য) are inside the words; the danda ends.
        ("আমার ঠিকানা ব্যবহারকারী@উদাহরণ.বাংলা।", "আমার ঠিকানা <EMAIL>।"),
        ("எழுதுங்கள் பயனர்@எடுத்துக்காட்டு.இந்தியா நன்றி", "எழுதுங்கள் <EMAIL> நன்றி"),
        ("ఇమెయిల్ వినియోగదారు@ఉదాహరణ.భారత్ కు", "ఇమెయిల్ <EMAIL> కు"),
        ("ಬರೆಯಿರಿ ಬಳಕೆದಾರ@ಉದಾಹರಣೆ.ಭಾರತ ಗೆ", "ಬರೆಯಿರಿ <EMAIL> ಗೆ"),
        ("എഴുതുക ഉപയോക്താവ്@ഉദാഹരണം.ഭാരതം ഇന്ന്", "എഴുതുക <EMAIL> ഇന്ന്"),
        ("લખો વપરાશકર્તા@ઉદાહરણ.ભારત પર", "લખો <EMAIL> પર"),
        ("ਲਿਖੋ ਵਰਤੋਂਕਾਰ@ਉਦਾਹਰਨ.ਭਾਰਤ।", "ਲਿਖੋ <EMAIL>।"),
        ("ଲେଖନ୍ତୁ ବ୍ୟବହାରକାରୀ@ଉଦାହରଣ.ଭାରତ।", "ଲେଖନ୍ତୁ <EMAIL>।"),
        ("ලියන්න පරිශීලක@උදාහරණ.ලංකා ට", "ලියන්න <EMAIL> ට"),
        # Digits of the script in a local part.
        ("ঠিকানা ব্যবহারকারী১২@উদাহরণ.বাংলা", "ঠিকানা <EMAIL>"),
        # Khmer, Lao, Myanmar and Tibetan are written without spaces between words: a
        # space or their punctuation (the khan, the section mark, the tsheg) ends.
        ("សូមផ្ញើទៅ អ្នកប្រើ@ឧទាហរណ៍.com។", "សូមផ្ញើទៅ <EMAIL>។"),
        ("ຂຽນຫາ ຜູ້ໃຊ້@ຕົວຢ່າງ.ລາວ ໄດ້", "ຂຽນຫາ <EMAIL> ໄດ້"),
        ("ပို့ပါ အသုံးပြုသူ@ဥပမာ.com။", "ပို့ပါ <EMAIL>။"),
        ("ཡི་གེ་བོད@དཔེ.com་", "ཡི་གེ་<EMAIL>་"),
        # An ASCII address right beside them takes none of their letters.
        ("ផ្ញើទៅjane@example.comឥឡូវ", "ផ្ញើទៅ<EMAIL>ឥឡូវ"),
        ("ຂຽນຫາjane@example.comແລ້ວ", "ຂຽນຫາ<EMAIL>ແລ້ວ"),
        # Armenian, Georgian, Ethiopic (its word space ends an address).
        ("գրեք օգտատեր@օրինակ.հայ այսօր", "գրեք <EMAIL> այսօր"),
        ("მისწერეთ მომხმარებელი@მაგალითი.გე დღეს", "მისწერეთ <EMAIL> დღეს"),
        ("ጻፉ፡ተጠቃሚ@ምሳሌ.com፡", "ጻፉ፡<EMAIL>፡"),
    ],
)
def test_an_address_in_these_scripts_is_masked_and_the_sentence_kept(
    text: str, expected: str
) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A top-level domain the root zone delegates in the script ends the domain.
        ("请发邮件到jane@例子.中国请回复", "请发邮件到<EMAIL>请回复"),
        ("联系用户@例子.公司.中国以后", "<EMAIL>以后"),
        ("メール：ユーザー@例え.コムまで", "メール：<EMAIL>まで"),
        ("ส่งถึงjane@ตัวอย่าง.ไทยได้เลย", "ส่งถึง<EMAIL>ได้เลย"),
        ("ຂຽນຫາ ຜູ້ໃຊ້@ຕົວຢ່າງ.ລາວແລ້ວ", "ຂຽນຫາ <EMAIL>ແລ້ວ"),
        # Korean particles are written on the word before them.
        ("사용자@예시.한국으로 보내세요", "<EMAIL>으로 보내세요"),
        # The longest delegated name wins over one it begins with.
        ("jane@例子.嘉里大酒店见", "<EMAIL>见"),
        # A top-level domain is one script: letters of another after it are the sentence.
        ("jane@example.comতে", "<EMAIL>তে"),
        ("jane@example.comом", "<EMAIL>ом"),
        # What stays ambiguous: a run the root zone delegates nothing in is taken whole
        # (no dictionary says where the name ends and the sentence begins).
        ("jane@例子.样本请回复", "<EMAIL>"),
    ],
)
def test_a_domain_in_an_unspaced_script_ends_after_its_top_level_domain(
    text: str, expected: str
) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "@ব্যবহারকারী কে লিখুন",
        "ব্যবহারকারী@উদাহরণ",
        "ติดตาม @ຜູ້ໃຊ້",
        # A top-level domain of more than 24 letters of one script is none.
        "a@b." + "ব" * 25,
    ],
)
def test_what_is_no_address_is_not_masked(text: str) -> None:
    assert masked(text) == text


def test_a_local_part_is_at_most_the_64_octets_smtp_carries() -> None:
    # 30 Chinese letters are 90 octets: the address is the last 21 (63 octets) with its
    # domain; before, all 30 were masked as one local part.
    assert masked("中" * 30 + "@例子.中国") == "中" * 9 + "<EMAIL>"
    assert masked("é" * 40 + "@example.fr") == "é" * 8 + "<EMAIL>"
    assert masked("a" * 70 + "@example.com") == "a" * 6 + "<EMAIL>"


# --- cost: no input makes the builtin search again and again -----------------------------


class CountingRegex:
    """The builtin's compiled pattern, counting its searches."""

    def __init__(self, regex: Any) -> None:
        self.regex = regex
        self.pattern = regex.pattern
        self.options = regex.options
        self.searches = 0

    def search(self, text: str | bytes, *position: int) -> Any:
        self.searches += 1
        return self.regex.search(text, *position)


def counted(text: str) -> tuple[int, int]:
    """How many addresses the builtin finds in ``text``, and the searches it took."""
    detector = builtin(Builtin.EMAIL)
    counting = CountingRegex(detector._regex)
    detector._regex = counting
    return len(list(detector.find(text))), counting.searches


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        # Long runs of letters before each "@": the address is searched again from its
        # last 64 octets once, not once per letter before them.
        (("ব্যবহারকারী" * 40 + "@উদাহরণ.বাংলা ") * 100, 100),
        (("中" * 200 + "@例子.中国 ") * 100, 100),
        ("ក" * 65_536 + "@ឧទាហរណ៍.com", 1),
        # Nothing to find, however long.
        ("ব্যবহারকারী" * 6000, 0),
        ("@" * 65_536, 0),
        ("a@b." * 16_384, 0),
    ],
)
def test_long_inputs_take_few_searches(text: str, addresses: int) -> None:
    found, searches = counted(text)
    assert found == addresses
    assert searches <= 2 * addresses + 2


def reference(text: str) -> list[tuple[int, int]]:
    """What the pattern and its check find searched the plain way: each refused match
    searched again from the character after its start."""
    regex = re2.compile(EMAIL_PATTERN)
    spans = []
    position = 0
    while position <= len(text):
        match = regex.search(text, position)
        if match is None:
            break
        start, end = match.span()
        if email_accepted(text, start, end):
            spans.append((start, end))
            position = end
        else:
            position = start + 1
    return spans


PIECES = ["ব্যবহারকারী", "উদাহরণ", "বাংলা", "中文", "中国", "ไทย", "ຜູ້ໃຊ້", "ລາວ", "ក្រុម",
          "မြန်မာ", "བོད", "한국", "jane", "com", "é", "@", "@", ".", ".", "-", "_", " ", "।",
          "。", "་", "১২", "7"]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_the_builtin_finds_what_the_plain_search_finds(text: str) -> None:
    found = [(span.start, span.end) for span in builtin(Builtin.EMAIL).find(text)]
    assert found == reference(text)
