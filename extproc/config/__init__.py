"""Configuration: schema (``model``), file loader (``loader``), live reload (``reload``).

The names below are imported on first use, not with the package: a module that needs
only a small part of it (the mock provider's ``moderation_categories``) would otherwise
load the whole schema, a third of that process's start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extproc.config.loader import ConfigError, load_config, parse_config
    from extproc.config.model import GatewayConfig

__all__ = ["ConfigError", "GatewayConfig", "load_config", "parse_config"]

_HOMES = {
    "ConfigError": "extproc.config.loader",
    "GatewayConfig": "extproc.config.model",
    "load_config": "extproc.config.loader",
    "parse_config": "extproc.config.loader",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
