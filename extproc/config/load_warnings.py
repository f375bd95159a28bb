"""What a valid config probably says wrong: warnings, logged at load and printed by
``extproc check-config``, never refusals.

Each kind has its own module: rules naming no model the gateway knows
(``rule_models``), moderation thresholds naming no category (``moderation_categories``),
an image model's fallbacks the Images API does not use (``image_fallbacks``), an admin
token others could guess (``admin_token_strength``), a budget in dollars over models
without a price (``budget_prices``), a price given under a model group's name
(``group_prices``).
"""

from __future__ import annotations

import logging

from extproc.config.admin_token_strength import weak_admin_token_warnings
from extproc.config.budget_prices import unpriced_budget_warnings
from extproc.config.group_prices import group_price_warnings
from extproc.config.image_fallbacks import image_fallback_warnings
from extproc.config.model import GatewayConfig
from extproc.config.moderation_categories import threshold_warnings
from extproc.config.rule_models import unknown_model_warnings
from extproc.errors import without_secrets

log = logging.getLogger(__name__)


def config_warnings(config: GatewayConfig) -> list[str]:
    """Every warning the config earns, one line each, without the file's secrets: a
    warning quotes the names a rule holds, a key variable put there by mistake too."""
    found = [
        *unknown_model_warnings(config),
        *threshold_warnings(config),
        *image_fallback_warnings(config),
        *weak_admin_token_warnings(config),
        *unpriced_budget_warnings(config),
        *group_price_warnings(config),
    ]
    # Shapes too (errors.without_secrets): a model name holds no `***` to keep.
    return [without_secrets(line, config.secrets_read) for line in found]


class ConfigWarnings:
    """Logs a config's ``config_warnings`` at start, and on a reload only those the
    running config did not have: a reload for a rotated key file or a SIGHUP repeats
    none (``extproc check-config`` lists them all)."""

    def __init__(self) -> None:
        self._warned: frozenset[str] = frozenset()

    def loaded(self, config: GatewayConfig) -> None:
        found = config_warnings(config)
        for line in found:
            if line not in self._warned:
                log.warning("config: %s", line)
        self._warned = frozenset(found)
