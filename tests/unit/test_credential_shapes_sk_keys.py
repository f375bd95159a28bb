"""``sk-`` keys in a query are recognised by what they are, slugs of words are not.

The recogniser took any run after ``sk-`` that mixed digits, capitals and small letters
anywhere for a key. So a slug of words with one capital and one number
(``?ref=sk-Learn-1-4-Release-Highlights-and-Notes``) was refused as a key, while the
32 hex digits of DeepSeek's or DashScope's keys (no capital) and OpenRouter's
``sk-or-v1-`` keys went on to the provider in the query. An older 48-character OpenAI
key with no digit, the miss noted before, does not exist: every OpenAI key carries
``T3BlbkFJ`` ("OpenAI" in base64) between its random parts, which is now what
recognises one, whatever its other characters.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.auth.credential_shapes import kind

SK = "an OpenAI or Anthropic API key"
BASE62 = string.ascii_letters + string.digits
BASE64URL = BASE62 + "-_"
HEX = "0123456789abcdef"
MARKER = "T3BlbkFJ"


def draw(rng: random.Random, alphabet: str, size: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


def base62_with_a_digit(rng: random.Random) -> str:
    """48 random letters and digits (Moonshot's keys, say). One in 4000 draws no digit:
    without a marker such a draw is letters a CamelCase name could be, and stays a miss
    rather than a wrong refusal of one (docs/authentication.md)."""
    while True:
        key = draw(rng, BASE62, 48)
        if any(c.isdigit() for c in key):
            return key


def one_case_with_digits_among_letters(alphabet: str) -> Callable[[random.Random], str]:
    """48 random letters of one case and digits (keys of OpenAI-compatible servers that
    issue ``sk-`` and lowercase base36). One draw in 5000 has its digits in fewer than
    three places between letters: a miss, as a word with a number in it could be that."""

    def make(rng: random.Random) -> str:
        while True:
            key = draw(rng, alphabet, 48)
            if len(re.findall(r"(?<=[A-Za-z])[0-9]+(?=[A-Za-z])", key)) >= 3:
                return key

    return make


LOWER36 = one_case_with_digits_among_letters(string.ascii_lowercase + string.digits)
UPPER36 = one_case_with_digits_among_letters(string.ascii_uppercase + string.digits)


@given(
    st.text(alphabet=BASE62, min_size=20, max_size=20),
    st.text(alphabet=BASE62, min_size=20, max_size=20),
)
def test_every_older_openai_key_is_recognised_digits_or_not(left: str, right: str) -> None:
    # sk-, 20 characters, the marker, 20 more: 48 in all, none of them need be a digit.
    assert kind(f"sk-{left}{MARKER}{right}") == SK


@given(
    st.sampled_from(["proj", "svcacct", "admin"]),
    st.text(alphabet=BASE64URL, min_size=58, max_size=74),
    st.text(alphabet=BASE64URL, min_size=58, max_size=74),
)
def test_every_project_service_and_admin_key_is_recognised(
    kind_of: str, left: str, right: str
) -> None:
    assert kind(f"sk-{kind_of}-{left}{MARKER}{right}") == SK


@pytest.mark.parametrize(
    ("provider", "make"),
    [
        ("deepseek", lambda rng: "sk-" + draw(rng, HEX, 32)),
        ("openrouter", lambda rng: "sk-or-v1-" + draw(rng, HEX, 64)),
        ("anthropic", lambda rng: "sk-ant-api03-" + draw(rng, BASE64URL, 93) + "AA"),
        ("anthropic-admin", lambda rng: "sk-ant-admin01-" + draw(rng, BASE64URL, 93) + "AA"),
        ("base62-48", lambda rng: "sk-" + base62_with_a_digit(rng)),
        # Missed every time before: a key needed both cases of letters.
        ("base36-48", lambda rng: "sk-" + LOWER36(rng)),
        ("upper-base36-48", lambda rng: "sk-" + UPPER36(rng)),
    ],
)
def test_thousands_of_random_keys_of_each_provider_are_recognised(
    provider: str, make: Callable[[random.Random], str]
) -> None:
    rng = random.Random(provider)
    missed = [key for key in (make(rng) for _ in range(2000)) if kind(f"x {key} y") != SK]
    assert missed == []


# A slug's words: small words, capitalised ones, acronyms, numbers, versions.
WORDS = st.one_of(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=11).map(str.capitalize),
    st.text(alphabet=string.ascii_uppercase, min_size=1, max_size=6),
    st.integers(min_value=0, max_value=10**10).map(str),
    st.integers(min_value=0, max_value=99).map(lambda n: f"v{n}"),
)


@given(st.lists(WORDS, min_size=4, max_size=14), st.sampled_from(["-", "_", "--"]))
def test_no_slug_of_words_is_taken_for_a_key(words: list[str], joint: str) -> None:
    slug = "sk-" + joint.join(words)
    assert kind(slug) is None, slug


@pytest.mark.parametrize(
    "text",
    [
        "sk-Learn-1-4-Release-Highlights-and-Notes",  # refused as a key before
        "sk-learn-OpenAI-integration-guide-2024-edition",
        "sk-8-Release-Notes-for-Version-2024-Q1-Update-Utf8",
        "sk-learn-pipelines-and-gradient-boosting-docs",
        "sk-" + "a" * 48,
        "sk-" + "1234567890" * 4,  # a number is no hex key
        "sk-" + "deadbeefcafe" * 3,  # nor a word of hex letters
        # Words of one case run together, with a number or two: digits in one or two
        # places, not scattered as in a key.
        "sk-pipelinesandgradientboostingdocs2024edition",
        "sk-gpt4oturbopreviewreleasenotesforversion2024",
        "sk-MODELCARDFORLLAMA3INSTRUCTQUANTIZEDVERSION",
    ],
)
def test_slugs_and_words_that_begin_as_a_key_does_go_on(text: str) -> None:
    assert kind(text) is None


def test_every_gateway_key_is_recognised_and_a_lowercase_aigw_slug_is_not() -> None:
    # `extproc keys create` mints `aigw-` and 256 random bits in base64url: both cases,
    # always in practice. A slug of words 43 characters long after `aigw-` (a model or a
    # query value an operator named) was refused as a key before.
    from extproc.auth.stored_keys.records import new_secret

    assert all(kind(new_secret()) == "an API key of this gateway" for _ in range(2000))
    slug = "aigw-" + "-".join(["team", "prod", "chat", "model", "fine", "tuned", "v2"] * 2)
    assert kind(slug[:48]) is None
