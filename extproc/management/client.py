"""The management API's client: what the ``extproc quota|keys ...`` commands call it with.

A plain synchronous channel (one call per command), straight to the address:
never through an HTTP proxy of the environment (``https_proxy`` and the like),
which would carry the plaintext call, admin token included, or fail to reach a
loopback address. Failures become ``ManagementError`` with a message for a
person, never a traceback; ``render`` prints quota states and ``render_keys``
API keys, as a table or as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import orjson

from extproc.config.model import unsendable_token_problem
from extproc.config.quota_model import MAX_LIMIT, usd_micros_text
from extproc.config.tls_model import ClientTlsConfig
from extproc.management.client_pages import PAGE_SIZE, every_key, every_quota
from extproc.management.key_filter import ROTATING, status_of
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.utc_moments import utc_moment

# Trailing metadata of an UNAVAILABLE the gateway itself answered because its store
# did not: the API was reached, so "cannot reach the management API" would mislead.
STORE_ERROR_METADATA: tuple[tuple[str, str], ...] = (("aigw-error", "store"),)
# The management API is plaintext: a proxy would see the admin token. A usage report is
# one message, over gRPC's default 4 MB for a large organisation's month of keys.
_CHANNEL_OPTIONS = (("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", -1))

_INT64 = range(-(2**63), 2**63)
Message = TypeVar("Message")

# Refusals a user can act on (wrong token, typo, gateway down): the CLI exits 2.
USAGE_ERRORS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
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


class ManagementClient:
    """One channel to the management API; every call carries the admin token."""

    # The generated stub class of the service a subclass calls.
    stub_type: Any = None

    def __init__(
        self,
        address: str,
        token: str,
        timeout_s: float = 10.0,
        token_source: str = "AIGW_ADMIN_TOKEN or --token",
        tls: ClientTlsConfig | None = None,
    ) -> None:
        self.address = address
        self._timeout_s = timeout_s
        # As the gateway reads its token_file: a token pasted or read with the line end
        # of its file (the "\r" of CRLF, which `$(cat file)` keeps) is the same token.
        token = token.strip()
        _check_token(token, token_source)
        if (problem := _unsendable(address)) is not None:
            raise ManagementError(grpc.StatusCode.INVALID_ARGUMENT, f"the address {problem}")
        self._metadata = (("authorization", f"Bearer {token}"),)
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        else:
            options: tuple[tuple[str, int | str], ...] = _CHANNEL_OPTIONS
            if tls.server_name:
                options += (("grpc.ssl_target_name_override", tls.server_name),)
            self._channel = grpc.secure_channel(address, _channel_credentials(tls), options)
        self._stub = self.stub_type(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise self._explain(exc) from None

    def _explain(self, exc: grpc.RpcError) -> ManagementError:
        code: grpc.StatusCode = exc.code()
        details = exc.details() or code.name
        if code is grpc.StatusCode.UNAVAILABLE and _from_the_store(exc):
            message = f"{details} (the management API at {self.address} is up, its store is not)"
        elif code is grpc.StatusCode.UNAVAILABLE:
            message = (
                f"cannot reach the management API at {self.address}"
                f" (is the gateway running, with management enabled?): {details}"
            )
        elif code in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            message = f"the management API at {self.address} refused the call: {details}"
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"no answer from the management API at {self.address} in time"
        else:
            message = f"{details} ({code.name})"
        return ManagementError(code, message)


def _channel_credentials(tls: ClientTlsConfig) -> grpc.ChannelCredentials:
    """TLS to the management API: trusting ``ca_file``, presenting ``cert_file`` (mTLS).
    A file that cannot be read is a usage error naming it (exit 2), never a traceback."""
    return grpc.ssl_channel_credentials(
        root_certificates=_tls_file(tls.ca_file, "CA"),
        private_key=_tls_file(tls.key_file, "key") if tls.key_file else None,
        certificate_chain=_tls_file(tls.cert_file, "certificate") if tls.cert_file else None,
    )


def _tls_file(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ManagementError(
            grpc.StatusCode.INVALID_ARGUMENT, f"cannot read the TLS {what} file {path}: {reason}"
        ) from None
    if not data.strip():
        raise ManagementError(
            grpc.StatusCode.INVALID_ARGUMENT, f"the TLS {what} file {path} is empty"
        )
    return data


def _check_token(token: str, source: str) -> None:
    """gRPC sends only printable ASCII in metadata; anything else failed as an
    "Invalid metadata (INTERNAL)" error. Never quotes the token; ``source`` says where
    it came from (``--token-file <path>``, say)."""
    if not token:
        raise ManagementError(
            grpc.StatusCode.INVALID_ARGUMENT, f"the admin token is blank; check {source}"
        )
    if unsendable_token_problem(token) is not None:
        raise ManagementError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the admin token holds a character gRPC cannot send (only printable ASCII:"
            f" no line break, no accented letter); check {source}",
        )


def _request(message_type: Callable[..., Message], **fields: Any) -> Message:
    """The request message of a call, or a usage error naming the field it cannot carry:
    protobuf raised on a number past int64 (``--limit 1e20`` typed in full) and on a
    string that is not UTF-8 (Python passes a byte of argv that is not as a surrogate),
    and the CLI printed that as a traceback."""
    for name, value in fields.items():
        problem = _unsendable(value)
        if problem is not None:
            raise ManagementError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} {problem}")
    return message_type(**fields)


def _unsendable(value: Any) -> str | None:
    """Why protobuf cannot carry a field's value (None when it can)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value in _INT64:
            return None
        return f"{value} is out of range (the management API takes at most {MAX_LIMIT})"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not UTF-8 text (check the bytes the shell passed)"
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        return next((found for item in value if (found := _unsendable(item))), None)
    return None


