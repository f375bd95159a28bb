"""The mock provider starts without the gateway's config schema.

Every integration test stack starts a mock; the schema (pydantic models of the whole
config) was a third of the mock's start-up, for a process that reads no config.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_mock_provider_command_loads_no_config_schema() -> None:
    probe = (
        "import sys, extproc.cli, extproc.mock_llm; print('extproc.config.model' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_the_config_package_still_offers_its_names() -> None:
    from extproc import config
    from extproc.config.loader import ConfigError, load_config
    from extproc.config.model import GatewayConfig

    assert (config.GatewayConfig, config.load_config, config.ConfigError) == (
        GatewayConfig,
        load_config,
        ConfigError,
    )
