"""Quota rules that would load and never do what they say are refused at load, naming the
field: a header subject no request can carry, a model pattern that names no model, and a
hard cap on a rule that has no token budget to cap at."""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config
from extproc.context import Identity
from extproc.quota.rules import RuleSet
from tests.unit.quota_helpers import DEFAULT_CONFIG

RULE = """
quotas:
  rules:
    - {name: team-limit, subject: %s, models: %s, requests_per_minute: 5, hard_cap: %s}
"""


def problems(subject: str = "api_key", models: str = "[]", hard_cap: str = "false") -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(DEFAULT_CONFIG + RULE % (subject, models, hard_cap), "g.yaml", {})
    return refused.value.problems


@pytest.mark.parametrize(
    "subject",
    ["'header:x user-type'", "'header:x-team,x-org'", "'header:x\"team'", "'header:x:team'"],
)
def test_a_header_subject_no_request_can_carry_is_refused_naming_the_rule(subject: str) -> None:
    # A header name with a space, a comma or a quote is no HTTP field name: Envoy never
    # hands the gateway such a header, so the rule loaded and limited nobody.
    [problem] = problems(subject=subject)
    assert problem.startswith("quotas.rules[0].subject:")
    assert "not a header name" in problem


def test_an_odd_but_valid_header_name_is_still_a_subject() -> None:
    config = parse_config(
        DEFAULT_CONFIG + RULE % ("'header:X-Team_ID.v2'", "[]", "false"), "g.yaml", {}
    )
    [rule] = config.quotas.rules
    assert rule.subject == "header:x-team_id.v2"
    found = RuleSet(config.quotas).limits_for(
        Identity(method="api_key", api_key_id="k1"), {"x-team_id.v2": "blue"}, "gpt-4o", 0.0
    )
    assert [limit.subject for limit in found] == ["blue"]


@pytest.mark.parametrize("models", ["['']", "['gpt-4o', '  ']"])
def test_a_model_pattern_that_names_no_model_is_refused(models: str) -> None:
    # Compared trimmed, an empty pattern covers no model: the rule capped nothing.
    [problem] = problems(models=models)
    assert problem.startswith("quotas.rules[0].models:")
    assert "names no model" in problem


def test_a_hard_cap_on_a_rule_without_a_token_budget_is_refused() -> None:
    # A hard cap lowers max_tokens to what the rule's token budgets leave; with requests
    # limits alone there is nothing to cap at, and every answer went out uncapped.
    [problem] = problems(hard_cap="true")
    assert problem.startswith("quotas.rules[0]:") or problem.startswith("quotas.rules[0].hard_cap")
    assert "hard_cap" in problem and "tokens_per_" in problem


def test_a_pseudo_header_envoy_hands_over_is_still_a_subject() -> None:
    config = parse_config(
        DEFAULT_CONFIG + RULE % ("'header::authority'", "[]", "false"), "g.yaml", {}
    )
    found = RuleSet(config.quotas).limits_for(
        Identity(method="api_key", api_key_id="k1"), {":authority": "gw.example"}, "gpt-4o", 0.0
    )
    assert [limit.subject for limit in found] == ["gw.example"]
