"""A large request to Bedrock is hashed for its signature off the event loop.

SigV4 signs the SHA-256 of the whole body, and the gateway hashed it on the event loop:
an InvokeModel or Converse body with pictures or documents runs to megabytes (64 MiB took
68 ms to hash), and every open request, health check and metrics scrape waited through
it. Now a body of ``HASHED_OFF_LOOP_BYTES`` or more is hashed in a thread, and the hash
handed to the signer, which does not hash it again; a small body is hashed inline, as
before (a thread hop costs more than hashing it).

Each request is played through the real processor with the default config; what it
sends upstream goes to the mock provider, which verifies the signature as Bedrock does.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import botocore.auth
import httpx
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import parse_config
from extproc.context import PhaseOutput, RequestContext
from extproc.devstack import DEFAULT_CONFIG
from extproc.headers import REQUEST_ID
from extproc.processor import Processor
from extproc.providers import aws_signer
from extproc.providers.aws_signer import HASHED_OFF_LOOP_BYTES
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream, serve_mock
from tests.unit.conftest import MemoryLog
from tests.unit.test_aliases_and_failover import attempt_on
from tests.unit.test_anthropic_failover import running
from tests.unit.test_gemini_bedrock_failover import admitted, bedrock_path
from tests.unit.test_gemini_bedrock_failover import config as bedrock_config

AUTH = {"authorization": "Bearer team1-key"}
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"


def converse(text: str) -> bytes:
    return orjson.dumps(
        {
            "messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": 20},
        }
    )


# A document pasted into the prompt: over the threshold, within the route's body limit.
LARGE = converse("The quarterly report, page by page. " * 9_000)
SMALL = converse("Hello")


class HeldHash:
    """``hashlib.sha256`` whose hashing of a large body waits until the test releases it,
    noting where it ran; any smaller input (the signing key's HMACs) is hashed at once."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_by_test: bool | None = None
        self.threads: list[threading.Thread] = []

    def __call__(self, data: bytes = b"", **options: Any) -> Any:
        if len(data) >= HASHED_OFF_LOOP_BYTES:
            self.threads.append(threading.current_thread())
            self.started.set()
            # A guard against a deadlock (the loop itself waiting here), not a timing check:
            # False when the test never got to release it.
            self.released_by_test = self.release.wait(20)
        return hashlib.sha256(data, **options)


@dataclass
class Gateway:
    processor: Processor
    # The host Bedrock's signer signs (the provider's base_url), where Envoy sends it.
    signed_host: str


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """The default config's processor, its runtime started so AWS credentials load."""
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    runtime = Runtime(parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {}), services)
    await runtime.start()
    yield Gateway(
        Processor(lambda: runtime, default_stages()), runtime.signers["mock-bedrock"].host
    )
    await runtime.close()


def sent_upstream(answers: list[ext.ProcessingResponse]) -> tuple[dict[str, str], bytes]:
    """The headers the gateway set on the request to the provider, and its body."""
    [answer] = [a for a in answers if a.HasField("request_body")]
    mutation = answer.request_body.response
    headers = {
        h.header.key: h.header.raw_value.decode() for h in mutation.header_mutation.set_headers
    }
    return headers, mutation.body_mutation.body


async def send(gateway: Gateway, body: bytes) -> tuple[dict[str, str], bytes]:
    """What the gateway sends upstream for a Converse call with ``body``: its headers, and
    its body (the client's, when the gateway left it as it was)."""
    messages = [request_headers(CONVERSE, headers=AUTH), request_body(body)]
    answers = await run_stream(gateway.processor, messages)
    assert not any(a.HasField("immediate_response") for a in answers)
    headers, sent = sent_upstream(answers)
    return headers, sent or body


async def bedrock_answer(gateway: Gateway, headers: dict[str, str], body: bytes) -> httpx.Response:
    """The request as Envoy sends it (to the signed host), answered by the mock provider,
    which checks its signature as Bedrock does."""
    sent = {
        name: value
        for name, value in headers.items()
        if not name.startswith((":", "x-aigw", "x-envoy"))
    }
    async with serve_mock() as url, httpx.AsyncClient(base_url=url) as client:
        return await client.post(
            headers.get(":path", CONVERSE),
            content=body,
            headers={**sent, "host": gateway.signed_host},
        )


async def test_the_loop_answers_while_a_large_body_is_hashed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldHash()
    monkeypatch.setattr(botocore.auth, "sha256", held)
    monkeypatch.setattr(aws_signer, "hashlib", SimpleNamespace(sha256=held))

    large = asyncio.create_task(send(gateway, LARGE))
    await asyncio.to_thread(held.started.wait, 20)
    # While the large body is being hashed, a small request is answered whole.
    small_headers, _ = await send(gateway, SMALL)
    assert small_headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    held.release.set()
    headers, body = await large

    assert held.released_by_test is True, "the large body was hashed on the event loop"
    assert threading.main_thread() not in held.threads
    # The hash computed in the thread signed the request: Bedrock (the mock) accepts it.
    answer = await bedrock_answer(gateway, headers, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["message"]["role"] == "assistant"


@pytest.mark.parametrize("body", [LARGE, SMALL], ids=["large", "small"])
async def test_a_body_is_signed_as_bedrock_checks(gateway: Gateway, body: bytes) -> None:
    headers, sent = await send(gateway, body)
    assert len(sent) == len(body)
    answer = await bedrock_answer(gateway, headers, sent)
    assert answer.status_code == 200, answer.text


async def test_a_failover_attempt_with_a_large_body_is_signed_as_bedrock_checks() -> None:
    """The per-attempt filter signs each attempt for its own member's account: a large
    body is hashed off the loop there too, and the attempt goes out signed."""
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    cfg = bedrock_config()
    path = bedrock_path("llama-eu", "converse")
    _, body = await admitted(cfg, services, path, orjson.loads(LARGE))
    async with running(cfg, services) as runtime:
        ctx = RequestContext(runtime=runtime)
        ctx.attributes = attempt_on("mock-bedrock")
        ctx.request_headers = {":path": path, REQUEST_ID: "req-9"}
        stage = AttemptStage()
        stage.request_headers(ctx, PhaseOutput())
        out = PhaseOutput()
        pending = stage.request_body(ctx, out, body)
        assert pending is not None, "a large body is signed after its hash, off the loop"
        await pending
        host = runtime.signers["mock-bedrock"].host
    assert out.body is not None
    async with serve_mock() as url, httpx.AsyncClient(base_url=url) as client:
        sent = {k: v for k, v in out.set_headers.items() if not k.startswith((":", "x-aigw"))}
        answer = await client.post(
            out.set_headers[":path"], content=out.body, headers={**sent, "host": host}
        )
    assert answer.status_code == 200, answer.text
