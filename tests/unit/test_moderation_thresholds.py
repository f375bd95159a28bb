"""A moderation threshold under a name no category has (``violence/graphics``) is never
read: the category it meant is decided by the service's own flag. Before, nothing said so;
now the gateway warns at load (and ``extproc check-config`` prints it), naming the field
and the category it probably meant. Not refused: another OpenAI-compatible service may
answer with categories of its own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import parse_config
from extproc.config.load_warnings import config_warnings
from extproc.server import Gateway
from tests.unit.guard_helpers import config_with
from tests.unit.test_rule_models import BASE


def moderated(**thresholds: float) -> dict[str, object]:
    return {
        "moderation": [
            {"name": "plain", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "mod", "base_url": "http://127.0.0.1:9/v1", "thresholds": thresholds},
        ],
        "policies": [{"name": "mod", "request": [{"name": "moderated", "moderation": "mod"}]}],
    }


def test_a_misspelt_category_is_warned_about_with_what_it_meant() -> None:
    config = config_with(
        moderated(**{"violence/graphics": 0.5, "harassment": 0.8}),
        {"openai-chat": {"guardrails": "mod"}},
    )
    assert config_warnings(config) == [
        "guardrails.moderation[1].thresholds: 'violence/graphics' is none of OpenAI's "
        "moderation categories (a category the service names otherwise is decided by its "
        "own flag, not by a threshold); did you mean 'violence/graphic'?"
    ]


def test_a_category_of_another_service_is_warned_about_without_a_guess() -> None:
    config = config_with(moderated(toxicity=0.5), {"openai-chat": {"guardrails": "mod"}})
    [warning] = config_warnings(config)
    assert "'toxicity' is none of OpenAI's moderation categories" in warning
    assert "did you mean" not in warning


def test_every_openai_category_loads_without_a_warning() -> None:
    every = {
        "harassment": 0.5, "harassment/threatening": 0.5, "hate": 0.5, "hate/threatening": 0.5,
        "illicit": 0.5, "illicit/violent": 0.5, "self-harm": 0.5, "self-harm/intent": 0.5,
        "self-harm/instructions": 0.5, "sexual": 0.5, "sexual/minors": 0.5, "violence": 0.5,
        "violence/graphic": 0.5,
    }  # fmt: skip
    config = config_with(moderated(**every), {"openai-chat": {"guardrails": "mod"}})
    assert config_warnings(config) == []


MODERATION = """
guardrails:
  moderation:
    - {name: mod, base_url: "http://127.0.0.1:9/v1", thresholds: {violence/graphics: 0.5}}
"""


def test_check_config_prints_it_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + MODERATION)
    assert main(["check-config", "--config", str(path)]) == 0
    _, err = capsys.readouterr()
    assert "  - guardrails.moderation[0].thresholds: 'violence/graphics' is none" in err


async def test_the_gateway_logs_it_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.config.load_warnings")
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + MODERATION)
    gateway = Gateway(parse_config(path.read_text(), str(path), {}), None)
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "extproc.config.load_warnings"]
        assert lines == [
            "config: guardrails.moderation[0].thresholds: 'violence/graphics' is none of "
            "OpenAI's moderation categories (a category the service names otherwise is "
            "decided by its own flag, not by a threshold); did you mean 'violence/graphic'?"
        ]
    finally:
        await gateway.stop()
