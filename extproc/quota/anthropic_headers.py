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
from functools import lru_cache

# OpenAI's reset durations as the quota stage writes them (quota.openai_duration).
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s")


# Each unit's OpenAI names and Anthropic's, spelt once rather than on every request.
_NAMES = tuple(
    (
        tuple(f"x-ratelimit-{part}-{unit}" for part in ("limit", "remaining", "reset")),
        tuple(f"anthropic-ratelimit-{unit}-{part}" for part in ("limit", "remaining", "reset")),
    )
    for unit in ("requests", "tokens")
)


def anthropic_rate_limit_headers(openai: Mapping[str, str], now: float) -> dict[str, str]:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` for the limits
    in ``openai`` (its ``x-ratelimit-*``), a reset ``now`` plus its duration."""
    headers: dict[str, str] = {}
    for (limit_name, remaining_name, reset_name), (limit, remaining, reset) in _NAMES:
        value = openai.get(limit_name)
        if value is None:
            continue
        headers[limit] = value
        headers[remaining] = openai[remaining_name]
        duration = openai.get(reset_name)
        if duration is not None:  # none for a lifetime quota, which never resets
            headers[reset] = _utc_text(int(now + _seconds(duration)))
    return headers


# Cached: the requests of one window all name its end, and the durations repeat within
# each second, so a busy gateway formats each once, not on every Anthropic request.
@lru_cache(maxsize=256)
def _seconds(duration: str) -> int:
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"not a reset duration: {duration!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@lru_cache(maxsize=256)
def _utc_text(at: int) -> str:
    """``at`` (epoch seconds) as Anthropic writes a reset: ``2026-12-06T23:41:00Z``.

    Rounded down by the caller: the durations are whole seconds rounded up from the
    window's end, so ``now`` plus one lands within a second after that end, and the
    floor is the end."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
