"""One streamed exchange played through a processor, for the tests of streamed answers.

A client's request, then the provider's 200 event stream in the chunks a test chose, so a
test states only what differs: the route, the body, the chunks, and whether the stream ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

SSE = {"content-type": "text/event-stream"}


async def play_sse(
    processor: Processor,
    path: str,
    headers: dict[str, str],
    body: bytes,
    chunks: Sequence[bytes],
    *,
    ended: bool = True,
) -> list[ext.ProcessingResponse]:
    """The client sends ``body`` on ``path``; the provider answers 200 with ``chunks`` of
    events. ``ended``: the last chunk ends the stream; False, the client hung up after it
    (Envoy then sends no empty end of stream). Returns the processor's answers."""
    last = len(chunks) - 1
    return await run_stream(
        processor,
        [
            request_headers(path, headers=headers),
            request_body(body),
            response_headers(200, SSE),
            *(
                response_body(chunk, end_of_stream=ended and index == last)
                for index, chunk in enumerate(chunks)
            ),
        ],
    )


def only_line(services: Services) -> dict[str, Any]:
    """The one log line the request wrote (the unit tests' ``MemoryLog``)."""
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]
