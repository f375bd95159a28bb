"""Envoy's own replies reach each client in its own API's error shape.

Envoy answers some calls itself: a provider it cannot connect to (503), a body over its
buffer (413). Those replies were shaped by the request as Envoy saw it when it
replied, which by then may be the provider's: an Anthropic SDK's call for Claude on
Bedrock had Bedrock's path and got Bedrock's body (no ``error.type``), an OpenAI
client's call for Claude on Bedrock got Bedrock's body too, and an Anthropic SDK's call
to Anthropic got OpenAI's. Keyed on ``anthropic-version`` instead, an OpenAI client's
call for Claude would get Anthropic's (the gateway adds that header). The gateway now
names the client's API before it changes the request, and Envoy's reply takes its shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import REFUSED_PORT, running_stack

KEY = "team1-key"
UNAVAILABLE = "the upstream provider is unavailable"
# On Anthropic and on Bedrock, neither of which is listening.
CLAUDE_AWAY = "claude-away"
CLAUDE_ON_BEDROCK_AWAY = "anthropic.claude-away-v1:0"
# Over the default config's 1 MiB body limit and Envoy's 64 KiB of slack above it.
TOO_LARGE = "x" * 1_300_000


def unreachable_providers_config(workdir: Path) -> Path:
    dead = f"http://127.0.0.1:{REFUSED_PORT}"
    providers = (
        f'  - {{name: anthropic-away, type: anthropic, base_url: "{dead}/v1",'
        " api_key: away-key-123}\n"
        f'  - {{name: bedrock-away, type: bedrock, base_url: "{dead}",'
        " aws: {region: us-east-1, access_key_id: AKIDAWAY, secret_access_key: away-secret}}\n"
    )
    models = (
        f"  - {{name: {CLAUDE_AWAY}, provider: anthropic-away}}\n"
        f"  - {{name: {CLAUDE_ON_BEDROCK_AWAY}, provider: bedrock-away}}\n"
    )
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:\n" + providers, 1)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + models, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("envoy-replies")
    with running_stack(workdir, unreachable_providers_config(workdir)) as running:
        yield running


def anthropic_client(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0)


def openai_client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


def messages(content: str = "hi") -> list[Any]:
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("model", [CLAUDE_AWAY, CLAUDE_ON_BEDROCK_AWAY])
def test_an_unreachable_provider_is_an_anthropic_error_to_the_anthropic_sdk(
    stack: LocalStack, model: str
) -> None:
    with pytest.raises(anthropic.InternalServerError) as refused:
        anthropic_client(stack).messages.create(model=model, max_tokens=16, messages=messages())
    assert refused.value.status_code == 503
    assert refused.value.response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": UNAVAILABLE},
    }
    assert "x-amzn-errortype" not in refused.value.response.headers


@pytest.mark.parametrize("model", [CLAUDE_AWAY, CLAUDE_ON_BEDROCK_AWAY])
def test_an_unreachable_provider_of_claude_is_an_openai_error_to_the_openai_sdk(
    stack: LocalStack, model: str
) -> None:
    """The request Envoy replied to was Anthropic's (with the anthropic-version the
    gateway added) or Bedrock's (its path): the client speaks OpenAI's API all the same."""
    with pytest.raises(openai.InternalServerError) as refused:
        openai_client(stack).chat.completions.create(model=model, messages=messages())
    assert refused.value.status_code == 503
    assert refused.value.response.json() == {
        "error": {
            "message": UNAVAILABLE,
            "type": "service_unavailable",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
    assert "x-amzn-errortype" not in refused.value.response.headers


def test_a_body_over_envoys_buffer_is_an_anthropic_413(stack: LocalStack) -> None:
    with pytest.raises(anthropic.APIStatusError) as refused:
        anthropic_client(stack).messages.create(
            model=CLAUDE_AWAY, max_tokens=16, messages=messages(TOO_LARGE)
        )
    assert refused.value.status_code == 413
    assert refused.value.response.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "the request body is too large"},
    }


def test_a_body_over_envoys_buffer_stays_an_openai_413_for_claude(stack: LocalStack) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        openai_client(stack).chat.completions.create(
            model=CLAUDE_AWAY, messages=messages(TOO_LARGE)
        )
    assert refused.value.status_code == 413
    error = refused.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
