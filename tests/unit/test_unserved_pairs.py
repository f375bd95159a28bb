"""A request its provider cannot serve is refused as soon as its model is known: before
the quota stage counts it against a request limit (its log line shows no quota decision)."""

from __future__ import annotations

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream

AUTH = {"authorization": "Bearer team1-key"}
HELLO = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO}),
        ("/v1/embeddings", {"model": "claude-3-5-haiku-latest", "input": "x"}),
        ("/v1/embeddings", {"model": "titan-embed", "input": ["one", "two"]}),
        ("/v1/responses", {"model": "claude-3-5-haiku-latest", "input": "x"}),
        # Text completions: OpenAI-compatible providers only.
        ("/v1/completions", {"model": "claude-3-5-haiku-latest", "prompt": "x"}),
        ("/v1/completions", {"model": "titan", "prompt": "x"}),
        # What Converse cannot do, at the body's top level.
        ("/v1/chat/completions", {"model": "titan", "messages": HELLO, "service_tier": "scale"}),
        ("/v1/chat/completions", {"model": "titan", "messages": HELLO, "n": 2}),
    ],
)
async def test_an_unserved_pair_is_refused_before_the_quota(
    processor: Processor, services: Services, path: str, body: dict[str, object]
) -> None:
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(orjson.dumps(body))]
    )
    assert answers[1].immediate_response.status.code == 400
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["quota_decision"] is None  # the quota stage never saw it
    assert line["http_status_code"] == 400


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/bedrock/" + "m" * 300])
async def test_a_model_name_longer_than_any_providers_is_a_400_before_the_quota(
    processor: Processor, services: Services, path: str
) -> None:
    # The Bedrock route takes any model id from its path: a 300-character one would have
    # gone to the provider, and into the log line, the metrics and the rollup keys.
    body = {"model": "b" * 300, "messages": HELLO}
    answers = await run_stream(
        processor, [request_headers(path, headers=AUTH), request_body(orjson.dumps(body))]
    )
    assert answers[1].immediate_response.status.code == 400
    assert b"longer than 256 characters" in answers[1].immediate_response.body
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["quota_decision"] is None
