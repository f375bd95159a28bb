"""The gateway's error hierarchy and its OpenAI-shaped wire form.

Every refusal a stage makes is a ``GatewayError``; the processor turns it into an
Envoy ``ImmediateResponse`` with the status and body below, so clients see the
same error shape whatever part of the gateway refused them::

    GatewayError                      (status, type, code)
    ├── BadRequestError               400 invalid_request_error
    ├── AuthenticationError           401 authentication_error / invalid_api_key
    ├── PermissionDeniedError         403 permission_error
    ├── NotFoundError                 404 not_found_error
    │   └── ModelNotFoundError        404 invalid_request_error / model_not_found
    ├── MethodNotAllowedError         405 invalid_request_error / method_not_allowed
    ├── PayloadTooLargeError          413 invalid_request_error / request_too_large
    ├── UnsupportedMediaTypeError     415 invalid_request_error / unsupported_content_encoding
    ├── RateLimitError                429 rate_limit_error / rate_limit_exceeded (retry-after)
    ├── ServiceQuotaExceededError     400 that refusal to AWS and Gemini SDKs when no retry passes
    ├── UpstreamError                 502 upstream_error
    ├── ServiceUnavailableError       503 service_unavailable
    └── GatewayTimeoutError           504 timeout

The body is ``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it,
``{"type": "error", "error": {"type", "message"}}`` on Anthropic routes, or
``{"message"}`` with the exception's name in ``x-amzn-errortype`` on Bedrock Converse
routes (``bedrock_exception``), which is how AWS SDKs tell a throttle from a refusal,
and a JSON-RPC error object on MCP and A2A routes (``extproc.agents.jsonrpc``).
Every code, with its status, is listed in docs/errors.md (a test keeps them in step).
Messages must never contain a secret: callers pass only ids and public values, and
words a provider wrote go through ``without_secrets`` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

from extproc.agents.jsonrpc import http_error_body
from extproc.auth import credential_shapes


class GatewayError(Exception):
    """A request the gateway refuses; carries everything the client will see."""

    status: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    # The Bedrock Runtime exception AWS SDKs read in ``x-amzn-errortype``, and Google's
    # status name (google.rpc.Code), when the status alone does not pick them
    # (``bedrock_exception``, ``google_status``).
    aws_exception: str | None = None
    google_status: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers or {}

    def body(self, api_shape: str = "openai") -> bytes:
        """The error as the client's API shapes errors: ``openai``, ``anthropic``,
        ``bedrock``, ``google`` or ``jsonrpc`` (MCP and A2A)."""
        if api_shape == "jsonrpc":
            return http_error_body(self.message, self.status, self.error_type, self.code)
        if api_shape == "anthropic":
            return anthropic_error_body(self.message, self.status)
        if api_shape == "bedrock":
            return bedrock_error_body(self.message, self.code)
        if api_shape == "google":
            return google_error_body(
                self.message,
                self.status,
                retry_after=self.headers.get("retry-after"),
                status_name=self.google_status,
            )
        return error_body(self.message, self.error_type, code=self.code, param=self.param)


def error_body(
    message: str, error_type: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    """Serialise one error in OpenAI's shape."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


# Anthropic's error type for each status, as its API reference lists them ("HTTP
# errors"): Anthropic's SDKs and Claude Code read the type, and a 504 named ``api_error``
# read as a fault inside the API, not the timeout it is. Any other 4xx is an
# ``invalid_request_error``, as Anthropic answers one, any other 5xx an ``api_error``. A
# 503 (no provider could be reached) is the gateway's own: Anthropic documents none, and
# its clients wait and retry an ``overloaded_error``, which is what helps. First the
# 503, then the 529: read back, ``overloaded_error`` is the gateway's 503.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_body(message: str, status: int) -> bytes:
    """Serialise one error in Anthropic's shape, for clients of the Messages API."""
    error_type = _ANTHROPIC_TYPES.get(
        status, "invalid_request_error" if status < 500 else "api_error"
    )
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def anthropic_error_status(error_type: str) -> int:
    """The status an Anthropic error ``type`` stands for (``anthropic_error_body``'s
    choice, read back): 400 for a type it does not know."""
    for status, named in _ANTHROPIC_TYPES.items():
        if named == error_type:
            return status
    return 400