def _from_the_store(exc: grpc.RpcError) -> bool:
    """Whether the gateway answered UNAVAILABLE for its store (not the API unreachable)."""
    trailing = getattr(exc, "trailing_metadata", None)
    found = trailing() if callable(trailing) else None
    return any(tuple(item) in STORE_ERROR_METADATA for item in found or ())


class QuotaClient(ManagementClient):
    stub_type = pb_grpc.QuotaManagementStub

    def get(self, kind: str, subject: str) -> pb.QuotaState:
        request = _request(pb.GetQuotaRequest, subject_kind=kind, subject=subject)
        state: pb.QuotaState = self._call(self._stub.GetQuota, request)
        return state

    def list(self, kind: str) -> list[pb.QuotaState]:
        return list(self.listing(kind).states)

    def listing(self, kind: str, page_size: int = PAGE_SIZE) -> pb.ListQuotasResponse:
        """The subjects' states, and the keys of those whose state could not be read: every
        page, ``page_size`` subjects a call."""
        request = _request(pb.ListQuotasRequest, subject_kind=kind, page_size=page_size)
        return every_quota(lambda page: self._call(self._stub.ListQuotas, page), request)

    def set_limit(
        self, kind: str, subject: str, rule: str, counter: str, limit: int
    ) -> pb.QuotaState:
        request = _request(
            pb.SetLimitRequest,
            subject_kind=kind,
            subject=subject,
            rule=rule,
            counter=counter,
            limit=limit,
        )
        state: pb.QuotaState = self._call(self._stub.SetLimit, request)
        return state

    def adjust(self, kind: str, subject: str, rule: str, counter: str, delta: int) -> pb.QuotaState:
        request = _request(
            pb.AdjustUsageRequest,
            subject_kind=kind,
            subject=subject,
            rule=rule,
            counter=counter,
            delta=delta,
        )
        state: pb.QuotaState = self._call(self._stub.AdjustUsage, request)
        return state

    def reset(self, kind: str, subject: str, rule: str = "", counter: str = "") -> pb.QuotaState:
        request = _request(
            pb.ResetUsageRequest, subject_kind=kind, subject=subject, rule=rule, counter=counter
        )
        state: pb.QuotaState = self._call(self._stub.ResetUsage, request)
        return state


