"""A rule that names a model's alias covers the model under every name: no spelling of
a model escapes a quota limit or an access rule."""

from __future__ import annotations

from extproc.auth.access import AccessPolicy
from extproc.config.auth_model import AccessRule
from extproc.config.quota_model import QuotasConfig
from extproc.context import Identity
from extproc.model_names import covering_aliases
from extproc.quota.rules import RuleSet

ALIASES = {"titan-embed": "amazon.titan-embed-text-v2:0", "haiku": "claude-haiku-x"}
ALICE = Identity("api_key", "team1", "alice", "engineering", groups=("engineering",))
CANONICAL = "amazon.titan-embed-text-v2:0"


def quota_rules(*models: str) -> RuleSet:
    rule = {"name": "embed", "subject": "api_key", "models": list(models), "tokens_per_hour": 20}
    return RuleSet(QuotasConfig.model_validate({"rules": [rule]}), ALIASES)


def test_a_quota_rule_naming_an_alias_limits_the_model_by_its_own_name() -> None:
    rules = quota_rules("titan-embed")
    assert rules.limits_for(ALICE, {}, CANONICAL, 0.0)  # the full id: limited too
    assert rules.limits_for(ALICE, {}, "titan-embed", 0.0, CANONICAL)
    assert not rules.limits_for(ALICE, {}, "gpt-4o-mini", 0.0)


def test_a_pattern_matching_an_alias_covers_its_model() -> None:
    assert quota_rules("titan*").limits_for(ALICE, {}, CANONICAL, 0.0)


def test_an_access_rule_naming_an_alias_refuses_the_model_by_its_own_name() -> None:
    rule = AccessRule(name="titan-for-marketing", models=("titan-embed",), groups=("marketing",))
    policy = AccessPolicy([rule], ALIASES)
    denial = policy.denial(ALICE, CANONICAL, "openai-embeddings")
    assert denial is not None and "titan-for-marketing" in denial
    marketing = Identity("api_key", "team2", "bob", "marketing", groups=("marketing",))
    assert policy.denial(marketing, CANONICAL, "openai-embeddings") is None


def test_names_are_added_once_and_compared_without_case() -> None:
    assert covering_aliases(["Haiku", "claude-haiku-x"], ALIASES) == ("haiku", "claude-haiku-x")
    assert covering_aliases(["gpt-4o"], ALIASES) == ("gpt-4o",)
