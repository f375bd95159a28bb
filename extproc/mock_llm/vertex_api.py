"""The mock's Google Cloud Vertex AI surface: Claude's rawPredict routes, Gemini's native
API, Vertex's OpenAI-compatible chat endpoint, its OAuth2 token endpoint, and Google's errors.

Endpoints, for the one project and region the mock serves (``MockOptions.gcp_project``,
``gcp_region``), at Vertex's version roots only (``/v1/projects/...``, ``/v1beta1/...``):
a location under another prefix (a base URL that doubles the version) is a 404, as
Google's front answers it.

- ``POST /token``: the OAuth2 token endpoint a service account key names as its
  ``token_uri``; the JWT-bearer grant, checked by ``vertex_auth.TokenIssuer``. Faults do
  not apply: it is the way in, not a model.
- ``POST .../projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict``
  and ``:streamRawPredict``: Claude. The body is Anthropic's Messages body without
  ``model`` (the path names it) and with ``"anthropic_version": "vertex-2023-10-16"``; a
  body with ``model``, without that version or with another is refused with Anthropic's
  400, and so is an image by URL (Vertex's Claude takes images as bytes: "URL sources are
  not supported", with the path Vertex gives). The answer is the Anthropic surface's own
  (``anthropic_api``: the same reply, usage, faults and ``x-mock-*`` headers), JSON or SSE
  as the body's ``stream`` says (Vertex hands the body to Claude as it is), ``model``
  named as Anthropic names it (``claude-sonnet-4-5@20250929`` answers
  ``claude-sonnet-4-5-20250929``, as recorded Vertex answers do). ``{model}`` must be a
  Claude model (``claude-...``).
- ``.../publishers/anthropic/models/count-tokens:rawPredict``: Claude's token count, the
  body Anthropic's count_tokens body with ``model``, the model's name without Vertex's
  ``@version`` (a versioned id is Anthropic's 400 "... is not supported for token
  counting", as Vertex answers); ``anthropic_version``, which Google's own example leaves
  out, may be absent but not another version. Answers ``{"input_tokens": N}``.
- ``.../publishers/google/models/{model}:generateContent``, ``:streamGenerateContent``
  (SSE with ``?alt=sse``, else a JSON array) and ``:countTokens``: Gemini's native API
  (``vertex_gemini``) for Google's models (``gemini-...``, ``gemma-...``); another model
  under ``publishers/google`` is not found. Its refusals and a fault's status Google has
  no name for (529) are Google's errors: the model is Google's own.
- ``.../publishers/google/models/{model}:predict``: text embeddings
  (``vertex_embeddings``) for Google's text embedding models (``gemini-embedding-001``,
  ``text-embedding-005``...); refusals are Google's 400.
- ``.../endpoints/openapi/chat/completions``: OpenAI's chat completions (``openai_api``),
  JSON and SSE, for models named ``publisher/model`` (``google/gemini-2.5-flash``); a
  model without its publisher is a 400. As Vertex answers them: no top-level
  ``service_tier``, the traffic type that served the request in
  ``usage.extra_properties.google.traffic_type`` (``vertex_gemini.traffic_type``: the
  ``X-Vertex-AI-LLM-Shared-Request-Type`` header's ``priority`` or ``flex``, else
  ``ON_DEMAND``), as Gemini's own API reports it in ``usageMetadata.trafficType``.

Every Vertex route checks, in this order: a bearer token the mock issued and that has not
expired (401 ``UNAUTHENTICATED``), the project (403 ``PERMISSION_DENIED``), the region and
the path (404 ``NOT_FOUND``), then the ``x-mock-fault`` header. Errors of Google's own are in
Google's shape, ``{"error": {"code", "message", "status"}}``, and so is an error status a
fault asks for when Google has a name for it (429 ``RESOURCE_EXHAUSTED``, 503
``UNAVAILABLE``...). Another status (529) is the model's own, passed on as the model wrote it:
Anthropic's ``overloaded_error`` on the Claude routes, as Vertex relays it. The other
faults (delay, resets, garbage, mid-stream errors, cached tokens) behave as on Anthropic's
and OpenAI's surfaces, whose code answers.

Not modelled: ids stay the Anthropic surface's (``msg_mock_...``, not Vertex's
``msg_vrtx_...``); a project is named by its id only, not its number.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from multidict import CIMultiDict

from extproc.mock_llm import anthropic_api, vertex_embeddings
from extproc.mock_llm.anthropic_api import AnthropicEndpoints
from extproc.mock_llm.error_bodies import GOOGLE_STATUSES
from extproc.mock_llm.error_bodies import google_error as google_error_object
from extproc.mock_llm.faults import FAULT_HEADER, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.openai_api import OpenAIEndpoints
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.vertex_auth import TokenIssuer, TokenRequestError
from extproc.mock_llm.vertex_gemini import (
    GEMINI_CALL,
    GeminiEndpoints,
    InvalidArgumentError,
    abort_connection,
    is_google_model,
    traffic_type,
)

TOKEN_PATH = "/token"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
# The Messages API version Vertex's version stands for, given to the Anthropic surface.
_MESSAGES_API_VERSION = "2023-06-01"

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)

_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
# The ``garbage`` fault's answer to ``:predict``: a 200 whose body is not JSON.
_GARBAGE_PREDICTION = b'{"predictions": [{"embeddings": this is not json'

# OAuth2 answers carrying a token must not be cached (RFC 6749, 5.1).
_TOKEN_HEADERS = {**_JSON_HEADERS, "Cache-Control": "no-store", "Pragma": "no-cache"}
_LOCATION = re.compile(r"/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)(?P<rest>/.*)?$")
# Where Vertex serves its resources: a version at the host's root.
_VERSION_ROOTS = ("/v1/projects/", "/v1beta1/projects/")
_COUNT_TOKENS = "/publishers/anthropic/models/count-tokens:rawPredict"
_CLAUDE_CALL = re.compile(
    r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)"
)
_CLAUDE_MODEL = re.compile(r"claude-[a-z0-9.-]+(?:@[a-z0-9.-]+)?")
_PUBLISHER_PATH = re.compile(r"/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+)(?::.*)?")
_OPENAI_CHAT = "/endpoints/openapi/chat/completions"
_PUBLISHER_MODEL = re.compile(r"[a-z0-9-]+/[^/\s]+")

# A Vertex route's handler, once the token, project, region and fault are known.
_Handler = Callable[[web.Request, Body, Fault], Awaitable[web.StreamResponse]]


def is_vertex_path(path: str) -> bool:
    """Whether ``path`` names a Vertex resource (``.../projects/{p}/locations/{r}...``)."""
    return _LOCATION.search(path) is not None


def google_error(status: int, message: str) -> web.Response:
    """An error in Google's shape; a status Google has no name for is ``UNKNOWN``."""
    body = orjson.dumps({"error": google_error_object(status, message)})
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)


