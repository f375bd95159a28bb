"""The mock's Vertex AI as a test config reaches it: the provider entry (the stack writes
the service account key the mock trusts and names it in MOCK_GCP_CREDENTIALS_FILE), a
config and a module's stack with models on it, where its resources live, and what it
received and issued."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import default_config, mock_requests, running_stack, write_config

PROJECT = "mock-project"
REGION = "us-east5"
# Where the mock's Vertex serves the project's models.
LOCATION = f"/v1/projects/{PROJECT}/locations/{REGION}"

# Models as Vertex names them: Claude with its version after "@", Google's own under
# their publisher on the OpenAI-compatible endpoint.
CLAUDE_ON_VERTEX = "claude-sonnet-4-5@20250929"
GEMINI_ON_VERTEX = "google/gemini-2.5-flash"
# USD per million tokens: Sonnet's and Gemini Flash's list prices.
SONNET = {"input_per_million": 3.00, "output_per_million": 15.00}
FLASH = {"input_per_million": 0.30, "output_per_million": 2.50}


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


def vertex_config(
    models: dict[str, str], prices: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The default config with the mock's Vertex AI as provider ``vertex``, ``models`` (the
    gateway's name -> the model's id on Vertex) on it, and ``prices`` for some of them."""
    raw = default_config()
    raw["providers"].append(vertex_provider())
    raw["models"] += [
        {"name": name, "provider": "vertex", "upstream_model": upstream}
        for name, upstream in models.items()
    ]
    raw["pricing"]["models"].update(prices or {})
    return raw


def stack_serving(config: Callable[[], dict[str, Any]], name: str) -> Any:
    """A module's ``stack`` fixture: a stack of its own serving ``config()``, in a work
    directory named after ``name``. (The conftest's ``gateway_log`` reads its log.)"""

    @pytest.fixture(scope="module", name="stack")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
        workdir = tmp_path_factory.mktemp(name)
        with running_stack(workdir, write_config(workdir, config())) as running:
            yield running

    return stack
