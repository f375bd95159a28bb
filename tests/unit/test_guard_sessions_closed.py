"""A guard call on a runtime whose clients are closed makes no call and opens nothing.

A reload retires the runtime a long stream started on; an hour later (or when the
process stops) its clients are closed while the stream may still run. Its webhook and
moderation calls then fail as a service that cannot be reached fails (the policy's
failure mode decides), as the runtime promises. Before, the shared session holder
opened a new aiohttp session for them, which nothing ever closed.
"""

from __future__ import annotations

import pytest

from extproc.config.guard_model import ModerationConfig
from extproc.guardrails.moderation import ModerationClient, ModerationError
from extproc.guardrails.webhook import SessionHolder, WebhookClient, WebhookError
from tests.unit.test_egress_proxy import upstream, webhook_at

__all__ = ["upstream"]  # a webhook and moderation service on loopback (a fixture)

CLOSED = "not called: the config this request started on was replaced and its clients are closed"


async def test_calls_after_the_clients_closed_fail_without_opening_a_session(
    upstream: tuple[str, list[str]],
) -> None:
    base_url, seen = upstream
    session = SessionHolder()
    webhook = WebhookClient(webhook_at(base_url), session)
    moderation = ModerationClient(ModerationConfig(name="m", base_url=base_url), session)
    prompt = [{"role": "user", "content": "hi"}]
    assert (await webhook.check_request(prompt, {})).action == "pass"
    assert await moderation.violations(["hi"]) is not None
    calls = len(seen)

    await session.close()

    with pytest.raises(WebhookError, match=CLOSED):
        await webhook.check_request(prompt, {})
    with pytest.raises(ModerationError, match=CLOSED):
        await moderation.violations(["hi"])
    assert len(seen) == calls  # nothing reached the services
    assert session._session is None  # and no session was opened for them
