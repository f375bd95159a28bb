"""OpenAI's moderation endpoint as a request guard.

One ``POST {base_url}/moderations`` per request, with the texts of the
configured roles as ``input`` (an array: one result per text). Where the guard
reads images (``ModerationConfig.reads_images``), one more call per image, its
``input`` one ``image_url`` item: OpenAI's omni models take one image per call
(two are refused, ``too_many_images``), and the calls run side by side. A category is
violated when its score reaches its threshold; a category without one is
violated when ``default_threshold`` is set and reached, else when the
provider flags it. A category the result says it applied to no input
(``category_applied_input_types``, an empty list: a text-only category of an
image) is not read. The refusal names the violated categories, never the text.

An answer of 400, 413 or 422 is the service refusing this input (too long, an image
it cannot fetch or read): the same request would meet the same refusal, so the error
says so (``input_refused``) and the client is not told to retry.

A 429 is the service's own rate limit: the error carries when it says to retry
(``retry-after-ms`` or ``retry-after``, seconds or an HTTP date), so a guard that
fails closed can tell the client the same. ``retry_after_seconds`` reads those
headers for guardrail webhooks too: one parser for every guard service.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from extproc.config.guard_model import ModerationConfig
from extproc.guardrails.http_session import SessionsClosedError

if TYPE_CHECKING:
    from extproc.guardrails.http_session import SessionHolder

MAX_ANSWER_BYTES = 4 << 20
# How much of an error's body is read for its code (a 429's tells a spent account from a
# rate limit, a 400's what was refused): OpenAI's error object is a few hundred bytes.
MAX_ERROR_BYTES = 16 << 10
# When a rate-limited service does not say when to retry: a short wait, as the SDKs'
# own backoff would make, rather than no hint at all.
DEFAULT_RETRY_AFTER_S = 1
# A value past a day is a broken header, not a plan.
MAX_RETRY_AFTER_S = 86_400
# How many calls of one request (its texts', its images') wait on the service at once.
MAX_CONCURRENT_CALLS = 4
# The statuses by which a service refuses the input itself, not its own state.
INPUT_REFUSED = frozenset({400, 413, 422})
# Error codes of such a status that say the guard's config is wrong, not the input.
_CONFIG_CODES = frozenset({"model_not_found", "invalid_api_key"})
# Why a call failed that the phase's deadline ended (``violations``), as the stage says of
# every guard call it ends so.
OUT_OF_TIME = "no answer before Envoy's wait for the gateway (envoy.message_timeout_ms) ran out"
# A code is quoted only when it is a short identifier (never the service's message,
# which may quote the input).
_CODE = re.compile(r"^[a-z0-9_.-]{1,64}$")


class ModerationError(Exception):
    """No usable verdict (error status, a redirect, bad answer, timeout); the message
    names why.

    ``retry_after`` (whole seconds) is set when the service refused for its own rate
    limit (HTTP 429), and None otherwise. ``input_refused`` is set when the service
    refused the input itself (its 400, 413 or 422): what it said, for the client
    (``HTTP 400``, with the service's error code when it gave one).
    """

    def __init__(
        self, why: str, *, retry_after: int | None = None, input_refused: str | None = None
    ) -> None:
        super().__init__(why)
        self.retry_after = retry_after
        self.input_refused = input_refused


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

    async def violations(
        self, texts: list[str], images: tuple[str, ...] = (), deadline: float | None = None
    ) -> list[str]:
        """The categories the texts and images violate (sorted, deduplicated, an image's
        marked so); empty when they pass. ``images``: URLs or data URLs, one call each.
        ``deadline`` (the event loop's clock): when every call must have answered, if
        sooner than the guard's own timeout (what is left of Envoy's wait for the phase);
        a call still running then fails as one past its timeout, and the others' verdicts
        stand (else the wait's end, cutting them all, let a flagged text through a guard
        failing open beside an image the service was slow to fetch)."""
        calls: list[tuple[list[Any], str]] = []
        if texts:
            calls.append((list(texts), ""))
        calls += [([{"type": "image_url", "image_url": {"url": url}}], IMAGE) for url in images]
        if not calls:
            return []
        if len(calls) == 1:
            return _named([await self._results(*calls[0], deadline)])
        results, failed = await self._side_by_side(calls, deadline)
        named = _named(results)
        if failed and not named:
            # Part of the request could not be checked, and the rest passed.
            raise _first_error(failed)
        return named

    async def _side_by_side(
        self, calls: list[tuple[list[Any], str]], deadline: float | None
    ) -> tuple[list[_Found], list[ModerationError]]:
        """Each call's findings, and the errors of the calls that failed: a failed call
        (an input refused, an error status, no answer in time) does not stop the others,
        whose verdict stands. Else an image it cannot fetch, or one whose URL answers too
        slowly for the service, sent beside a flagged text, had the text let through
        unread wherever the guard fails open, and refused as an outage where it fails
        closed, the client never told why."""
        limit = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        failed: list[ModerationError] = []

        async def one(inputs: list[Any], kind: str) -> _Found:
            async with limit:
                try:
                    return await self._results(inputs, kind, deadline)
                except ModerationError as exc:
                    failed.append(exc)
                    return set(), kind

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(*call)) for call in calls]
        return [task.result() for task in tasks], failed

    async def _results(self, inputs: list[Any], kind: str, deadline: float | None) -> _Found:
        """One call: the categories each of its results violates, with ``kind``."""
        payload = orjson.dumps({"model": self.config.model, "input": inputs})
        # A list of texts gets one result each; a list of items (an image) one in all.
        expected = 1 if kind == IMAGE else len(inputs)
        try:
            session = self._session.get()
        except SessionsClosedError as exc:
            raise ModerationError(str(exc)) from None
        own = asyncio.get_running_loop().time() + self._timeout
        ends = own if deadline is None else min(own, deadline)
        try:
            async with asyncio.timeout_at(ends):
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
                        if _error_code(await read_at_most(reply, MAX_ERROR_BYTES)) == (
                            "insufficient_quota"
                        ):
                            # OpenAI's billing refusal: no wait cures it, so it is an
                            # outage (failure_mode decides), never "retry in 1 second".
                            raise ModerationError("answered HTTP 429 insufficient_quota")
                        wait = retry_after_seconds(reply.headers)
                        raise ModerationError("answered HTTP 429", retry_after=wait)
                    if reply.status in INPUT_REFUSED:
                        code = _error_code(await read_at_most(reply, MAX_ERROR_BYTES))
                        raise _refusal(reply.status, code)
                    if reply.status != 200:
                        raise ModerationError(f"answered HTTP {reply.status}")
                    if (reply.content_length or 0) > MAX_ANSWER_BYTES:
                        raise ModerationError("answer too large")
                    # Read with the bound too: a chunked answer announces no length.
                    raw = await read_at_most(reply, MAX_ANSWER_BYTES + 1)
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise ModerationError("answer too large")
        except TimeoutError:
            if ends < own:
                raise ModerationError(OUT_OF_TIME) from None
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
        if not isinstance(results, list) or len(results) != expected:
            raise ModerationError("answer does not hold one result per input")
        found: set[str] = set()
        for result in results:
            found.update(self._violated(result))
        return found, kind

    def _violated(self, result: Any) -> list[str]:
        if not isinstance(result, dict):
            raise ModerationError("a result is not an object")
        scores = result.get("category_scores")
        flags = result.get("categories")
        applied = result.get("category_applied_input_types")
        scores = scores if isinstance(scores, dict) else {}
        flags = flags if isinstance(flags, dict) else {}
        applied = applied if isinstance(applied, dict) else {}
        thresholds = self.config.thresholds
        default = self.config.default_threshold
        violated: list[str] = []
        for category in {*scores, *flags}:
            if applied.get(category) == []:
                # Applied to none of the inputs (a text-only category of an image): its
                # score says nothing, whatever a low threshold would make of it.
                continue
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


# What one call found: the categories violated, and "image" when its input was an image.
_Found = tuple[set[str], str]
IMAGE = "image"


def _named(results: list[_Found]) -> list[str]:
    """The categories violated, sorted; one that only images violated is named so, so
    the client knows which part of its request was refused."""
    by_text = {category for found, kind in results if kind != IMAGE for category in found}
    by_image = {category for found, kind in results if kind == IMAGE for category in found}
    named = by_text | {f"{category} (in an image)" for category in by_image - by_text}
    return sorted(named)


def _error_code(raw: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-shaped error body (``insufficient_quota`` in a 429
    is a spent account's credit, not a rate limit that passes in seconds)."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _refusal(status: int, code: str | None) -> ModerationError:
    """A 400, 413 or 422: the input refused, unless its code says the guard's own config
    is wrong (a model the service does not have), which is an outage of the guard."""
    said = f"HTTP {status}" + (f" {code}" if code is not None and _CODE.match(code) else "")
    if code in _CONFIG_CODES:
        return ModerationError(f"answered {said}")
    return ModerationError(f"refused the input ({said})", input_refused=said)


def _first_error(failed: list[ModerationError]) -> ModerationError:
    """The error to report of several calls': a rate limit (its wait) first, then an
    outage (the operator's to mend, which the client's changes would not cure), then an
    input the service refused."""
    limited = [exc for exc in failed if exc.retry_after is not None]
    outages = [exc for exc in failed if exc.input_refused is None]
    return (limited or outages or failed)[0]


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
