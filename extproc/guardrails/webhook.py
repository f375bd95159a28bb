"""Guardrail webhooks, speaking kgateway's guardrail webhook API.

``POST /request`` gets ``{"body": {"messages": [{"role", "content"}, ...]}}``
(one entry per text slot of the request, in order); ``POST /response`` gets
``{"body": {"choices": [{"message": {"role", "content"}}, ...]}}``. The answer
is ``{"action": ...}`` where the action is told apart by its ``body``, as the
API has no tag:

- ``RejectAction``: ``body`` (a string) and ``status_code``: refuse with them;
- ``MaskAction``: ``body`` holding ``messages`` (or ``choices``), exactly as
  many as were sent: use their contents instead;
- ``PassAction``: nothing but an optional ``reason``.

Anything else the webhook does (an error status, a redirect, which is never
followed, an answer of none of these
shapes, a MaskAction with another count, a timeout, a refused connection) is a
``WebhookError``, which the guard turns into its ``failure_mode``. A 400, 413 or 422
is the webhook refusing what it was sent (too large, a shape it does not take), as a
moderation service's is: the error says so (``input_refused``, the status alone: the
webhook's body may quote the text), and a guard failing closed tells the client not to
retry (a request's 400, an answer's 502: the stage's ``_refused_input`` and
``_refused_answer``). A 429 is the webhook's own rate limit: its error carries when
the webhook says to retry (read by the moderation client's parser), so a guard that
fails closed tells the client the same. A MaskAction replaces text only: the roles the
gateway sent stay (a webhook cannot turn a client's message into a system prompt).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from extproc.config.guard_model import WebhookConfig
from extproc.guardrails.http_session import SessionHolder as SessionHolder
from extproc.guardrails.http_session import SessionsClosedError
from extproc.guardrails.moderation import INPUT_REFUSED, read_at_most, retry_after_seconds

# Verdicts are small; a runaway answer is a broken webhook.
MAX_ANSWER_BYTES = 4 << 20


class WebhookError(Exception):
    """The webhook could not give a usable verdict; the message names why, never content.

    ``retry_after`` (whole seconds) is set when the webhook refused for its own rate
    limit (HTTP 429), and None otherwise. ``input_refused`` is set when it refused what
    it was sent (its 400, 413 or 422): its status (``HTTP 413``), for the client.
    """

    def __init__(
        self, why: str, *, retry_after: int | None = None, input_refused: str | None = None
    ) -> None:
        super().__init__(why)
        self.retry_after = retry_after
        self.input_refused = input_refused


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "pass", "mask" or "reject"
    contents: list[str] | None = None  # mask: the new text of each slot, in order
    body: str = ""  # reject
    status: int = 0  # reject
    reason: str | None = None


class WebhookClient:
    """Calls one configured webhook; the HTTP session is shared by the gateway's guards."""

    def __init__(self, config: WebhookConfig, session: SessionHolder) -> None:
        self.config = config
        self._session = session
        self._timeout = config.timeout_ms / 1000.0
        self._request_url = config.base_url + config.request_path
        self._response_url = config.base_url + config.response_path
        self._static_headers = {
            name: value.get_secret_value() for name, value in config.headers.items()
        }
        self._exact = frozenset(name for name in config.forward_headers if not name.endswith("*"))
        self._prefixes = tuple(name[:-1] for name in config.forward_headers if name.endswith("*"))

    def headers_for(self, request_headers: dict[str, str]) -> dict[str, str]:
        """The client's headers this webhook is configured to see, plus its own."""
        chosen = {
            name: value
            for name, value in request_headers.items()
            if not name.startswith(":")
            and (name in self._exact or (self._prefixes and name.startswith(self._prefixes)))
        }
        chosen.update(self._static_headers)
        chosen["content-type"] = "application/json"
        return chosen

    async def check_request(
        self, messages: list[dict[str, str]], headers: dict[str, str]
    ) -> Verdict:
        answer = await self._post(self._request_url, {"body": {"messages": messages}}, headers)
        return _verdict(answer, "messages", len(messages))

    async def check_response(self, contents: list[str], headers: dict[str, str]) -> Verdict:
        choices = [{"message": {"role": "assistant", "content": text}} for text in contents]
        answer = await self._post(self._response_url, {"body": {"choices": choices}}, headers)
        return _verdict(answer, "choices", len(choices))

    async def _post(self, url: str, payload: dict[str, Any], headers: dict[str, str]) -> Any:
        try:
            session = self._session.get()
        except SessionsClosedError as exc:
            raise WebhookError(str(exc)) from None
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    url,
                    data=orjson.dumps(payload),
                    headers=headers,
                    # A redirect would take the prompt and the webhook's own token to
                    # whatever host it names: it is an answer like any other non-200.
                    allow_redirects=False,
                    **self._session.egress.aiohttp(url),
                ) as reply:
                    if reply.status == 429:
                        wait = retry_after_seconds(reply.headers)
                        raise WebhookError("answered HTTP 429", retry_after=wait)
                    if reply.status in INPUT_REFUSED:
                        said = f"HTTP {reply.status}"
                        raise WebhookError(f"refused the input ({said})", input_refused=said)
                    if reply.status != 200:
                        raise WebhookError(f"answered HTTP {reply.status}")
                    if (reply.content_length or 0) > MAX_ANSWER_BYTES:
                        raise WebhookError("answer too large")
                    # Bounded as it is read: a chunked answer announces no length.
                    raw = await read_at_most(reply, MAX_ANSWER_BYTES + 1)
        except TimeoutError:
            raise WebhookError(f"no answer within {self.config.timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise WebhookError(f"unreachable ({type(exc).__name__})") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise WebhookError("answer too large")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise WebhookError("answer is not JSON") from None


def _verdict(answer: Any, items: str, count: int) -> Verdict:
    """The action of a webhook's answer, told apart by its ``body`` as the API has no tag.

    A field set to null (or a zero status) counts as absent: webhooks that answer with
    one struct for every action send the fields an action does not use that way.
    """
    action = answer.get("action") if isinstance(answer, dict) else None
    if not isinstance(action, dict):
        raise WebhookError("answer has no action object")
    reason = action.get("reason")
    reason = reason if isinstance(reason, str) else None
    body = action.get("body")
    if isinstance(body, str):
        return _reject(action.get("status_code"), body, reason)
    if isinstance(body, dict):
        return _mask(body, items, count, reason)
    if body is not None:
        raise WebhookError("action body is neither a message nor masked contents")
    # A PassAction has nothing else: an action of another shape (another API's verdict,
    # a RejectAction without its body) is no verdict, and must not pass a fail_closed guard.
    if any(value not in (None, 0) for key, value in action.items() if key != "reason"):
        raise WebhookError("answer is no PassAction, MaskAction or RejectAction")
    return Verdict("pass", reason=reason)


def _reject(status: Any, body: str, reason: str | None) -> Verdict:
    if not isinstance(status, int) or isinstance(status, bool):
        raise WebhookError("RejectAction needs an integer status_code")
    return Verdict("reject", body=body, status=status, reason=reason)


def _mask(body: dict[str, Any], items: str, count: int, reason: str | None) -> Verdict:
    listed = body.get(items)
    if not isinstance(listed, list) or len(listed) != count:
        raise WebhookError(f"MaskAction must return exactly {count} {items}")
    contents: list[str] = []
    for entry in listed:
        if items == "choices":
            entry = entry.get("message") if isinstance(entry, dict) else None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str):
            raise WebhookError(f"MaskAction {items} need string contents")
        contents.append(content)
    return Verdict("mask", contents=contents, reason=reason)
