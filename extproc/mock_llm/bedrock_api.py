"""The mock's AWS Bedrock Runtime surface: Converse and ConverseStream, SigV4, AWS-shaped errors.

Endpoints, matched by path suffix so gateway route prefixes still work:

- ``POST .../model/{modelId}/converse``: one JSON document.
- ``POST .../model/{modelId}/converse-stream``: the same reply as AWS's binary event stream
  (see ``eventstream``): ``messageStart``, one ``contentBlockDelta`` per piece,
  ``contentBlockStop``, then each tool call's block (``content_events``), ``messageStop``
  and ``metadata`` (usage, latency, the service tier asked for), each its own write. With
  the ``error_after`` fault, a ``modelStreamErrorException`` exception message replaces the
  rest after that many deltas (text and tool input pieces alike); with ``error_first``,
  the exception of that status (``throttlingException`` for 429,
  ``internalServerException`` for 500, ``serviceUnavailableException`` for 503) is the
  stream's only message, before ``messageStart``.
- ``POST .../model/{modelId}/invoke``: InvokeModel, for Claude (Anthropic's Messages API in
  Bedrock's envelope, see ``bedrock_anthropic``), Titan text embeddings
  (``amazon.titan-embed-text-v2:0`` and ``-v1``, see ``bedrock_embeddings``) and Cohere Embed
  (``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3``, ``cohere.embed-v4:0``,
  also through a cross-region profile such as ``us.cohere.embed-v4:0``; see
  ``bedrock_cohere_embeddings``) and the text models of Meta Llama (``meta.llama*``),
  Mistral (``mistral.mistral-*``, ``mistral.mixtral-*``, its text and chat bodies), Titan
  Text (``amazon.titan-text-*``), Amazon Nova (its text models, ``amazon.nova-lite-*``...),
  Cohere Command (``cohere.command-text*``), AI21 Jamba and Writer Palmyra, also through
  a cross-region profile (see ``bedrock_text_families``); another model, or a Claude
  model missing from ``models``, is a ValidationException, as Bedrock answers a model
  identifier it cannot invoke.
- ``POST .../model/{modelId}/invoke-with-response-stream``: InvokeModelWithResponseStream,
  for Claude: Anthropic's stream events, each a ``chunk`` message of the event stream,
  each its own write; ``message_stop`` carries Bedrock's invocation metrics. With the
  ``error_after`` fault, a ``modelStreamErrorException`` replaces the rest after that many
  deltas, as in ConverseStream. For Llama, Mistral, Titan Text and Nova: one ``chunk``
  per piece in the family's stream shape (Nova's: Converse's events), the last carrying
  the invocation metrics; the
  ``error_after`` exception (or ``reset_after`` drop) comes after that many pieces, or
  replaces the last chunk when there are fewer. ``error_first``: the status's exception
  before the first ``chunk``, as in ConverseStream.
- ``POST .../model/{modelId}/count-tokens``: CountTokens, for Claude: ``{"input":
  {"invokeModel": {"body": "<base64 of an InvokeModel body>"}}}`` answers
  ``{"inputTokens": N}``, N being the ``usage.input_tokens`` InvokeModel reports for that
  body (``bedrock_anthropic.count_claude_tokens``), which must pass InvokeModel's checks
  (``max_tokens`` included); ``{"input": {"converse": {"messages", "system",
  "toolConfig"...}}}`` answers the ``usage.inputTokens`` Converse reports for those
  messages. ``input`` must hold exactly one of the two, and ``body`` be base64: a
  ValidationException otherwise. Another model is a ValidationException, "The provided
  model doesn't support counting tokens." (one missing from ``models``: "The provided
  model identifier is invalid."). Faults: ``status``, ``delay``, ``reset_after`` and
  ``garbage`` as for InvokeModel.

``modelId`` is the URL-encoded path segment (``anthropic.claude-3-haiku-20240307-v1%3A0``): a
model or inference profile id, or the ARN of either (``...:foundation-model/<id>``,
``...:inference-profile/<id>``, its ``/`` sent as ``%2F``). An id missing from ``models`` is a
404 ResourceNotFoundException, and an empty ``models`` accepts any.

Requests are checked as Converse checks them, with Bedrock's messages: turns must start with
the user and alternate (a client merges consecutive messages of one role itself), text blocks
must not be blank (a blank text inside a ``toolResult`` is taken, as Bedrock takes it), tool
blocks need a ``toolConfig`` and a ``toolUseId`` of 1 to 64 of ``[a-zA-Z0-9_-]``, a user turn's
``toolResult`` blocks answer every ``toolUse`` of the assistant turn before it and no more
(Bedrock's "Expected toolResult blocks at messages.N.content for the following Ids: ..."),
``inferenceConfig`` within range, image blocks name one of Converse's formats and hold bytes of
that format, document blocks have a name of Converse's characters (no other document of the
request named alike, "Messages can't contain duplicate document names."), one of its formats
and bytes (a PDF's for ``pdf``; "The document is not valid." is the mock's words). Then
what the model itself allows (``MODEL_RULES``, from AWS's "Supported models and model
features" table and the models' parameter pages): Titan and Mistral 7B / Mixtral take
no system prompt, Titan, Llama 3 (8B, 70B) and those Mistral models no tools and no images,
Claude Sonnet and Haiku 4.5 not both ``temperature`` and ``topP``, and each model its own
``maxTokens`` limit; Claude no stop sequence of whitespace alone, and no Anthropic
``tool_choice`` in ``additionalModelRequestFields`` without a ``type`` or beside a
``toolConfig.toolChoice``; a request past one is refused with Bedrock's own words.
Claude's thinking, asked in ``additionalModelRequestFields`` (``thinking``, and
``output_config.effort``), is checked as Anthropic checks it (``anthropic_api``, the one
source of those rules), in Bedrock's words for a model's error: the mode the model does
not take (a fixed budget for Opus 4.7 and later, adaptive thinking before Opus 4.6 and
Sonnet 4.6), a budget below 1,024 or not below ``maxTokens`` (unchecked without one), a
``temperature`` other than 1, a ``topP`` below 0.95, a forced tool choice, and a final
assistant turn (a prefill, or the one the last tool results answer) that does not start
with its ``reasoningContent``.

Authentication is SigV4, checked for real: the mock recomputes the signature with botocore's
``SigV4Auth`` over the request as received (raw path, body, the headers the client signed) with
the configured secret, and compares it in constant time. Only the headers named in
``SignedHeaders`` take part, so a proxy may add or rewrite the others (Envoy rewrites hop-by-hop
headers and adds ``x-forwarded-*``). Around the signature it checks what AWS checks: the access
key id, the credential scope (its date, the configured region, service ``bedrock``), a timestamp
(``x-amz-date``, else ``date``) within 5 minutes of now, ``host`` and that date header among the
signed headers, a signed ``x-amz-content-sha256`` against the body, and ``x-amz-security-token``
when a session token is configured. A signature mismatch answers with the canonical request and
string to sign the mock expected, as AWS does, to make a signing bug quick to find.

Replies and token counts follow ``tokens``. In Bedrock's terms: a message's text is its
``{"text": ...}`` blocks joined with one space (other blocks count for nothing);
``inputTokens`` counts the system blocks, when there are any, as one more message;
``outputTokens`` is the number of pieces sent; ``inferenceConfig.maxTokens`` keeps the first N
and makes ``stopReason`` "max_tokens", else "end_turn". Header ``x-mock-cache-write:
5m=N;1h=M`` (as for Anthropic, ``anthropic_api.cache_writes``) reports prompt tokens written
to Claude's caches: ``cacheWriteInputTokens`` (both), ``cacheDetails`` (one
``{"ttl", "inputTokens"}`` entry per lifetime written, 1h before 5m as AWS sorts them) and
``inputTokens`` without them. With thinking on, the answer starts with a
``reasoningContent`` block (``reasoningText``: ``THOUGHT`` and its signature), streamed as
``reasoningContent`` text deltas, one per token, then a ``signature`` delta; its tokens
are output tokens and take their part of ``maxTokens`` first, as Claude's do.

Scripted answers (``scripted``): ``x-mock-reply`` chooses the text and ``x-mock-tool-calls``
makes the answer call tools after it, as Converse sends calls: a ``toolUse`` block per call
(``toolUseId``, ``name``, ``input``) and ``stopReason`` "tool_use"; streamed, a
``contentBlockStart`` naming the call, one ``toolUse`` input delta per piece chosen, and
``contentBlockStop``. Output tokens are the text pieces and the input pieces. A model calls
only the tools its request declares (``toolConfig``): calls to others are not made, so a
request that offers no tool gets text.

``x-mock-stop-reason`` makes the answer stop with that ``stopReason`` instead (one of
Converse's: ``malformed_tool_use`` and ``malformed_model_output`` say the model's tool call
or output was broken), whole or streamed; another value is a ValidationException.

Structured output: a request's ``outputConfig.textFormat`` (``json_schema``, the schema as
JSON text in ``structure.jsonSchema.schema``) is checked as Bedrock checks it, and the
answer is JSON of that schema, whole or streamed (``converse_output``).

Service tiers: a request's ``serviceTier`` (``{"type": "flex"}``; ``priority``, ``default``,
``flex`` or ``reserved``, else a ValidationException naming ``serviceTier.type``) is answered
as Bedrock answers it: the answer's ``serviceTier`` (Converse) or the ``metadata`` event's
(ConverseStream) names the tier asked for. A request that names none gets none back. Every
model takes every tier here (Bedrock offers flex and priority on some models only, and
refuses the others with a ValidationException).

Errors use AWS's REST-JSON shape: the status, ``x-amzn-errortype: <Code>:`` and
``{"message": ...}``; botocore raises ``ClientError`` with that code in ``Error.Code``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from extproc.aws_eventstream import CONTENT_TYPE as EVENT_STREAM_CONTENT_TYPE
from extproc.aws_eventstream import encode_event, encode_exception
from extproc.mock_llm.anthropic_api import (
    NO_CACHE_WRITES,
    THOUGHT,
    THOUGHT_SIGNATURE,
    CacheWrites,
    CacheWriteSpecError,
    InvalidRequestError,
    cache_writes,
)

# What Claude refuses while it thinks is Anthropic's rule, whichever API carries it.
from extproc.mock_llm.anthropic_api import checked_thinking as anthropic_thinking
from extproc.mock_llm.bedrock_anthropic import (
    OUTPUT_TOKEN_COUNT_HEADER,
    STREAM_CONTENT_TYPE_HEADER,
    ClaudeInvocation,
    StreamCut,
    chunk_message,
    claude_model_name,
    count_claude_tokens,
    invoke_claude,
    stream_cut,
)
from extproc.mock_llm.bedrock_cohere_embeddings import (
    CohereRequest,
    cohere_answer,
    is_cohere_embedding_model,
    parse_cohere_request,
)
from extproc.mock_llm.bedrock_embeddings import (
    INPUT_TOKEN_COUNT_HEADER,
    INVOCATION_LATENCY_HEADER,
    MalformedInputError,
    TitanRequest,
    is_titan_embedding_model,
    parse_titan_request,
    titan_answer,
)
from extproc.mock_llm.bedrock_text_families import invoke_text_model, text_model_family
from extproc.mock_llm.bedrock_text_models import TextFamily, TextInvocation, text_stream_cut
from extproc.mock_llm.converse_output import OutputConfigError, output_schema
from extproc.mock_llm.faults import FAULT_HEADER, NO_FAULT, Fault, FaultSpecError, parse_fault
from extproc.mock_llm.image_bytes import IMAGE_FORMATS, format_of
from extproc.mock_llm.json_reply import instance
from extproc.mock_llm.prompt_cache import (
    Breakpoint,
    BreakpointError,
    PromptCache,
    converse_breakpoints,
)
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.scripted import (
    ScriptedCall,
    ScriptError,
    scripted_pieces,
    scripted_tool_calls,
)
from extproc.mock_llm.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    count_tokens,
    prompt_tokens,
    reply_pieces,
    reply_text,
    token_pieces,
)

SIGNING_SERVICE = "bedrock"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=5)
SECURITY_TOKEN_HEADER = "x-amz-security-token"
REQUEST_ID_HEADER = "x-amzn-RequestId"
ERROR_TYPE_HEADER = "x-amzn-errortype"

SIGNATURE_MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
INVALID_TOKEN_MESSAGE = "The security token included in the request is invalid."

DEFAULT_MODELS = (
    "anthropic.claude-3-haiku-20240307-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "us.anthropic.claude-3-haiku-20240307-v1:0",
    "amazon.titan-text-express-v1",
    "amazon.nova-micro-v1:0",
    "meta.llama3-8b-instruct-v1:0",
    "mistral.mistral-7b-instruct-v0:2",
    "mistral.mixtral-8x7b-instruct-v0:1",
    "mistral.mistral-large-2402-v1:0",
    # Claude 4.5 models are served through inference profiles only.
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    # A model that takes adaptive thinking only.
    "us.anthropic.claude-opus-4-7",
)

# Converse's ServiceTierType (botocore's bedrock-runtime service model).
SERVICE_TIERS = ("priority", "default", "flex", "reserved")

_GARBAGE = b'{"output": {"message": this is not json'
_GARBAGE_EVENT = b"{this is not json"
_ROLES = ("user", "assistant")
# Payload hashes a client may declare instead of the body's SHA-256.
_UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
# ARN resource types that name a model the mock may serve: the foundation model, or a
# (cross-region) inference profile of one.
_MODEL_ARN_RESOURCES = ("foundation-model", "inference-profile")
# Content blocks that need toolConfig in the same request.
_TOOL_BLOCKS = ("toolUse", "toolResult")
# What a toolUseId may hold, in both blocks (AWS's API reference, ToolUseBlock and
# ToolResultBlock: 1 to 64 characters of this pattern). Newer pages list
# [a-zA-Z0-9_.:-]+ for ToolUseBlock; the mock keeps the narrower rule both pages agree
# on, so an id the gateway sends passes on any Bedrock that reads either.
_TOOL_USE_ID_PATTERN = "[a-zA-Z0-9_-]+"
_TOOL_USE_ID = re.compile(_TOOL_USE_ID_PATTERN)
_TOOL_USE_ID_MAX_LENGTH = 64

# The exception Bedrock names for each status its API documents; other 5xx are
# InternalServerException and other 4xx ValidationException.
_ERROR_CODES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def _invoke_answer(
    request: web.Request,
    answer: bytes,
    counts: Mapping[str, str],
    fault: Fault,
    started: float | None,
    request_id: str,
) -> web.StreamResponse:
    """InvokeModel's JSON answer with its token-count headers (``counts``) and its latency
    since ``started`` (None: none); the connection dropped, or garbage sent, when a fault
    says."""
    if fault.reset_after is not None:
        return _abort(request)
    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
    if fault.garbage:
        return web.Response(body=_GARBAGE, headers=headers)
    if fault.no_output_count:
        # A proxy that dropped one of Bedrock's count headers: the input count stays.
        counts = {k: v for k, v in counts.items() if k.lower() != OUTPUT_TOKEN_COUNT_HEADER.lower()}
    headers |= counts
    if started is not None:
        headers[INVOCATION_LATENCY_HEADER] = str(_elapsed_ms(started))
    return web.Response(body=answer, headers=headers)


@dataclass(frozen=True, slots=True)
class _ChunkStream:
    """What an InvokeModelWithResponseStream answer sends: its events, where a fault cuts
    them, which event carries Bedrock's invocation metrics (None: none does) and how
    they are made from the latency and the first byte's (ms)."""

    events: Sequence[Mapping[str, Any]]
    cut: StreamCut | None
    metrics_at: int | None
    metrics: Callable[[int, int], dict[str, Any]]


