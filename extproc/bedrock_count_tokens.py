"""Bedrock Runtime's CountTokens, as AWS SDK clients send it to the gateway.

boto3's ``count_tokens`` (``POST /model/{modelId}/count-tokens``) asks how many tokens a
request would take, without running it: its body holds the request in one member of the
``input`` union, ``converse`` (a Converse request's ``messages``, ``system``...) or
``invokeModel`` (``{"body": "<base64 of an InvokeModel body>"}``: the request's bytes, as
REST-JSON sends a blob). The answer, ``{"inputTokens": N}``, is a count, not usage:
nothing is generated, billed or reserved (``TOKEN_COUNT_APIS``).

The text still reaches the provider, so the gateway reads the counted request as it reads
the request itself, for guards and enrichment: the converse member as a Converse body,
the invokeModel member, decoded, as Claude's Messages body (the one InvokeModel body the
gateway reads; Bedrock counts Claude's models). ``check_count_body`` decodes that member
in place, so the guards' masks and enrichment change the dict; ``encoded`` puts the
bytes back for the provider when they did.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from extproc.converse_api import check_converse_body
from extproc.errors import BadRequestError
from extproc.input_limits import checked_messages, nesting_depth_over

CONVERSE = "converse"
INVOKE_MODEL = "invokeModel"
_MEMBERS = (CONVERSE, INVOKE_MODEL)


def check_count_body(body: dict[str, Any], max_messages: int, max_depth: int) -> None:
    """Refuse a CountTokens body Bedrock would refuse for its shape, naming the field as
    the SDKs do (``input.converse.messages``); decode the invokeModel member's body in
    place (a JSON object nested no deeper than the body may be; Claude's checked as a
    Messages body's ``messages``)."""
    union = body.get("input")
    members = [name for name in _MEMBERS if isinstance(union, dict) and name in union]
    if not isinstance(union, dict) or len(union) != 1 or len(members) != 1:
        raise BadRequestError(
            "'input' must be an object with exactly one of 'converse' or 'invokeModel'",
            param="input",
        )
    [member] = members
    request = union[member]
    if not isinstance(request, dict):
        raise BadRequestError(f"'input.{member}' must be an object", param=f"input.{member}")
    if member == CONVERSE:
        check_converse_body(request, max_messages)
        return
    request["body"] = decoded = _decoded(request.get("body"), max_depth)
    if "messages" in decoded or "anthropic_version" in decoded:
        # Claude's body (another family's is Bedrock's to check): a Messages call's.
        checked_messages(decoded.get("messages"), max_messages)


def _decoded(blob: Any, max_depth: int) -> dict[str, Any]:
    where = "input.invokeModel.body"
    if not isinstance(blob, str):
        raise BadRequestError(f"'{where}' must be a base64-encoded string", param=where)
    try:
        decoded = orjson.loads(base64.b64decode(blob, validate=True))
    except ValueError:  # not base64 (non-ASCII text too), not UTF-8, not JSON
        raise BadRequestError(
            f"'{where}' must be the base64 of a JSON object (an InvokeModel body)", param=where
        ) from None
    if not isinstance(decoded, dict):
        raise BadRequestError(f"'{where}' must hold a JSON object", param=where)
    if nesting_depth_over(decoded, max_depth):
        raise BadRequestError(f"'{where}' nests deeper than {max_depth} levels", param=where)
    return decoded


def counted_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Which member holds the counted request, and that request (a Converse body, or the
    decoded InvokeModel body), for a body ``check_count_body`` accepted."""
    union: dict[str, Any] = body["input"]
    if CONVERSE in union:
        converse: dict[str, Any] = union[CONVERSE]
        return CONVERSE, converse
    invoked: dict[str, Any] = union[INVOKE_MODEL]["body"]
    return INVOKE_MODEL, invoked


def encoded(body: dict[str, Any]) -> dict[str, Any]:
    """The body as Bedrock takes it: the invokeModel member's request base64-encoded again
    (``body`` is left as it is)."""
    member, request = counted_request(body)
    if member == CONVERSE:
        return body
    blob = base64.b64encode(orjson.dumps(request)).decode("ascii")
    return {**body, "input": {INVOKE_MODEL: {**body["input"][INVOKE_MODEL], "body": blob}}}
