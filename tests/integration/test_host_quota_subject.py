"""A quota rule on the request's host, through the real Envoy and the official client.

Envoy hands the gateway HTTP/1.1's ``Host`` as ``:authority``: a rule on ``header:host``
limited no one, and one on ``header::authority`` matching ``gateway.local`` let
``GATEWAY.local`` or ``gateway.local:1`` through, on the same routes. Both now count the
host as the routes read it.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import running_stack
from tests.integration.test_management_cli import ADMIN_TOKEN, quota

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
RULES = """
quotas:
  rules:
    - {name: by-host, subject: 'header:host', match: [a.example, b.example],
       requests_per_day: 1}
    - {name: gateway-host, subject: 'header::authority', match: Gateway.Local,
       requests_per_day: 1}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("host-quota-subject")
    text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\n" + RULES + "\nroutes:\n", 1)
    text = text.replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", ADMIN_TOKEN)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def ask(stack: LocalStack, host: str) -> None:
    client = OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key="team1-key",
        max_retries=0,
        default_headers={"host": host},
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_a_rule_on_header_host_limits_each_host(stack: LocalStack) -> None:
    ask(stack, "a.example")
    with pytest.raises(openai.RateLimitError) as refused:
        ask(stack, "a.example")
    assert "header :authority 'a.example'" in refused.value.message
    ask(stack, "b.example")  # its own count


def test_the_host_cannot_escape_its_rule_by_its_spelling(stack: LocalStack) -> None:
    ask(stack, "gateway.local")  # the day's one request
    for spelling in ["GATEWAY.local", "gateway.local:1", "gateway.local."]:
        with pytest.raises(openai.RateLimitError):
            ask(stack, spelling)


def test_an_operator_names_the_host_as_a_client_spells_it(stack: LocalStack) -> None:
    # Spelt with its port, as in a client's base URL: gateway.local's counters.
    reset = quota(stack, "reset", "--kind", "header:host", "--subject", "Gateway.Local:10000")
    assert reset.returncode == 0, reset.stderr
    ask(stack, "gateway.local")  # the reset gave the day's one request back

    done = quota(
        stack, "get", "--kind", "header::authority", "--subject", "GATEWAY.local.",
        "--format", "json",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    state = orjson.loads(done.stdout)
    assert (state["subject"], state["limits"][0]["used"]) == ("gateway.local", 1)
