"""Rules naming a model the gateway does not know: said at load and by check-config.

An operator caps a team with a quota rule on ``gpt-4o-mni`` (a typo): the rule covers no
request and the team spends without limit. The config still loads (a route with a
provider may serve names the config does not list), but the gateway says so, with the
name it probably meant, once per load, and ``extproc check-config`` prints it and
still exits 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import GatewayConfig, parse_config
from extproc.config.rule_models import unknown_model_warnings
from extproc.server import Gateway
from extproc.worker_endpoints import WorkerRole
from extproc.workers import Supervisor

BASE = """
management: {enabled: false}
telemetry: {log: {stdout: false}}
providers:
  - {name: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}
  - {name: anthropic, type: anthropic, base_url: "http://127.0.0.1:9", api_key: k}
  - name: bedrock
    type: bedrock
    base_url: https://bedrock-runtime.us-east-1.amazonaws.com
    aws: {region: us-east-1, access_key_id: AKIAEXAMPLE, secret_access_key: s}
models:
  - {name: gpt-4o-mini, provider: openai, aliases: [mini]}
  - {name: gpt-4o, provider: openai}
  - {name: anthropic.claude-3-haiku-20240307-v1:0, provider: bedrock}
"""


def config(extra: str) -> GatewayConfig:
    return parse_config(BASE + extra, "gateway.yaml", {})


def quota_rule(*models: str) -> str:
    listed = ", ".join(f'"{model}"' for model in models)
    return (
        "quotas:\n  rules:\n"
        f"    - {{name: team-cap, subject: group, models: [{listed}], tokens_per_day: 1000}}\n"
    )


def test_a_quota_rule_naming_a_misspelt_model_is_warned_with_the_name_meant() -> None:
    [warning] = unknown_model_warnings(config(quota_rule("gpt-4o-mni")))
    assert warning == (
        "quotas.rules[0].models: 'gpt-4o-mni' is no model the gateway knows (quota rule"
        " 'team-cap' limits no request for it); did you mean 'gpt-4o-mini'?"
    )


def test_an_access_rule_and_a_keys_allow_list_are_checked_too() -> None:
    warnings = unknown_model_warnings(
        config(
            "auth:\n  api_keys:\n"
            "    - {id: k1, key: sk-test-key-1234567890, allowed_models: [gpt-4o-mnii]}\n"
            "  access_rules:\n"
            "    - {name: gpt4-staff, models: [gpt-4-o], groups: [staff]}\n"
        )
    )
    assert warnings == [
        "auth.access_rules[0].models: 'gpt-4-o' is no model the gateway knows (access rule"
        " 'gpt4-staff' covers no request for it); did you mean 'gpt-4o'?",
        "auth.api_keys[0].allowed_models: 'gpt-4o-mnii' is no model the gateway knows (key"
        " 'k1' is allowed no request for it); did you mean 'gpt-4o-mini'?",
    ]


def test_a_pattern_matching_no_known_model_is_warned() -> None:
    [warning] = unknown_model_warnings(config(quota_rule("gtp-4*")))
    assert warning.startswith("quotas.rules[0].models: 'gtp-4*' matches no model the gateway")
    assert warning.endswith("did you mean 'gpt-4*'?")


def test_a_star_inside_a_name_is_said_to_be_no_wildcard() -> None:
    [warning] = unknown_model_warnings(config(quota_rule("gpt-*-mini")))
    assert "a * matches only at the end of a pattern" in warning


def test_known_models_are_not_warned() -> None:
    # Names, aliases and patterns the config knows, in any case or spacing rules read.
    models = ["gpt-4o-mini", "mini", "GPT-4o", "gpt-4o*", "*", " gpt-4o-mini "]
    assert unknown_model_warnings(config(quota_rule(*models))) == []


PROFILE = "us.anthropic.claude-3-haiku-20240307-v1:0"
PASS_THROUGH = (
    "routes:\n  - {name: chat, path: /v1/chat/completions}\n"
    "  - {name: bedrock-any, path_prefix: /bedrock, model_from_path: true, provider: bedrock}\n"
)


def test_a_bedrock_profile_of_a_known_model_is_known_where_a_route_sends_it() -> None:
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"
    assert unknown_model_warnings(config(PASS_THROUGH + quota_rule(PROFILE, arn))) == []
    # Without such a route no request names the profile: the rule limits nothing.
    [warning] = unknown_model_warnings(config(quota_rule(PROFILE)))
    assert f"{PROFILE!r} is no model the gateway knows" in warning


def test_a_model_served_only_through_model_prefixes_is_not_warned() -> None:
    prefixes = "model_prefixes:\n  - {prefix: claude-, provider: anthropic}\n"
    rules = quota_rule("claude-sonnet-4-5", "claude-opus-*", "claude*")
    assert unknown_model_warnings(config(prefixes + rules)) == []
    # The prefix covers what starts with it, no more: a typo before it is still one.
    [warning] = unknown_model_warnings(config(prefixes + quota_rule("cluade-sonnet-4-5")))
    assert "'cluade-sonnet-4-5' is no model the gateway knows" in warning


def test_a_priced_model_is_known() -> None:
    # A pass-through model the operator priced: the price table names what is served.
    priced = "pricing:\n  models:\n    o3-pro: {input_per_million: 20, output_per_million: 80}\n"
    assert unknown_model_warnings(config(priced + quota_rule("o3-pro"))) == []


def test_with_a_pass_through_route_the_warning_says_the_route_may_serve_it() -> None:
    [warning] = unknown_model_warnings(config(PASS_THROUGH + quota_rule("o3-pro")))
    assert warning.endswith(
        "a route with a provider may still serve it under this name (list it in"
        " pricing.models to say so)"
    )
    [warning] = unknown_model_warnings(config(PASS_THROUGH + quota_rule("o3*")))
    assert warning.endswith(
        "a route with a provider may still serve names it matches (list them in"
        " pricing.models to say so)"
    )


# --- extproc check-config ------------------------------------------------------------


def test_check_config_prints_the_warnings_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + quota_rule("gpt-4o-mni", "claude-sonet-4-5"))
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: ok (3 providers, 3 models, " in out and "routes, 2 warnings)" in out
    assert err.splitlines() == [
        f"warnings in config {path}:",
        "  - quotas.rules[0].models: 'gpt-4o-mni' is no model the gateway knows (quota rule"
        " 'team-cap' limits no request for it); did you mean 'gpt-4o-mini'?",
        "  - quotas.rules[0].models: 'claude-sonet-4-5' is no model the gateway knows (quota"
        " rule 'team-cap' limits no request for it)",
    ]


def test_check_config_of_a_clean_file_prints_no_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + quota_rule("gpt-4o-mini"))
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith("routes)") and err == ""


# --- the gateway at load and reload ----------------------------------------------------


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.name == "extproc.config.load_warnings"]
    caplog.clear()
    return found


async def test_the_gateway_warns_at_start_and_again_only_for_what_a_reload_adds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.config.load_warnings")
    gateway = Gateway(config(quota_rule("gpt-4o-mni")), None)
    try:
        [line] = warned(caplog)
        assert line.startswith("config: quotas.rules[0].models: 'gpt-4o-mni' is no model")
        # The same file again (a SIGHUP, a rotated key file): nothing repeated.
        await gateway.apply(config(quota_rule("gpt-4o-mni")))
        assert warned(caplog) == []
        # An edit adding another typo: that one alone.
        await gateway.apply(config(quota_rule("gpt-4o-mni", "gpt-4o-maxi")))
        [line] = warned(caplog)
        assert "'gpt-4o-maxi'" in line
        # Fixed, then the typo back: said again.
        await gateway.apply(config(quota_rule("gpt-4o-mini")))
        assert warned(caplog) == []
        await gateway.apply(config(quota_rule("gpt-4o-mni")))
        assert len(warned(caplog)) == 1
    finally:
        await gateway.stop()


async def test_with_workers_the_supervisor_alone_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each worker of `serve --workers N` loads the same file: N copies of each warning
    would bury it."""
    caplog.set_level(logging.WARNING, logger="extproc.config.load_warnings")
    metrics = f"telemetry:\n  log: {{stdout: false}}\n  metrics: {{multiprocess_dir: {tmp_path}}}\n"
    loaded = parse_config(
        BASE.replace("telemetry: {log: {stdout: false}}\n", metrics) + quota_rule("gpt-4o-mni"),
        "gateway.yaml",
        {},
    )
    supervisor = Supervisor(loaded, str(tmp_path / "gateway.yaml"), 2)
    assert len(warned(caplog)) == 1
    await supervisor._apply(loaded)
    assert warned(caplog) == []
    worker = Gateway(loaded, None, WorkerRole(0, 2, "redis://127.0.0.1:1/0"))
    try:
        await worker.apply(loaded)
        assert warned(caplog) == []
    finally:
        await worker.stop()
