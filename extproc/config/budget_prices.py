"""Budgets in dollars that cover models without a price: a load warning.

A ``cost_quota`` counts what requests cost at the price table's prices, and a model
the table does not price costs nothing there: a team capped at $2,500 a month spends
without limit on it. That may be meant (a model served in-house, free to call), so it
is a warning, at load and from ``extproc check-config``, naming the rule and the
models, never a refusal.
"""

from __future__ import annotations

from extproc.config.model import GatewayConfig
from extproc.model_names import comparable, covering_aliases, covers


def unpriced_budget_warnings(config: GatewayConfig) -> list[str]:
    budgets = [
        (index, rule)
        for index, rule in enumerate(config.quotas.rules)
        if rule.cost_quota is not None
    ]
    if not budgets:
        return []
    # Imported here: the price table reads the request context, which the config's
    # other checks have no need of.
    from extproc.chargeback.pricing import PriceTable

    without_price = set(PriceTable(config.pricing, config.models).unpriced_models)
    unpriced = [model for model in config.models if model.name in without_price]
    found = []
    # A rule naming a model group covers its members (model_names.covering_aliases).
    groups = {group.name: [m.model for m in group.members] for group in config.model_groups}
    for index, rule in budgets:
        patterns = covering_aliases(rule.models, {}, groups)
        covered = [
            model.name
            for model in unpriced
            if not patterns
            or covers(patterns, tuple(comparable(n) for n in (model.name, *model.aliases)))
        ]
        if covered:
            found.append(
                f"quotas.rules[{index}] ({rule.name}): its cost_quota counts models without a"
                f" price as free: {', '.join(covered)} (price them in pricing.models, or keep"
                " the rule's models to priced ones)"
            )
    return found
