"""Credentials recognised by their shape: the well-known prefixes of API keys and tokens.

A query parameter's name need not say it carries a secret (``?x=sk-...``), and the query
goes on to the provider with the rest of the URL, into its logs. The gateway cannot know
every secret, but the common ones announce themselves: each kind here has a fixed prefix,
a fixed alphabet and a length no word reaches, so a parameter a client means as data
(an API version, ``alt=sse``, a cursor, a model name, an item id) is none of them.

``kind`` names what a text holds, never the text: the caller's error names the kind and
the parameter, and the value goes nowhere. ``redacted`` hides every credential of these
shapes in a text shown to someone (a config error, a warning), ``fragments_redacted``
the fragments of keys that providers quote as well (``errors.without_secrets``): this
module is the one list of what a credential looks like, so a shape added here is
refused in a query or a model name and hidden in every message at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# One alternation, searched once per text; each group names its kind. A credential stands
# apart: no letter or digit touches either end (``task-...`` holds no ``sk-`` key).
_SHAPE_BRANCHES = (
    # OpenAI's (sk-, sk-proj-, sk-svcacct-), Anthropic's (sk-ant-api03-...) and the sk- keys
    # of OpenAI-compatible providers (32 hex digits, sk-or-v1-...): 32 characters or more
    # after the prefix, and random-looking (``_random_key``), which no slug of words is.
    r"(?P<sk>sk-[A-Za-z0-9_-]{32,})",
    r"(?P<aws>(?:AKIA|ASIA)[A-Z0-9]{16})",  # an AWS access key id (long-term, temporary)
    r"(?P<google>AIza[A-Za-z0-9_-]{35})",  # a Google API key
    r"(?P<google_token>ya29\.[A-Za-z0-9_-]{20,})",  # a Google OAuth2 access token
    r"(?P<github>(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}))",
    r"(?P<slack>xox[baprs]-[A-Za-z0-9-]{10,})",  # a Slack token
    # This gateway's own keys, created at run time (``stored_keys.records.new_secret``:
    # ``aigw-`` and 256 random bits in base64url). The config's keys are known by their
    # hash; these live in the store, which no check on the request path may ask.
    r"(?P<aigw>aigw-[A-Za-z0-9_-]{43})",
)
# A JWT: three base64url parts, the first a JSON header ("eyJ" is '{"' encoded).
_JWT_SHAPE = r"(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
# A JWT's first part runs to the end of the run of base64url characters its "eyJ" stands
# in, so whether one matches there depends on what follows the run alone: where one
# fails, every later "eyJ" of the run fails too. Tried at each of them, a long run
# ("eyJ-eyJ-...", a client's path or header in a message) was read to its end as many
# times: seconds of one worker's event loop. So a failed JWT takes the run (``_NO_JWT``),
# and the run is searched again without the JWT (``_matches``), when another "eyJ" stands
# in it (a run with one is read once anyway). No other shape starts with "eyJ": at a
# failed JWT's start, nothing else would have matched either.
_NO_JWT = "no_jwt"
_NO_JWT_SHAPE = rf"(?P<{_NO_JWT}>eyJ(?=[A-Za-z0-9_-]*?[-_]eyJ)[A-Za-z0-9_-]*)"


def _standing_apart(branches: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(branches) + r")(?![A-Za-z0-9])")


_SHAPES = _standing_apart((*_SHAPE_BRANCHES, _JWT_SHAPE, _NO_JWT_SHAPE))
_SHAPES_BUT_JWT = _standing_apart(_SHAPE_BRANCHES)
_KINDS = {
    "sk": "an OpenAI or Anthropic API key",
    "aws": "an AWS access key id",
    "google": "a Google API key",
    "google_token": "a Google access token",
    "github": "a GitHub token",
    "slack": "a Slack token",
    "jwt": "a JSON Web Token",
    "aigw": "an API key of this gateway",
}
_DIGIT = re.compile(r"[0-9]")
# Hex digits both, as a hex key has them (a number or a word of a-f is no key).
_HEX = re.compile(r"(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]+")
# A slug's word: small letters after one capital at most, capitals (an acronym), a
# number, a version (v2, V10).
_WORD = re.compile(r"[A-Z]?[a-z]*|[A-Z]+|[0-9]+|[vV][0-9]+")
_SEPARATORS = re.compile(r"[-_]+")
_OPENAI_MARKER = "T3BlbkFJ"
# Anthropic's keys after sk- (ant-api03-, ant-admin01-): 95 random characters follow,
# dashes and underscores among them, so no run between them need be long.
_ANTHROPIC_PREFIX = re.compile(r"ant-[a-z]+[0-9]{2}-")
_ANTHROPIC_RANDOM = 80
# 32 hex digits in a run are a DeepSeek or DashScope key; 20 characters outside words
# that mix digits and cases are random (a slug's "Utf8", "x86", "OpenAI" are short).
_MIN_HEX_RUN = 32
_MIN_UNWORDED = 20
# Digits standing among letters, as a random run of letters and digits scatters them: a
# word with a year or a version at its end has one group.
_DIGIT_GROUPS = re.compile(r"(?<=[A-Za-z])[0-9]+(?=[A-Za-z])")
_MIN_DIGIT_GROUPS = 3
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")


# What a provider's words show of a key: OpenAI names the key it refused by a fragment
# ("sk-proj-****abcd"), others quote a key's start, an AWS key id or a token cut short.
# Looser than ``_SHAPES``, so only for hiding: a word it hides costs a message little.
_FRAGMENT_BRANCHES = (
    # A masked key: a run of asterisks, and the fragments around it, from the word's start
    # only: tried at every character of a long word (a 30,000-character path in a 405),
    # `\S*` ran to its end and back each time, seconds of one worker's event loop.
    r"(?<!\S)\S*?\*{3,}\S*",
    r"\b(?:sk|rk|pk)[-_][A-Za-z0-9_\-]{3,}",  # sk-..., sk-ant-..., sk_live_...
    r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}",  # an AWS access key id
    r"\bya29\.[A-Za-z0-9_\-.]+",  # a Google OAuth2 access token (Vertex AI's)
)
_JWT_FRAGMENT = r"\beyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*"  # a JWT
_FRAGMENTS = re.compile("|".join((*_FRAGMENT_BRANCHES, _JWT_FRAGMENT, rf"\b{_NO_JWT_SHAPE}")))
_FRAGMENTS_BUT_JWT = re.compile("|".join(_FRAGMENT_BRANCHES))
# A dot and the run of base64url characters after it: of what is found in the rest of a
# run a JWT failed in, only a Google token ("ya29." and its characters) may end past the
# run, and only in this one.
_DOTTED_RUN = re.compile(r"\.[A-Za-z0-9_\-]*")


def kind(text: str) -> str | None:
    """What credential ``text`` holds (``"a GitHub token"``), None when it holds none."""
    for found in _matches(_SHAPES, _SHAPES_BUT_JWT, text):
        if _is_credential(found):
            assert found.lastgroup is not None
            return _KINDS[found.lastgroup]
    return None


def redacted(text: str, replacement: str) -> str:
    """``text`` with every credential ``kind`` finds replaced by ``replacement``: no
    word or mask of the text's own is touched."""
    found = (m for m in _matches(_SHAPES, _SHAPES_BUT_JWT, text) if _is_credential(m))
    return _replaced(text, found, replacement)