def error_code_for(status: int) -> str:
    if status in _ERROR_CODES:
        return _ERROR_CODES[status]
    return "InternalServerException" if status >= 500 else "ValidationException"


class AwsError(Exception):
    """A request Bedrock refuses, answered in AWS's error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, *, request_id: str) -> web.Response:
    """An error as botocore's REST-JSON parser reads it: code from the header, message from JSON."""
    return web.Response(
        status=status,
        body=orjson.dumps({"message": message}),
        headers={
            "Content-Type": "application/json",
            # AWS appends a namespace after the colon; botocore keeps what comes before it.
            ERROR_TYPE_HEADER: f"{code}:",
            REQUEST_ID_HEADER: request_id,
        },
    )


def fault_error(status: int) -> AwsError:
    code = error_code_for(status)
    if status == 429:
        message = "Too many requests, please wait before trying again. (injected by x-mock-fault)"
    elif status == 503:
        message = "Bedrock is unable to process your request. (injected by x-mock-fault)"
    elif status >= 500:
        message = "The server encountered an internal error. (injected by x-mock-fault)"
    else:
        message = f"Injected error {status} (x-mock-fault)."
    return AwsError(status, code, message)


# --- SigV4 -------------------------------------------------------------------------------------


def _signature_error(message: str) -> AwsError:
    return AwsError(403, "InvalidSignatureException", message)


def _unrecognized_client() -> AwsError:
    return AwsError(403, "UnrecognizedClientException", INVALID_TOKEN_MESSAGE)


# botocore's SIGV4_TIMESTAMP: the format of x-amz-date.
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"


