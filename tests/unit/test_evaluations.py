"""The promptfoo suites of evaluations/: they parse, call models the gateway serves through
its OpenAI API, and check what the issue asks (JSON only, latency, a JavaScript assertion)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from evaluations import run
from extproc.config import load_config
from extproc.devstack import DEFAULT_CONFIG, LocalStack, Ports
from extproc.mock_llm.json_reply import json_reply

SUITES = sorted(Path("evaluations").glob("promptfooconfig*.yaml"))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_suites_call_models_the_gateway_serves_through_its_openai_api(path: Path) -> None:
    suite = load(path)
    served = {m.name for m in load_config(DEFAULT_CONFIG, environ={}).models}
    assert suite["providers"] and suite["prompts"] and suite["tests"]
    for provider in suite["providers"]:
        kind, api, model = provider["id"].split(":", 2)
        # The OpenAI provider of promptfoo, pointed at the gateway by OPENAI_BASE_URL.
        assert (kind, api) == ("openai", "chat")
        assert model in served
        assert "apiKey" not in provider.get("config", {}), "keys come from the environment"


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_suites_check_json_latency_and_javascript(path: Path) -> None:
    suite = load(path)
    default = {check["type"]: check for check in suite["defaultTest"]["assert"]}
    assert default["is-json"]["value"]["required"] == ["sentiment", "category", "urgent", "summary"]
    assert 0 < default["latency"]["threshold"] <= 30_000
    assert "JSON.parse(output)" in default["javascript"]["value"]
    for test in suite["tests"]:
        assert any(check["type"] == "javascript" for check in test["assert"])


def test_the_mock_answers_the_default_suite_with_json_that_fits_its_schema() -> None:
    suite = load(Path("evaluations/promptfooconfig.yaml"))
    response_format = suite["providers"][0]["config"]["response_format"]
    answer = json_reply(response_format, "Mock reply to: a ticket")
    assert answer is not None
    schema = response_format["json_schema"]["schema"]
    jsonschema.validate(json.loads(answer), schema)


def test_promptfoo_talks_to_the_gateway_with_an_org_key(tmp_path: Path) -> None:
    stack = LocalStack(workdir=tmp_path, ports=Ports(envoy=18000))
    env = run.promptfoo_env(stack, {"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-real"}, tmp_path)
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:18000/v1"
    # The real provider key stays with the gateway; promptfoo only has the org key.
    assert env["OPENAI_API_KEY"] == run.GATEWAY_KEY
    assert env["PATH"].startswith(str(run.node_directory(tmp_path)))
    assert env["PROMPTFOO_DISABLE_TELEMETRY"] == "1"
    assert [p.name for p in run.suites({})] == ["promptfooconfig.yaml"]
    assert len(run.suites({"ANTHROPIC_API_KEY": "x"})) == 2
