"""The scripts an e-mail address may be written in, as character classes for the EMAIL
builtin (``detectors``): which letters, marks and digits a local part or a domain label
may hold, and the top-level domains of the scripts written without spaces.

Internationalised addresses (RFC 6531) carry any letter in their local part, and IDNA
lets a domain label hold the letters, combining marks and digits of one script. What
sets an address off from the sentence around it differs:

- In the scripts written with spaces between words (Latin, Greek, Cyrillic, Armenian,
  Georgian, Hebrew, Arabic, Syriac, Thaana, Ethiopic, Devanagari, Bengali, Gurmukhi,
  Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam, Sinhala), a space or the script's
  punctuation ends the address. Their letters may be mixed in one address.
- In the scripts written without spaces (Chinese and Japanese, Thai, Lao, Khmer, Myanmar,
  Tibetan) and Korean (whose particles are written on the word before them), the
  letters next to an address of another script are the sentence around it
  (``请联系jane@example.com``): a local part, a label or a top-level domain is letters
  of one of them only. A top-level domain in one of them is first read as one the root
  zone delegates in it (``中国``, ``ไทย``, ``한국``): the text after it is the sentence
  (``jane@例子.中国请回复``). Another run of its letters is taken whole.

The combining marks of each script (vowel signs, viramas, nuktas, tone marks) are part
of its words, so they are taken with its letters; each script's punctuation (dandas,
the Khmer khan, the Myanmar section marks, the Tibetan tsheg and shad, the Ethiopic
word space) is not, and ends an address. Classes are written as ranges of characters
both RE2 and Python's ``re`` read alike, so the pattern, the stream's hold-back and the
end check agree.
"""

from __future__ import annotations

import re
import unicodedata

# Letters, marks and digits of the blocks below, read from the Unicode database: what a
# block holds besides (punctuation, symbols, numbers that are no digits) is left out.
_LETTER = ("Lu", "Ll", "Lt", "Lm", "Lo")
_MARK = ("Mn", "Mc")
_DIGIT = ("Nd",)


def _class(
    blocks: tuple[tuple[int, int], ...],
    categories: tuple[str, ...],
    within: re.Pattern[str] | None = None,
) -> str:
    """The characters of ``blocks`` in ``categories`` (and ``within``, if given), as
    ranges of a character class."""
    points = [
        point
        for first, last in blocks
        for point in range(first, last + 1)
        if unicodedata.category(chr(point)) in categories
        and (within is None or within.match(chr(point)))
    ]
    ranges: list[str] = []
    index = 0
    while index < len(points):
        end = index
        while end + 1 < len(points) and points[end + 1] == points[end] + 1:
            end += 1
        first, last = chr(points[index]), chr(points[end])
        ranges.append(first if first == last else f"{first}-{last}")
        index = end + 1
    return "".join(ranges)


# The spaced scripts taken besides the hand-written ranges below: Armenian, Syriac,
# Thaana, Bengali, Gurmukhi, Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam, Sinhala,
# Georgian (with Mtavruli capitals), Ethiopic.
_SPACED_BLOCKS = (
    (0x0531, 0x058F),
    (0x0700, 0x074F),
    (0x0780, 0x07BF),
    (0x0980, 0x0DFF),
    (0x10A0, 0x10FF),
    (0x1C90, 0x1CBF),
    (0x1200, 0x139F),
)

# Latin-1 and Latin Extended (without the multiplication and division signs), Greek,
# Cyrillic, Hebrew, Arabic (with its supplements), Devanagari, Latin Extended Additional
# (Vietnamese); each script's punctuation left out (Hebrew's maqaf, paseq and sof pasuq,
# Arabic's comma, semicolon, question mark and full stop, the Devanagari danda).
LETTERS = (
    "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0386\u0388-\u03ff"
    "\u0400-\u0481\u048a-\u052f\u05d0-\u05ea\u05ef-\u05f2"
    "\u0620-\u064a\u066e\u066f\u0671-\u06d3\u06d5\u06e5\u06e6\u06ee\u06ef"
    "\u06fa-\u06fc\u06ff\u0750-\u077f\u08a0-\u08c9"
    "\u0904-\u0939\u093d\u0950\u0958-\u0961\u0971-\u097f\u1e00-\u1eff"
) + _class(_SPACED_BLOCKS, _LETTER)
# The marks written on those letters: combining accents, Cyrillic titlo, Hebrew points,
# Arabic vowel signs, Devanagari vowel signs, viramas and nukta, and the zero-width
# (non-)joiners Persian and Indic words are spelt with (IDNA allows them there).
MARKS = (
    "\u0300-\u036f\u0483-\u0487\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7"
    "\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed"
    "\u08ca-\u08e1\u08e3-\u08ff\u0900-\u0903\u093a-\u093c\u093e-\u094f"
    "\u0951-\u0957\u0962\u0963\u200c\u200d"
) + _class(_SPACED_BLOCKS, _MARK)
# Digits: ASCII, Arabic-Indic (both forms), Devanagari and those of the blocks above.
DIGITS = "0-9\u0660-\u0669\u06f0-\u06f9\u0966-\u096f" + _class(_SPACED_BLOCKS, _DIGIT)

