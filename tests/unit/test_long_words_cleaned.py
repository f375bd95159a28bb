"""Cleaning secrets out of a message takes time in its length, not its square.

Every message the gateway writes about a request (an error, a log line) is cleaned of
anything shaped like a key, and provider words are cleaned of key fragments
(``sk-proj-****abcd``). The fragment pattern for a masked key, ``\\S*\\*{3,}\\S*``, was
tried at every character of a word: on a word without asterisks, ``\\S*`` ran to the
word's end and back each time. An unauthenticated ``PUT /model/<30,000 characters>``
made the gateway build its 405 ("PUT is not allowed on ...") and clean it for 4.4 s of
one worker's event loop, serving nothing else meanwhile (9,000 characters: 0.42 s;
Envoy's default 60 KiB of headers allow about 20 s). The pattern now starts only at a
word's start, where every match of the old one started: the same words are hidden.

So with the other patterns that read client text there. AWS's expected request was cut
with the spaces before it, ``\\s*The Canonical String...``, tried at every space of a
run: a 415 quoting a content-encoding of 30,000 spaces took 3.5 s. A JWT's first part,
``eyJ[...]*\\.``, read to the end of its run of base64url characters from every "eyJ" in
it: a 405 of a path of ``eyJ-eyJ-...`` took 0.7 s at 30,000 characters, 3 s at 60,000.
Each is compared with the pattern it replaced.
"""

from __future__ import annotations

import random
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import errors
from extproc.auth import credential_shapes
from extproc.auth.credential_shapes import _is_credential
from extproc.testing import run_stream
from tests.unit.test_fuzz_request_lines import LOG, PROCESSOR, _headers_message

# The fragment pattern as it was, the reference for what is hidden.
QUADRATIC = re.compile(
    r"\S*\*{3,}\S*"
    r"|\b(?:sk|rk|pk)[-_][A-Za-z0-9_\-]{3,}"
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{12,}"
    r"|\beyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*"
    r"|\bya29\.[A-Za-z0-9_\-.]+"
)
# AWS's expected request and the spaces before it, as they were cut.
EXPECTED_REQUEST = re.compile(
    r"\s*The Canonical String for this request should have been.*", re.IGNORECASE | re.DOTALL
)
# The shapes of whole credentials as they were, the reference for what ``kind`` finds.
SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?P<sk>sk-[A-Za-z0-9_-]{32,})"
    r"|(?P<aws>(?:AKIA|ASIA)[A-Z0-9]{16})"
    r"|(?P<google>AIza[A-Za-z0-9_-]{35})"
    r"|(?P<google_token>ya29\.[A-Za-z0-9_-]{20,})"
    r"|(?P<github>(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}))"
    r"|(?P<slack>xox[baprs]-[A-Za-z0-9-]{10,})"
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
    r"|(?P<aigw>aigw-[A-Za-z0-9_-]{43})"
    r")(?![A-Za-z0-9])"
)
# Runs of JWTs and of the other shapes, whole, cut and next to each other.
SHAPE_PIECES = ["eyJ", "eyJhbGciOiJIUzI1NiJ9", "abcde", ".", "..", "-", "_", " ", "é", "x",
                "ya29.", "A1b2C3d4E5f6G7h8I9j0", "sk-", "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56",
                "AKIA", "ABCDEFGHIJKLMNOP", "aigw-", "Zz9" * 15, "xoxb-1234567890", "***",
                "rk_"]  # fmt: skip
HEADING = "The Canonical String for this request should have been"
PIECES = ["a", "*", "**", "***", " ", "\n", "\t", "sk-", "sk_", "abc", "AKIA", "ABCDEFGHIJKL",
          "eyJ", ".", "ya29.", "x", "-", "é", "/", "@"]  # fmt: skip


# Each comparison takes microseconds and Hypothesis's drawing of a text a millisecond: an
# example draws a seed, and the texts of a test (2,000 or 3,000 a run, each run others)
# are joined from the pieces by a generator seeded with it.
RUNS = st.randoms(use_true_random=True)
PER_RUN = 20


def joined(pieces: list[str], rng: random.Random, most: int) -> str:
    """A text of up to ``most`` of ``pieces``; an empty text as often as a full one."""
    return "".join(rng.choices(pieces, k=rng.randint(0, most)))


@settings(max_examples=100, deadline=None)
@given(RUNS)
def test_the_fragments_hidden_are_the_ones_hidden_before(rng: random.Random) -> None:
    for text in (joined(PIECES, rng, 30) for _ in range(PER_RUN)):
        # Only what ``redacted`` leaves reaches the fragment pattern: compare on that.
        left = credential_shapes.redacted(text, "[R]")
        assert credential_shapes.fragments_redacted(text, "[R]") == QUADRATIC.sub("[R]", left), text


