"""`extproc check-config --envoy BOOTSTRAP`: whether Envoy's bootstrap is the config's
rendering, before an operator reloads the gateway.

A reload applies the config to the gateway alone. Before, an operator who added a
provider or raised the body limit, ran `check-config` (ok) and sent SIGHUP had a
gateway serving the new config behind an Envoy that had no cluster for the provider
and still refused the larger bodies, and nothing run before the reload said so. Now
the check names what Envoy lacks, by resource name, and exits 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_bootstrap import render_default

NEW_PROVIDER = """
  - name: azure-east
    base_url: https://azure-east.example.com/openai/v1
    api_key: provider-key-123
"""


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment `make render-envoy` renders with (none): the check renders the
    config with the environment it runs in, as `extproc render-envoy` would."""
    for name in ("MOCK_LLM_ADDRESS", "LLM_PROVIDER", "ANTHROPIC_PROVIDER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def envoy_file(tmp_path: Path) -> Path:
    """Envoy's bootstrap as `make render-envoy` wrote it for the default config."""
    path = tmp_path / "envoy.yaml"
    path.write_text(render_default(), encoding="utf-8")
    return path


def edited(tmp_path: Path, change: str, before: str) -> Path:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    assert before in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace(before, change + before, 1), encoding="utf-8")
    return path


def check(config: Path, envoy_file: Path) -> int:
    return main(["check-config", "--config", str(config), "--envoy", str(envoy_file)])


def test_the_bootstrap_rendered_from_the_config_passes(
    envoy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(DEFAULT_CONFIG, envoy_file) == 0
    assert f"{envoy_file}: the config's rendering" in capsys.readouterr().out


def test_a_provider_added_since_the_render_is_named_and_fails_the_check(
    tmp_path: Path, envoy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = edited(tmp_path, NEW_PROVIDER.lstrip("\n"), "  - name: mock\n")
    assert check(config, envoy_file) == 1
    said = capsys.readouterr()
    assert f"{config}: ok" in said.out, "the config itself is valid"
    assert "not this config's rendering (listener aigw, cluster provider_azure_east)" in said.err
    assert "extproc render-envoy" in said.err
    assert "provider-key-123" not in said.err


def test_a_body_limit_raised_since_the_render_fails_the_check(
    tmp_path: Path, envoy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        text.replace("  max_request_body_bytes: 1048576", "  max_request_body_bytes: 4194304", 1),
        encoding="utf-8",
    )
    assert check(config, envoy_file) == 1
    assert "listener aigw" in capsys.readouterr().err


def test_a_bootstrap_that_cannot_be_read_is_said_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert check(DEFAULT_CONFIG, missing) == 2
    assert f"{missing}: cannot read the Envoy bootstrap" in capsys.readouterr().err