def answered_model(model: str) -> str:
    """The model a Claude answer names: Vertex's ``name@version`` as Anthropic names it."""
    return model.replace("@", "-")


class _RefusedBodyError(Exception):
    """A Claude body Vertex refuses with Anthropic's 400 invalid_request_error."""


def _check_version(doc: dict[str, Any], *, required: bool) -> None:
    if "anthropic_version" not in doc:
        if required:
            raise _RefusedBodyError("anthropic_version: Field required")
        return
    if doc["anthropic_version"] != VERTEX_ANTHROPIC_VERSION:
        raise _RefusedBodyError(f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")


def _check_image_sources(doc: dict[str, Any]) -> None:
    """Vertex's Claude takes images as bytes: a URL source is refused, in Vertex's words
    (which name the base64 data whatever the block)."""
    messages = doc.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            source = block.get("source") if isinstance(block, dict) else None
            if isinstance(source, dict) and source.get("type") == "url":
                raise _RefusedBodyError(
                    f"messages.{i}.content.{j}.image.source.base64.data: "
                    "URL sources are not supported"
                )


def _anthropic_body(doc: dict[str, Any], **fields: Any) -> Body:
    """The body the Anthropic surface takes: Vertex's without ``anthropic_version``."""
    anthropic_doc = {key: value for key, value in doc.items() if key != "anthropic_version"}
    anthropic_doc.update(fields)
    return Body(orjson.dumps(anthropic_doc), True, anthropic_doc)


def _not_found_message(project: str, region: str, rest: str) -> str:
    model = _PUBLISHER_PATH.fullmatch(rest)
    if model is not None:
        return (
            f"Publisher Model `projects/{project}/locations/{region}/publishers/"
            f"{model['publisher']}/models/{model['model']}` not found, or not served here."
        )
    return f"The requested URL .../projects/{project}/locations/{region}{rest} was not found."


def _model_without_publisher(body: Body) -> str | None:
    """The chat body's model when it is not named ``publisher/model``, else None (a body
    without a model is left to the OpenAI surface's checks)."""
    model = body.json.get("model") if body.is_json and isinstance(body.json, dict) else None
    if isinstance(model, str) and model and not _PUBLISHER_MODEL.fullmatch(model):
        return model
    return None


def as_served(request: web.Request) -> web.Request:
    """A Vertex request as the surfaces it is answered by read it: with the Messages API
    version in the header where Anthropic's own API takes it (Vertex takes its version in
    the body, and ignores the header). aiohttp clones only a request whose body is unread,
    so the app calls this before reading it."""
    headers = CIMultiDict(request.headers)
    headers[anthropic_api.VERSION_HEADER] = _MESSAGES_API_VERSION
    return request.clone(headers=headers)


class VertexEndpoints:
    """Request handlers for Vertex AI's routes and the OAuth2 token endpoint."""

    def __init__(
        self,
        *,
        project: str,
        region: str,
        issuer: TokenIssuer,
        anthropic: AnthropicEndpoints,
        openai: OpenAIEndpoints,
        default_fault: Fault,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self._project = project
        self._region = region
        self._issuer = issuer
        self._anthropic = anthropic
        self._openai = openai
        self._gemini = GeminiEndpoints(chunk_delay_s=chunk_delay_s)
        self._default_fault = default_fault

    @property
    def tokens_issued(self) -> int:
        return self._issuer.issued

    async def token(self, request: web.Request, body: Body) -> web.StreamResponse:
        """``POST /token``: an access token for a JWT-bearer assertion, or Google's 400."""
        form = dict(parse_qsl(body.raw.decode("utf-8", errors="replace"), keep_blank_values=True))
        try:
            issued = self._issuer.issue(form)
        except TokenRequestError as exc:
            return web.Response(
                status=400, body=orjson.dumps(exc.document()), headers=_TOKEN_HEADERS
            )
        return web.Response(body=orjson.dumps(issued.document()), headers=_TOKEN_HEADERS)

    async def serve(self, request: web.Request, body: Body) -> web.StreamResponse:
        """Any Vertex route (``request`` as ``as_served`` made it): the token, the project,
        the region, the path, the fault, then the route's own handler."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._issuer.is_valid(token.strip()):
            return google_error(401, UNAUTHENTICATED_MESSAGE)
        handler = self._locate(request.path)
        if isinstance(handler, web.Response):
            return handler
        spec = request.headers.get(FAULT_HEADER)
        try:
            fault = self._default_fault if spec is None else parse_fault(spec)
        except FaultSpecError as exc:
            return google_error(400, str(exc))
        if fault.status in GOOGLE_STATUSES:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            return google_error(fault.status, f"Injected error {fault.status} (x-mock-fault).")
        return await handler(request, body, fault)

    def _locate(self, path: str) -> _Handler | web.Response:
        """The handler of a Vertex path, or Google's refusal of another project (403),
        another region or a resource the mock does not serve (404)."""
        match = _LOCATION.search(path)
        if match is None or not path.startswith(_VERSION_ROOTS):
            # The app routes here any path naming a location; Vertex serves it only
            # under its version root.
            return google_error(404, f"The requested URL {path} was not found.")
        project, region, rest = match["project"], match["region"], match["rest"] or ""
        if project != self._project:
            return google_error(
                403,
                f"Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/projects/{project}/locations/{region}{rest}' "
                "(or it may not exist).",
            )
        if region != self._region:
            return google_error(
                404, f"Location {region} not found for project {project} (served: {self._region})."
            )
        handler = self._handler(rest)
        if handler is None:
            return google_error(404, _not_found_message(project, region, rest))
        return handler

    def _handler(self, rest: str) -> _Handler | None:
        """The handler of the path after ``/locations/{region}``, or None."""
        if rest == _COUNT_TOKENS:
            return self._count_tokens
        if rest == _OPENAI_CHAT:
            return self._chat_completions
        call = _CLAUDE_CALL.fullmatch(rest)
        if call is not None and _CLAUDE_MODEL.fullmatch(call["model"]):
            return partial(self._claude, call["model"])
        embeddings = vertex_embeddings.PREDICT_CALL.fullmatch(rest)
        if embeddings is not None and vertex_embeddings.is_text_embedding_model(
            embeddings["model"]
        ):
            return partial(self._embeddings, embeddings["model"])
        gemini = GEMINI_CALL.fullmatch(rest)
        if gemini is not None and is_google_model(gemini["model"]):
            return partial(self._gemini_call, gemini["model"], gemini["method"])
        return None

    async def _claude(
        self, model: str, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        # A fault's status (one Google has no name for) comes before the body is read.
        if fault.status is None and body.is_json and isinstance(body.json, dict):
            try:
                _check_version(body.json, required=True)
                if "model" in body.json:
                    raise _RefusedBodyError("model: Extra inputs are not permitted")
                _check_image_sources(body.json)
            except _RefusedBodyError as exc:
                return anthropic_api.error_response(400, str(exc))
            body = _anthropic_body(body.json, model=answered_model(model))
        return await self._anthropic.messages(request, body)

    async def _gemini_call(
        self, model: str, method: str, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        refused = await _google_fault(fault)
        if refused is not None:
            return refused
        try:
            return await self._gemini.answer(model, method, request, body, fault)
        except InvalidArgumentError as exc:
            return google_error(400, str(exc))

    async def _embeddings(
        self, model: str, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        refused = await _google_fault(fault)
        if refused is not None:
            return refused
        try:
            answer = vertex_embeddings.predict(model, body, with_counts=not fault.no_usage)
        except InvalidArgumentError as exc:
            return google_error(400, str(exc))
        # Checked first as Vertex would, then misbehaving as the test asked.
        if fault.reset_after is not None:
            return abort_connection(request)
        if fault.garbage:
            return web.Response(body=_GARBAGE_PREDICTION, headers=_JSON_HEADERS)
        return web.Response(body=orjson.dumps(answer), headers=_JSON_HEADERS)

    async def _count_tokens(
        self, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        if fault.status is None and body.is_json and isinstance(body.json, dict):
            try:
                _check_version(body.json, required=False)
                model = body.json.get("model")
                if isinstance(model, str) and "@" in model:
                    raise _RefusedBodyError(f"{model} is not supported for token counting")
            except _RefusedBodyError as exc:
                return anthropic_api.error_response(400, str(exc))
            body = _anthropic_body(body.json)
        return await self._anthropic.count_tokens(request, body)

    async def _chat_completions(
        self, request: web.Request, body: Body, fault: Fault
    ) -> web.StreamResponse:
        model = _model_without_publisher(body)
        if fault.status is None and model is not None:
            return google_error(
                400,
                f"Invalid model {model!r}: Vertex's OpenAI-compatible endpoint takes "
                f"publisher/model, such as google/{model}.",
            )
        return await self._openai.chat_completions(
            request, body, google_traffic_type=traffic_type(request.headers)
        )


async def _google_fault(fault: Fault) -> web.StreamResponse | None:
    """What a Google model call answers first for the test's fault: after its delay, an
    injected status (one Google has no name for: serve answered the others) in Google's
    shape; None to go on answering."""
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if fault.status is not None:
        return google_error(fault.status, f"Injected error {fault.status} (x-mock-fault).")
    return None