class KeyClient(ManagementClient):
    stub_type = pb_grpc.KeyManagementStub

    def create(
        self,
        key_id: str,
        *,
        user_id: str = "",
        group_id: str = "",
        labels: dict[str, str] | None = None,
        expires_at: float = 0.0,
        allowed_models: Sequence[str] = (),
        allowed_routes: Sequence[str] = (),
        allow_unknown_models: bool = False,
        continue_usage: bool = False,
    ) -> pb.CreatedKey:
        request = _request(
            pb.CreateKeyRequest,
            id=key_id,
            user_id=user_id,
            group_id=group_id,
            labels=labels or {},
            expires_at=expires_at,
            allowed_models=allowed_models,
            allowed_routes=allowed_routes,
            allow_unknown_models=allow_unknown_models,
            continue_usage=continue_usage,
        )
        created: pb.CreatedKey = self._call(self._stub.CreateKey, request)
        return created

    def list(self) -> list[pb.KeyInfo]:
        return list(self.listing().keys)

    def listing(
        self,
        *,
        user_id: str = "",
        group_id: str = "",
        status: Sequence[str] = (),
        expiring_within_seconds: float = 0.0,
        source: str = "",
        labels: dict[str, str] | None = None,
        page_size: int = PAGE_SIZE,
    ) -> pb.ListKeysResponse:
        """The keys that pass every filter given, and the stored records that could not
        be read: every page, ``page_size`` keys a call."""
        request = _request(
            pb.ListKeysRequest,
            user_id=user_id,
            group_id=group_id,
            status=status,
            expiring_within_seconds=expiring_within_seconds,
            source=source,
            labels=labels or {},
            page_size=page_size,
        )
        return every_key(lambda page: self._call(self._stub.ListKeys, page), request)

    def set_enabled(self, key_id: str, enabled: bool) -> pb.KeyInfo:
        request = _request(pb.SetKeyEnabledRequest, id=key_id, enabled=enabled)
        info: pb.KeyInfo = self._call(self._stub.SetKeyEnabled, request)
        return info

    def revoke(self, key_id: str) -> pb.KeyInfo:
        request = _request(pb.RevokeKeyRequest, id=key_id)
        info: pb.KeyInfo = self._call(self._stub.RevokeKey, request)
        return info

    def rotate(self, key_id: str, grace_seconds: float = 0.0) -> pb.RotatedKey:
        request = _request(pb.RotateKeyRequest, id=key_id, grace_seconds=grace_seconds)
        rotated: pb.RotatedKey = self._call(self._stub.RotateKey, request)
        return rotated

    def renew(
        self,
        key_id: str,
        expires_at: float | None,
        *,
        rotate: bool = False,
        grace_seconds: float = 0.0,
    ) -> pb.RenewedKey:
        """A new expiry for a key, or none (``expires_at`` None: it never expires again)."""
        request = _request(
            pb.RenewKeyRequest,
            id=key_id,
            expires_at=expires_at or 0.0,
            no_expiry=expires_at is None,
            rotate=rotate,
            grace_seconds=grace_seconds,
        )
        renewed: pb.RenewedKey = self._call(self._stub.RenewKey, request)
        return renewed


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
                "reserved": limit.reserved,
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
    header = (
        "SUBJECT", "RULE", "COUNTER", "LIMIT", "CONFIGURED", "USED", "RESERVED", "REMAINING",
        "RESETS",
    )  # fmt: skip
    rows = [header]
    for state in states:
        for limit in state.limits:
            # A cost budget's amounts are millionths of a dollar: shown as dollars.
            text = usd_micros_text if limit.kind == "usd_micros" else str
            unit = "USD" if limit.kind == "usd_micros" else limit.kind
            rows.append(
                (
                    f"{state.subject_kind}:{state.subject}",
                    limit.rule,
                    limit.counter,
                    f"{text(limit.limit)} {unit}" + (" (set)" if limit.overridden else ""),
                    text(limit.configured_limit),
                    text(limit.used),
                    # Request limits hold nothing: a dash, not a 0 that reads as "none yet".
                    text(limit.reserved) if limit.kind != "requests" else "-",
                    text(limit.remaining),
                    _reset_time(limit),
                )
            )
    return _table(rows)


def unreadable_notes(keys: Sequence[pb.UnreadableKey]) -> list[str]:
    """The stderr lines of the keys a listing left out (the CLI then exits 1)."""
    notes = []
    for found in keys:
        what = (
            f"the quota state of {found.subject_kind} {found.subject!r}"
            if found.subject_kind
            else "a stored API key"
        )
        notes.append(f"warning: {what} is left out of this list: {found.key} {found.reason}")
    return notes


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as aligned columns, the first row being the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _reset_time(limit: pb.LimitState) -> str:
    if not limit.reset_at:
        return "never"
    zone = limit.time_zone or "UTC"
    try:
        # In the zone the window is computed in: a monthly quota resets at local midnight.
        local = datetime.fromtimestamp(
            limit.reset_at, UTC if zone == "UTC" else ZoneInfo(zone)
        ).isoformat(timespec="seconds")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # The gateway knows the zone and this host does not (an older tz database, a
        # slim image, Windows without the tzdata package): the same moment, in UTC.
        moment = datetime.fromtimestamp(limit.reset_at, UTC).isoformat(timespec="seconds")
        return f"{moment} UTC (the rule's zone {zone} is unknown on this host)"
    return f"{local} {zone}"


def key_dict(info: pb.KeyInfo) -> dict[str, Any]:
    """A key as JSON-ready data; times stay unix seconds, null for never / not known."""
    return {
        "id": info.id,
        "source": info.source,
        "user_id": info.user_id or None,
        "group_id": info.group_id or None,
        "labels": dict(info.labels),
        "enabled": info.enabled,
        "expires_at": info.expires_at or None,
        "created_at": info.created_at or None,
        "allowed_models": list(info.allowed_models),
        "allowed_routes": list(info.allowed_routes),
        "previous_expires_at": info.previous_expires_at or None,
    }


