"""A Vertex AI provider: its config, the paths and bodies Vertex takes, its errors, its tokens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest

from extproc.backends import refused_body
from extproc.config import ConfigError, parse_config
from extproc.config.model import GcpConfig
from extproc.config.watched_files import secret_files
from extproc.errors import without_secrets
from extproc.providers import vertex_endpoints
from extproc.providers.gcp_tokens import GcpTokenSource
from extproc.translators import anthropic_vertex, vertex_errors

VERTEX = """
providers:
  - name: vertex
    type: vertex
    base_url: https://us-east5-aiplatform.googleapis.com
    gcp:
      project: acme-ai
      region: us-east5
      credentials_file: /secrets/vertex.json
models:
  - name: sonnet
    provider: vertex
    upstream_model: claude-sonnet-4-5@20250929
"""
GCP = GcpConfig(project="acme-ai", region="us-east5")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", {})
    return caught.value.problems


def test_a_vertex_provider_takes_a_project_region_and_key_file() -> None:
    config = parse_config(VERTEX, "test.yaml", {})
    gcp = config.providers[0].gcp
    assert gcp is not None
    assert (gcp.project, gcp.region, gcp.credentials_file) == (
        "acme-ai",
        "us-east5",
        "/secrets/vertex.json",
    )


def test_a_vertex_provider_without_gcp_is_refused_by_its_field_path() -> None:
    text = VERTEX.replace(
        "    gcp:\n      project: acme-ai\n      region: us-east5\n"
        "      credentials_file: /secrets/vertex.json\n",
        "",
    )
    assert any("providers[0].gcp: required for vertex providers" in p for p in problems(text))


def test_gcp_on_another_provider_type_is_refused() -> None:
    text = VERTEX.replace("type: vertex", "type: openai")
    assert any("providers[0].gcp" in p for p in problems(text))


def test_a_vertex_provider_takes_no_api_key() -> None:
    text = VERTEX.replace("    gcp:\n", "    api_key: sk-something\n    gcp:\n")
    found = problems(text)
    assert any("providers[0].api_key" in p and "OAuth2" in p for p in found)
    assert not any("sk-something" in p for p in found), "the key must not be echoed"


@pytest.mark.parametrize("project", ["Acme", "acme/../x", ""])
def test_a_project_id_that_would_break_the_path_is_refused(project: str) -> None:
    assert any("project" in p for p in problems(VERTEX.replace("acme-ai", repr(project))))


def test_the_key_file_is_watched_for_rotation() -> None:
    config = parse_config(VERTEX, "test.yaml", {})
    assert Path("/secrets/vertex.json") in secret_files(config)


# --- Paths and bodies -------------------------------------------------------------------------


def test_claude_is_called_by_rawpredict_with_the_model_in_the_path() -> None:
    path = vertex_endpoints.claude_messages_path(GCP, "claude-sonnet-4-5@20250929", stream=False)
    assert path == (
        "/v1/projects/acme-ai/locations/us-east5/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929:rawPredict"
    )
    streamed = vertex_endpoints.claude_messages_path(GCP, "claude-3-5-haiku@20241022", stream=True)
    assert streamed.endswith("/models/claude-3-5-haiku@20241022:streamRawPredict")


def test_a_model_name_cannot_walk_to_another_path() -> None:
    # A catch-all route sends the client's own name: its slashes are escaped.
    path = vertex_endpoints.claude_messages_path(GCP, "claude-x/../../evil", stream=False)
    assert "/../" not in path
    assert path.endswith("/models/claude-x%2F..%2F..%2Fevil:rawPredict")


def test_other_models_go_to_the_openai_compatible_endpoint() -> None:
    assert vertex_endpoints.openai_chat_path(GCP) == (
        "/v1/projects/acme-ai/locations/us-east5/endpoints/openapi/chat/completions"
    )
    assert not vertex_endpoints.is_claude("google/gemini-2.5-flash")
    assert vertex_endpoints.is_claude("claude-opus-4-1@20250805")


def test_the_messages_body_loses_model_and_gains_vertexs_version() -> None:
    body = {"model": "sonnet", "max_tokens": 10, "stream": True, "messages": []}
    sent = anthropic_vertex.messages_body(body)
    assert "model" not in sent
    assert sent["anthropic_version"] == "vertex-2023-10-16"
    assert sent["stream"] is True, "Vertex reads stream from the body"
    assert body["model"] == "sonnet", "the client's body is left as it was"


def test_the_count_body_names_the_model_without_vertexs_version() -> None:
    # count-tokens refuses "claude-x@1": "is not supported for token counting".
    sent = anthropic_vertex.count_tokens_body({"model": "sonnet", "messages": []}, "claude-x@1")
    assert sent["model"] == "claude-x"
    assert sent["anthropic_version"] == "vertex-2023-10-16"


# --- Errors -----------------------------------------------------------------------------------

QUOTA = "Quota exceeded for aiplatform"
GOOGLE_429 = orjson.dumps(
    {"error": {"code": 429, "message": QUOTA, "status": "RESOURCE_EXHAUSTED"}}
)


def test_googles_error_shape_becomes_openais() -> None:
    rewritten = vertex_errors.in_client_shape(429, GOOGLE_429, "openai")
    assert rewritten is not None
    error = orjson.loads(rewritten)["error"]
    assert error["message"] == "Quota exceeded for aiplatform"
    assert error["code"] == "resource_exhausted"


def test_googles_error_in_a_list_is_read_too() -> None:
    wrapped = b"[" + GOOGLE_429 + b"]"
    rewritten = vertex_errors.in_client_shape(429, wrapped, "anthropic")
    assert rewritten is not None
    assert orjson.loads(rewritten) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Quota exceeded for aiplatform"},
    }


def test_anthropics_own_error_is_not_googles() -> None:
    claude = orjson.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    )
    assert vertex_errors.in_client_shape(400, claude, "anthropic") is None
    assert vertex_errors.in_client_shape(502, b"<html>bad gateway</html>", "openai") is None


def test_a_token_quoted_in_an_error_is_redacted() -> None:
    body = orjson.dumps(
        {"error": {"code": 401, "message": "bad token ya29.a0AfB_xyz-123", "status": "X"}}
    )
    rewritten = vertex_errors.in_client_shape(401, body, "openai")
    assert rewritten is not None and b"ya29." not in rewritten
    assert "ya29" not in without_secrets("Bearer ya29.c.b0Aaekm1K-abc.def")


# --- Tokens -----------------------------------------------------------------------------------


def test_a_key_file_that_is_not_a_service_account_names_the_field(tmp_path: Path) -> None:
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "refresh_token": "secret-rt"}))
    source = GcpTokenSource(
        GcpConfig(project="p", region="r", credentials_file=str(user)), "providers.v.gcp"
    )
    with pytest.raises(ConfigError) as caught:
        asyncio.run(source.start())
    assert caught.value.problems == [
        "providers.v.gcp.credentials_file: not a service account key "
        "(its type must be service_account)"
    ]
    assert "secret-rt" not in str(caught.value)


def test_a_missing_key_file_names_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    source = GcpTokenSource(
        GcpConfig(project="p", region="r", credentials_file=str(missing)), "providers.v.gcp"
    )
    with pytest.raises(ConfigError) as caught:
        asyncio.run(source.start())
    assert caught.value.problems[0].startswith("providers.v.gcp.credentials_file: cannot read")


def test_a_key_without_its_private_key_names_the_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"type": "service_account", "client_email": "a@b.c"}))
    source = GcpTokenSource(
        GcpConfig(project="p", region="r", credentials_file=str(broken)), "providers.v.gcp"
    )
    with pytest.raises(ConfigError) as caught:
        asyncio.run(source.start())
    assert "not a usable service account key" in caught.value.problems[0]


def test_a_list_wrapped_refusal_of_the_gateways_token_keeps_googles_words() -> None:
    # Vertex's OpenAI-compatible endpoint wraps its errors in a one-element list.
    refusal = {"code": 403, "message": "Permission denied on the project", "status": "X"}
    body = refused_body(orjson.dumps([{"error": refusal}]), 403, None, "openai")
    assert "Permission denied on the project" in orjson.loads(body)["error"]["message"]