@cache
def _declared_headers_signer() -> Any:
    """botocore's signer, canonicalizing exactly the headers on the request it is given.

    botocore leaves out names it never signs itself (user-agent, connection, expect, ...). The
    verifier hands it only the headers the client declared in SignedHeaders, and a client other
    than botocore may have declared one of those, so nothing may be dropped here.

    Built on the first signed request: botocore is a fifth of the mock's start-up, and most
    mocks a test suite starts are never asked a Bedrock question.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.compat import HTTPHeaders

    class DeclaredHeadersSigV4Auth(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
        def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
            headers = HTTPHeaders()
            for name, value in request.headers.items():
                headers[name.lower()] = value
            return headers

    return DeclaredHeadersSigV4Auth


@dataclass(frozen=True, slots=True)
class _Authorization:
    """The parts of ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., ...``."""

    access_key_id: str
    date: str  # yyyymmdd
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _signature_error(
            f"Unsupported Authorization scheme {algorithm!r}: this endpoint takes {ALGORITHM}."
        )
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, param = part.strip().partition("=")
        if sep:
            params[name] = param
    missing = [
        name for name in ("Credential", "SignedHeaders", "Signature") if not params.get(name)
    ]
    if missing:
        raise _signature_error(
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
        )
    scope = params["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _signature_error(
            "Credential should be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request,"
            f" got {params['Credential']!r}."
        )
    access_key_id, date, region, service, _ = scope
    signed_headers = tuple(params["SignedHeaders"].split(";"))
    return _Authorization(access_key_id, date, region, service, signed_headers, params["Signature"])


def _signing_time(headers: CIMultiDictProxy[str]) -> tuple[str, datetime, str]:
    """The SigV4 timestamp (yyyymmddThhmmssZ), as a datetime, and the header it came from.

    AWS takes ``x-amz-date`` and falls back to ``date``; botocore itself signs with ``date``
    when the request already has one.
    """
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        try:
            signed_at = datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:
            raise _signature_error(
                f"X-Amz-Date {amz_date!r} is not in the ISO 8601 basic format yyyyMMddTHHmmssZ."
            ) from None
        return amz_date, signed_at, "x-amz-date"
    date = headers.get("date")
    if date is not None:
        try:
            signed_at = parsedate_to_datetime(date).astimezone(UTC)
        except (TypeError, ValueError):
            raise _signature_error(f"Date {date!r} is not an HTTP date.") from None
        return signed_at.strftime(SIGV4_TIMESTAMP), signed_at, "date"
    raise _signature_error(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )


def _check_clock_skew(timestamp: str, signed_at: datetime) -> None:
    now = datetime.now(UTC)

    def show(moment: datetime) -> str:
        return moment.strftime(SIGV4_TIMESTAMP)

    if signed_at < now - MAX_CLOCK_SKEW:
        raise _signature_error(
            f"Signature expired: {timestamp} is now earlier than"
            f" {show(now - MAX_CLOCK_SKEW)} ({show(now)} - 5 min.)"
        )
    if signed_at > now + MAX_CLOCK_SKEW:
        raise _signature_error(
            f"Signature not yet current: {timestamp} is still later than"
            f" {show(now + MAX_CLOCK_SKEW)} ({show(now)} + 5 min.)"
        )


class SigV4Verifier:
    """Checks a received request's SigV4 signature against one set of credentials."""

    def __init__(
        self,
        *,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        session_token: str | None = None,
    ) -> None:
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._region = region
        self._session_token = session_token

    def verify(
        self,
        *,
        method: str,
        target: str,
        scheme: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
    ) -> None:
        """Raise AwsError unless the request is signed by the configured credentials.

        ``target`` is the request target as received (path and query, still percent-encoded):
        the client signed the encoded path, so decoding it would change the canonical request.
        """
        value = headers.get("Authorization")
        if not value:
            raise _signature_error(
                "Missing Authentication Token: the request has no SigV4 Authorization header."
            )
        auth = _parse_authorization(value)
        if auth.access_key_id != self._access_key_id:
            raise _unrecognized_client()
        if self._session_token is not None:
            token = headers.get(SECURITY_TOKEN_HEADER, "")
            if not hmac.compare_digest(token.encode(), self._session_token.encode()):
                raise _unrecognized_client()
        timestamp, signed_at, date_header = _signing_time(headers)
        if auth.date != timestamp[:8]:
            raise _signature_error(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date"
                f" from HTTP: '{auth.date}' != '{timestamp[:8]}', from '{timestamp}'."
            )
        if auth.service != SIGNING_SERVICE:
            raise _signature_error(
                f"Credential should be scoped to correct service: '{SIGNING_SERVICE}'."
            )
        if auth.region != self._region:
            raise _signature_error(
                "Credential should be scoped to a valid region: this endpoint serves"
                f" '{self._region}', the credential is scoped to '{auth.region}'."
            )
        for required in ("host", date_header):
            if required not in auth.signed_headers:
                raise _signature_error(
                    f"'{required}' must be a 'SignedHeader' in the AWS Authorization."
                )
        absent = [name for name in auth.signed_headers if name not in headers]
        if absent:
            raise _signature_error(
                f"{SIGNATURE_MISMATCH_MESSAGE} Signed headers missing from the request:"
                f" {', '.join(absent)}."
            )
        _check_clock_skew(timestamp, signed_at)
        declared_hash = headers.get("x-amz-content-sha256")
        if (
            declared_hash is not None
            and "x-amz-content-sha256" in auth.signed_headers
            and declared_hash not in _UNSIGNED_PAYLOADS
            and declared_hash != hashlib.sha256(body).hexdigest()
        ):
            raise _signature_error(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        self._check_signature(auth, method, target, scheme, headers, body, timestamp)

    def _check_signature(
        self,
        auth: _Authorization,
        method: str,
        target: str,
        scheme: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        timestamp: str,
    ) -> None:
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        path, _, query = target.partition("?")
        url = f"{scheme}://{headers.get('host', '')}{path}" + (f"?{query}" if query else "")
        aws_request = AWSRequest(method=method, url=url, data=body)
        for name in auth.signed_headers:
            # Assignment appends on botocore's headers: a repeated header stays repeated, and
            # SigV4 joins its values with commas, as the client did.
            for header_value in headers.getall(name):
                aws_request.headers[name] = header_value
        aws_request.context["timestamp"] = timestamp
        credentials = Credentials(auth.access_key_id, self._secret_access_key)
        signer = _declared_headers_signer()(credentials, SIGNING_SERVICE, auth.region)
        canonical_request: str = signer.canonical_request(aws_request)
        string_to_sign: str = signer.string_to_sign(aws_request, canonical_request)
        expected: str = signer.signature(string_to_sign, aws_request)
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise _signature_error(
                f"{SIGNATURE_MISMATCH_MESSAGE}\n\n"
                f"The Canonical String for this request should have been\n'{canonical_request}'"
                f"\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
            )


# --- Converse requests -------------------------------------------------------------------------


def _invalid(message: str) -> AwsError:
    return AwsError(400, "ValidationException", message)


def _constraint(path: str, constraint: str, *more: str) -> AwsError:
    """A schema error, in AWS's words; one value can break several constraints at once."""
    constraints = (constraint, *more)
    count = f"{len(constraints)} validation error{'s' if more else ''} detected"
    broken = "; ".join(
        f"Value at '{path}' failed to satisfy constraint: {each}" for each in constraints
    )
    return _invalid(f"{count}: {broken}")


def _is_int(value: object) -> bool:
    # bool is an int subclass; `"maxTokens": true` must not mean 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _union_member(value: object, path: str, kinds: str) -> tuple[str, Any]:
    """The one member of a union (a content block, a tool): AWS refuses zero or several."""
    if not isinstance(value, dict) or len(value) != 1:
        raise _constraint(path, f"Member must be an object with exactly one of {kinds}")
    ((kind, member),) = value.items()
    return kind, member


def _check_content(blocks: list[Any], where: str) -> bool:
    """Validate a message's content blocks; True when one of them is a tool block."""
    uses_tools = False
    for j, block in enumerate(blocks):
        path = f"{where}.{j}"
        kind, member = _union_member(
            block, path, "text, image, document, video, toolUse, toolResult, ..."
        )
        if kind == "text":
            if not isinstance(member, str):
                raise _constraint(f"{path}.text", "Member must be a string")
            if not member.strip():
                raise _invalid(
                    f"The text field in the ContentBlock object at {path} is blank."
                    " Add text to the text field, and try again."
                )
        elif kind == "image":
            _check_image(member, f"{path}.image")
        elif kind == "document":
            _check_document(member, f"{path}.document")
        elif kind in _TOOL_BLOCKS:
            _check_tool_use_id(member, f"{path}.{kind}")
        uses_tools = uses_tools or kind in _TOOL_BLOCKS
    return uses_tools


def _check_tool_use_id(member: object, path: str) -> None:
    """A ``toolUse`` or ``toolResult`` block names its call with a ``toolUseId`` that fits
    Bedrock's rule (1 to 64 of ``[a-zA-Z0-9_-]``); Bedrock lists every rule an id breaks.

    Ids another provider made (``functions.get_weather:0``, ids past 64 characters) reach
    Bedrock in OpenAI clients' histories: refusing them here is what lets a test notice a
    gateway that passes them on.
    """
    call_id = member.get("toolUseId") if isinstance(member, dict) else None
    if not isinstance(call_id, str):
        raise _constraint(f"{path}.toolUseId", "Member must not be null")
    broken = []
    if not _TOOL_USE_ID.fullmatch(call_id):
        broken.append(f"Member must satisfy regular expression pattern: {_TOOL_USE_ID_PATTERN}")
    if not call_id:
        broken.append("Member must have length greater than or equal to 1")
    if len(call_id) > _TOOL_USE_ID_MAX_LENGTH:
        broken.append(f"Member must have length less than or equal to {_TOOL_USE_ID_MAX_LENGTH}")
    if broken:
        raise _constraint(f"{path}.toolUseId", *broken)


def _tool_ids(content: list[dict[str, Any]], kind: str) -> list[str]:
    return [block[kind]["toolUseId"] for block in content if kind in block]


def _check_tool_results(messages: list[dict[str, Any]]) -> None:
    """Each user turn answers every ``toolUse`` of the assistant turn just before it, with a
    ``toolResult`` each and no more, as Bedrock checks (in its words).

    This is what refuses a client, or a gateway, that spreads an answer's results over
    several turns, drops one, or answers a call of an earlier turn.
    """
    for i, message in enumerate(messages):
        if message["role"] != "user":
            continue
        previous = messages[i - 1]["content"] if i else []
        calls = _tool_ids(previous, "toolUse")
        results = _tool_ids(message["content"], "toolResult")
        if len(results) > len(calls):
            raise _invalid(
                f"The number of toolResult blocks at messages.{i}.content exceeds the number"
                " of toolUse blocks of previous turn."
            )
        missing = [call for call in calls if call not in results]
        if missing:
            raise _invalid(
                f"Expected toolResult blocks at messages.{i}.content for the following Ids: "
                + ", ".join(missing)
            )


def _check_image(image: object, path: str) -> None:
    """An image block: one of Converse's formats, and base64 bytes that are that format.

    Bedrock checks the format's name first (a schema error), then whether the bytes are an
    image of that format (the model's error, in its own words).
    """
    image_format = image.get("format") if isinstance(image, dict) else None
    if image_format not in IMAGE_FORMATS:
        raise _constraint(
            f"{path}.format", "Member must satisfy enum value set: [png, jpeg, gif, webp]"
        )
    source = image.get("source") if isinstance(image, dict) else None
    data = source.get("bytes") if isinstance(source, dict) else None
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raw = b""
    if format_of(raw) != image_format:
        raise _invalid(
            "The model returned the following errors: "
            "The provided image does not match the specified image format."
        )


# Converse's document formats, and the characters of a document's name (1 to 200).
DOCUMENT_FORMATS = ("pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md")
_DOCUMENT_NAME = re.compile(r"[a-zA-Z0-9\s\-()\[\]]{1,200}")


def _check_document(document: object, path: str) -> None:
    """A document block: a name of Converse's characters (letters, digits, single spaces,
    hyphens, parentheses, square brackets; 1 to 200), one of its formats, and bytes (a
    PDF's when it says pdf). Names apart within the request: ``_check_document_names``."""
    if not isinstance(document, dict):
        raise _constraint(path, "Member must be an object")
    name = document.get("name")
    if not isinstance(name, str) or not _DOCUMENT_NAME.fullmatch(name) or "  " in name:
        raise _constraint(
            f"{path}.name",
            "Member must satisfy regular expression pattern: "
            "(?:[a-zA-Z0-9\\s\\-\\(\\)\\[\\]]){1,200} (no more than one whitespace in a row)",
        )
    if document.get("format") not in DOCUMENT_FORMATS:
        raise _constraint(
            f"{path}.format",
            "Member must satisfy enum value set: [pdf, csv, doc, docx, xls, xlsx, html, txt, md]",
        )
    source = document.get("source")
    data = source.get("bytes") if isinstance(source, dict) else None
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raw = b""
    if not raw or (document["format"] == "pdf" and not raw.startswith(b"%PDF-")):
        raise _invalid("The model returned the following errors: The document is not valid.")


def _check_document_names(messages: list[Any]) -> None:
    """Bedrock refuses two documents of one name anywhere in a request."""
    seen: set[str] = set()
    for message in messages:
        for block in message.get("content", []):
            document = block.get("document") if isinstance(block, dict) else None
            name = document.get("name") if isinstance(document, dict) else None
            if not isinstance(name, str):
                continue
            if name.lower() in seen:
                raise _invalid(
                    "Messages can't contain duplicate document names. Rename the document "
                    "and retry your request."
                )
            seen.add(name.lower())


def _check_turn_order(index: int, role: str, earlier: list[dict[str, Any]]) -> None:
    """Converse takes turns that start with the user and alternate, as Bedrock says it.

    A client (or a gateway) must merge consecutive messages of one role itself; the mock
    refusing them as Bedrock does is what lets a test notice one that does not.
    """
    if index == 0 and role != "user":
        raise _invalid(
            "A conversation must start with a user message. "
            "Try again with a conversation that starts with a user message."
        )
    if earlier and earlier[-1]["role"] == role:
        raise _invalid(
            "A conversation must alternate between user and assistant roles. Make sure the "
            "conversation alternates between user and assistant roles and try again."
        )


def _blocks_text(blocks: list[Any]) -> str:
    return " ".join(block["text"] for block in blocks if isinstance(block.get("text"), str))


def _check_system(system: object) -> str | None:
    """The system blocks' text, or None when there are none."""
    if system is None:
        return None
    if not isinstance(system, list):
        raise _constraint("system", "Member must be a list of system content blocks")
    for j, block in enumerate(system):
        kind, member = _union_member(block, f"system.{j}", "text, guardContent, cachePoint")
        if kind == "text" and (not isinstance(member, str) or not member):
            raise _constraint(
                f"system.{j}.text", "Member must have length greater than or equal to 1"
            )
    return _blocks_text(system) if system else None


def _check_inference_config(config: object) -> int | None:
    """Validate inferenceConfig; its maxTokens, or None."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise _constraint("inferenceConfig", "Member must be an object")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _constraint(
            "inferenceConfig.maxTokens", "Member must have value greater than or equal to 1"
        )
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise _constraint(f"inferenceConfig.{name}", "Member must be a number from 0 to 1")
    stops = config.get("stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _constraint("inferenceConfig.stopSequences", "Member must be non-empty strings")
    return max_tokens


def _check_tool_config(tool_config: object) -> frozenset[str]:
    """Validate toolConfig; the names of the tools it declares."""
    if not isinstance(tool_config, dict):
        raise _constraint("toolConfig", "Member must be an object")
    tools = tool_config.get("tools")
    if not isinstance(tools, list) or not tools:
        raise _constraint("toolConfig.tools", "Member must have length greater than or equal to 1")
    names: set[str] = set()
    for k, tool in enumerate(tools):
        path = f"toolConfig.tools.{k}"
        kind, spec = _union_member(tool, path, "toolSpec, systemTool, cachePoint")
        if kind != "toolSpec":
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _constraint(f"{path}.toolSpec.name", "Member must not be null")
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or "json" not in schema:
            raise _constraint(f"{path}.toolSpec.inputSchema", "Member must have a json member")
        names.add(spec["name"])
    choice = tool_config.get("toolChoice")
    if choice is not None and not isinstance(choice, dict):
        raise _constraint("toolConfig.toolChoice", "Member must be an object")
    return frozenset(names)


# --- What each model allows -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRules:
    """What Converse lets one model do beyond the API's own schema.

    From AWS's "Supported models and model features" table (system prompts, tool use,
    streaming tool use, vision) and the models' parameter pages (the output token limit;
    Claude 4.5's refusal of both sampling parameters at once).
    """

    system_prompts: bool = True
    tool_use: bool = True
    streaming_tool_use: bool = True
    vision: bool = True
    max_output_tokens: int | None = None
    temperature_with_top_p: bool = True


_NO_CHAT_EXTRAS = ModelRules(system_prompts=False, tool_use=False, vision=False)
# By the start of the base model id (an inference profile's geographic prefix removed).
MODEL_RULES: tuple[tuple[str, ModelRules], ...] = (
    ("amazon.titan-text-express", replace(_NO_CHAT_EXTRAS, max_output_tokens=8192)),
    ("amazon.titan-text-lite", replace(_NO_CHAT_EXTRAS, max_output_tokens=4096)),
    ("amazon.titan-text-premier", replace(_NO_CHAT_EXTRAS, max_output_tokens=3072)),
    ("mistral.mistral-7b-instruct", replace(_NO_CHAT_EXTRAS, max_output_tokens=8192)),
    ("mistral.mixtral-8x7b-instruct", replace(_NO_CHAT_EXTRAS, max_output_tokens=4096)),
    ("mistral.mistral-large", ModelRules(streaming_tool_use=False, vision=False)),
    ("meta.llama3-8b-instruct", ModelRules(tool_use=False, vision=False, max_output_tokens=2048)),
    ("meta.llama3-70b-instruct", ModelRules(tool_use=False, vision=False, max_output_tokens=2048)),
    ("meta.llama3-1-", ModelRules(streaming_tool_use=False, vision=False)),
    ("meta.llama3-2-1b", ModelRules(tool_use=False, vision=False)),
    ("meta.llama3-2-3b", ModelRules(tool_use=False, vision=False)),
    ("amazon.nova-micro", ModelRules(vision=False)),
    ("anthropic.claude-3-haiku-20240307", ModelRules(max_output_tokens=4096)),
    ("anthropic.claude-3-5-haiku", ModelRules(vision=False, max_output_tokens=8192)),
    ("anthropic.claude-sonnet-4-5", ModelRules(temperature_with_top_p=False)),
    ("anthropic.claude-haiku-4-5", ModelRules(temperature_with_top_p=False)),
)
# An inference profile id starts with where it routes: us.anthropic..., eu.amazon...
_PROFILE_PREFIXES = ("us.", "us-gov.", "eu.", "apac.", "au.", "ca.", "jp.", "global.")


def model_rules(model_id: str) -> ModelRules:
    """The rules of the model a Converse ``modelId`` names; none for a model not listed."""
    base = model_of_identifier(model_id) or model_id
    for prefix in _PROFILE_PREFIXES:
        if base.startswith(prefix):
            base = base.removeprefix(prefix)
            break
    return next((rules for start, rules in MODEL_RULES if base.startswith(start)), ModelRules())


def check_model_rules(model_id: str, doc: dict[str, Any], *, stream: bool) -> None:
    """Refuse, as Bedrock does, what a valid Converse request asks beyond the model."""
    rules = model_rules(model_id)
    if doc.get("system") and not rules.system_prompts:
        raise _invalid(
            "This model doesn't support system messages. Try again without a system message "
            "or use a model that supports system messages."
        )
    if doc.get("toolConfig") is not None:
        if not rules.tool_use:
            raise _invalid("This model doesn't support tool use.")
        if stream and not rules.streaming_tool_use:
            raise _invalid("This model doesn't support tool use in streaming mode.")
    if not rules.vision and _has_images(doc["messages"]):
        raise _invalid("This model doesn't support the image field for user messages.")
    config = doc.get("inferenceConfig") or {}
    limit = rules.max_output_tokens
    if limit is not None and config.get("maxTokens", 0) > limit:
        raise _invalid(
            f"The maximum tokens you requested exceeds the model limit of {limit}. "
            f"Try again with a maximum tokens value that is lower than {limit}."
        )
    if not rules.temperature_with_top_p and "temperature" in config and "topP" in config:
        raise _invalid(
            "The model returned the following errors: `temperature` and `top_p` cannot both "
            "be specified for this model. Please use only one."
        )
    if _is_claude(model_id):
        _check_claude_fields(doc, config)


def _is_claude(model_id: str) -> bool:
    # A model id, an inference profile's (``us.anthropic.claude...``) or the ARN of either.
    return "anthropic.claude" in (model_of_identifier(model_id) or model_id)


def _check_claude_fields(doc: dict[str, Any], config: dict[str, Any]) -> None:
    """What Claude refuses on Converse as on Anthropic's API, in Bedrock's words for a
    model's error: a stop sequence of whitespace alone, and an Anthropic ``tool_choice``
    in ``additionalModelRequestFields`` without its ``type`` or beside a
    ``toolConfig.toolChoice`` (Bedrock merges the two and refuses the clash; the
    words are those public reports of calls to Bedrock quote)."""
    stops = config.get("stopSequences") or []
    if any(isinstance(stop, str) and stop.isspace() for stop in stops):
        raise _invalid(
            "The model returned the following errors: stop_sequences: each stop sequence "
            "must contain non-whitespace"
        )
    extra = doc.get("additionalModelRequestFields")
    choice = extra.get("tool_choice") if isinstance(extra, dict) else None
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid("The model returned the following errors: tool_choice.type: Field required")
    tool_config = doc.get("toolConfig")
    converse_choice = tool_config.get("toolChoice") if isinstance(tool_config, dict) else None
    if isinstance(converse_choice, dict) and converse_choice:
        kind = next(iter(converse_choice))
        raise _invalid(
            f"The additional field tool_choice/type conflicts with the existing field "
            f"toolConfig.toolChoice.{kind}. Remove tool_choice/type and try again."
        )


def claude_thinks(model_id: str, doc: dict[str, Any]) -> bool:
    """Whether the request turns Claude's thinking on, checked as Anthropic checks it
    (``anthropic_api``) and refused in Bedrock's words for a model's error."""
    extra = doc.get("additionalModelRequestFields")
    if not _is_claude(model_id) or not isinstance(extra, dict):
        return False
    config = doc.get("inferenceConfig") or {}
    tool_config = doc.get("toolConfig")
    converse_choice = tool_config.get("toolChoice") if isinstance(tool_config, dict) else None
    forced = isinstance(converse_choice, dict) and bool(set(converse_choice) & {"any", "tool"})
    # The request as Claude reads it once Bedrock has merged Converse's fields in.
    anthropic = {
        "thinking": extra.get("thinking"),
        "output_config": extra.get("output_config"),
        "temperature": config.get("temperature"),
        "top_p": config.get("topP"),
        "tool_choice": {"type": "any"} if forced else extra.get("tool_choice"),
    }
    # Without maxTokens the budget is not checked against it.
    max_tokens = config.get("maxTokens") or sys.maxsize
    try:
        budget, adaptive = anthropic_thinking(
            anthropic, model_of_identifier(model_id) or "", max_tokens
        )
    except InvalidRequestError as exc:
        raise _invalid(f"The model returned the following errors: {exc}") from None
    thinks = budget is not None or adaptive
    if thinks:
        _check_final_assistant_thinks(doc["messages"])
    return thinks


def _check_final_assistant_thinks(messages: list[dict[str, Any]]) -> None:
    """With thinking on, the assistant turn the request continues (a prefill, or the one
    whose tool calls the last user turn answers) must start with its reasoning block."""
    last = len(messages) - 1
    if messages[last]["role"] == "assistant":
        at = last
    elif last >= 1 and _tool_ids(messages[last]["content"], "toolResult"):
        at = last - 1
    else:
        return
    first = messages[at]["content"][0]
    if not (isinstance(first, dict) and "reasoningContent" in first):
        raise _invalid(
            f"The model returned the following errors: messages.{at}.content.0.type: "
            "Expected `thinking` or `redacted_thinking`, but found another block. When "
            "`thinking` is enabled, a final `assistant` message must start with a thinking "
            "block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
        )


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any("image" in block for message in messages for block in message["content"])


@dataclass(frozen=True, slots=True)
class ConverseRequest:
    model_id: str
    messages: list[dict[str, Any]]  # in the shared form of ``tokens``: role and text content
    system: str | None  # the system blocks' text, None when there are none
    max_tokens: int | None
    # The tools toolConfig declares: the only ones the model can call.
    tools: frozenset[str] = frozenset()
    # serviceTier.type as asked, answered back; None when the request names no tier.
    service_tier: str | None = None
    # Whether Claude thinks before it answers (claude_thinks).
    thinks: bool = False
    # outputConfig's JSON schema, when the answer must be JSON of it (converse_output).
    output_schema: dict[str, Any] | None = None
    # The prompt-cache breakpoints its cachePoint blocks mark, in the prompt's order.
    breakpoints: tuple[Breakpoint, ...] = ()


def parse_converse_request(model_id: str, body: Body) -> ConverseRequest:
    """Validate the fields the mock relies on, as Bedrock would; others are accepted and ignored."""
    if not body.is_json or not isinstance(body.json, dict):
        raise _invalid("Malformed input request: the body must be a JSON object.")
    doc: dict[str, Any] = body.json
    messages = doc.get("messages")
    if messages is None:
        raise _constraint("messages", "Member must not be null")
    if not isinstance(messages, list) or not messages:
        raise _constraint("messages", "Member must be a list of at least 1 message")
    shared: list[dict[str, Any]] = []
    uses_tools = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _constraint(f"messages.{i}", "Member must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise _constraint(
                f"messages.{i}.role", "Member must satisfy enum value set: [user, assistant]"
            )
        _check_turn_order(i, role, shared)
        content = message.get("content")
        if not isinstance(content, list):
            raise _constraint(f"messages.{i}.content", "Member must be a list of content blocks")
        if not content:
            raise _invalid(
                f"The content field in the Message object at messages.{i} is empty."
                " Add a ContentBlock object to the content field and try again."
            )
        uses_tools = _check_content(content, f"messages.{i}.content") or uses_tools
        shared.append({"role": role, "content": _blocks_text(content)})
    system = _check_system(doc.get("system"))
    max_tokens = _check_inference_config(doc.get("inferenceConfig"))
    tool_config = doc.get("toolConfig")
    tools: frozenset[str] = frozenset()
    if tool_config is not None:
        tools = _check_tool_config(tool_config)
    elif uses_tools:
        raise _invalid(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    _check_tool_results(messages)
    _check_document_names(messages)
    service_tier = _check_service_tier(doc.get("serviceTier"))
    try:
        schema = output_schema(doc.get("outputConfig"))
    except OutputConfigError as exc:
        refused = _invalid(exc.message) if exc.path is None else _constraint(exc.path, exc.message)
        raise refused from None
    try:
        breakpoints = tuple(converse_breakpoints(model_id, doc, _prefix_tokens))
    except BreakpointError as exc:
        raise _invalid(str(exc)) from None
    return ConverseRequest(
        model_id,
        shared,
        system,
        max_tokens,
        tools,
        service_tier,
        output_schema=schema,
        breakpoints=breakpoints,
    )


def _prefix_tokens(messages: list[Any], system: list[Any], tools: list[Any]) -> int:
    """The input tokens of a prompt made of a cache point's prefix, counted as
    ``build_reply`` counts a whole prompt's (tool definitions count none here)."""
    shared = [{"role": m["role"], "content": _blocks_text(m["content"])} for m in messages]
    tokens = prompt_tokens(shared)
    if system:
        tokens += count_tokens(_blocks_text(system)) + MESSAGE_OVERHEAD_TOKENS
    return tokens


