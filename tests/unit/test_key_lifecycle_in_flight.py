"""A key revoked or rotated while one of its requests streams: the request finishes,
billed to the key.

The gateway authenticates a request once, at its headers; what happens to the key
later applies to its next request. So a stream running when its key is revoked (or its
secret rotated with no grace) is answered whole and its tokens are counted under the
key's id, the key's holder having used them, rather than lost to billing. Through a
real Valkey and the processor, the revoke landing between the answer's chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.auth.stored_keys import StoredKeys
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.test_stored_keys import BODY, client, gateway, keys, new_key, send

__all__ = ["client", "gateway", "keys"]  # test_stored_keys's fixtures
CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":%s%s}\n\n'
)
ANSWER = [
    CHUNK % (b'[{"index":0,"delta":{"content":"hi"}}]', b""),
    CHUNK % (b"[]", b',"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}')
    + b"data: [DONE]\n\n",
]


async def stream(
    processor: Processor, secret: str, meanwhile: Callable[[], Awaitable[Any]]
) -> list[ext.ProcessingResponse]:
    """A streamed chat request whose key ``meanwhile`` changes after the first chunk."""
    body = orjson.dumps({**orjson.loads(BODY), "stream": True})

    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"})
        yield request_body(body)
        yield response_headers(200, {"content-type": "text/event-stream"})
        yield response_body(ANSWER[0], end_of_stream=False)
        await meanwhile()
        yield response_body(ANSWER[1], end_of_stream=True)

    return [answer async for answer in processor.process(messages())]


@pytest.mark.parametrize("change", ["revoke", "rotate"])
async def test_a_stream_under_way_is_billed_to_its_key(
    gateway: Processor, keys: StoredKeys, services: Services, change: str
) -> None:
    secret, _ = await keys.create(new_key())

    async def meanwhile() -> None:
        if change == "revoke":
            await keys.revoke("ci-bot")
        else:
            await keys.rotate("ci-bot", 0.0)

    answers = await stream(gateway, secret, meanwhile)

    assert not any(answer.HasField("immediate_response") for answer in answers)
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    line = lines[-1]
    assert (line["api_key_id"], line["user_id"], line["http_status_code"]) == (
        "ci-bot",
        "carol",
        200,
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 3)
    # The key's next request is refused.
    assert (await send(gateway, secret))[0] == 401
