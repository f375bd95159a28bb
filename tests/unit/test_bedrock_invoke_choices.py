"""InvokeModel bodies that ask for several answers to one prompt: Cohere Command's
``num_generations`` (up to 5) and AI21 Jamba's ``n`` (up to 16). The model generates,
and Bedrock bills, each answer up to the allowance: the quota reserves the allowance
that many times, and a hard cap shares the room between them, as for a chat
completion's ``n`` (docs/quotas.md).

Before, such a body reserved one answer's allowance: a Cohere Command call asking for
five generations of 200 tokens held 200 tokens of a hard-capped budget and could use
1,000, and Jamba's allowance was not read at all (``quotas.default_max_tokens``, which
a hard cap could not write).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.bedrock_invoke_bodies import estimate_prompt_tokens
from extproc.quota.store import QuotaStore
from tests.unit.quota_helpers import used_tokens
from tests.unit.test_bedrock_invoke_allowances import ASK, OPENAI_MESSAGES, invoke, sent

COMMAND = "cohere.command-text-v14"
JAMBA = "ai21.jamba-1-5-large-v1:0"
# (model id, a body asking for 3 answers of 200 tokens each)
SEVERAL: list[tuple[str, dict[str, Any]]] = [
    (COMMAND, {"prompt": ASK, "max_tokens": 200, "num_generations": 3}),
    ("us.cohere.command-light-text-v14", {"prompt": ASK, "max_tokens": 200, "num_generations": 3}),
    (JAMBA, {"messages": OPENAI_MESSAGES, "max_tokens": 200, "n": 3}),
]


@pytest.mark.parametrize(("model", "body"), SEVERAL)
async def test_each_answer_asked_for_is_reserved(
    quota_store: QuotaStore, model: str, body: dict[str, Any]
) -> None:
    assert sent(await invoke(quota_store, 100_000, model, orjson.dumps(body))) is None
    assert await used_tokens(quota_store, 100_000) == estimate_prompt_tokens(body) + 3 * 200


@pytest.mark.parametrize(("model", "body"), SEVERAL)
async def test_a_hard_cap_shares_the_room_between_the_answers(
    quota_store: QuotaStore, model: str, body: dict[str, Any]
) -> None:
    budget = estimate_prompt_tokens(body) + 300

    capped = sent(await invoke(quota_store, budget, model, orjson.dumps(body)))

    assert capped == {**body, "max_tokens": 100}  # 3 answers of 100 fill the 300 left


async def test_several_answers_of_the_models_own_default_are_reserved_and_capped(
    quota_store: QuotaStore,
) -> None:
    """Cohere Command answers 20 tokens when the body names no limit: five such."""
    body = {"prompt": ASK, "num_generations": 5}
    prompt = estimate_prompt_tokens(body)
    assert sent(await invoke(quota_store, 100_000, COMMAND, orjson.dumps(body))) is None
    assert await used_tokens(quota_store, 100_000) == prompt + 5 * 20

    # Room for five answers of 12: less than the model's 20 each, so written in.
    budget = (prompt + 100) + prompt + 60
    capped = sent(await invoke(quota_store, budget, COMMAND, orjson.dumps(body)))
    assert capped == {**body, "max_tokens": 12}


@pytest.mark.parametrize("count", [1, 0, "3", True, None])
async def test_a_count_that_asks_for_no_more_than_one_answer_reserves_one(
    quota_store: QuotaStore, count: Any
) -> None:
    """One answer, or a value Bedrock refuses itself: nothing multiplied."""
    body = {"messages": OPENAI_MESSAGES, "max_tokens": 200, "n": count}
    await invoke(quota_store, 100_000, JAMBA, orjson.dumps(body))
    assert await used_tokens(quota_store, 100_000) == estimate_prompt_tokens(body) + 200


async def test_a_jamba_answer_of_no_tokens_is_reserved_as_none_and_never_raised(
    quota_store: QuotaStore,
) -> None:
    """Jamba takes a max_tokens of 0 (its range is 0 to 4,096), as Titan Text does."""
    body = {"messages": OPENAI_MESSAGES, "max_tokens": 0}
    prompt = estimate_prompt_tokens(body)

    assert sent(await invoke(quota_store, prompt + 120, JAMBA, orjson.dumps(body))) is None
    assert await used_tokens(quota_store, prompt + 120) == prompt