def _check_service_tier(value: object) -> str | None:
    """The tier ``serviceTier`` asks for, checked as Bedrock checks the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _constraint("serviceTier", "Member must be an object")
    tier = value.get("type")
    if tier not in SERVICE_TIERS:
        raise _constraint(
            "serviceTier.type", f"Member must satisfy enum value set: [{', '.join(SERVICE_TIERS)}]"
        )
    return str(tier)


def served_tier(req: ConverseRequest) -> dict[str, Any]:
    """The answer's (or the metadata event's) ``serviceTier`` member: the tier asked for."""
    return {"serviceTier": {"type": req.service_tier}} if req.service_tier is not None else {}


def model_id_from_target(target: str, operation: str) -> str | None:
    """The decoded modelId of ``.../model/{modelId}/{operation}``, or None for another shape.

    Splitting the raw target keeps an encoded ``/`` (``%2F``, as in an ARN) inside the id.
    """
    segments = target.partition("?")[0].split("/")
    if len(segments) < 4 or segments[-1] != operation or segments[-3] != "model":
        return None
    return unquote(segments[-2]) or None


def model_of_identifier(model_id: str) -> str | None:
    """The model (or inference profile) id a Converse ``modelId`` names; None for other ARNs.

    Bedrock takes a model id, an inference profile id (``us.anthropic...``) or the ARN of
    either: ``arn:aws:bedrock:<region>:<account>:<type>/<id>``, where the id may hold
    colons itself (``...-v1:0``).
    """
    if not model_id.startswith("arn:"):
        return model_id
    parts = model_id.split(":", 5)
    if len(parts) < 6:
        return None
    resource_type, _, resource_id = parts[5].partition("/")
    return resource_id if resource_type in _MODEL_ARN_RESOURCES else None


# --- CountTokens -------------------------------------------------------------------------------

COUNT_TOKENS = "count-tokens"
# The members of CountTokens' ``input`` union (botocore's CountTokensInput).
_COUNT_INPUT_MEMBERS = ("invokeModel", "converse")
NOT_COUNTABLE_MESSAGE = "The provided model doesn't support counting tokens."
INVALID_MODEL_MESSAGE = "The provided model identifier is invalid."


def count_input(body: Body) -> tuple[str, dict[str, Any]]:
    """The one member of a CountTokens body's ``input`` union, and its name; raises
    AwsError (a ValidationException) as Bedrock refuses a malformed one."""
    doc = body.json if body.is_json and isinstance(body.json, dict) else {}
    value = doc.get("input")
    if value is None:
        raise _constraint("input", "Member must not be null")
    kinds = ", ".join(_COUNT_INPUT_MEMBERS)
    kind, member = _union_member(value, "input", kinds)
    if kind not in _COUNT_INPUT_MEMBERS:
        raise _constraint("input", f"Member must be an object with exactly one of {kinds}")
    if not isinstance(member, dict):
        raise _constraint(f"input.{kind}", "Member must be an object")
    return kind, member


def invoke_model_body(member: dict[str, Any]) -> Body:
    """The InvokeModel body an ``invokeModel`` member carries (a REST-JSON blob: base64)."""
    encoded = member.get("body")
    where = "input.invokeModel.body"
    if encoded is None:
        raise _constraint(where, "Member must not be null")
    if not isinstance(encoded, str):
        raise _constraint(where, "Member must be a base64-encoded string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _invalid(f"Malformed input request: {where} is not valid base64.") from None
    return Body.parse(raw)


# --- Replies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolUse:
    """One ``toolUse`` block of an answer (scripted with ``x-mock-tool-calls``)."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    # The input's JSON as streamed, one toolUse input delta each.
    pieces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    pieces: list[str]
    stop_reason: str
    input_tokens: int
    # Of input_tokens, those reported as read from the cache (the `cached` fault key).
    cached_tokens: int = 0
    # Of input_tokens, those reported as written to Claude's caches (x-mock-cache-write).
    cache_writes: CacheWrites = NO_CACHE_WRITES
    # The tools the answer calls, after its text.
    calls: tuple[ToolUse, ...] = ()
    # The thinking before the answer, one piece per token (THOUGHT), when asked for.
    thought: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def has_text_block(self) -> bool:
        # An answer made only of tool calls has no text block, as on Bedrock.
        return bool(self.pieces) or not self.calls

    def content(self) -> list[dict[str, Any]]:
        """Converse's ``output.message.content``: the reasoning block when Claude thought,
        the text block, then one per call."""
        reasoning: list[dict[str, Any]] = []
        if self.thought:
            thought = {"text": "".join(self.thought), "signature": THOUGHT_SIGNATURE}
            reasoning = [{"reasoningContent": {"reasoningText": thought}}]
        text = [{"text": self.text}] if self.has_text_block else []
        return (
            reasoning
            + text
            + [
                {"toolUse": {"toolUseId": call.tool_use_id, "name": call.name, "input": call.input}}
                for call in self.calls
            ]
        )

    def usage(self) -> dict[str, Any]:
        # The thought, the text said before the calls, if any, and the calls' input pieces.
        output_tokens = (
            len(self.thought) + len(self.pieces) + sum(len(call.pieces) for call in self.calls)
        )
        writes = self.cache_writes
        # Converse's inputTokens excludes cache reads and writes, reported apart.
        usage: dict[str, Any] = {
            "inputTokens": self.input_tokens - self.cached_tokens - writes.total,
            "outputTokens": output_tokens,
            "totalTokens": self.input_tokens + output_tokens,
        }
        if self.cached_tokens:
            usage["cacheReadInputTokens"] = self.cached_tokens
        if writes.total:
            usage["cacheWriteInputTokens"] = writes.total
            by_ttl = (("1h", writes.one_hour), ("5m", writes.five_minutes))
            usage["cacheDetails"] = [
                {"ttl": ttl, "inputTokens": tokens} for ttl, tokens in by_ttl if tokens
            ]
        return usage


