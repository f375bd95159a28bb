"""A budget in dollars over a model the price table does not price: warned of at load.

Such a model's requests cost nothing in the ledgers, so a team's budget never holds
them back: the warning names the rule and the models, and says what to do. A rule kept
to priced models, or a config without budgets in dollars, earns none.
"""

from __future__ import annotations

from pathlib import Path

from extproc.config.load_warnings import config_warnings
from extproc.config.loader import parse_config

MODEL = "  - name: local-qwen\n    provider: ${LLM_PROVIDER:-mock}\n    aliases: [qwen-local]\n"
CONFIG = (
    Path("config/gateway.yaml")
    .read_text(encoding="utf-8")
    .replace("\nmodels:\n", "\nmodels:\n" + MODEL, 1)
)


def warnings_for(rules: str) -> list[str]:
    config = parse_config(CONFIG + f"\nquotas:\n  rules:\n{rules}", "gateway.yaml", {})
    return [line for line in config_warnings(config) if "cost_quota" in line]


def test_a_budget_over_every_model_names_the_unpriced_one() -> None:
    found = warnings_for("    - {name: eng-budget, subject: group, cost_quota: {limit_usd: 100}}\n")
    assert found == [
        "quotas.rules[0] (eng-budget): its cost_quota counts models without a price as free:"
        " local-qwen (price them in pricing.models, or keep the rule's models to priced ones)"
    ]


def test_a_budget_naming_the_model_by_its_alias_or_a_prefix_is_warned_of_too() -> None:
    rules = (
        "    - {name: by-alias, subject: group, models: [qwen-local], cost_quota: {limit_usd: 1}}\n"
        "    - {name: by-prefix, subject: group, models: [local-*], cost_quota: {limit_usd: 1}}\n"
    )
    assert [line.split(":")[0] for line in warnings_for(rules)] == [
        "quotas.rules[0] (by-alias)",
        "quotas.rules[1] (by-prefix)",
    ]


def test_a_budget_kept_to_priced_models_or_a_token_quota_is_not_warned_of() -> None:
    rules = (
        "    - {name: gpt, subject: group, models: [gpt-4o], cost_quota: {limit_usd: 1}}\n"
        "    - {name: tokens, subject: group, token_quota: {limit: 100}}\n"
    )
    assert warnings_for(rules) == []
