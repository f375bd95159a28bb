"""Configuration: schema (``model``), file loader (``loader``), live reload (``reload``)."""

from extproc.config.loader import ConfigError, load_config, parse_config
from extproc.config.model import GatewayConfig

__all__ = ["ConfigError", "GatewayConfig", "load_config", "parse_config"]