def build_reply(req: ConverseRequest, fault: Fault, writes: CacheWrites = NO_CACHE_WRITES) -> Reply:
    # The thought comes first and takes its part of maxTokens; one too small cuts it.
    thought = tuple(token_pieces(THOUGHT))[: req.max_tokens] if req.thinks else ()
    room = req.max_tokens - len(thought) if req.max_tokens is not None else None
    # JSON of outputConfig's schema when it sets one, else the usual text.
    text = (
        orjson.dumps(instance(req.output_schema, reply_text(req.messages))).decode()
        if req.output_schema is not None
        else None
    )
    pieces, truncated = reply_pieces(req.messages, max_tokens=room, chunks=fault.chunks, text=text)
    input_tokens = prompt_tokens(req.messages)
    if req.system is not None:
        input_tokens += count_tokens(req.system) + MESSAGE_OVERHEAD_TOKENS
    stop_reason = "max_tokens" if truncated else "end_turn"
    cached = fault.cached_part(input_tokens)
    # A cache holds no more than the prompt left after the reads.
    written = writes.within(input_tokens - cached)
    return Reply(pieces, stop_reason, input_tokens, cached, written, thought=thought)


# Converse's stop reasons (its API reference), which x-mock-stop-reason may choose.
STOP_REASON_HEADER = "x-mock-stop-reason"
STOP_REASONS = (
    "end_turn",
    "tool_use",
    "max_tokens",
    "stop_sequence",
    "guardrail_intervened",
    "content_filtered",
    "malformed_model_output",
    "malformed_tool_use",
    "model_context_window_exceeded",
)