# Bedrock Runtime's exception for each status the gateway answers with, by the names
# its API reference gives: AWS SDKs raise the exception class the name picks
# (``ThrottlingException`` is retried, ``ValidationException`` is not).
_BEDROCK_EXCEPTIONS = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    405: "ValidationException",
    408: "ModelTimeoutException",
    413: "ValidationException",
    # An answer the gateway could not process (a response guard's webhook refused to
    # read it): Bedrock's own name for it, which AWS SDKs do not retry.
    424: "ModelErrorException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}
BEDROCK_ERROR_TYPE_HEADER = "x-amzn-errortype"
# How long an AWS SDK should wait before it retries, in milliseconds: botocore's standard
# retry mode (its default) waits that long (at most 5 s past its own backoff of 0-1 s,
# then 0-2 s) before retrying a ThrottlingException, and reads no ``retry-after``.
AWS_RETRY_AFTER_HEADER = "x-amz-retry-after"


def aws_retry_after(headers: dict[str, str]) -> str | None:
    """``retry-after`` (whole seconds) as ``x-amz-retry-after`` for an AWS SDK, when a
    retry soon can pass. Not for a refusal marked ``x-should-retry: false`` (an hour's or
    a month's quota): the SDK retries a throttle whatever it is told, and would wait out
    the cap before each of its retries for nothing; without it, it gives up at once."""
    seconds = headers.get("retry-after", "")
    if not (seconds.isascii() and seconds.isdigit()) or headers.get("x-should-retry") == "false":
        return None
    return str(int(seconds) * 1000)


def bedrock_exception(status: int) -> str:
    """The Bedrock Runtime exception an AWS SDK reads for an error of ``status``."""
    return _BEDROCK_EXCEPTIONS.get(
        status, "ValidationException" if status < 500 else "InternalServerException"
    )


def bedrock_error_body(message: str, code: str | None = None) -> bytes:
    """Serialise one error as Bedrock Runtime does (``{"message"}``), for clients of its
    Converse API; the gateway's own code rides along for whoever reads the body."""
    body: dict[str, str] = {"message": message}
    if code:
        body["code"] = code
    return orjson.dumps(body)


# Google's status name for each HTTP status (google.rpc.Code), as its APIs answer errors.
_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_status(status: int) -> str:
    """Google's status name (google.rpc.Code) for an HTTP status."""
    return _GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def google_error_body(
    message: str, status: int, *, retry_after: str | None = None, status_name: str | None = None
) -> bytes:
    """Serialise one error as Google's APIs do (``{"error": {"code", "message",
    "status"}}``), for clients of Gemini's API.

    ``retry_after`` (whole seconds, the ``retry-after`` header's) becomes a
    ``google.rpc.RetryInfo`` detail, as Gemini's API sends it with a 429: Gemini CLI
    and Google's SDKs read the wait there, not in the header, and tell a quota that
    resets soon (wait, then retry) from one that does not (give up) by it. ``status_name``:
    Google's status when the HTTP status alone does not pick it."""
    name = status_name or google_status(status)
    error: dict[str, object] = {"code": status, "message": message, "status": name}
    if retry_after is not None and retry_after.isdigit():
        error["details"] = [{"@type": _RETRY_INFO, "retryDelay": f"{int(retry_after)}s"}]
    return orjson.dumps({"error": error})


_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class BadRequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    status = 404
    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_content_encoding"