def render_keys(keys: list[pb.KeyInfo], output: str) -> str:
    """API keys as ``table`` or ``json`` (a list); never a secret, which the gateway has not."""
    if output == "json":
        return orjson.dumps([key_dict(k) for k in keys], option=orjson.OPT_INDENT_2).decode() + "\n"
    if not keys:
        return "no API keys\n"
    header = ("ID", "SOURCE", "USER", "GROUP", "STATUS", "EXPIRES", "CREATED", "MODELS", "ROUTES",
              "LABELS")  # fmt: skip
    rows = [header]
    for key in keys:
        rows.append(
            (
                key.id,
                key.source,
                key.user_id or "-",
                key.group_id or "-",
                _status(key),
                utc_moment(key.expires_at) if key.expires_at else "never",
                utc_moment(key.created_at) if key.created_at else "-",
                ",".join(key.allowed_models) or "*",
                ",".join(key.allowed_routes) or "*",
                ",".join(f"{name}={value}" for name, value in sorted(key.labels.items())) or "-",
            )
        )
    return _table(rows)


# Printed (on stderr) with every new key.
SHOWN_ONCE = "Store this key now: it will not be shown again (the gateway keeps only its hash)."


def render_created(created: pb.CreatedKey, output: str) -> str:
    """A new key with its secret: the one time anyone sees it."""
    if output == "json":
        data = {"key": created.key, "info": key_dict(created.info)}
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    return f"{render_keys([created.info], 'table')}key: {created.key}\n"


def render_rotated(rotated: pb.RotatedKey, output: str) -> str:
    """A key's new secret (the one time anyone sees it) and when the old one stops."""
    if output == "json":
        data = {
            "key": rotated.key,
            "info": key_dict(rotated.info),
            "previous_expires_at": rotated.previous_expires_at,
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    old = (
        f"the old secret works until {utc_moment(rotated.previous_expires_at)}"
        if rotated.info.previous_expires_at
        else "the old secret is refused at once by every gateway process sharing the store"
    )
    return f"{render_keys([rotated.info], 'table')}key: {rotated.key}\n{old}\n" + _while_disabled(
        rotated.info
    )


def render_renewed(renewed: pb.RenewedKey, output: str) -> str:
    """A renewed key: its new expiry, and its new secret if it was rotated too."""
    if output == "json":
        data = {
            "key": renewed.key or None,
            "info": key_dict(renewed.info),
            "renewed_from": renewed.renewed_from or None,
            "previous_expires_at": renewed.previous_expires_at or None,
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    before = utc_moment(renewed.renewed_from) if renewed.renewed_from else "never"
    lines = [render_keys([renewed.info], "table").rstrip("\n")]
    if renewed.key:
        lines.append(f"key: {renewed.key}")
        lines.append(
            f"the old secret works until {utc_moment(renewed.previous_expires_at)}"
            if renewed.info.previous_expires_at
            else "the old secret is refused by every gateway process sharing the store"
        )
    else:
        lines.append("the key keeps its secret")
    lines.append(
        f"renewed API key {renewed.info.id!r} (it expired or was to expire {before}): in force"
        " at once on every gateway process sharing the store"
    )
    return "\n".join(lines) + "\n" + _while_disabled(renewed.info)


def _while_disabled(info: pb.KeyInfo) -> str:
    """A line for a key changed while disabled: its secrets stay refused, which the
    table's state column alone says too quietly to an operator who just handed one out."""
    if info.enabled:
        return ""
    return (
        f"the key is disabled: its secrets are refused until `extproc keys enable --id {info.id}`\n"
    )


def render_revoked(info: pb.KeyInfo, output: str) -> str:
    """What a revocation removed (``json``), or one sentence saying what it means."""
    if output == "json":
        return orjson.dumps(key_dict(info), option=orjson.OPT_INDENT_2).decode() + "\n"
    return (
        f"revoked API key {info.id!r}: refused at once by every gateway process sharing"
        " the store (within 30 s by one that has lost its connection to the store)\n"
    )


def render_switched(info: pb.KeyInfo, output: str) -> str:
    """A key disabled or enabled: the key (``json``), or the table and what it means."""
    if output == "json":
        return orjson.dumps(key_dict(info), option=orjson.OPT_INDENT_2).decode() + "\n"
    if info.enabled:
        meaning = (
            f"enabled API key {info.id!r}: its secret works again at once on every gateway"
            " process sharing the store"
        )
    else:
        meaning = (
            f"disabled API key {info.id!r}: refused at once by every gateway process sharing"
            f" the store (\"API key '{info.id}' is disabled\"), its id, secret and usage kept;"
            f" `extproc keys enable --id {info.id}` lets it in again"
        )
    return f"{render_keys([info], 'table')}{meaning}\n"


def _status(key: pb.KeyInfo) -> str:
    status = status_of(key, time.time())
    if status == ROTATING:
        return f"active, old secret until {utc_moment(key.previous_expires_at)}"
    return status


class UsageClient(ManagementClient):
    stub_type = pb_grpc.UsageReportsStub

    def report(self, request: pb.UsageReportRequest) -> pb.UsageReport:
        answer: pb.UsageReport = self._call(self._stub.GetUsageReport, request)
        return answer
