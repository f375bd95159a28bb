"""A chat completion asking for ``n`` choices: the provider generates, and bills, ``n``
completions of up to the allowance each, so the quota reserves ``n`` times the
allowance and a hard cap shares the room it leaves between them (docs/quotas.md).

Without that, a hard cap that left room for 300 tokens let ``n: 4`` generate 1,200.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.quota.estimate import estimate_prompt_tokens
from extproc.quota.store import QuotaStore
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.quota_helpers import capped, used_tokens
from tests.unit.test_completions_api import AUTH, error_of
from tests.unit.test_guard_flow import upstream_body

CHAT = "/v1/chat/completions"


def chat(**fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


async def test_the_reservation_is_the_allowance_times_n(quota_store: QuotaStore) -> None:
    body = chat(n=3, max_completion_tokens=50)
    prompt = estimate_prompt_tokens(orjson.loads(body))
    processor, _ = capped(quota_store, 100_000)
    await run_stream(processor, [request_headers(CHAT, headers=AUTH), request_body(body)])
    # The request never ended: its reservation is still held whole.
    assert await used_tokens(quota_store, 100_000) == prompt + 3 * 50


async def test_a_hard_cap_shares_the_room_left_between_the_choices(
    quota_store: QuotaStore,
) -> None:
    body = chat(n=4, max_completion_tokens=5000)
    prompt = estimate_prompt_tokens(orjson.loads(body))
    processor, _ = capped(quota_store, prompt + 300)
    answers = await run_stream(processor, [request_headers(CHAT, headers=AUTH), request_body(body)])
    # Four choices of 75 tokens fit in the 300 left.
    assert upstream_body(answers[1])["max_completion_tokens"] == 75


@pytest.mark.parametrize("n", [0, -1, 129, 2.5, "2", True])
async def test_an_n_the_gateway_cannot_reserve_for_is_a_400(
    quota_store: QuotaStore, n: Any
) -> None:
    processor, _ = capped(quota_store, 100_000)
    answers = await run_stream(
        processor, [request_headers(CHAT, headers=AUTH), request_body(chat(n=n))]
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["param"] == "n"
    assert await used_tokens(quota_store, 100_000) == 0
