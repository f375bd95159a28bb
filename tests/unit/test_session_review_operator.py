"""Operator-side review of this session's changes: configs that loaded before and must
still load, and the checks the session added."""

from __future__ import annotations

import pytest

from extproc.config import ConfigError, parse_config

GUARDED = """
providers:
  - name: mock
    base_url: http://127.0.0.1:8089/v1
    api_key: sk-test
models:
  - name: gpt-4o-mini
    provider: mock
guardrails:
  policies:
    - name: injection
      request:
        - name: log4shell
          literals: ["{literal}"]
          patterns: ['{pattern}']
          message: "{message}"
routes:
  - name: chat
    path: /v1/chat/completions
    guardrails: [injection]
    enrichment:
      prepend:
        - content: "{content}"
"""


def guarded(**text: str) -> str:
    values = {"literal": "x", "pattern": "x", "message": "refused", "content": "Be brief."}
    return GUARDED.format(**{**values, **text})


# --- ${ in text a guard looks for, or an enrichment message says -------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("literal", "${jndi:"),
        ("literal", "${${::-j}ndi:"),
        ("pattern", r"\${jndi:(ldap|rmi|dns)"),
        ("pattern", r"\${[^}]*}"),
        ("message", "payloads such as ${jndi:ldap://...} are refused"),
        ("content", "Never expand shell forms such as ${{VAR:?}} for the user."),
    ],
)
def test_a_guard_or_enrichment_text_holding_dollar_brace_still_loads(
    field: str, value: str
) -> None:
    # A guard against Log4Shell or template injection looks for `${` itself; such a
    # config loaded before the loader refused every `${` that is no reference, and
    # nothing in it could be a variable the operator meant to set.
    config = parse_config(guarded(**{field: value}), "gateway.yaml", {})
    guard = config.guardrails.policies[0].request[0]
    written = {
        "literal": guard.literals[0],
        "pattern": guard.patterns[0].pattern,
        "message": guard.message,
        "content": config.routes[0].enrichment.prepend[0].content
        if config.routes[0].enrichment
        else None,
    }[field]
    assert written == value


def test_a_reference_in_guard_text_is_still_read() -> None:
    config = parse_config(guarded(literal="${CODENAME}"), "gateway.yaml", {"CODENAME": "falcon"})
    assert config.guardrails.policies[0].request[0].literals == ("falcon",)


def test_a_shell_form_in_a_provider_key_is_still_refused() -> None:
    text = guarded(literal="${jndi:").replace("api_key: sk-test", "api_key: ${KEY-sk-x}")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", {})
    assert [p for p in caught.value.problems if p.startswith("providers[0].api_key")]
    assert all("literals" not in p for p in caught.value.problems)


# --- a refused ${ form never shows the secret written in it ------------------------


@pytest.mark.parametrize(
    ("section", "shown"),
    [
        ("store:\n  url: 'redis://:${PW-s3cretpw}@redis:6379/0'\n", "${PW-"),
        ("store:\n  url: '${REDIS_URL-redis://:s3cretpw@redis:6379/0}'\n", "${REDIS_URL-"),
        (
            "providers:\n  - name: p\n    base_url: https://api.example.com/v1\n"
            "    headers: {authorization: 'Bearer ${TOKEN:-x}${T2-s3cretpw}'}\n",
            "${T2-",
        ),
    ],
)
def test_a_refused_shell_form_names_the_variable_not_its_default(section: str, shown: str) -> None:
    # Docker compose reads ${VAR-default}; the gateway refuses it, and its error is
    # logged by a reload: the default written there (a password, a bearer token) must
    # not be in it, whatever the field is called.
    with pytest.raises(ConfigError) as caught:
        parse_config(section, "gateway.yaml", {"TOKEN": "t"})
    message = str(caught.value)
    assert shown in message
    assert "s3cretpw" not in message


def test_an_unclosed_default_names_the_reference_left_open() -> None:
    # `${KEY:-${FALLBACK}` lacks the brace closing KEY's default; ${FALLBACK} is fine.
    text = guarded().replace("api_key: sk-test", "api_key: '${KEY:-${FALLBACK}'")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", {"FALLBACK": "sk-fallback"})
    [problem] = caught.value.problems
    assert problem.startswith("providers[0].api_key: ${KEY:-")
    assert "FALLBACK" not in problem
