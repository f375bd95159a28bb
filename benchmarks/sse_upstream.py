"""A fast streaming upstream: ``POST /v1/chat/completions`` answered with N SSE chunks.

The streaming rows need a provider that is never the bottleneck, which the
mock provider (aiohttp, one JSON encode per event) would be. This one is a raw
``asyncio.Protocol``: every event of the answer is encoded once at start-up,
already framed as an HTTP chunk, and a request costs one ``transport.write``
per event. Each event is written (sent to the socket) on its own, as a
provider flushes each token; whether Envoy then coalesces them is what the
client measures. With ``--interval-ms`` the events are paced instead; a request
with ``x-bench-first-gap-ms: N`` gets a pause of N ms after its first event only
(how the streaming rows measure time to first token).

The answer is an OpenAI stream for ``gpt-4o-mini``: N ``chat.completion.chunk``
events (the first with the assistant role, content chunks, one with
``finish_reason: "stop"``, the last with empty choices and ``usage``, as
OpenAI sends it with ``stream_options.include_usage``), then ``data: [DONE]``.
``GET /health`` answers 200. Run it with
``python -m benchmarks.sse_upstream --port N [--events 1000] [--interval-ms 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import dataclass
from typing import Any

from benchmarks.http_wire import WireError

MODEL = "gpt-4o-mini"
DEFAULT_EVENTS = 1000
PROMPT_TOKENS = 152
# A request header: pause this long after the first event (then send the rest at
# full speed), so the first event travels alone, as a real model's first token
# does, and time to first token is not hidden behind the bulk of the stream.
FIRST_GAP_HEADER = "x-bench-first-gap-ms"
_HEAD_START = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)
_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]


def stream_events(count: int, model: str = MODEL) -> list[bytes]:
    """The ``count`` chunk events of one answer, then ``data: [DONE]``, each ``data: ...\\n\\n``."""
    if count < 3:
        raise ValueError("a stream needs at least 3 chunks (role, finish, usage)")

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        document = {
            "id": "chatcmpl-bench-stream",
            "object": "chat.completion.chunk",
            "created": 1735689600,
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, str], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    content_chunks = count - 3
    events = [chunk(choice({"role": "assistant", "content": ""}))]
    events += [chunk(choice({"content": f" tok{index}"})) for index in range(content_chunks)]
    events.append(chunk(choice({}, "stop")))
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": content_chunks,
        "total_tokens": PROMPT_TOKENS + content_chunks,
    }
    events.append(chunk([], usage))
    events.append(b"data: [DONE]\n\n")
    return events


def http_chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: requests in order, each answered once its body is complete."""

    def __init__(self, framed_events: list[bytes], interval_s: float) -> None:
        self._events = framed_events
        self._interval_s = interval_s
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._requests: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._worker = asyncio.get_running_loop().create_task(self._answer_requests())

    def connection_lost(self, exc: Exception | None) -> None:
        self._requests.put_nowait(None)
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (request := self._take_request()) is not None:
                self._requests.put_nowait(request)
        except WireError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    def _take_request(self) -> _Request | None:
        """The next complete request (its body is not needed), consuming its bytes."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self._buffer[:end].decode("latin-1")
        request_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = self._buffer[end + 4 :]
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body_end = _chunked_body_end(rest)
            if body_end is None:
                return None
            self._buffer = rest[body_end:]
        else:
            length_text = headers.get("content-length", "0") or "0"
            if not length_text.isdigit():
                raise WireError(f"bad content-length {length_text[:20]!r}")
            length = int(length_text)
            if len(rest) < length:
                return None
            self._buffer = rest[length:]
        method, _, target = request_line.partition(" ")
        return _Request(method, target.partition(" ")[0], headers)

    async def _answer_requests(self) -> None:
        while (request := await self._requests.get()) is not None:
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            if request.method == "POST" and request.path.endswith("/chat/completions"):
                gap = request.headers.get(FIRST_GAP_HEADER, "")
                gap_ms = float(gap) if gap.replace(".", "", 1).isdigit() else 0.0
                await self._stream(transport, gap_ms)
            elif request.path == "/health":
                transport.write(_HEALTH)
            else:
                transport.write(_NOT_FOUND)

    async def _stream(self, transport: asyncio.Transport, first_gap_ms: float) -> None:
        # The gap is echoed, so a client can tell the header reached the upstream.
        transport.write(_HEAD_START + f"{FIRST_GAP_HEADER}: {first_gap_ms:g}\r\n\r\n".encode())
        for index, event in enumerate(self._events):
            if not self._writable.is_set():
                await self._writable.wait()
            if transport.is_closing():
                return
            # One write per event: asyncio sends it at once when the socket has room.
            transport.write(event)
            if index == 0 and first_gap_ms:
                await asyncio.sleep(first_gap_ms / 1000)
            elif self._interval_s:
                await asyncio.sleep(self._interval_s)
        transport.write(_LAST_CHUNK)


def _chunked_body_end(data: bytes) -> int | None:
    """Where a chunked request body in ``data`` ends, or None if it is not complete yet."""
    position = 0
    while position < len(data):
        end = data.find(b"\r\n", position)
        if end < 0:
            return None
        size_text = data[position:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise WireError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            final = data.find(b"\r\n\r\n", end)
            return None if final < 0 else final + 4
        position = end + 2 + size + 2
    return None


async def start_server(port: int, events: int, interval_s: float = 0.0) -> asyncio.Server:
    """Listening on 127.0.0.1:``port`` (0: any free port) until the server is closed."""
    framed = [http_chunk(event) for event in stream_events(events)]
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Connection(framed, interval_s), "127.0.0.1", port, backlog=256
    )


async def serve(port: int, events: int, interval_s: float) -> None:
    server = await start_server(port, events, interval_s)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with server:
        await stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="chunks per answer")
    parser.add_argument("--interval-ms", type=float, default=0.0, help="pause between events")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.events, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
