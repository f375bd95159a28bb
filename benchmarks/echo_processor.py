"""A minimal ext_proc server: every message gets "continue" and nothing else happens.

Scenario (b) of the benchmark. It is the floor of any Python ``grpc.aio``
processor: what Envoy's four blocking messages for a buffered, non-streaming
request (request headers, request body, response headers, response body) cost
before the gateway does any work of its own. Run it with
``python -m benchmarks.echo_processor --port N``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc import aio as grpc_aio

from extproc import event_loop

# One prebuilt answer per phase; an answer without a CommonResponse means CONTINUE.
_CONTINUE: dict[str, Any] = {
    "request_headers": ext.ProcessingResponse(request_headers=ext.HeadersResponse()),
    "request_body": ext.ProcessingResponse(request_body=ext.BodyResponse()),
    "request_trailers": ext.ProcessingResponse(request_trailers=ext.TrailersResponse()),
    "response_headers": ext.ProcessingResponse(response_headers=ext.HeadersResponse()),
    "response_body": ext.ProcessingResponse(response_body=ext.BodyResponse()),
    "response_trailers": ext.ProcessingResponse(response_trailers=ext.TrailersResponse()),
}


class EchoProcessor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            yield _CONTINUE[request.WhichOneof("request")]


async def serve(port: int, servicer: Any = None) -> None:
    """Serve ``servicer`` (the echo processor by default) on 127.0.0.1:``port`` until
    SIGTERM or SIGINT."""
    server = grpc_aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(servicer or EchoProcessor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-loop", choices=event_loop.EVENT_LOOP_KINDS, default="auto")
    args = parser.parse_args()
    event_loop.run(serve(args.port), args.event_loop)


if __name__ == "__main__":
    main()
