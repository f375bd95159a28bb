"""The management API served by the gateway: quota state and API keys, behind admin tokens.

``QuotaManagementService`` answers ``aigw.management.v1.QuotaManagement`` and
``KeyManagementService`` answers ``aigw.management.v1.KeyManagement``, both on
a gRPC server of their own (``start_server``), bound to ``management.address``,
which the public Envoy listener has no route to, and which no other process
can share (no SO_REUSEPORT). Every call must carry
``authorization: Bearer <admin token>`` whose scopes include the call's (reads
and changes of quotas, of keys, usage reports); every change an admin asks for
writes one audit line naming the token's id (never a token, never a key's
secret) and its outcome: applied, or cut short by the store or by the call's
cancellation (failed, or unknown when it may be in force), or refused for want
of a valid admin token or of the scope. Refusals of invalid requests change
nothing and are not audited; a request whose bytes are no message of the
method's type is one of them (INVALID_ARGUMENT, after the token check). The
rules come from the runtime current at each call, so a config reload applies to
the next call, admin tokens and their scopes included.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from extproc.auth.api_keys import SECRET_AS_ID, ApiKey, api_key_of
from extproc.auth.stored_keys import (
    MAX_GRACE_S,
    KeyCreateConflictError,
    KeyExpiredError,
    KeyIdTakenError,
    RevokedUnreadableRecordError,
    StoredKey,
    StoredKeyList,
    StoredKeys,
    UnknownKeyIdError,
    UnreadableRecordError,
)
from extproc.config.auth_model import ApiKeyConfig
from extproc.config.loader import ConfigError
from extproc.config.model import (
    AdminScope,
    GatewayConfig,
    ManagementConfig,
    did_you_mean,
    granted_scopes,
    unsendable_token_problem,
)
from extproc.config.rule_models import KnownModels
from extproc.management import page_tokens
from extproc.management.audit import AuditLog, Outcome
from extproc.management.client import STORE_ERROR_METADATA
from extproc.management.guesses import FailedAttempts, retry_text
from extproc.management.key_filter import KeyFilter, KeyFilterError
from extproc.management.key_text import check_key_text
from extproc.management.quotas import (
    InvalidArgumentError,
    LimitState,
    NotFoundError,
    QuotaAdmin,
    UnreadableStateError,
    normalize_kind,
    normalize_subject,
)
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.rules import Limit
from extproc.runtime import Runtime
from extproc.store.connection import STORE_ERRORS
from extproc.store.scan_pages import ScanPosition, ScanTopologyError

if TYPE_CHECKING:
    from extproc.management.usage import UsageReportService

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["QuotaManagement"].full_name
KEY_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["KeyManagement"].full_name
USAGE_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["UsageReports"].full_name
T = TypeVar("T")
_LAST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC).timestamp()
# Anything that names the limits of one subject a change applies to.
Selector = Callable[[list[Limit]], list[Limit]]
# A gRPC method of a service: request and context in, answer out.
Handler = Callable[[Any, grpc_aio.ServicerContext], Awaitable[Any]]
# Refusals of what a request names, by the status code they answer with.
_REFUSALS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (KeyFilterError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnknownKeyIdError, grpc.StatusCode.NOT_FOUND),
    (KeyIdTakenError, grpc.StatusCode.ALREADY_EXISTS),
    # A create and a revoke of one id at once: the create failed, and may be run again.
    (KeyCreateConflictError, grpc.StatusCode.ABORTED),
    # The store answered, with keys a person wrote under the prefix: not an outage.
    (UnreadableStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnreadableRecordError, grpc.StatusCode.FAILED_PRECONDITION),
    # A rotation of a key past its expiry: as of a config key, a request that cannot work.
    (KeyExpiredError, grpc.StatusCode.INVALID_ARGUMENT),
    # A Cluster's primaries changed between two pages: the listing starts again.
    (ScanTopologyError, grpc.StatusCode.ABORTED),
)
# gRPC binds with SO_REUSEPORT by default: a second gateway on the same host and
# address would then share the port, and the kernel would hand each admin call
# to either one (changes landing in the other gateway's store). Refuse instead.
_SERVER_OPTIONS = (("grpc.so_reuseport", 0),)
# What a LimitState's numbers count, by the limit's kind.
LIMIT_KINDS = {"r": "requests", "t": "tokens", "c": "usd_micros"}


class ManagementListenError(RuntimeError):
    """The management API cannot take its address (in use, or not this host's)."""


@dataclass
class Change:
    """One change an admin asked for, as its audit line tells it, whatever its outcome."""

    action: str
    # What the request names (subject, rule, key id, new limit...), then the state
    # before and after the change as far as it was read.
    fields: dict[str, Any] = field(default_factory=dict)
    # How far it got: "checking" (nothing sent to the store that changes anything),
    # "applying" (sent, not confirmed) or "applied" (confirmed by the store).
    stage: Literal["checking", "applying", "applied"] = "checking"

    def cut_short_outcome(self) -> Outcome:
        """The outcome of a change cut short by a store error (or a bug) at its stage."""
        if self.stage == "checking":
            return "failed"
        return "unknown" if self.stage == "applying" else "applied"

    def store_error_message(self, error: Exception) -> str:
        """What the admin needs to know to decide whether to try again."""
        cause = f"the store did not answer ({type(error).__name__})"
        if self.stage == "applying":
            return (
                f"store error: {cause} while the change was being made: it may have been"
                " applied; read the current state before trying again"
            )
        if self.stage == "applied":
            return f"store error: the change was applied, but {cause} when its new state was read"
        return f"store error: {cause}; nothing was changed"

    def cancelled_message(self) -> str:
        """Why a change cut short by its caller (or a stopping gateway) ended as it did."""
        cause = "the call was cancelled (its caller stopped waiting, or the gateway is stopping)"
        if self.stage == "applying":
            return f"{cause} while the change was being made: it may have been applied"
        if self.stage == "applied":
            return f"{cause} after the change was applied, before its new state was read"
        return f"{cause} before anything was sent to the store; nothing was changed"


# Why an admin token whose id is a token is refused, in words that quote neither.
TOKEN_AS_ID = (
    "is an admin token (its own or another's): the id names the caller in every audit "
    "line; give the token an id that is no secret"
)


class AdminTokens:
    """The configured admin tokens, held as SHA-256 digests and compared in constant time.

    At start a token file that gives no token (missing, unreadable, empty, not
    sendable) refuses the config. At a reload (``reloaded``) its token is left out
    instead, and its problem kept in ``left_out``: emptying or deleting a token's
    file is how an operator takes an admin's access away, and before, the reload
    that change started was refused whole, so the gateway kept accepting that token.
    """

    def __init__(self, config: ManagementConfig, *, reloaded: bool = False) -> None:
        self._digests: list[tuple[str, bytes]] = []
        self._scopes: dict[str, frozenset[AdminScope]] = {
            spec.id: granted_scopes(spec.scopes) for spec in config.admin_tokens
        }
        # Why each token left out of a reload is not accepted (field names, no value).
        self.left_out: list[str] = []
        read: list[bytes | None] = []
        for index, spec in enumerate(config.admin_tokens):
            if spec.token is not None:
                secret = spec.token.get_secret_value()
            else:
                try:
                    secret = _read_token_file(index, spec.id, spec.token_file or "")
                except ConfigError as exc:
                    if not reloaded:
                        raise
                    self.left_out += exc.problems
                    read.append(None)
                    continue
            read.append(_digest(secret.strip()))
        for index, (spec, digest) in enumerate(zip(config.admin_tokens, read, strict=True)):
            if digest is None:
                continue
            if _digest(spec.id) in read:
                # The audit log names every caller by its token's id: one that is a
                # token would hand it to whoever reads the log. Named by place alone.
                raise ConfigError("config", [f"management.admin_tokens[{index}].id: {TOKEN_AS_ID}"])
            shared = next((known for known, same in self._digests if same == digest), None)
            if shared is not None:
                # One secret under two ids: the audit log would name the first for both.
                raise ConfigError(
                    "config",
                    [
                        f"management.admin_tokens[{index}] ({spec.id}): the same secret as"
                        f" {shared}'s; give each caller a token of its own"
                    ],
                )
            self._digests.append((spec.id, digest))

    def caller(self, metadata: Iterable[tuple[str, Any]]) -> str | None:
        """The id of the token the call presents, or None when it presents no valid one."""
        presented = _bearer(metadata)
        if presented is None:
            return None
        digest = _digest(presented)
        found: str | None = None
        # Digests have one length whatever was sent, so the comparisons take the
        # same time for every guess; every token is compared, matching or not.
        for token_id, known in self._digests:
            if hmac.compare_digest(known, digest) and found is None:
                found = token_id
        return found

    def scopes(self, token_id: str) -> frozenset[AdminScope]:
        """What the token ``token_id`` (as ``caller`` named it) may do."""
        return self._scopes.get(token_id, frozenset())


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _read_token_file(index: int, token_id: str, path: str) -> str:
    where = f"management.admin_tokens[{index}] ({token_id}).token_file"
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("config", [f"{where}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError("config", [f"{where}: not UTF-8 text"]) from None
    if not secret:
        raise ConfigError("config", [f"{where}: the file is empty"])
    problem = unsendable_token_problem(secret)
    if problem is not None:
        raise ConfigError("config", [f"{where}: the token {problem}"])
    return secret


class AdminService:
    """What every management service shares: the admin-token check, the audit log, and
    refusals turned into gRPC status codes."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        audit: AuditLog,
        attempts: FailedAttempts | None = None,
    ) -> None:
        self._runtime = runtime
        self._audit = audit
        # Shared by the services of one server: a guesser cannot spread its tries.
        self._attempts = attempts or FailedAttempts()
        config = runtime().config.management
        # Built once per config: a reload with new tokens (or a rotated file) applies.
        self._tokens: tuple[ManagementConfig, AdminTokens] = (config, AdminTokens(config))

    async def _call(
        self,
        context: grpc_aio.ServicerContext,
        work: Callable[[str], Awaitable[T]],
        scope: AdminScope,
        change: Change | None = None,
    ) -> T:
        """Authenticate the call, check its token has ``scope``, run it, audit the
        ``change`` it makes (if any) with its outcome, and turn refusals into gRPC
        status codes."""
        # One set of tokens for both checks: a reload between them (a token's secret
        # rotated and its scopes changed) must not pair one's caller with the other's.
        tokens = await self._admin_tokens()
        caller = await self._authenticate(context, change, tokens)
        await self._authorize(context, caller, scope, change, tokens)
        try:
            result = await work(caller)
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller's deadline passes or it hangs up
            # (Ctrl-C), and on stop: what was sent to the store may be in force all the
            # same, so the change keeps its audit line.
            if change is not None:
                outcome = change.cut_short_outcome()
                self._write_audit(change, caller, context, outcome, change.cancelled_message())
            raise
        except STORE_ERRORS as exc:
            log.warning("management call failed on the store: %s", type(exc).__name__)
            if change is None:
                message = f"store error: the store did not answer ({type(exc).__name__})"
            else:
                message = change.store_error_message(exc)
                self._write_audit(change, caller, context, change.cut_short_outcome(), message)
            await _abort(
                context, grpc.StatusCode.UNAVAILABLE, message, trailing=STORE_ERROR_METADATA
            )
        except Exception as exc:
            code = _refusal_code(exc)
            if code is None:
                # A bug, not the admin's mistake: still one audit line for the change.
                if change is not None:
                    outcome = change.cut_short_outcome()
                    error = f"internal error ({type(exc).__name__})"
                    self._write_audit(change, caller, context, outcome, error)
                raise
            if change is not None and isinstance(exc, KeyCreateConflictError):
                # Written to the store, then taken back (a revoke of the id raced it):
                # nothing lasts, but the attempt is the admin's, and the audit tells it.
                self._write_audit(change, caller, context, "failed", str(exc))
            elif change is not None and change.stage == "applied":
                # The new state cannot be read (another limit's key written by a person):
                # the change is in force all the same, and the answer and the audit say so.
                message = f"the change was applied, but {exc}"
                self._write_audit(change, caller, context, "applied", message)
                await _abort(context, code, message)
            # Otherwise invalid, or naming what does not exist: nothing changed, no line.
            await _abort(context, code, str(exc))
        if change is not None:
            self._write_audit(change, caller, context, "applied")
        return result

    async def _authenticate(
        self,
        context: grpc_aio.ServicerContext,
        change: Change | None = None,
        tokens: AdminTokens | None = None,
    ) -> str:
        """The id of the admin token the call carries; UNAUTHENTICATED without one (and,
        for a ``change``, a ``refused`` audit line naming what it asked for)."""
        peer = context.peer()
        wait = self._attempts.blocked_for(peer)
        if wait is not None:
            # Before the token is looked at: a guess during the block learns nothing.
            error = "too many calls without a valid admin token from this address"
            log.warning("management call from %s refused: %s", peer, error)
            if change is not None:
                self._audit.write(
                    change.action, None, "refused", peer=peer, **change.fields, error=error
                )
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{error}; try again in {retry_text(wait)}",
            )
        if tokens is None:
            tokens = await self._admin_tokens()
        caller = tokens.caller(context.invocation_metadata() or ())
        if caller is not None:
            return caller
        self._attempts.failed(peer)
        presented = _bearer(context.invocation_metadata() or ()) is not None
        log.warning(
            "management call from %s refused: %s admin token",
            context.peer(),
            "invalid" if presented else "no",
        )
        if change is not None:
            error = "invalid admin token" if presented else "no admin token"
            self._audit.write(
                change.action, None, "refused", peer=context.peer(), **change.fields, error=error
            )
        message = (
            "invalid admin token"
            if presented
            else "missing admin token: send `authorization: Bearer <token>`"
        )
        await _abort(context, grpc.StatusCode.UNAUTHENTICATED, message)

    async def _authorize(
        self,
        context: grpc_aio.ServicerContext,
        caller: str,
        scope: AdminScope,
        change: Change | None,
        tokens: AdminTokens,
    ) -> None:
        """PERMISSION_DENIED unless ``caller``'s token has ``scope`` (and, for a
        ``change``, a ``refused`` audit line naming the token's id)."""
        granted = tokens.scopes(caller)
        if scope in granted:
            return
        log.warning(
            "management call from %s refused: admin token %r lacks the scope %s",
            context.peer(),
            caller,
            scope,
        )
        if change is not None:
            self._write_audit(change, caller, context, "refused", f"missing scope {scope}")
        await _abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"the admin token {caller!r} does not have the scope {scope}, which this call"
            f" needs (its scopes: {', '.join(sorted(granted))})",
        )

    def _write_audit(
        self,
        change: Change,
        caller: str,
        context: grpc_aio.ServicerContext,
        outcome: Outcome,
        error: str | None = None,
    ) -> None:
        """One line per change the store made or may have made: who (token id and
        address), what, how it ended."""
        extra = {"error": error} if error is not None else {}
        self._audit.write(
            change.action, caller, outcome, peer=context.peer(), **change.fields, **extra
        )

    def parsed(self, handler: Handler) -> Handler:
        """``handler``, for a request that may be malformed (``_parser``): INVALID_ARGUMENT
        for one that is, once the call has shown an admin token."""

        async def call(request: Any, context: grpc_aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                # The token first: without one, a caller learns nothing about the API.
                await self._authenticate(context)
                message = f"the request is not a valid {request.type_name} message"
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"{message} ({request.reason})"
                )
            return await handler(request, context)

        return call

    async def _admin_tokens(self) -> AdminTokens:
        config = self._runtime().config.management
        cached, tokens = self._tokens
        if config is not cached:
            try:
                # Off the event loop: the token files may sit on a slow volume, and the
                # gateway's requests share this loop.
                # A token whose file gives none is left out, its caller refused: the
                # reload (Gateway.apply) has said so already.
                tokens = await asyncio.to_thread(AdminTokens, config, reloaded=True)
            except ConfigError as exc:
                # A reloaded config with an unreadable token file keeps the tokens in force.
                log.warning("admin tokens not reloaded: %s", "; ".join(exc.problems))
            self._tokens = (config, tokens)
        return tokens


class QuotaManagementService(AdminService, pb_grpc.QuotaManagementServicer):
    def __init__(
        self,
        runtime: Callable[[], Runtime],
        admin: QuotaAdmin,
        audit: AuditLog,
        attempts: FailedAttempts | None = None,
    ) -> None:
        super().__init__(runtime, audit, attempts)
        self._admin = admin

    async def GetQuota(  # noqa: N802 - gRPC method name
        self, request: pb.GetQuotaRequest, context: grpc_aio.ServicerContext
    ) -> pb.QuotaState:
        async def work(caller: str) -> pb.QuotaState:
            kind = normalize_kind(request.subject_kind)
            subject = normalize_subject(kind, request.subject)
            limits = self._admin.limits(self._runtime().quota_rules, kind, subject)
            return _quota_state(kind, subject, await self._admin.read(limits))

        return await self._call(context, work, "quotas:read")

    async def ListQuotas(  # noqa: N802 - gRPC method name
        self, request: pb.ListQuotasRequest, context: grpc_aio.ServicerContext
    ) -> pb.ListQuotasResponse:
        async def work(caller: str) -> pb.ListQuotasResponse:
            kind = normalize_kind(request.subject_kind)
            rules = self._runtime().quota_rules
            QuotaAdmin.check_kind(rules, kind)
            size = page_tokens.page_size(request)
            filters = page_tokens.filters_hash(request)
            token = page_tokens.decode(request.page_token, filters)
            response = pb.ListQuotasResponse()
            if size == 0:
                subjects = await self._admin.subjects(rules, kind)
                position = None
            else:
                at = token.position if token is not None else ScanPosition()
                subjects, position = await self._admin.subjects_page(
                    rules, kind, at, size, page_tokens.MAX_SCANS_PER_PAGE
                )
            if position is not None:
                following = page_tokens.PageToken(page_tokens.STORE, position=position)
                response.next_page_token = page_tokens.encode(following, filters)
            for subject, states in await self._admin.read_subjects(subjects):
                if isinstance(states, UnreadableStateError):
                    # Named, and the others listed: one stray key failed the whole list.
                    response.unreadable_keys.extend(
                        pb.UnreadableKey(
                            key=found.key, reason=found.reason, subject_kind=kind, subject=subject
                        )
                        for found in states.keys
                    )
                    continue
                response.states.append(_quota_state(kind, subject, states))
            return response

        return await self._call(context, work, "quotas:read")

    async def SetLimit(  # noqa: N802 - gRPC method name
        self, request: pb.SetLimitRequest, context: grpc_aio.ServicerContext
    ) -> pb.QuotaState:
        return await self._change(
            context,
            request,
            "set_limit",
            lambda limits: [QuotaAdmin.select_one(limits, request.rule, request.counter)],
            lambda targets: self._admin.set_limit(targets[0], request.limit),
            {"limit": request.limit},
        )

    async def AdjustUsage(  # noqa: N802 - gRPC method name
        self, request: pb.AdjustUsageRequest, context: grpc_aio.ServicerContext
    ) -> pb.QuotaState:
        return await self._change(
            context,
            request,
            "adjust_usage",
            lambda limits: [QuotaAdmin.select_one(limits, request.rule, request.counter)],
            lambda targets: self._admin.adjust(targets[0], request.delta),
            {"delta": request.delta},
        )

    async def ResetUsage(  # noqa: N802 - gRPC method name
        self, request: pb.ResetUsageRequest, context: grpc_aio.ServicerContext
    ) -> pb.QuotaState:
        return await self._change(
            context,
            request,
            "reset_usage",
            lambda limits: QuotaAdmin.select(limits, request.rule, request.counter),
            self._admin.reset,
            {},
        )

    async def _change(
        self,
        context: grpc_aio.ServicerContext,
        request: pb.SetLimitRequest | pb.AdjustUsageRequest | pb.ResetUsageRequest,
        action: str,
        select: Selector,
        apply: Callable[[list[Limit]], Awaitable[None]],
        details: dict[str, int],
    ) -> pb.QuotaState:
        """Apply one change to some limits of a subject, audit it, answer the new state."""
        kind = normalize_kind(request.subject_kind)
        subject = normalize_subject(kind, request.subject)
        change = Change(
            action,
            {
                "subject_kind": kind,
                "subject": subject,
                "rule": request.rule or None,
                "counter": request.counter or None,
                **details,
            },
        )

        async def work(caller: str) -> pb.QuotaState:
            limits = self._admin.limits(self._runtime().quota_rules, kind, subject)
            targets = select(limits)
            change.fields["before"] = _by_label(await self._admin.read(targets))
            change.stage = "applying"
            await apply(targets)
            change.stage = "applied"
            after = await self._admin.read(limits)
            change.fields["after"] = _by_label([s for s in after if s.limit in targets])
            return _quota_state(kind, subject, after)

        return await self._call(context, work, "quotas:write", change)


class KeyManagementService(AdminService, pb_grpc.KeyManagementServicer):
    """API keys at run time: created with a secret shown once, listed with the config's (and
    filtered), rotated, renewed, disabled and enabled, revoked."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        keys: StoredKeys,
        audit: AuditLog,
        attempts: FailedAttempts | None = None,
    ) -> None:
        super().__init__(runtime, audit, attempts)
        self._keys = keys

    async def CreateKey(  # noqa: N802 - gRPC method name
        self, request: pb.CreateKeyRequest, context: grpc_aio.ServicerContext
    ) -> pb.CreatedKey:
        change = Change("create_key", {"key_id": request.id})

        async def work(caller: str) -> pb.CreatedKey:
            key = _new_key(request)
            change.fields = _audited(key)
            config = self._runtime().config
            _check_routes(key, config)
            if not request.allow_unknown_models:
                _check_models(key, config)
            # The id names the key in every log line, label and quota key: one that is
            # a config key's secret would publish it (a stored key's has the shape
            # ApiKeyConfig refuses). Said without the id, which is that secret.
            if self._runtime().api_keys.lookup(key.id) is not None:
                raise InvalidArgumentError(f"id: {SECRET_AS_ID}")
            # A config key with the same id would make the id name two keys in
            # logs, metrics and quotas.
            if self._in_config(key.id):
                raise KeyIdTakenError(
                    f"an API key with id {key.id!r} already exists (in the config)"
                )
            change.stage = "applying"
            secret, stored = await self._keys.create(key, continue_usage=request.continue_usage)
            change.stage = "applied"
            return pb.CreatedKey(key=secret, info=_key_info(key, stored.created_at, "store"))

        return await self._call(context, work, "keys:write", change)

    async def ListKeys(  # noqa: N802 - gRPC method name
        self, request: pb.ListKeysRequest, context: grpc_aio.ServicerContext
    ) -> pb.ListKeysResponse:
        async def work(caller: str) -> pb.ListKeysResponse:
            # Checked before the store is read: a typo is refused, not answered "no keys".
            wanted = KeyFilter.of(request, time.time())
            size = page_tokens.page_size(request)
            filters = page_tokens.filters_hash(request)
            token = page_tokens.decode(request.page_token, filters)
            if size == 0:
                return await self._whole_listing(wanted)
            response = pb.ListKeysResponse()
            if token is None:
                first = page_tokens.CONFIG if wanted.source != "store" else page_tokens.STORE
                token = page_tokens.PageToken(first)
            following: page_tokens.PageToken | None = None
            position: ScanPosition | None = token.position
            if token.phase == page_tokens.CONFIG:
                following = self._config_page(wanted, token.config_after, size, response)
                if following is not None or wanted.source == "config":
                    position = None
            if position is not None and len(response.keys) < size:
                position = await self._stored_page(wanted, position, size, response)
            if position is not None:
                following = page_tokens.PageToken(page_tokens.STORE, position=position)
            if following is not None:
                response.next_page_token = page_tokens.encode(following, filters)
            return response

        return await self._call(context, work, "keys:read")

    async def _whole_listing(self, wanted: KeyFilter) -> pb.ListKeysResponse:
        """Every key that passes ``wanted`` in one answer (a page size of 0)."""
        response = pb.ListKeysResponse()
        if wanted.source in ("", "config"):
            for key in self._runtime().api_keys.records():
                info = _key_info(key, 0.0, "config")
                if wanted.passes(info):
                    response.keys.append(info)
        if wanted.source == "config":
            return response
        found = await self._keys.listing()
        self._add_stored(wanted, found, response)
        return response

    def _config_page(
        self, wanted: KeyFilter, after: str, size: int, response: pb.ListKeysResponse
    ) -> page_tokens.PageToken | None:
        """The config's keys after the id ``after`` that pass ``wanted``, by id, until the
        page holds ``size`` (or ``CONFIG_KEYS_PER_PAGE`` are looked at); the token of the
        next page, None once they are all listed.

        Resumed by id rather than by place: a reload between pages that adds or removes
        keys then neither repeats nor skips the keys it kept."""
        records = self._runtime().api_keys.records()
        start = bisect.bisect_right(records, after, key=lambda key: key.id)
        for at in range(start, len(records)):
            # A filter few keys pass must not hold the event loop for a pass over all.
            if len(response.keys) == size or at - start == page_tokens.CONFIG_KEYS_PER_PAGE:
                return page_tokens.PageToken(page_tokens.CONFIG, records[at - 1].id)
            info = _key_info(records[at], 0.0, "config")
            if wanted.passes(info):
                response.keys.append(info)
        return None

    async def _stored_page(
        self, wanted: KeyFilter, at: ScanPosition, size: int, response: pb.ListKeysResponse
    ) -> ScanPosition | None:
        """The stored keys from ``at`` that pass ``wanted`` until the page holds ``size``
        (or ``MAX_SCANS_PER_PAGE`` SCAN calls are made), and the records met that could not
        be read; the position after them (None: every record has been met)."""
        position: ScanPosition | None = at
        read: set[str] = set()
        for _ in range(page_tokens.MAX_SCANS_PER_PAGE):
            if position is None or len(response.keys) >= size:
                break
            batch = await self._keys.listing_batch(position)
            taken = batch.names[: size - len(response.keys)]
            # SCAN may give a record twice; within one page it is read once.
            names = [name for name, _ in taken if name not in read]
            read.update(names)
            self._add_stored(wanted, await self._keys.read_records(names), response)
            position = batch.position_after(len(taken))
        return position

    @staticmethod
    def _add_stored(wanted: KeyFilter, found: StoredKeyList, response: pb.ListKeysResponse) -> None:
        """The keys of ``found`` that pass ``wanted``, by id, and the unreadable records."""
        for stored in sorted(found.keys, key=lambda stored: stored.key.id):
            info = _key_info(stored.key, stored.created_at, "store")
            info.previous_expires_at = stored.previous_expires_at
            if wanted.passes(info):
                response.keys.append(info)
        # Named, and the others listed: one stray key failed the whole list.
        response.unreadable_keys.extend(
            pb.UnreadableKey(key=record.key, reason=record.reason)
            for record in sorted(found.unreadable, key=lambda record: record.key)
        )

    async def RevokeKey(  # noqa: N802 - gRPC method name
        self, request: pb.RevokeKeyRequest, context: grpc_aio.ServicerContext
    ) -> pb.KeyInfo:
        change = Change("revoke_key", {"key_id": request.id})

        async def work(caller: str) -> pb.KeyInfo:
            if not request.id:
                raise InvalidArgumentError("id is required")
            try:
                # Reads first, then deletes: the store error of a half-done revoke
                # counts as "unknown", one before any delete as well (conservative).
                change.stage = "applying"
                stored = await self._keys.revoke(request.id)
            except RevokedUnreadableRecordError:
                # Revoked all the same: the answer and the audit line say so, and why
                # the key's details cannot be given.
                change.stage = "applied"
                raise
            except UnknownKeyIdError:
                if self._in_config(request.id):
                    raise InvalidArgumentError(
                        f"API key {request.id!r} comes from the config:"
                        " remove it there (or set enabled: false) and reload"
                    ) from None
                raise
            change.stage = "applied"
            change.fields = _audited(stored.key)
            return _key_info(stored.key, stored.created_at, "store")

        return await self._call(context, work, "keys:write", change)

    async def RotateKey(  # noqa: N802 - gRPC method name
        self, request: pb.RotateKeyRequest, context: grpc_aio.ServicerContext
    ) -> pb.RotatedKey:
        change = Change("rotate_key", {"key_id": request.id, "grace_s": request.grace_seconds})

        async def work(caller: str) -> pb.RotatedKey:
            if not request.id:
                raise InvalidArgumentError("id is required")
            grace = request.grace_seconds
            _check_grace(grace)
            self._refuse_config_key(
                request.id, "give it a new secret there (key, key_file or the directory) and reload"
            )
            # Reads first, then writes: a store error counts as "unknown" (conservative).
            change.stage = "applying"
            secret, stored, until = await self._keys.rotate(request.id, grace)
            change.stage = "applied"
            change.fields = {**_audited(stored.key), "grace_s": grace, "previous_expires_at": until}
            info = _stored_key_info(stored, until)
            return pb.RotatedKey(key=secret, info=info, previous_expires_at=until)

        return await self._call(context, work, "keys:write", change)

    async def RenewKey(  # noqa: N802 - gRPC method name
        self, request: pb.RenewKeyRequest, context: grpc_aio.ServicerContext
    ) -> pb.RenewedKey:
        change = Change(
            "renew_key",
            {
                "key_id": request.id,
                "expires_at": None if request.no_expiry else request.expires_at,
                "no_expiry": request.no_expiry,
                "rotate": request.rotate,
            },
        )

        async def work(caller: str) -> pb.RenewedKey:
            if not request.id:
                raise InvalidArgumentError("id is required")
            expires = _renewed_expiry(request)
            grace = request.grace_seconds
            if not request.rotate and grace:
                raise InvalidArgumentError(
                    "grace_seconds is for a renewal with rotate (a new secret): without it"
                    " the key keeps its secret"
                )
            _check_grace(grace)
            self._refuse_config_key(request.id, "set its expires_at there and reload")
            # Reads first, then writes: a store error counts as "unknown" (conservative).
            change.stage = "applying"
            secret, stored, until, before = await self._keys.renew(
                request.id, expires, rotate=request.rotate, grace_s=grace
            )
            change.stage = "applied"
            change.fields = {
                **_audited(stored.key),
                "renewed_from": before or None,
                "no_expiry": request.no_expiry,
                "rotate": request.rotate,
            }
            if request.rotate:
                change.fields |= {"grace_s": grace, "previous_expires_at": until}
            # The old secret: this renewal's rotation's, else one still in its grace.
            info = _stored_key_info(stored, until if request.rotate else stored.previous_expires_at)
            return pb.RenewedKey(
                key=secret or "",
                info=info,
                previous_expires_at=until,
                renewed_from=before,
            )

        return await self._call(context, work, "keys:write", change)

    async def SetKeyEnabled(  # noqa: N802 - gRPC method name
        self, request: pb.SetKeyEnabledRequest, context: grpc_aio.ServicerContext
    ) -> pb.KeyInfo:
        action = "enable_key" if request.enabled else "disable_key"
        change = Change(action, {"key_id": request.id})

        async def work(caller: str) -> pb.KeyInfo:
            if not request.id:
                raise InvalidArgumentError("id is required")
            self._refuse_config_key(
                request.id, f"set its enabled: {str(request.enabled).lower()} there and reload"
            )
            # Reads first, then writes: a store error counts as "unknown" (conservative).
            change.stage = "applying"
            stored, was_enabled = await self._keys.set_enabled(request.id, request.enabled)
            change.stage = "applied"
            change.fields = {**_audited(stored.key), "was_enabled": was_enabled}
            return _stored_key_info(stored, stored.previous_expires_at)

        return await self._call(context, work, "keys:write", change)

    def _in_config(self, key_id: str) -> bool:
        return any(known.id == key_id for known in self._runtime().api_keys.records())

    def _refuse_config_key(self, key_id: str, remedy: str) -> None:
        """A config key changes in the config, at a reload: a change made here would be
        undone by the next one. ``remedy`` says how to make it there."""
        if self._in_config(key_id):
            raise InvalidArgumentError(f"API key {key_id!r} comes from the config: {remedy}")


def _renewed_expiry(request: pb.RenewKeyRequest) -> float:
    """The expiry a RenewKey request gives its key (0: none, with ``no_expiry``).

    An expires_at left at 0 stays refused: a caller that forgot the field would
    otherwise make a key last for ever; removing the expiry is said with no_expiry."""
    expires = request.expires_at
    if request.no_expiry:
        if expires:
            raise InvalidArgumentError(
                "expires_at and no_expiry ask for two different renewals (a new expiry, or"
                " none): give one of them"
            )
        return 0.0
    if not math.isfinite(expires) or expires <= time.time():
        raise InvalidArgumentError(
            "expires_at must be in the future: a renewal gives the key a new expiry"
            " (no_expiry removes it)"
        )
    if expires >= _LAST_EXPIRY:
        raise InvalidArgumentError("expires_at must be before the year 10000")
    return expires


def _check_grace(grace: float) -> None:
    if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE_S:
        raise InvalidArgumentError(
            f"grace_seconds must be from 0 to {MAX_GRACE_S:.0f} (30 days): a secret"
            " meant to keep working is a second key"
        )


def _new_key(request: pb.CreateKeyRequest) -> ApiKey:
    """The key a CreateKey request asks for, checked as a config entry would be."""
    if not request.id:
        raise InvalidArgumentError("id is required")
    expires = request.expires_at
    # Not finite, or past what a datetime holds (year 9999): a typo, not a date.
    if not math.isfinite(expires) or expires < 0 or 0 < expires <= time.time():
        raise InvalidArgumentError("expires_at must be in the future (or 0: never)")
    if expires >= _LAST_EXPIRY:
        raise InvalidArgumentError("expires_at must be before the year 10000")
    check_key_text(request.user_id, request.group_id, request.labels)
    try:
        spec = ApiKeyConfig(
            id=request.id,
            user_id=request.user_id or None,
            group_id=request.group_id or None,
            labels=dict(request.labels),
            expires_at=datetime.fromtimestamp(request.expires_at, UTC)
            if request.expires_at
            else None,
            allowed_models=tuple(request.allowed_models),
            allowed_routes=tuple(request.allowed_routes),
        )
    except ValidationError as exc:
        problems = (
            # As the config loader says them: pydantic's own prefix tells an admin nothing.
            f"{'.'.join(str(part) for part in error['loc'])}: "
            f"{str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise InvalidArgumentError("; ".join(problems)) from None
    return api_key_of(spec)


def _check_routes(key: ApiKey, config: GatewayConfig) -> None:
    """Refuse routes the config does not have: a key kept to them would be refused
    everywhere, with a 403 naming the route it called rather than the misspelt one."""
    known = [route.name for route in config.routes]
    for name in key.allowed_routes:
        if name not in known:
            raise InvalidArgumentError(
                f"allowed_routes: unknown route {name!r}{did_you_mean(name, known)}"
            )


def _check_models(key: ApiKey, config: GatewayConfig) -> None:
    """Refuse model names the config does not know (``extproc.config.rule_models``).

    A refusal, where the same name in the config file is only a warning: a config key
    comes back with every reload and its warning with it, but a created key's secret is
    handed out once, so a key kept to a typo would have to be revoked, created again
    (under another id: a revoked key's is retired) and its new secret handed out again,
    after its holder met 403 ``model_not_allowed`` on
    every request. A name the config cannot know yet (a model a coming reload adds, one
    a route with a provider serves unlisted) is accepted with ``allow_unknown_models``.
    """
    known = KnownModels(config)
    for pattern in key.allowed_models:
        hint = known.unknown(pattern)
        if hint is None:
            continue
        what = "matches no model" if pattern.endswith("*") else "is no model"
        raise InvalidArgumentError(
            f"allowed_models: {pattern!r} {what} the gateway knows{hint} (the key would be"
            " refused it with 403 model_not_allowed); if a reload will add it, or a route"
            " with a provider serves it under this name, set allow_unknown_models"
            " (`extproc keys create --allow-unknown-model`)"
        )


def _audited(key: ApiKey) -> dict[str, Any]:
    """A key's identity for an audit line: what it names, never its secret."""
    return {
        "key_id": key.id,
        "user_id": key.user_id,
        "group_id": key.group_id,
        "labels": key.labels,
        "expires_at": key.expires_at,
        "allowed_models": list(key.allowed_models),
        "allowed_routes": list(key.allowed_routes),
    }


def _key_info(key: ApiKey, created_at: float, source: str) -> pb.KeyInfo:
    return pb.KeyInfo(
        id=key.id,
        user_id=key.user_id or "",
        group_id=key.group_id or "",
        labels=key.labels,
        enabled=key.enabled,
        expires_at=key.expires_at or 0.0,
        created_at=created_at,
        source=source,
        allowed_models=key.allowed_models,
        allowed_routes=key.allowed_routes,
    )


def _stored_key_info(stored: StoredKey, old_secret_until: float) -> pb.KeyInfo:
    """A stored key as a change's answer gives it: ``previous_expires_at`` only while
    an old secret still works."""
    info = _key_info(stored.key, stored.created_at, "store")
    if old_secret_until > time.time():
        info.previous_expires_at = old_secret_until
    return info


def _refusal_code(error: Exception) -> grpc.StatusCode | None:
    """The status code of a refusal of what the request names; None for anything else."""
    for kind, code in _REFUSALS:
        if isinstance(error, kind):
            return code
    return None


async def _abort(
    context: grpc_aio.ServicerContext,
    code: grpc.StatusCode,
    text: str,
    trailing: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    await context.abort(code, text, trailing)
    raise AssertionError("context.abort raises")


def _by_label(states: list[LimitState]) -> dict[str, dict[str, Any]]:
    return {state.limit.override_field: state.as_dict() for state in states}


def _quota_state(kind: str, subject: str, states: list[LimitState]) -> pb.QuotaState:
    answer = pb.QuotaState(subject_kind=kind, subject=subject)
    for state in states:
        limit = state.limit
        answer.limits.append(
            pb.LimitState(
                rule=limit.rule,
                counter=limit.counter,
                kind=LIMIT_KINDS[limit.kind],
                limit=state.in_force,
                configured_limit=limit.limit,
                overridden=state.overridden,
                used=state.used,
                reserved=state.reserved,
                remaining=state.remaining,
                window_start=limit.window.start,
                reset_at=limit.window.end or 0.0,
                time_zone=limit.time_zone,
            )
        )
    return answer


@dataclass(frozen=True, slots=True)
class _Malformed:
    """A request whose bytes are no message of the method's type."""

    type_name: str
    reason: str


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    """The request's parser, which hands a malformed request to the handler as such.

    gRPC answers a parser's exception itself, before the handler runs: UNKNOWN,
    "Unexpected <class ...DecodeError>", the gateway's failure rather than the
    caller's, to anyone, token or not, with a traceback in the diagnostic log.
    """
    type_name: str = message_type.DESCRIPTOR.full_name

    def parse(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            # "Error parsing message with type '<name>': <reason>": the reason alone.
            return _Malformed(type_name, str(exc).rpartition(": ")[2] or "unreadable")

    return parse


def _add_service(server: grpc_aio.Server, name: str, servicer: AdminService) -> None:
    """Serve ``servicer``'s methods of the service ``name``, as the generated
    ``add_*Servicer_to_server`` does, but refusing a malformed request as INVALID_ARGUMENT
    once the call has shown an admin token."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name[name.rpartition(".")[2]].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            servicer.parsed(getattr(servicer, method.name)),
            request_deserializer=_parser(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


async def start_server(
    address: str,
    service: QuotaManagementService,
    keys: KeyManagementService | None = None,
    usage: UsageReportService | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> grpc_aio.Server:
    """A gRPC server of its own for the management API, with health and reflection;
    over TLS with ``credentials`` (``management.tls``), else plaintext."""
    server = grpc_aio.server(options=_SERVER_OPTIONS)
    served: list[str] = []
    for name, servicer in ((SERVICE_NAME, service), (KEY_SERVICE_NAME, keys),
                           (USAGE_SERVICE_NAME, usage)):  # fmt: skip
        if servicer is not None:
            _add_service(server, name, servicer)
            served.append(name)
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    reflection.enable_server_reflection(
        (*served, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is not None:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError:
        # gRPC's own message says only "Failed to bind" (and logs the reason).
        raise ManagementListenError(
            f"management API cannot listen on {address}: the address is in use (another"
            " gateway with the same management.address?) or not one of this host's"
        ) from None
    await server.start()
    for name in ("", *served):
        await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
