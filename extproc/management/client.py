"""The management API's client: what the ``extproc quota ...`` commands call it with.

A plain synchronous channel (one call per command). Failures become
``ManagementError`` with a message for a person, never a traceback; ``render``
prints quota states as a table or as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import orjson

from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc

# Refusals a user can act on (wrong token, typo, gateway down): the CLI exits 2.
USAGE_ERRORS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class ManagementError(Exception):
    """A call the management API refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def exit_code(self) -> int:
        return 2 if self.code in USAGE_ERRORS else 1


class QuotaClient:
    def __init__(self, address: str, token: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.QuotaManagementStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> QuotaClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._channel.close()

    def get(self, kind: str, subject: str) -> pb.QuotaState:
        request = pb.GetQuotaRequest(subject_kind=kind, subject=subject)
        state: pb.QuotaState = self._call(self._stub.GetQuota, request)
        return state

    def list(self, kind: str) -> list[pb.QuotaState]:
        answer: pb.ListQuotasResponse = self._call(
            self._stub.ListQuotas, pb.ListQuotasRequest(subject_kind=kind)
        )
        return list(answer.states)

    def set_limit(
        self, kind: str, subject: str, rule: str, counter: str, limit: int
    ) -> pb.QuotaState:
        request = pb.SetLimitRequest(
            subject_kind=kind, subject=subject, rule=rule, counter=counter, limit=limit
        )
        state: pb.QuotaState = self._call(self._stub.SetLimit, request)
        return state

    def adjust(self, kind: str, subject: str, rule: str, counter: str, delta: int) -> pb.QuotaState:
        request = pb.AdjustUsageRequest(
            subject_kind=kind, subject=subject, rule=rule, counter=counter, delta=delta
        )
        state: pb.QuotaState = self._call(self._stub.AdjustUsage, request)
        return state

    def reset(self, kind: str, subject: str, rule: str = "", counter: str = "") -> pb.QuotaState:
        request = pb.ResetUsageRequest(
            subject_kind=kind, subject=subject, rule=rule, counter=counter
        )
        state: pb.QuotaState = self._call(self._stub.ResetUsage, request)
        return state

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise self._explain(exc) from None

    def _explain(self, exc: grpc.RpcError) -> ManagementError:
        code: grpc.StatusCode = exc.code()
        details = exc.details() or code.name
        if code is grpc.StatusCode.UNAVAILABLE:
            message = (
                f"cannot reach the management API at {self.address}"
                f" (is the gateway running, with management enabled?): {details}"
            )
        elif code is grpc.StatusCode.UNAUTHENTICATED:
            message = f"the management API at {self.address} refused the call: {details}"
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"no answer from the management API at {self.address} in time"
        else:
            message = f"{details} ({code.name})"
        return ManagementError(code, message)


def state_dict(state: pb.QuotaState) -> dict[str, Any]:
    """A quota state as JSON-ready data (numbers stay numbers, unlike proto's JSON form)."""
    return {
        "subject_kind": state.subject_kind,
        "subject": state.subject,
        "limits": [
            {
                "rule": limit.rule,
                "counter": limit.counter,
                "kind": limit.kind,
                "limit": limit.limit,
                "configured_limit": limit.configured_limit,
                "overridden": limit.overridden,
                "used": limit.used,
                "remaining": limit.remaining,
                "window_start": limit.window_start,
                "reset_at": limit.reset_at or None,
                "time_zone": limit.time_zone,
            }
            for limit in state.limits
        ],
    }


def render(states: list[pb.QuotaState], output: str, *, many: bool = False) -> str:
    """States as ``table`` or ``json`` (one object, or a list when ``many``)."""
    if output == "json":
        data: Any = [state_dict(s) for s in states] if many else state_dict(states[0])
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    if not states:
        return "no subject has counters in the current windows\n"
    header = ("SUBJECT", "RULE", "COUNTER", "LIMIT", "CONFIGURED", "USED", "REMAINING", "RESETS")
    rows = [header]
    for state in states:
        for limit in state.limits:
            rows.append(
                (
                    f"{state.subject_kind}:{state.subject}",
                    limit.rule,
                    limit.counter,
                    f"{limit.limit} {limit.kind}" + (" (set)" if limit.overridden else ""),
                    str(limit.configured_limit),
                    str(limit.used),
                    str(limit.remaining),
                    _reset_time(limit),
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _reset_time(limit: pb.LimitState) -> str:
    if not limit.reset_at:
        return "never"
    # In the zone the window is computed in: a monthly quota resets at local midnight.
    local = datetime.fromtimestamp(limit.reset_at, ZoneInfo(limit.time_zone or "UTC"))
    return f"{local.isoformat(timespec='seconds')} {limit.time_zone}"
