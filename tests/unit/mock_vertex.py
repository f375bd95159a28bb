"""The mock's Vertex AI for processor-level tests: the mock serving, a service account key
its token endpoint trusts, and the provider entry that reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
