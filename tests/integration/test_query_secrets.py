"""A key in the query string in forms no parameter name gives away, through the real
Envoy: after a `;` (which some servers take as a separator), the request's own key
under no name at all, or another service's key (shaped as one) under an innocent name.
Each is refused before any provider, and neither the gateway's log, Envoy's access log
nor any span of the request holds it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    envoy_access_log,
    mock_requests,
    wait_for,
)
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_tracing import running_traced_stack

KEY = "Qv7mQUERYkey-team-3a9c5e1dWr4k"
SECRET = "Lp2xSEMICOLONsecret-6f0b8d2eYh9u"
# Another service's key, shaped as OpenAI's project keys are, under a name that says nothing.
FOREIGN = "sk-proj-" + "Tq8vN3bX5kR1mW7cJ2yH6dL9pF4sZ0gA" * 2
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    def with_the_review_key(config: dict[str, Any]) -> None:
        config["auth"]["api_keys"].append({"id": "query-review", "key": KEY})

    with running_traced_stack(
        tmp_path_factory, collector, "query-secrets", changed=with_the_review_key
    ) as stack:
        yield stack


@pytest.mark.parametrize(
    ("query", "secret"),
    [
        (f"?alt=sse;key={SECRET}", SECRET),
        (f"?a=1;api_key={SECRET}", SECRET),
        (f"?{KEY}", KEY),
        (f"?note=Bearer%20{KEY}", KEY),
        (f"?api-version=2024-10-21&x={FOREIGN}", FOREIGN),
    ],
    ids=["semicolon-key", "semicolon-api-key", "bare-own-key", "own-key-encoded", "key-shaped"],
)
def test_a_key_hidden_in_the_query_reaches_no_provider_log_or_span(
    traced: LocalStack, collector: OtlpReceiver, query: str, secret: str
) -> None:
    before = len(mock_requests(traced))
    answer = httpx.post(
        f"{traced.base_url}/v1/chat/completions{query}",
        content=orjson.dumps(CHAT),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=30.0,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "credential_in_query"
    assert secret not in answer.text
    assert len(mock_requests(traced)) == before
    request_id = answer.headers["x-request-id"]
    [line] = GatewayLog(traced.gateway_log).for_request(request_id)
    assert line["path"] == "/v1/chat/completions"
    logged = wait_for(
        lambda: [text for text in envoy_access_log(traced).splitlines() if request_id in text],
        30,
    )
    trace_id = collector.request_span(request_id).trace_id
    spans = repr(collector.trace(trace_id))
    assert secret not in orjson.dumps(line).decode() + "".join(logged) + spans
