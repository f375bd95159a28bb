"""Request and token rate limits as an operator who caps teams configures them, found
wrong in a second review.

Each test is what an operator writes or a client gets: the answer a reservation sent
twice gets back under a limit as large as the documented bound, and a rule whose
``match`` selects no subject at all.
"""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config
from extproc.quota.store import QuotaStore, Reservation
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_quota_review import TEAM1, runtime_with

# -- a reservation's recorded answer, under a limit of fifteen digits ------------------------

# "Unlimited" as operators write it: fifteen nines, inside the documented bound (2^53 - 1).
UNLIMITED = """
quotas:
  rules:
    - {name: team-tokens, subject: api_key, tokens_per_day: 999999999999999}
"""


async def test_a_reservation_sent_twice_gets_its_first_answer_to_the_token(
    quota_store: QuotaStore,
) -> None:
    # docs/quotas.md: a reservation sent twice "gets its first answer and reserves once".
    # The script recorded that answer with Lua's default number format (14 significant
    # digits), so the second came back rounded: the limit as 1000000000000000 (the
    # client's x-ratelimit-limit-tokens) and what it had reserved off by tokens, which
    # its settlement then corrected by the wrong amount.
    runtime = runtime_with(quota_store, UNLIMITED)
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    call = quota_store._reserve_call(limits, 123456789012345, "sent-twice")
    [first] = await quota_store._run_reserve([call])
    [again] = await quota_store._run_reserve([call])
    # Reserved, used, limit; the reset generation; what it holds, and what is held.
    assert [int(value) for value in first] == [1, 123456789012345, 123456789012345,
                                               999999999999999, 0, 123456789012345,
                                               123456789012345]  # fmt: skip
    assert [int(value) for value in again] == [int(value) for value in first]


async def test_a_large_reservation_whose_answer_was_lost_is_given_back_whole(
    quota_store: QuotaStore,
) -> None:
    # The give-back of a call without an answer reads what it reserved from that record:
    # rounded, it left the last digits counted against the team.
    runtime = runtime_with(quota_store, UNLIMITED)
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    call = quota_store._reserve_call(limits, 123456789012345, "answer-lost")
    await quota_store._run_reserve([call])
    quota_store._queue_undos([call])
    await quota_store.flush()
    after = await quota_store.reserve(limits, 0)
    assert isinstance(after, Reservation)
    assert after.used == [0]


# -- a rule whose match selects nobody -----------------------------------------------------


def rule_problems(match: str) -> list[str]:
    quotas = f"""
quotas:
  rules:
    - {{name: everyone-5-rpm, subject: api_key, match: {match}, requests_per_minute: 5}}
"""
    with pytest.raises(ConfigError) as refused:
        parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {})
    return refused.value.problems


@pytest.mark.parametrize("match", ['["*"]', "[team1, '*']"])
def test_a_wildcard_inside_a_match_list_is_refused_at_load(match: str) -> None:
    # "*" means every subject only as the whole match; in a list it was taken as an id
    # no key has, so the rule an operator wrote to cap every team capped none of them.
    [problem] = rule_problems(match)
    assert problem.startswith("quotas.rules[0].match:"), problem
    assert '"*"' in problem


@pytest.mark.parametrize("match", ["[]", "''"])
def test_a_match_that_names_no_subject_is_refused_at_load(match: str) -> None:
    # An empty list or id selected no subject: the rule loaded and never applied.
    [problem] = rule_problems(match)
    assert problem.startswith("quotas.rules[0].match:"), problem