def scripted_reply(
    reply: Reply, headers: Mapping[str, str], req: ConverseRequest, ids: str
) -> Reply:
    """The reply the test chose (``x-mock-reply``, ``x-mock-tool-calls``), else ``reply``.

    A model calls only the tools the request declares: scripted calls to other tools (all of
    them, without a ``toolConfig``) are not made, as a request that offered no tool gets no
    call. Calls end the answer with ``tool_use``; their ids are ``tooluse_<ids>_<k>``.
    Raises AwsError for a malformed header.
    """
    try:
        pieces = scripted_pieces(headers)
        scripted_calls = scripted_tool_calls(headers) or []
    except ScriptError as exc:
        raise _invalid(str(exc)) from None
    chosen = _scripted_reply(reply, pieces, scripted_calls, req, ids)
    stop = headers.get(STOP_REASON_HEADER)
    if stop is None:
        return chosen
    if stop not in STOP_REASONS:
        raise _invalid(f"{STOP_REASON_HEADER} must be one of {', '.join(STOP_REASONS)}")
    return replace(chosen, stop_reason=stop)


def _scripted_reply(
    reply: Reply,
    pieces: list[str] | None,
    scripted_calls: list[ScriptedCall],
    req: ConverseRequest,
    ids: str,
) -> Reply:
    calls = tuple(
        ToolUse(f"tooluse_{ids}_{k}", call.name, call.input, call.pieces)
        for k, call in enumerate(scripted_calls)
        if call.name in req.tools
    )
    if calls:
        # The cut call is the last; a call to a tool not offered is not made, nor cut.
        last = scripted_calls[-1]
        stop = "max_tokens" if last.cut and last.name in req.tools else "tool_use"
        return replace(reply, pieces=pieces or [], stop_reason=stop, calls=calls)
    if pieces is not None:
        return replace(reply, pieces=pieces, stop_reason="end_turn")
    return reply


def _cache_writes(request: web.Request) -> CacheWrites:
    """The cache writes the request asks for; a malformed header is a ValidationException."""
    try:
        return cache_writes(request.headers)
    except CacheWriteSpecError as exc:
        raise _invalid(str(exc)) from None


def _embedding_request(request: web.Request, body: Body) -> TitanRequest | CohereRequest:
    """The embeddings request of an InvokeModel call; raises AwsError.

    InvokeModel answers a model it cannot run with a 400, not Converse's 404: the mock
    runs the Titan and Cohere embedding models only, so any other is refused so.
    """
    model_id = model_id_from_target(request.raw_path, "invoke")
    model = model_of_identifier(model_id) if model_id is not None else None
    try:
        if model is not None and is_titan_embedding_model(model):
            return parse_titan_request(model, body)
        # Cohere's models are also invoked through cross-region profiles (us.cohere...).
        cohere = _without_profile_prefix(model) if model is not None else None
        if cohere is not None and is_cohere_embedding_model(cohere):
            return parse_cohere_request(cohere, body)
    except MalformedInputError as exc:
        raise _invalid(str(exc)) from None
    raise _invalid("The provided model identifier is invalid.")


