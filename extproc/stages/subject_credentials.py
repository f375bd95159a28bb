"""A credential in a header a quota counts by: refused, and never counted.

A quota rule on ``header:<name>`` (``x-team``, ``x-tenant``) counts each value the header
carries as a subject of its own, under ``match: "*"`` any value: the value names the
store's counters, is listed by ``extproc quota list``, labels the ``aigw_quota_*``
gauges (``subject``) that Prometheus keeps, and is quoted by the 429 of its limit. A
client that set the header from the wrong setting (its key where the team goes) put its
key in all of them. Refused as a credential where the model goes is
(``model_credentials``): this request's own key or token, an org key of the config, or
a well-known key shape, named by the header and the kind, never the value.
"""

from __future__ import annotations

from collections.abc import Iterable

from extproc.context import RequestContext
from extproc.errors import BadRequestError
from extproc.quota.rules import Limit
from extproc.stages.model_credentials import credential_in

_HEADER_SUBJECT = "header:"


def refuse_credential_in_subjects(ctx: RequestContext, limits: Iterable[Limit]) -> None:
    """Refuse the request when a header value one of ``limits`` counts holds a
    credential, before anything is counted or recorded."""
    checked: set[tuple[str, str]] = set()
    for limit in limits:
        kind, subject = limit.subject_kind, limit.subject
        if not kind.startswith(_HEADER_SUBJECT) or (kind, subject) in checked:
            continue
        checked.add((kind, subject))
        what = credential_in(ctx, subject)
        if what is not None:
            name = kind.removeprefix(_HEADER_SUBJECT)
            raise BadRequestError(
                f"header '{name}' holds {what}, which a quota would count and record by "
                "its value: send a key only in 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>', and rotate the key if it was sent to others",
                code="credential_in_header",
            )
