"""A mock LLM provider: the upstream for tests, ``make run`` and benchmarks.

It answers like OpenAI (chat completions in ``openai_api``, the Responses API in
``responses_api``, its compaction and token count in ``responses_compact``, legacy text
completions in ``completions_api``), like Anthropic's
Messages API (``anthropic_api``) and like AWS Bedrock Runtime's Converse API, SigV4 and
event stream included (``bedrock_api``), with deterministic replies and token counts
(``tokens``), misbehaves on request (see ``faults`` for the ``x-mock-fault`` header), and
records what it received (see ``recorder``) so tests can check what the gateway sent
upstream.

Routing is by path suffix, so gateway route prefixes such as ``/openai/v1/chat/completions``,
``/openai/v1/responses``, ``/anthropic/v1/messages`` or ``/bedrock/model/{modelId}/converse``
still reach the right endpoint. ``POST .../moderations`` answers like OpenAI's moderation
endpoint (see ``moderation_api``), ``POST .../embeddings`` like OpenAI's embeddings endpoint (see
``embeddings_api``), ``POST .../v1/rerank`` and ``.../v2/rerank`` like the rerank APIs of
Jina and vLLM, and of Cohere (see ``rerank_api``) and ``POST .../model/{modelId}/invoke``
like Bedrock's InvokeModel for
Titan and Cohere embeddings (see ``bedrock_embeddings``) and Claude, whose stream
``.../invoke-with-response-stream`` serves too (see ``bedrock_anthropic``), as does
Bedrock's CountTokens for Claude, ``POST .../model/{modelId}/count-tokens``; header
``x-mock-reply`` chooses the reply (see ``scripted``). The Responses API responses it
creates are kept and served back (``GET`` / ``DELETE .../responses/{id}``,
``GET .../responses/{id}/input_items``, ``POST .../responses/{id}/cancel``; see
``responses_store``).

It also answers like Google Cloud Vertex AI (``vertex_api``) for one project and region:
``POST /token`` is the OAuth2 token endpoint a service account key names (``vertex_auth``:
JWT-bearer assertions checked against the key file ``gcp_service_account``), and every
path with ``/projects/{p}/locations/{r}`` is a Vertex route (Claude's ``rawPredict`` /
``streamRawPredict`` and token count, Gemini's ``generateContent``,
``streamGenerateContent`` and ``countTokens`` (``vertex_gemini``), text embeddings'
``:predict`` (``vertex_embeddings``), the OpenAI-compatible chat completions), which wants
a token the mock issued. Those paths are routed before the suffix rules: Vertex's
``.../endpoints/openapi/chat/completions`` must not reach the OpenAI endpoint, which takes
any key.
Every OpenAI and Anthropic answer carries the account headers those providers send (the
organisation's id and rate limits), which a gateway must keep from its callers.
Control endpoints, which are not recorded:

- ``GET /_mock/requests``: the recorded requests, oldest first.
- ``DELETE /_mock/requests``: forget them.
- ``GET /_mock/health``: ``{"status": "ok"}``.
- ``GET /_mock/gcp/tokens``: ``{"issued": N}``, the access tokens issued so far, so a test
  sees a client refresh its token.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from extproc.mock_llm.anthropic_api import AnthropicEndpoints
from extproc.mock_llm.audio_api import AudioEndpoint
from extproc.mock_llm.bedrock_api import DEFAULT_MODELS as DEFAULT_BEDROCK_MODELS
from extproc.mock_llm.bedrock_api import BedrockEndpoints, SigV4Verifier
from extproc.mock_llm.completions_api import CompletionsEndpoint
from extproc.mock_llm.embeddings_api import EmbeddingsEndpoint
from extproc.mock_llm.faults import FAULT_HEADER, NO_FAULT, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.images_api import ImagesEndpoint
from extproc.mock_llm.moderation_api import moderations
from extproc.mock_llm.openai_api import OpenAIEndpoints, error_response
from extproc.mock_llm.recorder import DEFAULT_CAPACITY, Body, Recorder
from extproc.mock_llm.rerank_api import RerankEndpoint
from extproc.mock_llm.responses_api import ResponsesEndpoint
from extproc.mock_llm.responses_compact import CompactEndpoints
from extproc.mock_llm.responses_store import ResponseStore, StoredResponsesEndpoints
from extproc.mock_llm.speech_api import SpeechEndpoint
from extproc.mock_llm.tokens import count_tokens
from extproc.mock_llm.vertex_api import TOKEN_PATH, VertexEndpoints, as_served, is_vertex_path
from extproc.mock_llm.vertex_auth import TokenIssuer

__all__ = ["MockOptions", "count_tokens", "create_app", "run"]

_EMPTY_BODY = Body(b"", False, None)
_JSON_HEADERS = {"Content-Type": "application/json"}

Endpoint = Callable[[web.Request, Body], Awaitable[web.StreamResponse]]
# The endpoint for each method a path takes (most take one; a stored response GET and DELETE).
Routes = Mapping[str, Endpoint]


@dataclass(frozen=True, slots=True)
class MockOptions:
    models: Sequence[str] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano")
    chunk_delay_s: float = 0.0  # sleep between SSE events
    default_fault: str | None = None  # x-mock-fault value used when the header is absent
    record_limit: int = DEFAULT_CAPACITY  # requests kept for /_mock/requests; 0 records nothing
    bedrock_models: Sequence[str] = DEFAULT_BEDROCK_MODELS  # Converse model ids; empty accepts any
    # The one AWS identity whose SigV4 signatures Bedrock accepts, and the region it serves.
    aws_access_key_id: str = "AKIDMOCK"
    aws_secret_access_key: str = "mock-secret-key"
    aws_region: str = "us-east-1"
    aws_session_token: str | None = None  # when set, x-amz-security-token must equal it
    # The one Google Cloud project and region Vertex serves, the service account key file
    # whose public key verifies token requests (None: every token request is refused), and
    # how long the access tokens it issues live.
    gcp_project: str = "mock-project"
    gcp_region: str = "us-east5"
    gcp_service_account: str | None = None
    gcp_token_lifetime_s: int = 3600


# What a real provider says on every answer about the account the key bills: its id and
# its rate limits for the whole organisation (fixed values: the mock has no limits). A
# gateway must keep them from its callers; tests see that it does.
OPENAI_ACCOUNT_ANSWER_HEADERS = {
    "openai-organization": "mock-org",
    "openai-project": "proj_mock",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-tokens": "2ms",
}
ANTHROPIC_ACCOUNT_ANSWER_HEADERS = {
    "anthropic-organization-id": "0a1b2c3d-0000-4000-8000-000000000000",
    **{
        f"anthropic-ratelimit-{unit}-{part}": value
        for unit in ("requests", "tokens", "input-tokens", "output-tokens")
        for part, value in (
            ("limit", "4000"),
            ("remaining", "3999"),
            ("reset", "2026-01-01T00:00:00Z"),
        )
    },
}


def _account_answer_headers(path: str) -> Mapping[str, str]:
    """The account headers of the API a path serves (Vertex and Bedrock send none)."""
    if path.startswith("/_mock/") or path == TOKEN_PATH or is_vertex_path(path):
        return {}
    if path.endswith(("/v1/messages", "/v1/messages/count_tokens")):
        return ANTHROPIC_ACCOUNT_ANSWER_HEADERS
    if "/model/" in path:  # Bedrock's /model/{modelId}/...
        return {}
    return OPENAI_ACCOUNT_ANSWER_HEADERS


async def _add_account_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _account_answer_headers(request.path).items():
        response.headers.setdefault(name, value)


async def _compress_if_asked(request: web.Request, response: web.StreamResponse) -> None:
    """The ``gzip`` fault: the answer compressed whatever the request accepts. The
    headers are ready when this runs (aiohttp's own compression is chosen before), so
    the writer compresses, chunked; a stream arrives in the compressor's blocks."""
    spec = request.headers.get(FAULT_HEADER)
    writer = request._payload_writer  # what the response is about to be written with
    if spec is None or writer is None:
        return
    try:
        fault = parse_fault(spec)
    except FaultSpecError:
        return  # answered with the 400 that names the bad pair
    if not fault.gzip:
        return
    response.headers.popall("Content-Length", None)
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Transfer-Encoding"] = "chunked"
    writer.enable_compression("gzip")
    writer.enable_chunking()


async def _send_held(
    request: web.Request, answer: web.Response, hold_s: float
) -> web.StreamResponse:
    """The ``hold_body`` fault: ``answer``'s status and headers at once, its body
    ``hold_s`` seconds later, so a client can leave between them (a timeout on an error
    whose body is slow, or on a long answer whose headers came first). A client gone by
    then gets nothing more."""
    body = answer.body if isinstance(answer.body, bytes) else b""
    held = web.StreamResponse(status=answer.status, reason=answer.reason, headers=answer.headers)
    held.content_length = len(body)
    await held.prepare(request)
    await asyncio.sleep(hold_s)
    try:
        await held.write(body)
        await held.write_eof()
    except ConnectionResetError:
        pass  # the client left before the body: what the fault is for
    return held


async def _send_half(request: web.Request, answer: web.Response) -> web.StreamResponse:
    """The ``reset_in_body`` fault: ``answer``'s status and headers (its whole length
    announced) and the first half of its body, then the connection dropped: a provider
    reset mid-body, after its status left."""
    body = answer.body if isinstance(answer.body, bytes) else b""
    half = web.StreamResponse(status=answer.status, reason=answer.reason, headers=answer.headers)
    half.content_length = len(body)
    await half.prepare(request)
    await half.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    return half


def _method_not_allowed(request: web.Request, allowed: str) -> web.Response:
    return error_response(
        405,
        f"Method {request.method} not allowed for {request.path}; use {allowed}.",
        headers={"Allow": allowed},
    )


def _not_found(request: web.Request) -> web.Response:
    return error_response(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")


class _MockApp:
    """Routes requests to the provider endpoints and serves the control endpoints."""

    def __init__(self, options: MockOptions) -> None:
        # Parse the default fault now so a typo fails at startup, not on the first request.
        default_fault = parse_fault(options.default_fault) if options.default_fault else NO_FAULT
        if options.chunk_delay_s < 0:
            raise ValueError("chunk_delay_s must be >= 0")
        self._default_fault = default_fault
        self.recorder = Recorder(options.record_limit)
        self.openai = OpenAIEndpoints(
            models=options.models,
            chunk_delay_s=options.chunk_delay_s,
            default_fault=default_fault,
        )
        stored_responses = ResponseStore()
        self.responses = ResponsesEndpoint(
            chunk_delay_s=options.chunk_delay_s,
            default_fault=default_fault,
            store=stored_responses,
        )
        self.stored_responses = StoredResponsesEndpoints(
            stored_responses, default_fault=default_fault
        )
        self.compact = CompactEndpoints(default_fault=default_fault, store=stored_responses)
        self.images = ImagesEndpoint(default_fault=default_fault)
        self.audio = AudioEndpoint(default_fault=default_fault)
        self.speech = SpeechEndpoint(default_fault=default_fault)
        self.embeddings = EmbeddingsEndpoint(default_fault=default_fault)
        self.rerank = RerankEndpoint(default_fault=default_fault)
        self.completions = CompletionsEndpoint(
            chunk_delay_s=options.chunk_delay_s, default_fault=default_fault
        )
        self.anthropic = AnthropicEndpoints(
            chunk_delay_s=options.chunk_delay_s, default_fault=default_fault
        )
        self.bedrock = BedrockEndpoints(
            models=options.bedrock_models,
            verifier=SigV4Verifier(
                access_key_id=options.aws_access_key_id,
                secret_access_key=options.aws_secret_access_key,
                region=options.aws_region,
                session_token=options.aws_session_token,
            ),
            chunk_delay_s=options.chunk_delay_s,
            default_fault=default_fault,
        )
        self.vertex = VertexEndpoints(
            project=options.gcp_project,
            region=options.gcp_region,
            issuer=TokenIssuer(options.gcp_service_account, options.gcp_token_lifetime_s),
            anthropic=self.anthropic,
            openai=self.openai,
            default_fault=default_fault,
            chunk_delay_s=options.chunk_delay_s,
        )

    def _route(self, path: str) -> Routes | None:
        """The endpoint for each method a provider path takes, or None."""
        # Vertex first: its paths end like OpenAI's and Anthropic's but want its own token.
        if path == TOKEN_PATH:
            return {"POST": self.vertex.token}
        if is_vertex_path(path):
            return {"POST": self.vertex.serve}
        if path.endswith("/chat/completions"):
            return {"POST": self.openai.chat_completions}
        if path.endswith("/completions"):  # after chat's, which ends the same way
            return {"POST": self.completions.create}
        if path.endswith("/responses"):
            return {"POST": self.responses.create}
        if path.endswith("/responses/compact"):
            return {"POST": self.compact.compact}
        if path.endswith("/responses/input_tokens"):
            return {"POST": self.compact.input_tokens}
        if path.endswith("/v1/messages/count_tokens"):
            return {"POST": self.anthropic.count_tokens}
        if path.endswith("/v1/messages"):
            return {"POST": self.anthropic.messages}
        if path.endswith("/models"):
            return {"GET": self.openai.models}
        if path.endswith("/converse"):
            return {"POST": self.bedrock.converse}
        if path.endswith("/converse-stream"):
            return {"POST": self.bedrock.converse_stream}
        if path.endswith("/moderations"):
            return {"POST": moderations}
        if path.endswith("/embeddings"):
            return {"POST": self.embeddings.create}
        if path.endswith(("/v1/rerank", "/v2/rerank")):
            return {"POST": self.rerank.create}
        if path.endswith("/images/generations"):
            return {"POST": self.images.generate}
        if path.endswith("/images/edits"):
            return {"POST": self.images.edit}
        if path.endswith("/audio/transcriptions"):
            return {"POST": self.audio.transcribe}
        if path.endswith("/audio/translations"):
            return {"POST": self.audio.translate}
        if path.endswith("/audio/speech"):
            return {"POST": self.speech.create}
        if path.endswith("/invoke"):
            return {"POST": self.bedrock.invoke}
        if path.endswith("/invoke-with-response-stream"):
            return {"POST": self.bedrock.invoke_with_response_stream}
        if path.endswith("/count-tokens"):
            return {"POST": self.bedrock.count_tokens}
        # Last: its pattern, .../responses/{id}, also fits the create endpoints' paths above.
        return self.stored_responses.routes(path)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_mock/"):
            return await self._control(request)
        # The request as its endpoint reads it; made before the body is read (as_served).
        served = as_served(request) if is_vertex_path(path) else request
        body = Body.parse(await served.read()) if served.can_read_body else _EMPTY_BODY
        if self.recorder.enabled:
            self.recorder.record(
                method=request.method,
                path=path,
                query_string=request.query_string,
                headers=request.headers,  # as the client sent them
                body=body,
                received_at=time.time(),
            )
        routes = self._route(path)
        if routes is None:
            return _not_found(request)
        endpoint = routes.get(request.method)
        if endpoint is None:
            return _method_not_allowed(request, ", ".join(routes))
        response = await endpoint(served, body)
        if isinstance(response, web.Response) and not response.prepared:
            fault = self._answer_fault(request)
            if fault.reset_in_body:
                return await _send_half(request, response)
            if fault.hold_body_s:
                return await _send_held(request, response, fault.hold_body_s)
        return response

    def _answer_fault(self, request: web.Request) -> Fault:
        """The fault for this request's whole answer, ``hold_body`` and ``reset_in_body``
        (a bad spec was answered with its 400 already: none)."""
        spec = request.headers.get(FAULT_HEADER)
        try:
            return self._default_fault if spec is None else parse_fault(spec)
        except FaultSpecError:
            return NO_FAULT

    async def _control(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        if path == "/_mock/health":
            if method != "GET":
                return _method_not_allowed(request, "GET")
            return web.Response(body=b'{"status":"ok"}', headers=_JSON_HEADERS)
        if path == "/_mock/requests":
            if method == "GET":
                entries = [entry.to_dict() for entry in self.recorder.entries()]
                return web.Response(body=orjson.dumps(entries), headers=_JSON_HEADERS)
            if method == "DELETE":
                cleared = len(self.recorder)
                self.recorder.clear()
                return web.Response(body=orjson.dumps({"cleared": cleared}), headers=_JSON_HEADERS)
            return _method_not_allowed(request, "GET, DELETE")
        if path == "/_mock/gcp/tokens":
            if method != "GET":
                return _method_not_allowed(request, "GET")
            issued = {"issued": self.vertex.tokens_issued}
            return web.Response(body=orjson.dumps(issued), headers=_JSON_HEADERS)
        return _not_found(request)


def create_app(options: MockOptions | None = None) -> web.Application:
    """Build the mock's aiohttp application; raises ValueError for invalid options."""
    mock = _MockApp(options or MockOptions())
    # As large a body as the gateway may send on, its 64 MiB (aiohttp's default is
    # 1 MiB): OpenAI takes image edits of up to 50 MB.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_response_prepare.append(_add_account_headers)
    app.on_response_prepare.append(_compress_if_asked)
    # One catch-all route: matching by suffix keeps gateway route prefixes working.
    app.router.add_route("*", "/{path:.*}", mock.dispatch)
    return app


async def _serve(host: str, port: int, options: MockOptions | None) -> None:
    # No access log: the mock is the benchmark upstream and must stay off the hot path.
    runner = web.AppRunner(create_app(options), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        # What start-up allocated (its modules above all) lives as long as the process:
        # frozen (as the gateway's is), the collector's full passes skip it, and so do
        # its passes at exit, which made each stop of the mock take about 0.3 s.
        gc.collect()
        gc.freeze()
        # Report the bound port, which differs from `port` when the caller asked for port 0.
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        print(
            f"mock-llm listening on http://{shown_host}:{bound_port}", file=sys.stderr, flush=True
        )
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run(host: str, port: int, options: MockOptions | None = None) -> None:
    """Serve the mock until SIGINT or SIGTERM."""
    asyncio.run(_serve(host, port, options))
