"""A model group through the real Envoy: the OpenAI SDK asks for the group's name, and
each request is served by one of two deployments (two providers on the stack's mock
provider, told apart by their keys), drawn by weight; each line names the group and the
member, and a quota rule naming the group counts every request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_line,
    mock_requests,
    run_cli,
    running_stack,
    wait_for,
)

GROUP = "gpt-4o-balanced"
REQUESTS = 30
PROVIDERS = """
  - {name: east, base_url: "http://${MOCK_LLM_ADDRESS}/v1", api_key: east-key-123456}
  - {name: west, base_url: "http://${MOCK_LLM_ADDRESS}/v1", api_key: west-key-123456}
"""
# Each member the other's fallback, so a request fails over within the group.
MODELS = """
  - {name: gpt-east, provider: east, upstream_model: gpt-4o, fallbacks: [gpt-west]}
  - {name: gpt-west, provider: west, upstream_model: gpt-4o, fallbacks: [gpt-east]}
"""
# 2:1 over 30 requests: the chance that one member gets none is below 1 in 100,000.
GROUPS = f"""
model_groups:
  - name: {GROUP}
    members:
      - {{model: gpt-east, weight: 2}}
      - {{model: gpt-west, weight: 1}}
"""
QUOTAS = f"""
quotas:
  rules:
    - {{name: group-requests, subject: api_key, models: [{GROUP}], requests_per_day: 1000}}
"""


def config_text() -> str:
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + PROVIDERS, 1)
    text = text.replace("\nmodels:\n", "\nmodels:" + MODELS, 1)
    text = text.replace("\nmodel_prefixes:\n", GROUPS + "\nmodel_prefixes:\n", 1)
    assert "\nquotas:" not in text
    return text + QUOTAS


@pytest.fixture(scope="module")
def group_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir: Path = tmp_path_factory.mktemp("model-groups")
    config = workdir / "gateway.yaml"
    config.write_text(config_text())
    with running_stack(workdir, config) as running:
        yield running


def test_requests_for_a_group_are_spread_over_its_members(group_stack: LocalStack) -> None:
    client = OpenAI(base_url=f"{group_stack.base_url}/v1", api_key="team1-key", max_retries=0)
    request_ids = []
    for index in range(REQUESTS):
        raw = client.chat.completions.with_raw_response.create(
            model=GROUP, messages=[{"role": "user", "content": f"hello {index}"}]
        )
        assert raw.status_code == 200
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.total_tokens > 0
        request_ids.append(raw.headers["x-request-id"])

    # The mock received every request, from both providers (their keys tell them apart).
    sent = [
        request
        for request in mock_requests(group_stack)
        if request["path"] == "/v1/chat/completions"
        and str((request["json"] or {}).get("messages", [{}])[0].get("content", "")).startswith(
            "hello "
        )
    ]
    by_key = Counter(request["headers"].get("authorization") for request in sent)
    assert set(by_key) == {"Bearer east-key-123456", "Bearer west-key-123456"}, by_key
    assert sum(by_key.values()) == REQUESTS
    assert all(request["json"]["model"] == "gpt-4o" for request in sent)

    # Each line names the group the client asked for and the member that served it.
    log = GatewayLog(group_stack.gateway_log)
    lines = [line for request_id in request_ids for line in log.for_request(request_id)]
    assert len(lines) == REQUESTS
    assert {line["model"] for line in lines} == {GROUP}
    members = Counter((line["group_member"], line["provider"]) for line in lines)
    assert set(members) == {("gpt-east", "east"), ("gpt-west", "west")}, members
    assert members[("gpt-east", "east")] == by_key["Bearer east-key-123456"]
    assert all(line["total_tokens"] > 0 and line["http_status_code"] == 200 for line in lines)
    # Envoy's own access line names them too, as the gateway's line does.
    for line in lines[:3]:
        envoy = wait_for(lambda line=line: envoy_access_line(group_stack, line["request_id"]))
        assert envoy is not None, "no Envoy access log line for the request"
        assert (envoy["model"], envoy["group_member"]) == (GROUP, line["group_member"])

    # The quota rule naming the group counted every request, whichever member served it.
    done = run_cli(
        group_stack, "quota", "get", "--kind", "api_key", "--subject", "team1",
        "--format", "json", admin_token="dev-admin-token",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    limits = orjson.loads(done.stdout)["limits"]
    [counted] = [limit for limit in limits if limit["rule"] == "group-requests"]
    assert counted["used"] == REQUESTS
