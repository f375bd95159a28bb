"""The gateway's rate-limit headers under Anthropic's names, for Anthropic's clients.

The quota stage writes its limits as OpenAI's ``x-ratelimit-*`` for every client. The
anthropic SDKs and Claude Code read Anthropic's ``anthropic-ratelimit-*`` instead, so
the requests of Anthropic Messages API clients get the same limits under those names
too: ``limit`` and ``remaining`` as they are, ``reset`` as the RFC 3339 time (UTC, whole
seconds) Anthropic writes where OpenAI writes a duration. Derived from the OpenAI
headers, so both always describe the same limits; only Anthropic-shaped requests pay for
it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

# OpenAI's reset durations as the quota stage writes them (quota.openai_duration).
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s")


def anthropic_rate_limit_headers(openai: Mapping[str, str], now: float) -> dict[str, str]:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` for the limits
    in ``openai`` (its ``x-ratelimit-*``), a reset ``now`` plus its duration."""
    headers: dict[str, str] = {}
    for unit in ("requests", "tokens"):
        limit = openai.get(f"x-ratelimit-limit-{unit}")
        if limit is None:
            continue
        headers[f"anthropic-ratelimit-{unit}-limit"] = limit
        headers[f"anthropic-ratelimit-{unit}-remaining"] = openai[f"x-ratelimit-remaining-{unit}"]
        reset = openai.get(f"x-ratelimit-reset-{unit}")
        if reset is not None:  # none for a lifetime quota, which never resets
            headers[f"anthropic-ratelimit-{unit}-reset"] = rfc3339(now + _seconds(reset))
    return headers


def _seconds(duration: str) -> int:
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"not a reset duration: {duration!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def rfc3339(at: float) -> str:
    """``at`` (epoch seconds) as Anthropic writes a reset: ``2026-12-06T23:41:00Z``.

    Rounded down: the durations are whole seconds rounded up from the window's end, so
    ``now`` plus one lands within a second after that end, and the floor is the end."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(at)))
