"""What kind of error each of Google's error statuses is, for errors that come without
their HTTP status: inside a stream (``gemini_gemini.stream_error``) or in a ``200``
(``answer_errors``).

Google's errors name a status (``{"code": 503, "message": ..., "status":
"UNAVAILABLE"}``), which Google answers with one HTTP status each (google.rpc.Code's
mapping). The gateway names such an error by the type that HTTP status has among
Anthropic's error types (``anthropic_errors.documented_status``), so where it must stand
in for a status (a translated answer, a failover attempt) the error gets the status its
Google status would have had: ``UNAVAILABLE`` (Gemini's "The model is overloaded", its
``503``) is an ``overloaded_error``, a ``503``; ``RESOURCE_EXHAUSTED`` a
``rate_limit_error``, a ``429``; ``INTERNAL`` an ``api_error``; ``DEADLINE_EXCEEDED`` a
``timeout_error``; a refusal of the credentials an ``authentication_error`` or
``permission_error``; a bad request an ``invalid_request_error``.
"""

from __future__ import annotations

# Google's status names by the type of their HTTP status (google.rpc.Code).
_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",  # 400
    "FAILED_PRECONDITION": "invalid_request_error",  # 400
    "OUT_OF_RANGE": "invalid_request_error",  # 400
    "UNAUTHENTICATED": "authentication_error",  # 401
    "PERMISSION_DENIED": "permission_error",  # 403
    "NOT_FOUND": "not_found_error",  # 404
    "RESOURCE_EXHAUSTED": "rate_limit_error",  # 429
    "INTERNAL": "api_error",  # 500
    "UNKNOWN": "api_error",  # 500
    "DATA_LOSS": "api_error",  # 500
    "UNAVAILABLE": "overloaded_error",  # 503
    "DEADLINE_EXCEEDED": "timeout_error",  # 504
}
# The same by the error's numeric code (its HTTP status), for a status name not above.
_TYPES_BY_CODE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
# An error neither names: a server error of the provider's.
UNNAMED = "upstream_error"


def google_error_type(status: str | None, code: object) -> str:
    """The error type of a Google error whose ``status`` is that name (None: none the
    gateway reads) and ``code`` its numeric code."""
    if status is not None and status in _TYPES:
        return _TYPES[status]
    if isinstance(code, int) and not isinstance(code, bool):
        return _TYPES_BY_CODE.get(code, UNNAMED)
    return UNNAMED
