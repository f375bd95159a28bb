"""The mock's Vertex AI as a test config reaches it: the provider entry (the stack writes
the service account key the mock trusts and names it in MOCK_GCP_CREDENTIALS_FILE), where
its resources live, and what it received and issued."""

from __future__ import annotations

from typing import Any

import httpx

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

PROJECT = "mock-project"
REGION = "us-east5"
# Where the mock's Vertex serves the project's models.
LOCATION = f"/v1/projects/{PROJECT}/locations/{REGION}"


def vertex_provider(
    name: str = "vertex", project: str = PROJECT, base_url: str = "http://${MOCK_LLM_ADDRESS}"
) -> dict[str, Any]:
    """A ``vertex`` provider entry for the mock's Vertex AI (``project``: another one,
    which the mock refuses; ``base_url``: somewhere else)."""
    return {
        "name": name,
        "type": "vertex",
        "base_url": base_url,
        "gcp": {
            "project": project,
            "region": REGION,
            "credentials_file": "${MOCK_GCP_CREDENTIALS_FILE}",
        },
    }


def vertex_requests(stack: LocalStack) -> list[dict[str, Any]]:
    """What the mock's Vertex received, oldest first."""
    return [r for r in mock_requests(stack) if r["path"].startswith(LOCATION)]


def tokens_issued(stack: LocalStack) -> int:
    """How many access tokens the mock's token endpoint issued so far."""
    answer = httpx.get(f"{stack.mock_url}/_mock/gcp/tokens", timeout=5.0)
    issued: int = answer.json()["issued"]
    return issued