def fragments_redacted(text: str, replacement: str) -> str:
    """``text`` with every fragment of a key, as providers quote one (cut short, masked
    with asterisks), replaced by ``replacement``. Looser than ``redacted``: for words a
    provider wrote, not a text whose own masks (a URL's ``***@host``) must stay."""
    text = redacted(text, replacement)
    return _replaced(text, _matches(_FRAGMENTS, _FRAGMENTS_BUT_JWT, text), replacement)


def _matches(
    pattern: re.Pattern[str], but_jwt: re.Pattern[str], text: str
) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)`` as it was without its ``_NO_JWT`` branch, in time in
    ``text``'s length: where a JWT failed, the rest of its run is searched with
    ``but_jwt``, the same alternation but the JWT, which fails at every "eyJ" there."""
    at = 0
    while (found := pattern.search(text, at)) is not None:
        if found.lastgroup != _NO_JWT:
            yield found
            at = found.end()
            continue
        run_end = found.end()
        dotted = _DOTTED_RUN.match(text, run_end)
        stop = run_end if dotted is None else dotted.end()
        at = found.start() + 1
        while (inner := but_jwt.search(text, at, stop)) is not None and inner.start() < run_end:
            yield inner
            at = inner.end()
        at = max(at, run_end)


def _replaced(text: str, found: Iterable[re.Match[str]], replacement: str) -> str:
    kept: list[str] = []
    at = 0
    for match in found:
        kept += (text[at : match.start()], replacement)
        at = match.end()
    kept.append(text[at:])
    return "".join(kept)


def _is_credential(found: re.Match[str]) -> bool:
    value = found.group()
    if found.lastgroup == "sk":
        return _random_key(value[3:])  # words joined by hyphens ("sk-learn-...") are no key
    if found.lastgroup == "slack":
        return _DIGIT.search(value) is not None  # a token carries its team's numbers
    if found.lastgroup == "aigw":
        # 256 random bits mix both cases; a lowercase slug ("aigw-my-...") is none.
        return bool(_UPPER.search(value, 5) and _LOWER.search(value, 5))
    return True


def _random_key(text: str) -> bool:
    """Whether ``text`` (what follows ``sk-``) is a key's random part, not words.

    Every OpenAI key, the older 48-character ``sk-`` ones included, carries
    ``T3BlbkFJ`` ("OpenAI" in base64) between random parts, so it is a key whatever
    its digits. Anthropic's keys (``ant-api03-`` and 95 more) are random after the
    prefix. Other providers' keys are random runs of letters and digits (DeepSeek's
    32 hex digits, OpenRouter's ``or-v1-`` and 64), maybe cut by a ``-`` or ``_``. A
    slug is words joined by ``-`` or ``_``: randomness is looked for in the runs
    between them that are no word (``Learn``, ``API``, ``2024``, ``v2`` are), so
    ``sk-Learn-1-4-Release-Highlights`` is none, though it mixes digits and cases.
    """
    if _OPENAI_MARKER in text:
        return True
    prefixed = _ANTHROPIC_PREFIX.match(text)
    if prefixed is not None:
        rest = text[prefixed.end() :]
        if len(rest) >= _ANTHROPIC_RANDOM and _random(rest):
            return True
    runs = [run for run in _SEPARATORS.split(text) if not _WORD.fullmatch(run)]
    if any(_hex_key(run) or _one_case_key(run) for run in runs):
        return True
    unworded = "".join(runs)
    return len(unworded) >= _MIN_UNWORDED and _random(unworded)


def _hex_key(run: str) -> bool:
    return len(run) >= _MIN_HEX_RUN and _HEX.fullmatch(run) is not None


def _one_case_key(run: str) -> bool:
    """Whether ``run`` is a random key of one case of letters and digits (``sk-`` and 48
    of ``a-z 0-9``, as some OpenAI-compatible servers issue): before, a key needed both
    cases, and such a key went on in the query. Letters and digits interleaved in one
    run of 32 or more, which no word, number or version is (``2024``, ``v2``, ``gpt4o``
    are short, and a slug's words stand between ``-`` and ``_``)."""
    return len(run) >= _MIN_HEX_RUN and len(_DIGIT_GROUPS.findall(run)) >= _MIN_DIGIT_GROUPS


def _random(text: str) -> bool:
    """Whether ``text`` mixes digits with both cases, as a random base62 key does."""
    return bool(_DIGIT.search(text) and _UPPER.search(text) and _LOWER.search(text))


# The same shapes for a matcher outside Python: Envoy's CEL ``matches`` (``envoy_paths``)
# takes RE2 programs of at most 100 instructions each, and a character class repeated 32
# times is past that. So one pattern a shape, each the shape's prefix and its first 16
# characters or fewer: looser than ``kind`` (no length past them, no check of randomness
# after a match), a word such as ``sk-learn-release-notes`` matches too. No lookaround
# (RE2 has none), no backslash (a CEL string would need it doubled).
RE2_SHAPES = (
    "sk-[A-Za-z0-9_-]{16}",
    "(AKIA|ASIA)[A-Z0-9]{16}",
    "AIza[A-Za-z0-9_-]{16}",
    "ya29[.][A-Za-z0-9_-]{16}",
    "gh[pousr]_[A-Za-z0-9]{16}",
    "github_pat_[A-Za-z0-9_]{16}",
    "xox[baprs]-[A-Za-z0-9-]{10}",
    "aigw-[A-Za-z0-9_-]{16}",
    "eyJ[A-Za-z0-9_-]{5}[A-Za-z0-9_-]*[.][A-Za-z0-9_-]{5}",
)