async def test_a_long_path_a_method_is_refused_on_is_answered_with_its_405() -> None:
    word = "a" * 30_000
    path = f"/model/{word}/invoke".encode()
    pairs = [(":method", b"PUT"), (":path", path), (":authority", b"gateway")]
    answers = await run_stream(PROCESSOR, [_headers_message(pairs, True)])

    reply = answers[0].immediate_response
    assert reply.status.code == 405
    # Bedrock's route: Bedrock's error shape.
    error = orjson.loads(reply.body)
    assert error["code"] == "method_not_allowed"
    assert error["message"].startswith("PUT is not allowed on /model/aaaa")
    line = LOG.lines()[-1]
    assert (line["http_status_code"], line["error_code"]) == (405, "method_not_allowed")


@settings(max_examples=100, deadline=None)
@given(RUNS)
def test_the_expected_request_cut_is_the_one_cut_before(rng: random.Random) -> None:
    pieces = [" ", "\n", "\t", "\u3000", "x", "'", HEADING, HEADING.lower(), "\nGET /"]
    for text in (joined(pieces, rng, 20) for _ in range(PER_RUN)):
        cut = errors._AWS_EXPECTED_REQUEST.sub(" [R]", text)
        assert cut == EXPECTED_REQUEST.sub(" [R]", text), text


async def test_a_long_run_of_spaces_in_a_refused_header_is_answered_with_its_415() -> None:
    # The 415 quotes the client's content-encoding (no key needed to get one), and the
    # log line's copy of it is cleaned of secrets: its spaces, 30,000 of them, took 3.5 s
    # of the worker's event loop there before.
    encoding = b"gzip" + b" " * 30_000 + b"x"
    pairs = [(":method", b"POST"), (":path", b"/v1/chat/completions"),
             (":authority", b"gateway"), ("content-encoding", encoding)]  # fmt: skip
    answers = await run_stream(PROCESSOR, [_headers_message(pairs, False)])

    reply = answers[0].immediate_response
    assert reply.status.code == 415
    error = orjson.loads(reply.body)["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert error["message"].startswith("request bodies with content-encoding 'gzip    ")
    line = LOG.lines()[-1]
    assert (line["http_status_code"], line["error_code"]) == (415, "unsupported_content_encoding")
    assert "gzip" + " " * 30_000 + "x" in line["error_message"]


def _kind_before(text: str) -> str | None:
    for found in SHAPES.finditer(text):
        if _is_credential(found):
            return found.lastgroup
    return None


def _redacted_before(text: str) -> str:
    return SHAPES.sub(lambda found: "[R]" if _is_credential(found) else found.group(), text)


def assert_credentials_found_and_hidden_as_before(text: str) -> None:
    named = {None: None, **{k: v for k, v in credential_shapes._KINDS.items()}}
    assert credential_shapes.kind(text) == named[_kind_before(text)], text
    assert credential_shapes.redacted(text, "[R]") == _redacted_before(text), text
    fragments = QUADRATIC.sub("[R]", _redacted_before(text))
    assert credential_shapes.fragments_redacted(text, "[R]") == fragments, text


@pytest.mark.parametrize(
    "text",
    [
        # No JWT (no third part), and a Google token at its run's end that goes on past the dot.
        "eyJabcde-ya29.A1b2C3d4E5f6G7h8I9j0",
        "x eyJ-eyJabcde_ya29.A1b2C3d4E5f6G7h8I9j0 eyJabcde.abcde.x",
    ],
)
def test_the_credentials_found_and_hidden_in_runs_of_pieces_are_the_ones_before(
    text: str,
) -> None:
    assert_credentials_found_and_hidden_as_before(text)


@settings(max_examples=100, deadline=None)
@given(RUNS)
def test_the_credentials_found_and_hidden_are_the_ones_before(rng: random.Random) -> None:
    for _ in range(3 * PER_RUN // 2):
        assert_credentials_found_and_hidden_as_before(joined(SHAPE_PIECES, rng, 16))


@pytest.mark.parametrize(
    ("word", "hidden"),
    [
        ("eyJ-" * 7_500, "eyJ-" * 7_500),
        # The last of a long run of "eyJ" is a JWT: the run goes from the first on.
        ("eyJ-" * 7_500 + "x.payload.signature", "[redacted]"),
        # A run that is no JWT, a Google token after it.
        ("eyJ-" * 7_500 + "ya29.A1b2C3d4E5f6G7h8I9j0", "eyJ-" * 7_500 + "[redacted]"),
    ],
)
async def test_a_long_run_of_jwt_starts_in_a_refused_header_is_answered(
    word: str, hidden: str
) -> None:
    # The 415 quotes the header back to its sender; the log line's copy is cleaned of
    # every shape. Each "eyJ" of the run was read to the run's end: 30,000 characters
    # took 0.46 s there, and the 405 of a path of them 0.7 s (60,000: 3 s).
    pairs = [(":method", b"POST"), (":path", b"/v1/chat/completions"),
             (":authority", b"gateway"), ("content-encoding", word.encode())]  # fmt: skip
    answers = await run_stream(PROCESSOR, [_headers_message(pairs, False)])

    reply = answers[0].immediate_response
    assert reply.status.code == 415
    assert word in orjson.loads(reply.body)["error"]["message"]
    line = LOG.lines()[-1]
    assert (line["http_status_code"], line["error_code"]) == (415, "unsupported_content_encoding")
    assert f"content-encoding '{hidden}'" in line["error_message"]
