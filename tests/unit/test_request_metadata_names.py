"""The ``io.aigw`` metadata names only what the request has: a name Envoy's access log and
span would show empty is left out, a count is sent at 0.

Envoy renders a missing key as ``-`` in its access log and leaves a missing span tag out;
an empty string would be logged and tagged as an empty value, and a count left out at 0
would leave an earlier answer's count standing (Envoy merges each answer's metadata into
what it holds, key by key).
"""

from __future__ import annotations

import orjson

from extproc.processor import Processor
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_audio_token_log import span_metadata
from tests.unit.test_openai_audio_pricing import OPENAI_AUTH, gateway

__all__ = ["gateway"]  # the processor over a config with the team1 key

JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"


def chat_body() -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def answer(usage: dict[str, int]) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": ""}}],
        "usage": usage,
    })  # fmt: skip


async def test_an_answer_of_no_completion_tokens_sends_its_counts_at_zero(
    gateway: Processor,
) -> None:
    answers = await run_stream(gateway, [
        request_headers(CHAT, headers=OPENAI_AUTH), request_body(chat_body()),
        response_headers(200, JSON),
        response_body(answer({"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9})),
    ])  # fmt: skip

    metadata = span_metadata(answers)
    assert (metadata["prompt_tokens"], metadata["completion_tokens"]) == (9, 0)
    assert (metadata["cached_tokens"], metadata["cache_write_tokens"]) == (0, 0)
    assert (metadata["api_key_id"], metadata["model"]) == ("team1", "gpt-4o-mini")
    assert metadata["finish_reasons"] == '["stop"]'
    # Nothing of it is empty text: an unknown name is left out.
    assert "" not in metadata.values()
    assert "error_type" not in metadata
    assert "service_tier" not in metadata  # the answer named none


async def test_a_request_refused_before_it_is_known_names_no_caller(
    gateway: Processor,
) -> None:
    answers = await run_stream(gateway, [
        request_headers(CHAT, headers={"authorization": "Bearer not-a-key"}),
    ])  # fmt: skip

    metadata = span_metadata(answers)
    assert metadata["error_type"] == "authentication_error"
    for unknown in ("api_key_id", "user_id", "group_id", "model", "provider", "prompt_tokens"):
        assert unknown not in metadata
    assert "" not in metadata.values()
