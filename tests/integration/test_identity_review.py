"""A fresh review of identification and secrets, through real Envoy, the gateway and the
mock's OpenAI and Vertex AI, with the official ``openai`` client.

A client whose environment names its own OpenAI organization and project
(``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``: the SDK sends them as headers), or a Google
quota project, reaches the provider with the gateway's key alone: what it sent must not
pick the account that key bills.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, mock_requests, running_stack, write_config
from tests.integration.mock_vertex import vertex_provider, vertex_requests

CLIENT_KEY = "team1-key"
PROMPT = [{"role": "user", "content": "Say hello to the gateway, please."}]
# The client's own accounts, as its SDK and environment name them.
CLIENT_ORGANIZATION = "org-ClientOwnOrganization"
CLIENT_PROJECT = "proj_ClientOwnProject"
CLIENT_QUOTA_PROJECT = "client-own-gcp-project"
ACCOUNT_HEADERS = ("openai-organization", "openai-project", "x-goog-user-project")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("identity-review")
    raw = default_config()
    raw["providers"].append(vertex_provider())
    raw["models"].append(
        {"name": "gemini-flash", "provider": "vertex", "upstream_model": "google/gemini-2.5-flash"}
    )
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def client_with_its_own_accounts(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=CLIENT_KEY,
        organization=CLIENT_ORGANIZATION,
        project=CLIENT_PROJECT,
        default_headers={"x-goog-user-project": CLIENT_QUOTA_PROJECT},
        max_retries=0,
        timeout=30.0,
    )


def accounts_named(sent: dict[str, Any]) -> dict[str, str]:
    return {
        name: value for name, value in sent["headers"].items() if name.lower() in ACCOUNT_HEADERS
    }


def test_an_openai_provider_bills_the_gateways_account_not_the_clients(
    stack: LocalStack,
) -> None:
    answer = client_with_its_own_accounts(stack).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT
    )
    assert answer.choices[0].message.content
    sent = [r for r in mock_requests(stack) if r["path"] == "/v1/chat/completions"][-1]
    # The control: the gateway's key went, and nothing of the client's.
    assert sent["headers"]["authorization"] == "Bearer mock-provider-key"
    assert accounts_named(sent) == {}


def test_a_vertex_provider_bills_the_gateways_quota_project_not_the_clients(
    stack: LocalStack,
) -> None:
    answer = client_with_its_own_accounts(stack).chat.completions.create(
        model="gemini-flash", messages=PROMPT
    )
    assert answer.choices[0].message.content
    sent = vertex_requests(stack)[-1]
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert accounts_named(sent) == {}
