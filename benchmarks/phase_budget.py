"""The gateway's own CPU per phase, without gRPC: the processor fed real ext_proc messages.

``python -m benchmarks.phase_budget`` plays N requests through the default
stages in-process (the messages Envoy would send, built by ``extproc.testing``)
and prints the median CPU time of each phase's answer and of the finishing work
(log line, metrics, rollup). What gRPC and Envoy add per message is measured by
``make bench`` (the echo processor); this is the part the gateway's code owns.

Six set-ups: the default config, the same with one quota rule in an embedded
Valkey (the reservation's Redis round trip is I/O; the CPU is what is shown), the
default config answering a stream: 100 OpenAI-shaped events (each with its
``"finish_reason":null``, as OpenAI writes them) in body chunks of 2 KB, cut wherever
2 KB falls, as Envoy passes a fast stream on; its response body column is the sum
over the chunks. Most of a stream's cost is per byte, which the one-message rows
do not show. The default config on the lean path, as the load bench's row (c)
plays it: Envoy's body hints with the request headers, no response headers message,
the answer's status as an attribute of its one body message (``response_path``). And
the default config with a 12 KB prompt (a conversation's history) and with a coding
agent's 100 KB request (a longer history, forty tool schemas): the request body's
checks cost per byte, which the bench's 800-byte body hardly shows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from extproc.config import load_config
from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.processor import ATTRIBUTES_KEY, Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "config" / "gateway.yaml"
QUOTA_RULE = (
    "\nquotas:\n  rules:\n    - {name: key-rpm, subject: api_key, requests_per_minute: 100000000}\n"
)
PHASES = ("request_headers", "request_body", "response_headers", "response_body", "done")
BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            {"role": "user", "content": "Summarise the following text please. " * 12},
        ],
    }
)
# A conversation's worth of prompt (about 12 KB, lines of prose, as chat histories
# and pasted documents are): the request body's checks cost per byte.
LONG_BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            *(
                {
                    "role": "user" if turn % 2 == 0 else "assistant",
                    "content": 'The report says the "quarterly" figures rose by 4%.\n' * 18,
                }
                for turn in range(12)
            ),
        ],
    }
)
# An agent's request (a coding agent's, about 100 KB): a long history and forty tool
# schemas, whose brackets the body's nesting check counts.
_TOOL = {
    "type": "function",
    "function": {
        "name": "edit_file",
        "description": "Replace a range of lines of a file with new text. " * 3,
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "lines": {"type": "array", "items": {"type": "integer"}},
                "text": {"type": "string"},
            },
            "required": ["path", "lines", "text"],
        },
    },
}
AGENT_BODY = orjson.dumps(
    {**orjson.loads(LONG_BODY), "tools": [_TOOL] * 40}
    | {"messages": orjson.loads(LONG_BODY)["messages"] * 7}
)
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 2, "total_tokens": 122},
    }
)


STREAM_EVENTS = 100
STREAM_CHUNK_BYTES = 2048


def _stream_event(index: int) -> bytes:
    last = index == STREAM_EVENTS - 1
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "delta": {} if last else {"content": f" word{index}"},
                "logprobs": None,
                "finish_reason": "stop" if last else None,
            }
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# What the gateway's hidden usage chunk and the end marker close the stream with.
_STREAM_END = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":120,"completion_tokens":99,"total_tokens":219}}\n\n'
    b"data: [DONE]\n\n"
)
STREAM = b"".join(_stream_event(i) for i in range(STREAM_EVENTS)) + _STREAM_END


def messages(stream: bool = False, lean: bool = False, body: bytes = BODY) -> list[tuple[str, Any]]:
    """The messages of one request, each with its phase (a stream's body in chunks; on
    the lean path, no response headers)."""
    head = request_headers(
        "/v1/chat/completions",
        # Envoy's connection manager sets x-request-id on every request.
        headers={
            "authorization": "Bearer team1-key",
            "content-type": "application/json",
            "x-request-id": "5f0c8a9e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
        },
    )
    if lean:
        # Envoy's json_to_metadata reading of the body (extproc.envoy_bootstrap).
        head.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(
            {"model": "gpt-4o-mini", "stream": False}
        )
        answer = response_body(ANSWER)
        answer.attributes[ATTRIBUTES_KEY].update(
            {"response.code": 200, "response.code_details": "via_upstream"}
        )
        return [
            ("request_headers", head),
            ("request_body", request_body(body)),
            ("response_body", answer),
        ]
    if not stream:
        return [
            ("request_headers", head),
            ("request_body", request_body(body)),
            ("response_headers", response_headers(200, {"x-envoy-upstream-service-time": "1"})),
            ("response_body", response_body(ANSWER)),
        ]
    cuts = range(0, len(STREAM), STREAM_CHUNK_BYTES)
    return [
        ("request_headers", head),
        ("request_body", request_body(orjson.dumps({**orjson.loads(body), "stream": True}))),
        ("response_headers", response_headers(200, {"content-type": "text/event-stream"})),
        *(
            (
                "response_body",
                response_body(
                    STREAM[at : at + STREAM_CHUNK_BYTES], at + STREAM_CHUNK_BYTES >= len(STREAM)
                ),
            )
            for at in cuts
        ),
    ]


async def one_request(
    processor: Processor,
    spent: dict[str, list[float]],
    stream: bool = False,
    lean: bool = False,
    body: bytes = BODY,
) -> None:
    sent = messages(stream, lean, body)
    took = dict.fromkeys(PHASES, 0.0)

    async def feed() -> AsyncIterator[Any]:
        # The processor asks for message k+1 only after answering message k.
        for phase, message in sent:
            started = time.thread_time()
            yield message
            took[phase] += time.thread_time() - started

    started = time.thread_time()
    async for _ in processor.process(feed()):
        pass
    took["done"] = time.thread_time() - started - sum(took[phase] for phase in PHASES[:4])
    for phase, value in took.items():
        spent[phase].append(value)


async def measure(
    config_text: str,
    requests: int,
    with_store: bool,
    stream: bool = False,
    lean: bool = False,
    body: bytes = BODY,
) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="aigw-phases-"))
    path = workdir / "gateway.yaml"
    path.write_text(config_text)
    config = load_config(path)
    valkey = EmbeddedValkey(workdir / "valkey") if with_store else None
    services = Services(GatewayMetrics(), AccessLog(stdout=False, file=str(workdir / "log")))
    if valkey is not None:
        valkey.start()
        services.quota_store = QuotaStore(connect(valkey.url, 2.0), config.store.key_prefix)
        await services.quota_store.start()
    try:
        runtime = Runtime(config, services)
        processor = Processor(lambda: runtime, default_stages())
        spent: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for _ in range(requests // 10):  # warm-up
            await one_request(processor, {phase: [] for phase in PHASES}, stream, lean, body)
        for _ in range(requests):
            await one_request(processor, spent, stream, lean, body)
        return {phase: statistics.median(values) * 1e6 for phase, values in spent.items()}
    finally:
        if services.quota_store is not None:
            await services.quota_store.close()
        if valkey is not None:
            valkey.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    text = CONFIG.read_text()
    rows = {
        "default config": asyncio.run(measure(text, args.requests, with_store=False)),
        "+ one quota rule (Valkey)": asyncio.run(
            measure(text + QUOTA_RULE, args.requests, with_store=True)
        ),
        "default config, streamed": asyncio.run(
            measure(text, args.requests, with_store=False, stream=True)
        ),
        "default config, lean (c)": asyncio.run(
            measure(text, args.requests, with_store=False, lean=True)
        ),
        "default config, 12 KB prompt": asyncio.run(
            measure(text, args.requests, with_store=False, body=LONG_BODY)
        ),
        "default config, 100 KB agent": asyncio.run(
            measure(text, args.requests, with_store=False, body=AGENT_BODY)
        ),
    }
    print(f"{'median CPU per phase, us':28s}" + "".join(f"{p:>18s}" for p in PHASES) + "     total")
    for name, row in rows.items():
        cells = "".join(f"{row[p]:18.1f}" for p in PHASES)
        print(f"{name:28s}{cells}{sum(row.values()):10.1f}")


if __name__ == "__main__":
    main()
