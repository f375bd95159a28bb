"""Envoy's own replies (provider unreachable or timed out, a body too large) as errors.

Envoy answers some requests itself: a provider it cannot reach (503 "no healthy
upstream", "upstream connect error or disconnect/reset before headers"), one that does
not answer in time (504 "upstream request timeout"), a full circuit breaker (503, reset
reason ``overflow``). Its body is plain text that no client SDK reads: the OpenAI and
Anthropic SDKs raise with Envoy's words for a message.

Two places give them the client's error shape, from this one table:

- the gateway's own bootstrap, with local reply mappers (``envoy_bootstrap``), before
  the gateway sees the reply;
- the gateway's response phases (``backends``), for an Envoy whose config the gateway
  does not write: a Gateway API controller's (``gateway_api``), which renders no
  mappers. There the reply reaches the gateway as Envoy wrote it, in plain text.
"""

from __future__ import annotations

from extproc.errors import (
    RESPONSE_TOO_LARGE_MESSAGE,
    BadRequestError,
    GatewayError,
    GatewayTimeoutError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UpstreamError,
)

# The ext_proc attribute of Envoy's response code details: ``via_upstream`` on the
# provider's answer, Envoy's reason on its own reply.
RESPONSE_DETAILS_ATTRIBUTE = "response.code_details"
VIA_UPSTREAM = "via_upstream"
# Envoy's own replies by status: (error class giving status and type, code, message).
# Any other 4xx becomes a generic invalid request, anything else a generic 500.
BY_STATUS: tuple[tuple[type[GatewayError], str, str], ...] = (
    (BadRequestError, "bad_request", "the request is not valid HTTP"),
    (PayloadTooLargeError, "request_too_large", "the request body is too large"),
    (UpstreamError, "bad_upstream_response", "the upstream provider sent an invalid response"),
    (ServiceUnavailableError, "upstream_unavailable", "the upstream provider is unavailable"),
    (GatewayTimeoutError, "upstream_timeout", "the upstream provider did not respond in time"),
)
# A circuit breaker is full: the gateway at its limit, a 503 worth retrying.
OVERLOADED_CODE = "gateway_overloaded"
OVERLOADED_MESSAGE = "the gateway has too many requests in flight; retry shortly"
# Envoy's details of an answer over its buffer (the bootstrap's 502).
TOO_LARGE_DETAILS = "response_payload_too_large"
REJECTED_CODE = "request_rejected"
REJECTED_MESSAGE = "the request was rejected"
FAILED_CODE = "gateway_error"
FAILED_MESSAGE = "the gateway could not process the request"


def envoy_reply_error(status: int, details: str) -> GatewayError:
    """The gateway's error for Envoy's own reply of ``status``, as the bootstrap's mappers
    render it. ``details`` is Envoy's response code details when the gateway was sent
    them (``upstream_reset_before_response_started{overflow}``), else Envoy's body: its
    text names the same reset reason ("... reset reason: overflow")."""
    if status >= 500 and "overflow" in details:
        return ServiceUnavailableError(OVERLOADED_MESSAGE, code=OVERLOADED_CODE)
    if details == TOO_LARGE_DETAILS:
        return UpstreamError(RESPONSE_TOO_LARGE_MESSAGE, code="response_too_large")
    for error, code, message in BY_STATUS:
        if error.status == status:
            return error(message, code=code)
    if status < 500:
        rejected = BadRequestError(REJECTED_MESSAGE, code=REJECTED_CODE)
        rejected.status = status  # Envoy's status is kept, as the bootstrap keeps it
        return rejected
    failed = GatewayError(FAILED_MESSAGE, code=FAILED_CODE)
    failed.status = status
    return failed