# A top-level domain is written in one script (as the root zone delegates them), so one
# right before text of another script ends there: ``jane@example.comতে`` is the address
# and a Bengali suffix, not a domain ``comতে``. Each script's letters and marks among
# those above.
_SPACED = re.compile(f"[{LETTERS}{MARKS}]")
_LATIN_MARKS = (0x0300, 0x036F)
_SCRIPT_BLOCKS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF), _LATIN_MARKS),
    ((0x0370, 0x03FF), _LATIN_MARKS),  # Greek
    ((0x0400, 0x052F), _LATIN_MARKS),  # Cyrillic
    ((0x0531, 0x058F),),  # Armenian
    ((0x0591, 0x05FF),),  # Hebrew
    ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0x200C, 0x200D)),  # Arabic
    ((0x0700, 0x074F),),  # Syriac
    ((0x0780, 0x07BF),),  # Thaana
    *(((first, first + 0x7F), (0x200C, 0x200D)) for first in range(0x0900, 0x0E00, 0x80)),
    ((0x10A0, 0x10FF), (0x1C90, 0x1CBF)),  # Georgian
    ((0x1200, 0x139F),),  # Ethiopic
)
# Each spaced script's (letters, marks), for its top-level domains. The Indic blocks
# (Devanagari to Sinhala) are 128 code points each, with the joiners they are spelt with.
SCRIPTS: tuple[tuple[str, str], ...] = tuple(
    (_class(blocks, _LETTER, _SPACED), _class(blocks, (*_MARK, "Cf"), _SPACED))
    for blocks in _SCRIPT_BLOCKS
)

# Chinese and Japanese: Han, kana, the iteration and prolonged sound marks.
HAN_KANA = (
    "\u3005\u3041-\u3096\u3099-\u309f\u30a1-\u30fa\u30fc-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
THAI = "\u0e01-\u0e3a\u0e40-\u0e4e"
HANGUL = "\u1100-\u11ff\u3131-\u318e\uac00-\ud7a3"
# Lao, Tibetan, Myanmar (with its extensions), Khmer: letters and marks, as Thai's.
LAO = _class(((0x0E80, 0x0EFF),), _LETTER + _MARK)
TIBETAN = _class(((0x0F00, 0x0FFF),), _LETTER + _MARK)
MYANMAR = _class(((0x1000, 0x109F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F)), _LETTER + _MARK)
KHMER = _class(((0x1780, 0x17FF),), _LETTER + _MARK)

# Top-level domains of the root zone in those scripts (a hand-kept selection of IANA's
# list, not the whole of it; a TLD missing here reads as an undelegated one), with the
# names of IANA's IDN test domains: a domain ends after one of them, and what follows at
# once is the sentence (no dictionary could say where a longer run ends).
HAN_KANA_TOP_LEVEL = [
    "中国", "中國", "香港", "台湾", "台灣", "新加坡", "澳門", "公司", "网络", "在线",
    "中文网", "集团", "移动", "我爱你", "手机", "商城", "游戏", "时尚", "微博", "佛山",
    "广东", "八卦", "网址", "网店", "政务", "政府", "商标", "商店", "慈善", "珠宝", "健康",
    "招聘", "大拿", "娱乐", "家電", "工行", "手表", "新闻", "机构", "点看", "联通", "谷歌",
    "购物", "通販", "食品", "餐厅", "亚马逊", "书籍", "信息", "企业", "公益", "天主教",
    "嘉里", "嘉里大酒店", "淡马锡", "電訊盈科", "盛贸饭店", "飞利浦", "诺基亚", "大众汽车", "中信",
    "世界", "组织机构", "香格里拉", "みんな", "コム", "セール", "ファッション", "ポイント",
    "クラウド", "ストア", "グーグル", "测试", "測試", "テスト",
]  # fmt: skip
THAI_TOP_LEVEL = ["ไทย"]
LAO_TOP_LEVEL = ["ລາວ"]
HANGUL_TOP_LEVEL = ["한국", "삼성", "닷컴", "닷넷", "테스트"]

# Each unspaced script: its letters, and its delegated top-level domains.
UNSPACED: tuple[tuple[str, list[str]], ...] = (
    (HAN_KANA, HAN_KANA_TOP_LEVEL),
    (THAI, THAI_TOP_LEVEL),
    (HANGUL, HANGUL_TOP_LEVEL),
    (LAO, LAO_TOP_LEVEL),
    (KHMER, []),
    (MYANMAR, []),
    (TIBETAN, []),
)
UNSPACED_LETTERS = "".join(letters for letters, _ in UNSPACED)
