"""Envoy's access log names the model the client asked for and the model that answered.

The workshop reads Envoy's own access log for each request: provider, request model,
response model, tokens, duration. A model whose provider answers under another name (a
dated snapshot, as OpenAI answers `gpt-4o-2024-08-06` for `gpt-4o`) shows both, as the
gateway's own log line does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_access_line,
    running_stack,
    wait_for,
    write_config,
)

SNAPSHOT = "gpt-4o-2024-08-06"


@pytest.fixture(scope="module")
def snapshot_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The default config with `gpt-4o-pinned`, sent to the mock (which answers under the
    name it was sent) as a dated snapshot."""
    workdir = tmp_path_factory.mktemp("access-log-models")
    raw = default_config()
    raw["models"].append({"name": "gpt-4o-pinned", "provider": "mock", "upstream_model": SNAPSHOT})
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def test_envoys_access_log_shows_the_request_and_the_response_model(
    snapshot_stack: LocalStack,
) -> None:
    client = OpenAI(base_url=f"{snapshot_stack.base_url}/openai", api_key="team1-key")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-pinned", messages=[{"role": "user", "content": "which model?"}]
    )
    answer = raw.parse()
    assert answer.model == SNAPSHOT
    request_id = raw.headers["x-request-id"]
    [line] = GatewayLog(snapshot_stack.gateway_log).for_request(request_id)
    envoy = wait_for(lambda: envoy_access_line(snapshot_stack, request_id))
    assert envoy is not None, "no Envoy access log line for the request"
    assert (envoy["model"], envoy["response_model"]) == ("gpt-4o-pinned", SNAPSHOT)
    assert (line["model"], line["response_model"]) == ("gpt-4o-pinned", SNAPSHOT)
    assert envoy["provider"] == "mock"
    assert answer.usage is not None
    assert int(envoy["total_tokens"]) == answer.usage.total_tokens
    assert isinstance(envoy["duration_ms"], int)  # the duration, as Envoy measured it


def test_a_stream_without_a_usage_report_shows_the_model_its_chunks_name(
    snapshot_stack: LocalStack,
) -> None:
    """A provider that ignores `stream_options.include_usage` (the mock's `no_usage`) sends
    no usage chunk; every chunk still names the model that answered. Before, the gateway
    read it from the usage chunk alone, and both logs said `response_model: null`."""
    client = OpenAI(base_url=f"{snapshot_stack.base_url}/openai", api_key="team1-key")
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-pinned",
        messages=[{"role": "user", "content": "which model?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": "no_usage=1"},
    ) as raw:
        chunks = list(raw.parse())
        request_id = raw.headers["x-request-id"]
    assert {chunk.model for chunk in chunks} == {SNAPSHOT}
    assert all(chunk.usage is None for chunk in chunks)
    [line] = GatewayLog(snapshot_stack.gateway_log).for_request(request_id)
    envoy = wait_for(lambda: envoy_access_line(snapshot_stack, request_id))
    assert envoy is not None, "no Envoy access log line for the request"
    assert line["usage_estimated"] is True
    assert (line["model"], line["response_model"]) == ("gpt-4o-pinned", SNAPSHOT)
    assert (envoy["model"], envoy["response_model"]) == ("gpt-4o-pinned", SNAPSHOT)