def _without_profile_prefix(model: str) -> str:
    prefix = next((p for p in _PROFILE_PREFIXES if model.startswith(p)), "")
    return model.removeprefix(prefix)


INVOKE_STREAM = "invoke-with-response-stream"


def _text_model(request: web.Request, operation: str) -> tuple[str, TextFamily] | None:
    """The text model the path names (an id, a cross-region profile of one such as
    ``us.meta.llama3-2-1b-instruct-v1:0``, or an ARN), its profile prefix removed, and its
    family; None for a model no text family serves. Like the embedding models, these are
    served whether or not the mock's model list names them."""
    model_id = model_id_from_target(request.raw_path, operation)
    model = model_of_identifier(model_id) if model_id is not None else None
    if model is None:
        return None
    base = _without_profile_prefix(model)
    family = text_model_family(base)
    return (base, family) if family is not None else None


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _abort(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the connection so the client sees a reset instead of a (complete) response."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp still wants a response object; finishing it fails quietly on the closed transport.
    return response if response is not None else web.Response(status=500)


# The exception Bedrock sends inside a ConverseStream whose 200 has left, when the model
# fails mid-answer; the stream ends after it (botocore raises EventStreamError on it).
STREAM_EXCEPTION = "modelStreamErrorException"
STREAM_EXCEPTION_BODY = {
    "message": "The model failed while streaming its answer. (injected by x-mock-fault)",
    "originalStatusCode": 500,
    "originalMessage": "Internal error",
}


def content_events(reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events between ``messageStart`` and ``messageStop``.

    A thought is the first block: one ``reasoningContent`` text delta per piece, then its
    ``signature`` delta and ``contentBlockStop``. The text block is its ``text`` deltas and
    ``contentBlockStop``; each tool call is a block of its own, announced by
    ``contentBlockStart`` with its id and name, then one ``toolUse`` input delta per piece
    of its JSON, then ``contentBlockStop``.
    """
    events: list[tuple[str, dict[str, Any]]] = []
    index = 0
    if reply.thought:
        deltas = [{"text": piece} for piece in reply.thought] + [{"signature": THOUGHT_SIGNATURE}]
        events += [
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": d}})
            for d in deltas
        ]
        events.append(("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    if reply.has_text_block:
        events += [
            ("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}})
            for piece in reply.pieces
        ]
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    for at, call in enumerate(reply.calls, start=index):
        start = {"toolUse": {"toolUseId": call.tool_use_id, "name": call.name}}
        events.append(("contentBlockStart", {"contentBlockIndex": at, "start": start}))
        events += [
            ("contentBlockDelta", {"contentBlockIndex": at, "delta": {"toolUse": {"input": p}}})
            for p in call.pieces
        ]
        events.append(("contentBlockStop", {"contentBlockIndex": at}))
    return events


async def _fail_stream(
    response: web.StreamResponse, exception: bytes | None = None
) -> web.StreamResponse:
    """End a stream with Bedrock's exception message: ``modelStreamErrorException`` (the
    ``error_after`` fault), or ``exception`` (``first_exception``)."""
    if exception is None:
        exception = encode_exception(STREAM_EXCEPTION, orjson.dumps(STREAM_EXCEPTION_BODY))
    await response.write(exception)
    await response.write_eof()
    return response


def first_exception(status: int) -> bytes:
    """A stream's first message when Bedrock fails it before its answer began (the
    ``error_first`` fault): the exception of that status's answer (``throttlingException``,
    ``internalServerException``, ``serviceUnavailableException``), named in lowerCamel as
    the stream's members are, its message as that answer's."""
    error = fault_error(status)
    name = error.code[:1].lower() + error.code[1:]
    return encode_exception(name, orjson.dumps({"message": error.message}))


class BedrockEndpoints:
    """Request handlers for Bedrock Runtime's Converse API; one instance per mock application."""

    def __init__(
        self,
        *,
        models: Sequence[str],
        verifier: SigV4Verifier,
        chunk_delay_s: float,
        default_fault: Fault,
    ) -> None:
        self._models = frozenset(models)
        self._verifier = verifier
        self._chunk_delay_s = chunk_delay_s
        self._default_fault = default_fault
        # Numbers the answers, so each tool call's id is unique on this mock.
        self._answers = itertools.count(1)
        self._prompt_cache = PromptCache()

    async def converse(self, request: web.Request, body: Body) -> web.StreamResponse:
        return await self._serve(request, body, "converse")

    async def converse_stream(self, request: web.Request, body: Body) -> web.StreamResponse:
        return await self._serve(request, body, "converse-stream")

    def _known_model(self, model_id: str) -> bool:
        if not self._models:
            return True
        return model_of_identifier(model_id) in self._models

    async def _precheck(self, request: web.Request, body: Body) -> Fault:
        """Authentication and the request's fault; raises AwsError to end the request."""
        self._verifier.verify(
            method=request.method,
            target=request.raw_path,
            scheme=request.scheme,
            headers=request.headers,
            body=body.raw,
        )
        spec = request.headers.get(FAULT_HEADER)
        try:
            fault = self._default_fault if spec is None else parse_fault(spec)
        except FaultSpecError as exc:
            raise _invalid(str(exc)) from None
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is not None:
            raise fault_error(fault.status)
        return fault

    def _parse(self, request: web.Request, body: Body, operation: str) -> ConverseRequest:
        model_id = model_id_from_target(request.raw_path, operation)
        if model_id is None:
            raise AwsError(
                404, "ResourceNotFoundException", f"Expected POST /model/{{modelId}}/{operation}."
            )
        if not self._known_model(model_id):
            raise AwsError(
                404,
                "ResourceNotFoundException",
                f"Could not resolve the foundation model from model identifier {model_id!r}.",
            )
        converse = parse_converse_request(model_id, body)
        # The schema first, then the model: Bedrock names a malformed request before
        # what the model cannot do.
        check_model_rules(model_id, body.json, stream=operation == "converse-stream")
        return replace(converse, thinks=claude_thinks(model_id, body.json))

    async def _serve(self, request: web.Request, body: Body, operation: str) -> web.StreamResponse:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        try:
            fault = await self._precheck(request, body)
            req = self._parse(request, body, operation)
            writes = _cache_writes(request)
            reply = build_reply(req, fault, writes)
            if req.breakpoints and writes == NO_CACHE_WRITES and not reply.cached_tokens:
                # The body's cache points, when the test asked for no counts of its own.
                use = self._prompt_cache.use(list(req.breakpoints))
                reply = replace(
                    reply,
                    cached_tokens=use.read,
                    cache_writes=CacheWrites(use.five_minutes, use.one_hour),
                )
            reply = scripted_reply(reply, request.headers, req, f"mock{next(self._answers)}")
        except AwsError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id=request_id)
        if operation == "converse-stream":
            return await self._stream(request, req, reply, fault, started, request_id)
        if fault.reset_after is not None:
            return _abort(request)
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id}
        if fault.garbage:
            return web.Response(body=_GARBAGE, headers=headers)
        document = {
            "output": {"message": {"role": "assistant", "content": reply.content()}},
            "stopReason": reply.stop_reason,
            "usage": reply.usage(),
            "metrics": {"latencyMs": _elapsed_ms(started)},
            **served_tier(req),
        }
        return web.Response(body=orjson.dumps(document), headers=headers)

    async def invoke(self, request: web.Request, body: Body) -> web.StreamResponse:
        """InvokeModel for Titan and Cohere embeddings: SigV4 and faults as for Converse,
        the token count in InvokeModel's header and in Titan's body (none with
        ``no_usage``). Claude's models are answered by ``bedrock_anthropic``, Llama,
        Mistral, Titan Text and Nova by ``bedrock_text_models``."""
        if self._claude_model(request, "invoke") is not None:
            return await self._invoke_claude(request, body, stream=False)
        text_model = _text_model(request, "invoke")
        if text_model is not None:
            return await self._invoke_text(request, body, *text_model, stream=False)
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        try:
            fault = await self._precheck(request, body)
            embed = _embedding_request(request, body)
        except AwsError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id=request_id)
        if isinstance(embed, CohereRequest):
            answer = cohere_answer(embed)
        else:
            answer = titan_answer(embed, with_usage=not fault.no_usage)
        counts = {} if fault.no_usage else {INPUT_TOKEN_COUNT_HEADER: str(embed.input_tokens)}
        return _invoke_answer(request, orjson.dumps(answer), counts, fault, started, request_id)

    async def invoke_with_response_stream(
        self, request: web.Request, body: Body
    ) -> web.StreamResponse:
        """InvokeModelWithResponseStream, for Claude, Llama, Mistral, Titan Text and Nova."""
        text_model = _text_model(request, INVOKE_STREAM)
        if text_model is not None:
            return await self._invoke_text(request, body, *text_model, stream=True)
        return await self._invoke_claude(request, body, stream=True)

    def _claude_model(self, request: web.Request, operation: str) -> str | None:
        """The Anthropic name of the Claude model the path names, if it is one this mock
        serves; None for another model."""
        model_id = model_id_from_target(request.raw_path, operation)
        model = model_of_identifier(model_id) if model_id is not None else None
        if model_id is None or model is None or not self._known_model(model_id):
            return None
        return claude_model_name(model)

    async def count_tokens(self, request: web.Request, body: Body) -> web.StreamResponse:
        """CountTokens, for Claude: SigV4 and faults as for InvokeModel, the count its
        InvokeModel (or Converse) would report for the body in the ``input`` union."""
        request_id = str(uuid.uuid4())
        try:
            fault = await self._precheck(request, body)
            model_id, model = self._countable_model(request)
            kind, member = count_input(body)
            if kind == "invokeModel":
                tokens = count_claude_tokens(model, invoke_model_body(member))
            else:
                tokens = self._converse_count(model_id, member)
        except MalformedInputError as exc:
            return error_response(400, "ValidationException", str(exc), request_id=request_id)
        except AwsError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id=request_id)
        # CountTokens reports no latency: nothing was invoked.
        answer = orjson.dumps({"inputTokens": tokens})
        return _invoke_answer(request, answer, {}, fault, None, request_id)

    def _countable_model(self, request: web.Request) -> tuple[str, str]:
        """The model id the path names and its Claude model's Anthropic name; raises
        AwsError for a model this mock does not serve, or cannot count."""
        model_id = model_id_from_target(request.raw_path, COUNT_TOKENS)
        model = model_of_identifier(model_id) if model_id is not None else None
        if model_id is None or model is None or not self._known_model(model_id):
            raise _invalid(INVALID_MODEL_MESSAGE)
        name = claude_model_name(model)
        if name is None:
            raise _invalid(NOT_COUNTABLE_MESSAGE)
        return model_id, name

    @staticmethod
    def _converse_count(model_id: str, member: dict[str, Any]) -> int:
        """The ``usage.inputTokens`` Converse reports for the member's messages, checked
        as Converse checks them."""
        converse = parse_converse_request(model_id, Body(orjson.dumps(member), True, member))
        check_model_rules(model_id, member, stream=False)
        tokens: int = build_reply(converse, NO_FAULT).usage()["inputTokens"]
        return tokens

    async def _invoke_claude(
        self, request: web.Request, body: Body, *, stream: bool
    ) -> web.StreamResponse:
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        operation = "invoke-with-response-stream" if stream else "invoke"
        try:
            fault = await self._precheck(request, body)
            model = self._claude_model(request, operation)
            if model is None:
                raise _invalid("The provided model identifier is invalid.")
            message_id = f"msg_bdrk_mock_{next(self._answers)}"
            invocation = invoke_claude(model, body, request.headers, fault, message_id)
        except MalformedInputError as exc:
            return error_response(400, "ValidationException", str(exc), request_id=request_id)
        except AwsError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id=request_id)
        if stream:
            return await self._stream_claude(request, invocation, fault, started, request_id)
        answer = orjson.dumps(invocation.message())
        return _invoke_answer(
            request, answer, invocation.token_headers(), fault, started, request_id
        )

    async def _stream_claude(
        self,
        request: web.Request,
        invocation: ClaudeInvocation,
        fault: Fault,
        started: float,
        request_id: str,
    ) -> web.StreamResponse:
        events = invocation.events()
        # Claude's message_stop carries Bedrock's invocation metrics.
        stop = next(i for i, event in enumerate(events) if event["type"] == "message_stop")
        return await self._stream_chunks(
            request,
            _ChunkStream(events, stream_cut(events, fault), stop, invocation.invocation_metrics),
            fault,
            started,
            request_id,
        )

    async def _invoke_text(
        self, request: web.Request, body: Body, model: str, family: TextFamily, *, stream: bool
    ) -> web.StreamResponse:
        """InvokeModel(-WithResponseStream) for Llama, Mistral, Titan Text and Nova: SigV4 and
        faults as for Claude; the token counts in InvokeModel's headers (none with
        ``no_usage``)."""
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        try:
            fault = await self._precheck(request, body)
            invocation = invoke_text_model(family, model, body, request.headers, fault)
        except MalformedInputError as exc:
            return error_response(400, "ValidationException", str(exc), request_id=request_id)
        except AwsError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id=request_id)
        if stream:
            return await self._stream_text(request, invocation, fault, started, request_id)
        counts = {} if fault.no_usage else invocation.token_headers()
        answer = orjson.dumps(invocation.answer())
        return _invoke_answer(request, answer, counts, fault, started, request_id)

    async def _stream_text(
        self,
        request: web.Request,
        invocation: TextInvocation,
        fault: Fault,
        started: float,
        request_id: str,
    ) -> web.StreamResponse:
        """One ``chunk`` per piece, framed as Claude's; the last carries Bedrock's
        invocation metrics (none with ``no_usage``)."""
        chunks = invocation.chunks()
        last = None if fault.no_usage else len(chunks) - 1
        cut = text_stream_cut(len(chunks), fault)
        return await self._stream_chunks(
            request,
            _ChunkStream(chunks, cut, last, invocation.invocation_metrics),
            fault,
            started,
            request_id,
        )

    async def _stream_chunks(
        self,
        request: web.Request,
        stream: _ChunkStream,
        fault: Fault,
        started: float,
        request_id: str,
    ) -> web.StreamResponse:
        """InvokeModelWithResponseStream's answer: one ``chunk`` frame per event, the
        metrics added to the one ``stream.metrics_at`` names, cut where a fault says."""
        response = web.StreamResponse(
            headers={
                "Content-Type": EVENT_STREAM_CONTENT_TYPE,
                STREAM_CONTENT_TYPE_HEADER: "application/json",
                REQUEST_ID_HEADER: request_id,
            }
        )
        await response.prepare(request)
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s
        cut = stream.cut
        first_byte_ms = 0
        try:
            if fault.error_first is not None:
                return await _fail_stream(response, first_exception(fault.error_first))
            for position, event in enumerate(stream.events):
                if cut is not None and position == cut.at:
                    if cut.ending == "reset":
                        return _abort(request, response)
                    if cut.ending == "inside":
                        # Half the event's frame, then the body's clean end.
                        frame = chunk_message(orjson.dumps(event))
                        await response.write(frame[: len(frame) // 2])
                        return response
                    return await _fail_stream(response)
                pause = fault.pause_before_event(position, interval)
                if pause:
                    await asyncio.sleep(pause)
                if position == stream.metrics_at:
                    event = {**event, **stream.metrics(_elapsed_ms(started), first_byte_ms)}
                # Garbage keeps both framings intact: the chunk's bytes are not JSON.
                payload = _GARBAGE_EVENT if fault.garbage else orjson.dumps(event)
                # One write per event, so each reaches the client as its own HTTP chunk.
                await response.write(chunk_message(payload))
                if not position:
                    first_byte_ms = _elapsed_ms(started)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response

    async def _stream(
        self,
        request: web.Request,
        req: ConverseRequest,
        reply: Reply,
        fault: Fault,
        started: float,
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": EVENT_STREAM_CONTENT_TYPE, REQUEST_ID_HEADER: request_id}
        )
        await response.prepare(request)
        # One write per event, so each reaches the client as its own HTTP chunk.
        writes = 0
        interval = self._chunk_delay_s if fault.interval_s is None else fault.interval_s

        async def send(event_type: str, data: dict[str, Any]) -> None:
            nonlocal writes
            pause = fault.pause_before_event(writes, interval)
            if pause:
                await asyncio.sleep(pause)
            writes += 1
            # Garbage keeps the framing intact: the client's decoder gets a payload, not JSON.
            payload = _GARBAGE_EVENT if fault.garbage else orjson.dumps(data)
            await response.write(encode_event(event_type, payload))

        try:
            if fault.error_first is not None:
                # Before messageStart: Bedrock never began its answer.
                return await _fail_stream(response, first_exception(fault.error_first))
            await send("messageStart", {"role": "assistant"})
            events = content_events(reply)
            sent = 0
            for position, (event_type, data) in enumerate(events):
                if event_type == "contentBlockDelta":
                    if sent == fault.reset_after:
                        return _abort(request, response)
                    if sent == fault.error_after:
                        return await _fail_stream(response)
                    if sent == fault.end_inside:
                        # Half the delta's frame, then the body's clean end.
                        frame = encode_event(event_type, orjson.dumps(data))
                        await response.write(frame[: len(frame) // 2])
                        return response
                    sent += 1
                elif position == len(events) - 1 and fault.end_inside is not None:
                    # Fewer pieces than end_inside: the stream must still end inside a frame.
                    frame = encode_event(event_type, orjson.dumps(data))
                    await response.write(frame[: len(frame) // 2])
                    return response
                elif position == len(events) - 1 and fault.reset_after is not None:
                    # Fewer pieces than reset_after: the stream must still never finish.
                    return _abort(request, response)
                elif position == len(events) - 1 and fault.error_after is not None:
                    # Fewer pieces than error_after: the stream must still fail.
                    return await _fail_stream(response)
                await send(event_type, data)
            await send("messageStop", {"stopReason": reply.stop_reason})
            await send(
                "metadata",
                {
                    "usage": reply.usage(),
                    "metrics": {"latencyMs": _elapsed_ms(started)},
                    **served_tier(req),
                },
            )
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response
