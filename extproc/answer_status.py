"""What a provider's HTTP status says of its body: an answer, or none.

A 2xx carries the model's answer, billed by its usage. A redirect (3xx: a provider
moved an endpoint, a proxy in front of it asks for a login) and an error (4xx, 5xx,
and the 600-999 that some servers send and Envoy passes on) carry none: the model
generated nothing, whatever usage a body beside them reports, so the request is
charged nothing, logged ``upstream_error`` and counted in aigw_upstream_errors_total.
"""

from __future__ import annotations

# The last status HTTP defines (RFC 9110, section 15); Envoy passes any three digits on.
MAX_HTTP_STATUS = 599


def is_redirect(status: int) -> bool:
    return 300 <= status < 400


def no_answer(status: int) -> bool:
    """Whether a response with this status carries no answer of the model's (0, a status
    not known yet, is not one: the request did not get that far)."""
    return status >= 300
