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
