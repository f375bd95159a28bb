"""A key in the request's path, through the real Envoy: its access log and its span.

The gateway's log line showed a path segment holding a credential as ``[redacted]``,
but Envoy's access log ``path`` and the span's ``http.url`` kept the path as sent, the
key with it. Now Envoy records the path as the gateway recorded it, and a path with a
well-known key shape the gateway never answered for (Envoy refused it first) as
``/[redacted]``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_log,
    running_stack,
    wait_for,
    write_config,
)
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.test_tracing import traced_config

ORG_KEY = "team1-key"
# Well-known shapes: a Google API key (as a Gemini client sends it) and an OpenAI key.
GOOGLE_KEY = "AIzaSyD4x9Q2wE7rT1yU6iO3pA8sD5fG0hJ2kLz"
OPENAI_KEY = "sk-proj-q8Wd3T3BlbkFJx7Rk2mPzL9vNc4YhGt6Sb1Ue5Af0Qj"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("path-credentials")
    config = traced_config(workdir, collector.endpoint, content=False)
    gemini = {"name": "gemini-beta", "path_prefix": "/v1beta/models",
              "api": "gemini_generate_content"}  # fmt: skip
    config["routes"] = [gemini, *config["routes"]]
    with running_stack(workdir, write_config(workdir, config)) as running:
        yield running


def traced() -> tuple[str, dict[str, str]]:
    """A fresh trace id and the traceparent that makes it the request's: Envoy's access
    log line and span are found by it, whatever Envoy answered."""
    trace_id = secrets.token_hex(16)
    return trace_id, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def envoy_line(stack: LocalStack, trace_id: str) -> dict[str, Any]:
    found = wait_for(
        lambda: [line for line in envoy_access_log(stack).splitlines() if trace_id in line], 30
    )
    [line] = found
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def server_span(collector: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    spans = wait_for(
        lambda: [s for s in collector.trace(trace_id) if "guid:x-request-id" in s.attributes], 30
    )
    return spans[0]


def test_a_swapped_openai_client_leaves_its_key_in_neither_envoy_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # The openai SDK with its settings swapped: its key in the base URL, a model name as
    # its key. The gateway refuses it (401) and its line showed /openai/[redacted]/...;
    # Envoy's access log and span kept /openai/team1-key/chat/completions.
    trace_id, headers = traced()
    swapped = openai.OpenAI(
        base_url=f"{stack.base_url}/openai/{ORG_KEY}",
        api_key="gpt-4o-mini",
        max_retries=0,
        default_headers=headers,
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        swapped.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    recorded = "/openai/[redacted]/chat/completions"
    assert line["path"] == recorded
    envoy = envoy_line(stack, trace_id)
    assert (envoy["response_code"], envoy["path"]) == (401, recorded)
    span = server_span(collector, trace_id)
    assert span.attributes["http.url"].endswith(f"{stack.base_url.split('//')[1]}{recorded}")
    assert ORG_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_gemini_key_as_the_model_of_the_path_is_in_neither_envoy_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # Gemini's clients name the model in the path: a key given as the model is refused
    # (400 credential_in_model), and Envoy kept the path it received.
    trace_id, headers = traced()
    answer = httpx.post(
        f"{stack.base_url}/v1beta/models/{GOOGLE_KEY}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": ORG_KEY, **headers},
        timeout=30.0,
    )
    assert answer.status_code == 400, answer.text
    envoy = envoy_line(stack, trace_id)
    assert envoy["path"] == "/v1beta/models/[redacted]"
    span = server_span(collector, trace_id)
    assert span.attributes["http.url"].endswith("/v1beta/models/[redacted]")
    assert GOOGLE_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_served_request_with_its_own_key_in_the_path_is_recorded_without_it(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # The /openai route serves whatever follows the model's segment: the client's own
    # key there reached Envoy's records as sent.
    trace_id, headers = traced()
    answer = httpx.post(
        f"{stack.base_url}/openai/gpt-4o-mini/{ORG_KEY}/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {ORG_KEY}", **headers},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    recorded = "/openai/gpt-4o-mini/[redacted]/chat/completions"
    envoy = envoy_line(stack, trace_id)
    assert envoy["path"] == recorded
    assert server_span(collector, trace_id).attributes["http.url"].endswith(recorded)


def test_a_key_shape_in_a_path_envoy_refused_first_is_hidden_by_envoy(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # A body over Envoy's buffer is refused by Envoy (413) before the gateway reads it:
    # the gateway tells Envoy nothing, and Envoy finds the key's shape itself.
    trace_id, headers = traced()
    answer = httpx.post(
        f"{stack.base_url}/openai/{OPENAI_KEY}/chat/completions",
        content=orjson.dumps({**CHAT, "user": "x" * 1_300_000}),
        headers={"authorization": f"Bearer {ORG_KEY}", "content-type": "application/json",
                 **headers},
        timeout=30.0,
    )  # fmt: skip
    assert answer.status_code == 413
    envoy = envoy_line(stack, trace_id)
    assert (envoy["response_code"], envoy["path"]) == (413, "/[redacted]")
    span = server_span(collector, trace_id)
    assert span.attributes["http.url"].endswith("/[redacted]")
    assert OPENAI_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_an_ordinary_request_keeps_its_path_in_both_envoy_records(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    trace_id, headers = traced()
    answer = httpx.post(
        f"{stack.base_url}/openai/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        json=CHAT,
        headers={"authorization": f"Bearer {ORG_KEY}", **headers},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    envoy = envoy_line(stack, trace_id)
    assert envoy["path"] == "/openai/gpt-4o-mini/chat/completions"
    url = server_span(collector, trace_id).attributes["http.url"]
    assert url == f"{stack.base_url}/openai/gpt-4o-mini/chat/completions"
