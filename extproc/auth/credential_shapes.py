"""Credentials recognised by their shape: the well-known prefixes of API keys and tokens.

A query parameter's name need not say it carries a secret (``?x=sk-...``), and the query
goes on to the provider with the rest of the URL, into its logs. The gateway cannot know
every secret, but the common ones announce themselves: each kind here has a fixed prefix,
a fixed alphabet and a length no word reaches, so a parameter a client means as data
(an API version, ``alt=sse``, a cursor, a model name, an item id) is none of them.

``kind`` names what a text holds, never the text: the caller's error names the kind and
the parameter, and the value goes nowhere.
"""

from __future__ import annotations

import re

# One alternation, searched once per text; each group names its kind. A credential stands
# apart: no letter or digit touches either end (``task-...`` holds no ``sk-`` key).
_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    # OpenAI's (sk-, sk-proj-, sk-svcacct-) and Anthropic's (sk-ant-api03-...) keys: 48 or
    # more random characters after the prefix; 32 is a floor no hyphenated slug needs.
    r"(?P<sk>sk-[A-Za-z0-9_-]{32,})"
    r"|(?P<aws>(?:AKIA|ASIA)[A-Z0-9]{16})"  # an AWS access key id (long-term, temporary)
    r"|(?P<google>AIza[A-Za-z0-9_-]{35})"  # a Google API key
    r"|(?P<google_token>ya29\.[A-Za-z0-9_-]{20,})"  # a Google OAuth2 access token
    r"|(?P<github>(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}))"
    r"|(?P<slack>xox[baprs]-[A-Za-z0-9-]{10,})"  # a Slack token
    # A JWT: three base64url parts, the first a JSON header ("eyJ" is '{"' encoded).
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
    r")(?![A-Za-z0-9])"
)
_KINDS = {
    "sk": "an OpenAI or Anthropic API key",
    "aws": "an AWS access key id",
    "google": "a Google API key",
    "google_token": "a Google access token",
    "github": "a GitHub token",
    "slack": "a Slack token",
    "jwt": "a JSON Web Token",
}
_DIGIT = re.compile(r"[0-9]")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")


def kind(text: str) -> str | None:
    """What credential ``text`` holds (``"a GitHub token"``), None when it holds none."""
    for found in _SHAPES.finditer(text):
        group = found.lastgroup
        assert group is not None
        value = found.group()
        if group == "sk" and not _random(value[3:]):
            continue  # words joined by hyphens ("sk-learn-...") are no key
        if group == "slack" and _DIGIT.search(value) is None:
            continue  # a Slack token carries its team's and user's numbers
        return _KINDS[group]
    return None


def _random(text: str) -> bool:
    """Whether ``text`` mixes digits with both cases, as a random key does: fewer than one
    in 4000 keys of 48 random characters (the shortest, OpenAI's older ones) lack a digit,
    and the longer ones never do; a slug of words lacks digits or capitals."""
    return bool(_DIGIT.search(text) and _UPPER.search(text) and _LOWER.search(text))
