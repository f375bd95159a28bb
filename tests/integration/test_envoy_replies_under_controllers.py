"""Envoy's own replies under a Gateway API controller's config, read by the official SDKs.

A controller (Envoy Gateway, kgateway) writes Envoy's config: none of the bootstrap's
local reply mappers, the ext_proc filter reading every response (the rendered
EnvoyExtensionPolicy's ``response: {body: Buffered}``, with Envoy's details as an
attribute), and Envoy Gateway's router suppressing its x-envoy-* headers. A provider
Envoy cannot connect to (503) or that does not answer within its timeout (504) got the
client Envoy's plain text ("upstream connect error or disconnect/reset before
headers...", "upstream request timeout"), and the OpenAI and Anthropic SDKs raised with
it. Here the real Envoy runs on the gateway's rendered bootstrap changed that way (a
stand-in for the controller's config; kgateway's asks for no attributes and keeps the
router's headers), and the gateway gives each SDK its API's error, while a provider's
own error is still the provider's, translated.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from extproc.devstack import LocalStack
from extproc.envoy_replies import RESPONSE_DETAILS_ATTRIBUTE
from tests.integration.conftest import REFUSED_PORT, default_config, running_stack, write_config

KEY = "team1-key"
UNAVAILABLE = "the upstream provider is unavailable"
TIMED_OUT = "the upstream provider did not respond in time"
# Providers nobody listens on (Envoy's 503), and ones that never answer (its 504).
GPT_AWAY, CLAUDE_AWAY = "gpt-away", "claude-away"
GPT_SILENT, CLAUDE_SILENT = "gpt-silent", "claude-silent"
# Envoy's words, which no client should read.
ENVOY_TEXTS = ("upstream connect error", "no healthy upstream", "upstream request timeout")


class EnvoyGatewayStack(LocalStack):
    """The local stack, its Envoy on the rendered bootstrap as Envoy Gateway writes it
    from the rendered EnvoyExtensionPolicy: no local reply mappers, the ext_proc filter
    asked for every response's headers and body with Envoy's details, and the router's
    x-envoy-* headers suppressed (Envoy Gateway's default)."""

    details = True

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], stdout: Path | None = None
    ) -> None:
        if name == "envoy":
            as_a_controller_writes(self.workdir / "envoy.yaml", details=self.details)
        super()._spawn(name, argv, env, stdout)


class KgatewayStack(EnvoyGatewayStack):
    """As kgateway writes it: no attributes asked for, the router's headers kept."""

    details = False


def as_a_controller_writes(bootstrap: Path, details: bool) -> None:
    rendered = yaml.safe_load(bootstrap.read_text(encoding="utf-8"))
    [listener] = rendered["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["local_reply_config"]
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    ext_proc = filters["envoy.filters.http.ext_proc"]
    ext_proc["processing_mode"].update(response_header_mode="SEND", response_body_mode="BUFFERED")
    if details:
        ext_proc["response_attributes"] = [RESPONSE_DETAILS_ATTRIBUTE]
        # No x-envoy-upstream-service-time on any answer, the provider's included.
        filters["envoy.filters.http.router"]["suppress_envoy_headers"] = True
    else:
        del ext_proc["response_attributes"]
    bootstrap.write_text(yaml.safe_dump(rendered, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A loopback port whose connections the kernel accepts and nobody ever answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        yield listening.getsockname()[1]


def controller_config(workdir: Path, silent_port: int) -> Path:
    raw = default_config()
    away, silent = f"http://127.0.0.1:{REFUSED_PORT}", f"http://127.0.0.1:{silent_port}"
    raw["envoy"]["lean_responses"] = False  # as in Gateway API mode (components/extension)
    raw["providers"] += [
        {"name": "openai-away", "base_url": f"{away}/v1", "api_key": "away-key-123"},
        {"name": "anthropic-away", "type": "anthropic", "base_url": f"{away}/v1",
         "api_key": "away-key-123"},
        {"name": "openai-silent", "base_url": f"{silent}/v1", "api_key": "silent-key-123",
         "timeout_s": 1},
        {"name": "anthropic-silent", "type": "anthropic", "base_url": f"{silent}/v1",
         "api_key": "silent-key-123", "timeout_s": 1},
    ]  # fmt: skip
    raw["models"] += [
        {"name": GPT_AWAY, "provider": "openai-away"},
        {"name": CLAUDE_AWAY, "provider": "anthropic-away"},
        {"name": GPT_SILENT, "provider": "openai-silent"},
        {"name": CLAUDE_SILENT, "provider": "anthropic-silent"},
    ]
    return write_config(workdir, raw)


@pytest.fixture(
    scope="module", params=[EnvoyGatewayStack, KgatewayStack], ids=["envoy-gateway", "kgateway"]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, silent_port: int
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("controller-replies")
    config = controller_config(workdir, silent_port)
    with running_stack(workdir, config, stack_type=request.param) as running:
        yield running


def openai_client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


def anthropic_client(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0)


def messages() -> list[Any]:
    return [{"role": "user", "content": "hi"}]


def assert_no_envoy_words(raised: Exception) -> None:
    said = str(raised)
    assert not [text for text in ENVOY_TEXTS if text in said], said


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code", "message"),
    [
        (GPT_AWAY, 503, "service_unavailable", "upstream_unavailable", UNAVAILABLE),
        (GPT_SILENT, 504, "timeout", "upstream_timeout", TIMED_OUT),
        # Claude for an OpenAI client: Envoy replied to Anthropic's request.
        (CLAUDE_AWAY, 503, "service_unavailable", "upstream_unavailable", UNAVAILABLE),
    ],
)
def test_an_openai_client_gets_openais_error_for_envoys_reply(
    stack: LocalStack, model: str, status: int, error_type: str, code: str, message: str
) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(stack).chat.completions.create(model=model, messages=messages())
    assert raised.value.status_code == status
    assert raised.value.response.headers["content-type"] == "application/json"
    assert raised.value.response.json() == {
        "error": {"message": message, "type": error_type, "param": None, "code": code}
    }
    assert_no_envoy_words(raised.value)


@pytest.mark.parametrize(
    ("model", "status", "error_type", "message"),
    [
        (CLAUDE_AWAY, 503, "overloaded_error", UNAVAILABLE),
        (CLAUDE_SILENT, 504, "timeout_error", TIMED_OUT),
    ],
)
def test_an_anthropic_client_gets_anthropics_error_for_envoys_reply(
    stack: LocalStack, model: str, status: int, error_type: str, message: str
) -> None:
    with pytest.raises(anthropic.InternalServerError) as raised:
        anthropic_client(stack).messages.create(model=model, max_tokens=16, messages=messages())
    assert raised.value.status_code == status
    assert raised.value.response.json() == {
        "type": "error",
        "error": {"type": error_type, "message": message},
    }
    assert_no_envoy_words(raised.value)


def test_a_providers_own_error_is_still_translated_not_taken_for_envoys(
    stack: LocalStack,
) -> None:
    """Anthropic's 529 for Claude reaches an OpenAI client as OpenAI's 503 with the
    provider's message: under Envoy Gateway only Envoy's details tell it from Envoy's
    reply (no x-envoy-upstream-service-time)."""
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(stack).chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=messages(),
            extra_headers={"x-mock-fault": "status=529"},
        )
    assert raised.value.status_code == 503
    error = raised.value.response.json()["error"]
    assert "injected by x-mock-fault" in error["message"]
    assert error["code"] != "upstream_unavailable"
