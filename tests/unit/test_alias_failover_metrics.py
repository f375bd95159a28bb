"""A request that asked for a model by an alias counts under the alias in every series,
after failover too: the attempt Envoy retried in aigw_upstream_errors_total, the failover
in aigw_failovers_total and the request itself, as its log line and rollup name it. No
series names the model's own name (the chain's), which the client never sent. The
gateway's note to the attempts (x-aigw-failover-request) carries the alias, as it carries
a model group's name (tests/unit/test_model_groups.py)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from extproc.errors import UpstreamError
from extproc.model_groups import Balancer
from extproc.runtime import Services
from extproc.stages.attempt import attempt_request
from tests.unit.test_model_groups import (
    CONFIG,
    sample,
    services_with,
    translated_fallback_answer_model,
)
from tests.unit.test_model_groups import failed_over as failed_over_in
from tests.unit.test_span_cache_tokens import span_attributes

# gpt-east, asked for as `fast`, fails over to gpt-west.
WITH_ALIAS = CONFIG.replace(
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}\n",
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat,"
    " aliases: [fast], fallbacks: [gpt-west]}\n",
)


async def failed_over(services: Services, model: str) -> list[Any]:
    """A request for ``model`` (gpt-east or its alias) whose provider answers 503: Envoy
    retries on gpt-west, which answers."""
    return await failed_over_in(services, model, WITH_ALIAS)


async def test_a_failover_asked_by_an_alias_counts_under_the_alias_as_its_request_does() -> None:
    services = services_with(Balancer())
    await failed_over(services, "fast")
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["provider"], line["upstream_model"]) == ("fast", "west", "gpt-4o")
    # The attempt Envoy retried, the failover and the request: one model, the alias, so
    # that errors / requests per model holds; the providers those that answered.
    errors = {"model": "fast", "provider": "east", "status_code": "503"}
    assert sample(services, "aigw_upstream_errors_total", **errors) == 1
    assert sample(services, "aigw_failovers_total", model="fast", to_model="gpt-west") == 1
    requests = {"route": "chat", "model": "fast", "provider": "west", "status_code": "200"}
    assert sample(services, "aigw_requests_total", **requests) == 1
    page = generate_latest(services.metrics.registry).decode()
    assert 'model="gpt-east"' not in page
    # The span names the alias too, as the log line does.
    span = span_attributes(await failed_over(services_with(Balancer()), "fast"))
    assert span["gen_ai.request.model"] == "fast"
    assert "aigw.group_member" not in span


async def test_a_failover_asked_by_the_models_name_still_counts_under_it() -> None:
    services = services_with(Balancer())
    await failed_over(services, "gpt-east")
    errors = {"model": "gpt-east", "provider": "east", "status_code": "503"}
    assert sample(services, "aigw_upstream_errors_total", **errors) == 1
    assert sample(services, "aigw_failovers_total", model="gpt-east", to_model="gpt-west") == 1
    page = generate_latest(services.metrics.registry).decode()
    assert 'model="fast"' not in page


def test_the_note_to_the_attempts_is_read_with_its_alias() -> None:
    client = attempt_request({"api": "openai_chat", "headers": {}, "asked": "fast"})
    assert (client.asked, client.group) == ("fast", None)
    assert attempt_request({"api": "openai_chat", "headers": {}}).asked is None
    # One the gateway did not write is refused, never guessed at.
    with pytest.raises(UpstreamError) as refused:
        attempt_request({"api": "openai_chat", "headers": {}, "asked": 7})
    assert refused.value.code == "failover_misrouted"


async def test_a_fallbacks_translated_answer_names_the_alias() -> None:
    # Titan asked for as `vectors`: the fallback's translated answer names the alias the
    # client asked by, as the primary's does (Bedrock names no model: providers.md).
    assert await translated_fallback_answer_model("vectors", aliases=["vectors"]) == "vectors"
