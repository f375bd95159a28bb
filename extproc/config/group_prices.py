"""Prices given under a model group's name: a load warning.

A group's request is billed at the prices of the member that served it, found by the
member's own name (or an alias of it); a price under the group's name prices nothing,
and the members it was meant for may be unpriced (counted as free, flagged unpriced in
the reports). Warned of at load and by ``extproc check-config``, naming the members to
price instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from extproc.config.model import GatewayConfig
from extproc.model_names import comparable


def group_price_warnings(config: GatewayConfig) -> Iterator[str]:
    groups = {comparable(group.name): group for group in config.model_groups}
    for name in config.pricing.models:
        group = groups.get(comparable(name))
        if group is None:
            continue
        members = ", ".join(member.model for member in group.members)
        yield (
            f"pricing.models.{name}: prices model group {group.name!r}, whose requests are"
            f" billed at the prices of the member that served them: price its members"
            f" ({members}), each under its own name"
        )
