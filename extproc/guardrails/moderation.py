"""OpenAI's moderation endpoint as a request guard.

One ``POST {base_url}/moderations`` per request, with the texts of the
configured roles as ``input`` (an array: one result per text). A category is
violated when its score reaches its threshold; a category without one is
violated when ``default_threshold`` is set and reached, else when the
provider flags it. The refusal names the violated categories, never the text.

A 429 is the service's own rate limit: the error carries when it says to retry
(``retry-after-ms`` or ``retry-after``, seconds or an HTTP date), so a guard that
fails closed can tell the client the same. ``retry_after_seconds`` reads those
headers for guardrail webhooks too: one parser for every guard service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from extproc.config.guard_model import ModerationConfig

if TYPE_CHECKING:
    # Only a type here: the webhook module imports this one's retry-after parser.
    from extproc.guardrails.webhook import SessionHolder

MAX_ANSWER_BYTES = 4 << 20
# How much of a 429's body is read to tell a spent account from a rate limit: OpenAI's
# error object is a few hundred bytes.
MAX_ERROR_BYTES = 16 << 10
# When a rate-limited service does not say when to retry: a short wait, as the SDKs'
# own backoff would make, rather than no hint at all.
DEFAULT_RETRY_AFTER_S = 1
# A value past a day is a broken header, not a plan.
MAX_RETRY_AFTER_S = 86_400


class ModerationError(Exception):
    """No usable verdict (error status, a redirect, bad answer, timeout); the message
    names why.

    ``retry_after`` (whole seconds) is set when the service refused for its own rate
    limit (HTTP 429), and None otherwise.
    """

    def __init__(self, why: str, *, retry_after: int | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class ModerationClient:
    def __init__(self, config: ModerationConfig, session: SessionHolder) -> None:
        self.config = config
        self._session = session
        self._url = config.base_url + "/moderations"
        self._timeout = config.timeout_ms / 1000.0
        # Stripped as a key file's is: a key from an environment variable (a Secret written
        # with `echo`) may end in a newline, which no header can carry.
        key = config.api_key.get_secret_value().strip() if config.api_key is not None else ""
        if not key and config.api_key_file:
            try:
                key = Path(config.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"moderation {config.name}: cannot read api_key_file: {exc.strerror}"
                ) from None
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        roles = frozenset(config.roles)
        # OpenAI's `developer` message is the system prompt of its newer models, and the
        # translators send it as one: moderating `system` and not it let a client move
        # any text past the guard by naming its message so.
        self.roles = roles | {"developer"} if "system" in roles else roles

    async def violations(self, texts: list[str]) -> list[str]:
        """The categories the texts violate (sorted, deduplicated); empty when they pass."""
        if not texts:
            return []
        payload = orjson.dumps({"model": self.config.model, "input": texts})
        session = self._session.get()
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    self._url,
                    data=payload,
                    headers=self._headers,
                    # Never followed: a redirect would take the prompt to whatever host
                    # it names (a 307 re-sends the body as it is).
                    allow_redirects=False,
                    **self._session.egress.aiohttp(self._url),
                ) as reply:
                    if reply.status == 429:
                        if _out_of_credit(await read_at_most(reply, MAX_ERROR_BYTES)):
                            # OpenAI's billing refusal: no wait cures it, so it is an
                            # outage (failure_mode decides), never "retry in 1 second".
                            raise ModerationError("answered HTTP 429 insufficient_quota")
                        wait = retry_after_seconds(reply.headers)
                        raise ModerationError("answered HTTP 429", retry_after=wait)
                    if reply.status != 200:
                        raise ModerationError(f"answered HTTP {reply.status}")
                    if (reply.content_length or 0) > MAX_ANSWER_BYTES:
                        raise ModerationError("answer too large")
                    # Read with the bound too: a chunked answer announces no length.
                    raw = await read_at_most(reply, MAX_ANSWER_BYTES + 1)
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise ModerationError("answer too large")
        except TimeoutError:
            raise ModerationError(f"no answer within {self.config.timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise ModerationError(f"unreachable ({type(exc).__name__})") from None
        except ValueError:
            # aiohttp refuses a header it cannot send (a control character in the key):
            # a failed call, decided by failure_mode, never the client's 500. Its message
            # is not repeated: it may quote the header.
            raise ModerationError("request could not be sent (a header is not valid)") from None
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ModerationError("answer is not JSON") from None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(texts):
            raise ModerationError("answer does not hold one result per input")
        found: set[str] = set()
        for result in results:
            found.update(self._violated(result))
        return sorted(found)

    def _violated(self, result: Any) -> list[str]:
        if not isinstance(result, dict):
            raise ModerationError("a result is not an object")
        scores = result.get("category_scores")
        flags = result.get("categories")
        scores = scores if isinstance(scores, dict) else {}
        flags = flags if isinstance(flags, dict) else {}
        thresholds = self.config.thresholds
        default = self.config.default_threshold
        violated: list[str] = []
        for category in {*scores, *flags}:
            score = scores.get(category)
            threshold = thresholds.get(category, default)
            if threshold is not None and isinstance(score, int | float):
                if score >= threshold:
                    violated.append(category)
            elif threshold is None and flags.get(category) is True:
                violated.append(category)
        return violated


async def read_at_most(reply: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of an answer's body, however its chunks arrive."""
    parts: list[bytes] = []
    size = 0
    async for chunk in reply.content.iter_chunked(limit):
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _out_of_credit(raw: bytes) -> bool:
    """Whether a 429's body is OpenAI's ``insufficient_quota`` (the account's credit or
    monthly budget spent) rather than a rate limit that passes in seconds."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and error.get("code") == "insufficient_quota"


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> int:
    """When a rate-limited service says to retry, in whole seconds (1 to a day).

    OpenAI's finer ``retry-after-ms`` first, then ``retry-after`` as seconds or as an
    HTTP date; rounded up, since retrying a little early only earns another 429.
    """
    wait = _number(headers.get("retry-after-ms"))
    if wait is not None:
        wait /= 1000.0
    else:
        value = headers.get("retry-after")
        wait = _number(value)
        if wait is None:
            wait = _until(value, now or datetime.now(UTC))
    if wait is None:
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait)))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _until(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()