class RateLimitError(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceQuotaExceededError(GatewayError):
    """A quota refusal as the clients that would otherwise retry it in vain read it,
    built from the 429 the other APIs get (``stages.quota.for_client``).

    To an AWS SDK, when no retry within a minute can pass (a lifetime or calendar quota
    spent, a prompt larger than the whole budget): Bedrock Runtime's own exception for a
    request over a quota that "you can resubmit later", with its status (400). botocore
    retries a ``ThrottlingException`` whatever the headers say (twice in its standard
    mode, four times in legacy mode, each retry refused again) and its adaptive mode
    slows every later call down on it; it retries neither this exception nor a 400.

    To a Gemini client, when no wait at all can help (no ``retry-after``: a lifetime
    quota, a request larger than the whole budget): ``FAILED_PRECONDITION`` (400),
    google.rpc.Code's status for "do not retry until the system state has been explicitly
    fixed". A 429 without a ``RetryInfo`` is a short rate limit to Gemini CLI, which
    retried it with backoff again and again, as google-genai does with retries on."""

    status = 400
    error_type = "rate_limit_error"
    aws_exception = "ServiceQuotaExceededException"
    google_status = "FAILED_PRECONDITION"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"


# An answer over envoy.max_response_body_bytes: Envoy's own reply says it (the
# bootstrap's local reply), and so does the gateway's to a compressed answer larger than
# that once decoded. The provider billed it whole (stages.cut_answer).
RESPONSE_TOO_LARGE_MESSAGE = "the provider's answer is larger than the gateway can buffer"


def response_too_large() -> UpstreamError:
    """The error of an answer larger than the gateway buffers."""
    return UpstreamError(RESPONSE_TOO_LARGE_MESSAGE, code="response_too_large")


class ServiceUnavailableError(GatewayError):
    status = 503
    error_type = "service_unavailable"


class GatewayTimeoutError(GatewayError):
    status = 504
    error_type = "timeout"


REDACTED = "[redacted]"
# Below this, a fragment of a known secret says nothing: kept (and too short to match safely).
_MIN_FRAGMENT = 4
# AWS answers a signature it could not match (Bedrock's 403 InvalidSignatureException)
# with the request it expected: the canonical request, whose signed headers carry the
# session token of temporary credentials (a role's, a Kubernetes service account's), and
# the string to sign. All of it is the gateway's own request, nothing the client needs:
# cut from its heading on. A token header quoted anywhere else goes too. The spaces
# before the heading go with it, from their start only: tried at every character of a
# long run of spaces (a client's header value quoted in a 415), `\s*` ran to the run's end
# and back each time, seconds of one worker's event loop.
_AWS_EXPECTED_REQUEST = re.compile(
    r"(?<!\s)\s*The Canonical String for this request should have been.*",
    re.IGNORECASE | re.DOTALL,
)
_AWS_SESSION_TOKEN = re.compile(r"(x-amz-security-token\s*[:=]\s*)[^\s'\"&,;]+", re.IGNORECASE)


def without_secrets(text: str, known: Iterable[str] = ()) -> str:
    """``text`` (a provider's error message) with anything that looks like a credential
    or a fragment of one (``credential_shapes.fragments_redacted``), and any sight of
    the ``known`` secrets (whole, or their first or last four characters where those
    are not another word's: ``_without_ends_of``), replaced by ``[redacted]``.
    Over-redacting an error message costs little; a fragment of the gateway's provider
    key shown to a client or written to a log would cost more."""
    secrets = [secret for secret in known if len(secret) >= 2 * _MIN_FRAGMENT]
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    # The patterns before the fragments: a fragment shared by every secret of a kind (a
    # Google token's "ya29") would leave the rest of another one where no pattern finds it.
    text = _AWS_EXPECTED_REQUEST.sub(f" {REDACTED}", text)
    text = _AWS_SESSION_TOKEN.sub(rf"\g<1>{REDACTED}", text)
    text = credential_shapes.fragments_redacted(text, REDACTED)
    for secret in secrets:
        if _random_looking(secret):
            text = _without_ends_of(text, secret)
    return text


def quoted(value: str, limit: int) -> str:
    """``value`` (a client's input an error names) quoted, cut to ``limit`` characters;
    ``[redacted]`` when it holds a credential of a well-known shape. Looked for in the
    whole value: cut, a key is no longer its shape (40 of an ``aigw-`` key's 48), and
    the error, with the request log's ``error_message``, showed most of it."""
    if credential_shapes.kind(value) is not None:
        return REDACTED
    return repr(value[:limit])


# A run of a key long enough that, mixing digits with letters or cases, it is no word.
_RANDOM_RUN = re.compile(r"[A-Za-z0-9]{8,}")


def _random_looking(secret: str) -> bool:
    """Whether ``secret`` holds a random run (eight letters or digits, with a digit or both
    cases): a real key does. A placeholder key made of words (``sk-no-key-required``,
    ``EMPTY``, an OpenAI-compatible server's ``not-needed``) has no fragment that tells
    anything, and its ends are words' ends: redacting them hid a provider's own words
    ("is required" became "is [redacted]"). It is still hidden where it is shown whole."""
    for run in _RANDOM_RUN.findall(secret):
        if any(c.isdigit() for c in run) or (run.lower() != run and run.upper() != run):
            return True
    return False


# What a provider masks the middle of a key with besides punctuation ("sk-...abcd",
# "****abcd", "xxxxabcd"): a letter, but no word's.
_MASKS = frozenset("xX")


def _without_ends_of(text: str, secret: str) -> str:
    """``text`` with every sight of ``secret``'s first or last four characters, and as
    much more of the secret as runs on from them, replaced by ``[redacted]``; but not
    where those four alone are inside another word of the text, a letter or digit
    against them that the secret has not there ("invalid x-api-key", a key ending in
    "-key": an "i" before "-key" where the key has an "r"). A key shown by its ends
    stands apart from the words around it, or runs on as the key does; four characters
    glued to others are a word that shares them, and replacing them mangled the
    provider's words. Five or more of the secret's in a row are hidden wherever they
    are, and so are its two ends glued to each other ("Zq4vW9x3"). What is already
    ``[redacted]`` stays as it is."""
    return REDACTED.join(_ends_out(part, secret) for part in text.split(REDACTED))


def _ends_out(text: str, secret: str) -> str:
    """``_without_ends_of`` for a text with no ``[redacted]`` in it."""
    n = len(text)
    backwards = [(n - end, n - start) for start, end in _runs(text[::-1], secret[::-1])]
    runs = _runs(text, secret) + backwards
    if not runs:
        return text
    shown = {index for start, end in runs for index in range(start, end)}

    def glued(index: int) -> bool:
        char = text[index] if 0 <= index < n else ""
        return char.isalnum() and char not in _MASKS and index not in shown

    hidden = [False] * n
    for start, end in runs:
        if end - start > _MIN_FRAGMENT or not (glued(start - 1) or glued(end)):
            hidden[start:end] = [True] * (end - start)
    kept: list[str] = []
    for index, char in enumerate(text):
        if not hidden[index]:
            kept.append(char)
        elif index == 0 or not hidden[index - 1]:
            kept.append(REDACTED)
    return "".join(kept)


def _runs(text: str, secret: str) -> list[tuple[int, int]]:
    """The spans of ``text`` that show ``secret``'s first four characters, each with as
    many more of the secret's as follow them there."""
    piece = secret[:_MIN_FRAGMENT]
    runs = []
    start = text.find(piece)
    while start >= 0:
        end = start + _MIN_FRAGMENT
        while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
            end += 1
        runs.append((start, end))
        start = text.find(piece, start + 1)
    return runs


def credentials_refused(
    detail: str, provider_message: str = "", known: Iterable[str] = ()
) -> UpstreamError:
    """A provider refused the gateway's own key or account (its 401, 402 or 403).

    That is the operator's problem, never the client's: a 502 that says so, not a 401 that
    would make the client doubt its own key. The provider's words are kept for whoever
    reads them, without anything that looks like a key, nor any sight of the ``known``
    secrets (``without_secrets``)."""
    message = (
        f"the provider refused the gateway's own credentials or account ({detail}); "
        "this is not a problem with your API key"
    )
    said = without_secrets(provider_message, known)
    if said:
        message += f". The provider said: {said}"
    return UpstreamError(message, code="upstream_credentials_refused")
