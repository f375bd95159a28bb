"""The mock's Vertex AI for processor-level tests: the mock serving, a service account key
its token endpoint trusts, the provider entry that reaches it, and a gateway config that
routes Gemini's API to it."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from extproc.mock_llm import MockOptions
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.testing import serve_mock


@asynccontextmanager
async def mock_vertex(key_file: Path) -> AsyncIterator[str]:
    """The mock on a free port, trusting a fresh key written to ``key_file`` (read lazily,
    so written once the mock knows its own address); yields its base URL."""
    async with serve_mock(MockOptions(gcp_service_account=str(key_file))) as mock:
        write_service_account(key_file, token_uri=f"{mock}/token")
        yield mock


def vertex_provider(mock: str, key_file: Path) -> dict[str, Any]:
    """A ``vertex`` provider entry for the mock's Vertex AI, with that key."""
    return {
        "name": "vertex",
        "type": "vertex",
        "base_url": mock,
        "gcp": {"project": "mock-project", "region": "us-east5", "credentials_file": str(key_file)},
    }


@asynccontextmanager
async def gemini_on_mock_vertex(
    raw: dict[str, Any], key_file: Path, price: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A copy of the gateway config ``raw`` with Gemini's API routed and gemini-2.5-flash
    served by the mock's Vertex AI (priced at ``price`` when given), as YAML; the mock
    serves while the context is open."""
    async with mock_vertex(key_file) as mock:
        raw = copy.deepcopy(raw)
        raw["providers"].append(vertex_provider(mock, key_file))
        raw["models"].append(
            {
                "name": "gemini-2.5-flash",
                "provider": "vertex",
                "upstream_model": "google/gemini-2.5-flash",
            }
        )
        if price is not None:
            raw["pricing"]["models"]["gemini-2.5-flash"] = price
        raw["routes"].insert(
            0,
            {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"},
        )
        yield yaml.safe_dump(raw)
