"""Fuzzing what guardrail services answer: webhook verdicts and moderation results.

A webhook or a moderation endpoint is outside input like a provider: any
status, any bytes, any JSON. Each is served by a real HTTP server on loopback
and read by the gateway's own client; the property: a usable verdict, or the
client's own error (which the guard's failure mode then decides on), never
anything else.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import ModerationConfig, WebhookConfig
from extproc.guardrails.moderation import ModerationClient, ModerationError
from extproc.guardrails.webhook import SessionHolder, WebhookClient, WebhookError

# Hypothesis's default number of examples a test; FUZZ_EXAMPLES asks for more, for a
# longer search by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=16,
)
verdict_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.fixed_dictionaries(
            {},
            optional={
                "reason": json_values,
                "status_code": st.integers(100, 599) | json_values,
                "body": st.text(max_size=20)
                | st.fixed_dictionaries(
                    {},
                    optional={
                        "messages": st.lists(
                            st.fixed_dictionaries({}, optional={"content": json_values}),
                            max_size=3,
                        ),
                        "choices": st.lists(
                            st.fixed_dictionaries(
                                {},
                                optional={
                                    "message": st.fixed_dictionaries(
                                        {}, optional={"content": json_values}
                                    )
                                },
                            ),
                            max_size=3,
                        ),
                    },
                )
                | json_values,
            },
        )
        | json_values
    },
)
moderation_like = st.fixed_dictionaries(
    {},
    optional={
        "results": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "flagged": json_values,
                    "categories": st.dictionaries(
                        st.sampled_from(["hate", "violence", "sexual"]) | st.text(max_size=6),
                        st.booleans() | json_values,
                        max_size=3,
                    ),
                    "category_scores": st.dictionaries(
                        st.sampled_from(["hate", "violence", "sexual"]) | st.text(max_size=6),
                        st.floats(0, 1) | json_values,
                        max_size=3,
                    ),
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values
    },
)


def answers(shaped: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[int, bytes]]:
    body = shaped.map(orjson.dumps) | json_values.map(orjson.dumps) | st.binary(max_size=100)
    return st.tuples(st.sampled_from([200, 200, 200, 500, 404, 429]), body)


class Upstream:
    """One HTTP server on loopback whose next answer each example sets."""

    status = 200
    body = b"{}"
    url = ""

    async def handle(self, _: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[SessionHolder]:
    holder = SessionHolder()
    yield holder
    await holder.close()


@FUZZ
@given(
    answer=answers(verdict_like),
    count=st.integers(1, 3),
    phase=st.sampled_from(["request", "response"]),
)
async def test_any_webhook_answer_is_a_verdict_or_a_webhook_error(
    upstream: Upstream, session: SessionHolder, answer: tuple[int, bytes], count: int, phase: str
) -> None:
    upstream.status, upstream.body = answer
    port = int(upstream.url.rsplit(":", 1)[1])
    client = WebhookClient(WebhookConfig(name="hook", host="127.0.0.1", port=port), session)
    try:
        if phase == "request":
            verdict = await client.check_request([{"role": "user", "content": "x"}] * count, {})
        else:
            verdict = await client.check_response(["x"] * count, {})
    except WebhookError as refused:
        assert str(refused)
    else:
        assert verdict.action in {"pass", "mask", "reject"}
        if verdict.action == "mask":
            assert verdict.contents is not None and len(verdict.contents) == count


@FUZZ
@given(
    answer=answers(moderation_like),
    count=st.integers(1, 3),
    thresholds=st.dictionaries(st.sampled_from(["hate", "violence"]), st.floats(0, 1), max_size=2),
)
async def test_any_moderation_answer_is_a_list_of_violations_or_a_moderation_error(
    upstream: Upstream,
    session: SessionHolder,
    answer: tuple[int, bytes],
    count: int,
    thresholds: dict[str, float],
) -> None:
    upstream.status, upstream.body = answer
    config = ModerationConfig(name="mod", base_url=upstream.url, thresholds=thresholds)
    try:
        violated = await ModerationClient(config, session).violations(["text"] * count)
    except ModerationError as refused:
        assert str(refused)
    else:
        assert violated == sorted(set(violated))
        assert all(isinstance(category, str) for category in violated)
