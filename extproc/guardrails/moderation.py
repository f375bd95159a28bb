"""OpenAI's moderation endpoint as a request guard.

One ``POST {base_url}/moderations`` per request, with the texts of the
configured roles as ``input`` (an array: one result per text). A category is
violated when its score reaches its threshold; a category without one is
violated when ``default_threshold`` is set and reached, else when the
provider flags it. The refusal names the violated categories, never the text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from extproc.config.guard_model import ModerationConfig
from extproc.guardrails.webhook import SessionHolder

MAX_ANSWER_BYTES = 4 << 20


class ModerationError(Exception):
    """No usable verdict (error status, bad answer, timeout); the message names why."""


class ModerationClient:
    def __init__(self, config: ModerationConfig, session: SessionHolder) -> None:
        self.config = config
        self._session = session
        self._url = config.base_url + "/moderations"
        self._timeout = config.timeout_ms / 1000.0
        key = config.api_key.get_secret_value() if config.api_key is not None else ""
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
        self.roles = frozenset(config.roles)

    async def violations(self, texts: list[str]) -> list[str]:
        """The categories the texts violate (sorted, deduplicated); empty when they pass."""
        if not texts:
            return []
        payload = orjson.dumps({"model": self.config.model, "input": texts})
        session = self._session.get()
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(self._url, data=payload, headers=self._headers) as reply:
                    if reply.status != 200:
                        raise ModerationError(f"answered HTTP {reply.status}")
                    if (reply.content_length or 0) > MAX_ANSWER_BYTES:
                        raise ModerationError("answer too large")
                    raw = await reply.read()
        except TimeoutError:
            raise ModerationError(f"no answer within {self.config.timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise ModerationError(f"unreachable ({type(exc).__name__})") from None
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
