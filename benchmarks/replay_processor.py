"""The gateway's answers with none of its work: the floor of the gateway's protocol.

Scenario (r) of the benchmark. The gateway's answers to the bench request are
captured once, in process (``capture_answers``: the default config's stages play
the messages Envoy sends the gateway for it, body hints included, so the answers
choose the same processing modes as the gateway's), and this server replays them,
each phase's prebuilt answer to each message, doing nothing else. Envoy runs the gateway's own
bootstrap, so it does everything it does for the gateway: picks the provider route
again after the body (``clear_route_cache``), applies the header mutations (the
client's key out, the provider's in), stores the dynamic metadata, writes its JSON
access log. The row therefore shows what the gateway's protocol costs Envoy and a
``grpc.aio`` server when the gateway's Python costs nothing: the best (c) could
ever reach, to set beside (b) (docs/performance.md).

Run it with ``python -m benchmarks.replay_processor --port N --answers FILE``;
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from benchmarks.echo_processor import serve
from benchmarks.envoy_configs import CHAT_PATH, COMPLETION
from benchmarks.load_generator import DEFAULT_AUTHORIZATION, MODEL, request_body
from extproc import event_loop, testing
from extproc.config.model import GatewayConfig
from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.processor import ATTRIBUTES_KEY, Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

PHASES = ("request_headers", "request_body", "response_headers", "response_body")
# Envoy's json_to_metadata reading of the bench body (extproc.envoy_bootstrap).
BODY_HINTS = {"model": MODEL, "stream": False}


async def _play(config: GatewayConfig) -> dict[str, ext.ProcessingResponse]:
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    processor = Processor(lambda: runtime, default_stages())
    headers = {
        "authorization": DEFAULT_AUTHORIZATION,
        "content-type": "application/json",
        "x-request-id": "5f0c8a9e-1b2c-4d3e-8f90-a1b2c3d4e5f6",
    }
    first = testing.request_headers(CHAT_PATH, headers=headers)
    if config.envoy.lean_responses:
        first.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(BODY_HINTS)
    body = testing.request_body(request_body())
    [headers_answer, _] = await testing.run_stream(processor, [first, body])
    lean = headers_answer.mode_override.response_header_mode == ProcessingMode.SKIP
    # The response as Envoy sends it on the path the gateway chose: on the lean
    # path no headers message, the status coming as an attribute of the body's.
    response = testing.response_body(json.dumps(COMPLETION, separators=(",", ":")).encode())
    response.attributes[ATTRIBUTES_KEY].update(
        {"response.code": 200, "response.code_details": "via_upstream"}
    )
    messages = [first, body]
    if not lean:
        messages.append(testing.response_headers(200, {"x-envoy-upstream-service-time": "1"}))
    answers = await testing.run_stream(processor, [*messages, response])
    return {str(answer.WhichOneof("response")): answer for answer in answers}


def capture_answers(config: GatewayConfig) -> dict[str, bytes]:
    """The gateway's answer to each message Envoy sends for the bench request, serialised."""
    answers = asyncio.run(_play(config))
    lean = [phase for phase in PHASES if phase != "response_headers"]
    if list(answers) not in (list(PHASES), lean):
        raise RuntimeError(
            f"the gateway did not answer the bench request phase by phase: {list(answers)}"
        )
    return {phase: answer.SerializeToString() for phase, answer in answers.items()}


def write_answers(path: Path, answers: dict[str, bytes]) -> None:
    path.write_text(json.dumps({phase: data.hex() for phase, data in answers.items()}))


def read_answers(path: Path) -> dict[str, ext.ProcessingResponse]:
    stored: dict[str, str] = json.loads(path.read_text())
    return {
        phase: ext.ProcessingResponse.FromString(bytes.fromhex(data))
        for phase, data in stored.items()
    }


class ReplayProcessor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, answers: dict[str, ext.ProcessingResponse]) -> None:
        self._answers = answers

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        answers = self._answers
        async for request in request_iterator:
            yield answers[request.WhichOneof("request")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", type=Path, required=True)
    parser.add_argument("--event-loop", choices=event_loop.EVENT_LOOP_KINDS, default="auto")
    args = parser.parse_args()
    replay = ReplayProcessor(read_answers(args.answers))
    event_loop.run(serve(args.port, replay), args.event_loop)


if __name__ == "__main__":
    main()
