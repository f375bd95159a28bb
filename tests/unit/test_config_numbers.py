"""A true/false where the config wants a number is a mistake named at load, not a 1."""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config

PROVIDERS = """
providers:
  - {name: mock, base_url: "http://127.0.0.1:8000/v1"}
models:
  - {name: gpt-4o-mini, provider: mock}
"""


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(PROVIDERS + text, "gateway.yaml", environ or {})
    return raised.value.problems


def test_a_flag_for_a_request_limit_is_refused_naming_the_rule() -> None:
    # YAML reads `yes` as true, and true loaded as a limit of 1 request a minute.
    problems = _problems(
        "quotas:\n  rules:\n    - {name: team, subject: api_key, requests_per_minute: yes}\n"
    )
    assert problems == [
        "quotas.rules[0].requests_per_minute: must be a number, not true (got True)"
    ]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("envoy:\n  upstream_timeout_s: true\n", "envoy.upstream_timeout_s"),
        ("limits:\n  max_request_body_bytes: false\n", "limits.max_request_body_bytes"),
        ("quotas:\n  default_max_tokens: true\n", "quotas.default_max_tokens"),
    ],
)
def test_a_flag_for_any_number_is_refused(text: str, field: str) -> None:
    [problem] = _problems(text)
    assert problem.startswith(f"{field}: must be a number")


def test_numbers_from_the_environment_and_flags_where_flags_belong_still_load() -> None:
    config = parse_config(
        PROVIDERS
        + "envoy:\n  upstream_timeout_s: ${TIMEOUT:-30}\n"
        + "quotas:\n  rules:\n"
        + "    - {name: team, subject: api_key, tokens_per_day: 1000, hard_cap: true}\n",
        "gateway.yaml",
        {"TIMEOUT": "45"},
    )
    assert config.envoy.upstream_timeout_s == 45
    [rule] = config.quotas.rules
    assert rule.hard_cap is True
    assert rule.tokens_per_day == 1000
