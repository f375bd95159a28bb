"""OAuth2 access tokens for Google Cloud (a Vertex AI provider), minted by google-auth.

A Vertex request carries ``Authorization: Bearer <access token>``. The token comes from
the provider's ``gcp.credentials_file`` (a service account key: google-auth signs a JWT
with its key and trades it at the key's ``token_uri``), or, with none given, from
Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's own file,
the metadata server of GKE, Cloud Run or Compute Engine).

Minting a token is network I/O that google-auth does synchronously, so it runs in a daemon
thread, one the gateway's stop does not wait for: in ``start()``, before the config
serves, and in ``refresh_if_needed()``, which the runtime calls every minute. A token
lives an hour; it is replaced once it has less than ``REFRESH_AHEAD_S`` left, so a failed
refresh has several more tries before the token in use expires. ``authorization()`` runs
on the event loop for every request and only reads the token last minted. Tokens and keys
never reach a log or an error message: errors name the config field, the exception's type
and, for a token endpoint's refusal, its OAuth2 reason (``invalid_grant: Invalid JWT
Signature.``), which names no secret. A token request gives up after
``TOKEN_READ_TIMEOUT_S`` without an answer (or the provider's
``gcp.first_token_timeout_s``, if shorter): a silent endpoint must not hold a start, a
reload or the refresh loop forever.

When the token endpoint is still out of reach at ``start()``'s deadline and no replaced
config's token carries over, the source is *pending* (``credentials_pending``): the config
is applied all the same, as one provider's outage must not keep the gateway, and every
other provider with it, from starting. The provider's requests get a 503 until
``obtain()``, which the runtime calls on its own schedule, mints a token.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import google.auth
import urllib3
from google.auth import environment_vars
from google.auth.credentials import Credentials
from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError
from google.auth.transport.urllib3 import Request
from google.oauth2 import service_account

from extproc.config.loader import ConfigError
from extproc.config.model import GcpConfig
from extproc.daemon_threads import run_in_daemon_thread
from extproc.egress import DIRECT, EgressProxy
from extproc.errors import without_secrets
from extproc.providers import credentials_pending

# google-auth can log each token request and answer at DEBUG: an operator turning on
# DEBUG to chase a problem must not write assertions or access tokens out.
for _name in ("google.auth", "google.oauth2"):
    logging.getLogger(_name).setLevel(logging.INFO)

log = logging.getLogger(__name__)

# Vertex AI takes the cloud-platform scope (its own narrower scopes are not on every
# endpoint).
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Replace a token with less than this left: google-auth itself calls one expired 3 min
# 45 s early, and the runtime's refresh runs every minute.
REFRESH_AHEAD_S = 10 * 60
# urllib3 waits for an answer forever by default. A token request takes well under a
# second; a connection refused fails at once, and is retried by urllib3.
TOKEN_CONNECT_TIMEOUT_S = 5.0
TOKEN_READ_TIMEOUT_S = 10.0
# The name of the threads token requests run in: daemon threads, not the loop's executor,
# whose threads a gateway's stop waits for (extproc/daemon_threads.py).
TOKEN_THREAD = "gcp-token"
# The metadata server of GKE, Cloud Run and Compute Engine (Application Default
# Credentials): on the host's own link, which no forward proxy can reach.
METADATA_SERVER_HOSTS = ("metadata.google.internal", "169.254.169.254")
# How much of a token endpoint's reason an error or log line keeps.
_MAX_REASON = 300


def _request_timeout(first_token_timeout_s: float) -> urllib3.Timeout:
    """One token request's limits, never longer than the whole wait for the first token."""
    return urllib3.Timeout(
        connect=min(TOKEN_CONNECT_TIMEOUT_S, first_token_timeout_s),
        read=min(TOKEN_READ_TIMEOUT_S, first_token_timeout_s),
    )


class GcpTokenSource:
    """The access token of one Vertex provider's credentials, kept fresh off the loop."""

    def __init__(self, config: GcpConfig, where: str, egress: EgressProxy = DIRECT) -> None:
        self._config = config
        # The config path named in errors (providers.<name>.gcp).
        self._where = where
        self._credentials: Credentials | None = None
        # Token requests go through the egress proxy unless egress.no_proxy lists their
        # host; the metadata server is always asked directly.
        self._http = egress.with_direct(METADATA_SERVER_HOSTS).urllib3_pool(
            _request_timeout(config.first_token_timeout_s)
        )
        self._token: str | None = None
        # The token before it: a request sent with it may still be waiting for its answer.
        self._previous: str | None = None
        # When the token in use is due for a refresh, on the monotonic clock: a step of
        # the wall clock must not keep a token past its expiry.
        self._refresh_due = 0.0
        # The quota project the credentials name (user credentials need one).
        self._quota_project: str | None = None
        # start() returned without a token: the token endpoint was out of reach.
        self._pending = False

    @property
    def token(self) -> str | None:
        """The access token in use (None before ``start()``, and while ``pending``)."""
        return self._token

    @property
    def pending(self) -> bool:
        """Whether ``start()`` returned without a token, none minted since (``obtain()``)."""
        return self._pending

    @property
    def recent_tokens(self) -> tuple[str, ...]:
        """The tokens requests in flight may carry: the one in use, and the one it replaced
        (the answer to a request sent just before a refresh can quote it back)."""
        return tuple(token for token in (self._token, self._previous) if token)

    def authorization(self) -> str:
        """The ``Authorization`` header's value for a request to Vertex."""
        if self._token is None:
            if self._pending:
                raise credentials_pending.unavailable()
            raise RuntimeError("GcpTokenSource.authorization() called before start()")
        return f"Bearer {self._token}"

    def request_headers(self) -> dict[str, str]:
        """The headers a request to Vertex carries: the access token, and the quota project
        the credentials name as ``x-goog-user-project`` (as google-auth's own ``apply``
        sends it; gcloud's user credentials name one, and need it)."""
        headers = {"authorization": self.authorization()}
        if self._quota_project:
            headers["x-goog-user-project"] = self._quota_project
        return headers

    def check_key_file(self) -> None:
        """Read the key file ``start()`` reads, without the network (``check-config``):
        ``ConfigError`` naming the field when ``start()`` would refuse it."""
        if self._config.credentials_file is not None:
            self._from_file(self._config.credentials_file)

    @staticmethod
    def failure(exc: BaseException) -> str:
        """What a failed token request says: its type, and a token endpoint's OAuth2
        ``error`` and ``error_description`` (a deleted key, a clock off by minutes), which
        name no secret; anything that looks like one is redacted all the same."""
        name = type(exc).__name__
        data = exc.args[1] if isinstance(exc, RefreshError) and len(exc.args) > 1 else None
        if not isinstance(data, dict):
            return name
        said = [str(data[key]) for key in ("error", "error_description") if data.get(key)]
        reason = without_secrets(": ".join(said)[:_MAX_REASON])
        return f"{name} ({reason})" if reason else name

    async def start(self, previous: GcpTokenSource | None = None) -> None:
        """Load the credentials and mint the first token; ``ConfigError`` when the key
        cannot be loaded or the token endpoint refuses it.

        A token endpoint that cannot be reached yet (GKE's metadata server in a pod's
        first seconds, a proxy sidecar starting beside the gateway) is tried again for up
        to ``gcp.first_token_timeout_s``; an answer that refuses the key fails at once.
        Still out of reach then (or answering with an error Google calls retryable), with
        no token to carry over: the source is left ``pending`` and ``start()`` returns, as
        refusing the config for one provider's outage would keep the whole gateway from
        starting; ``obtain()`` tries again later.

        ``previous``: the source of the config a reload replaces. When the token endpoint
        is out of reach (or answers with an error Google calls retryable) and ``previous``
        holds an unexpired token for the same credentials, that token carries over and
        the refresh loop mints the next one: a reload during a Google outage (one that
        revokes an org key, say) is applied, as the replaced config would have gone on
        serving with that token, rather than refused after ``gcp.first_token_timeout_s``."""
        self._credentials = await asyncio.to_thread(self._load)
        if previous is not None and previous._pending and previous._config == self._config:
            # The replaced config waits for the same token endpoint: a reload during the
            # outage (a key revoked) is applied at once, not after another wait for it;
            # the runtime tries the endpoint again a second later.
            self._pending = True
            return
        deadline = time.monotonic() + self._config.first_token_timeout_s
        pause = 0.25
        while True:
            try:
                await run_in_daemon_thread(self._refresh, TOKEN_THREAD)
                return
            except (TransportError, RefreshError) as exc:
                if self._outage(exc) and self._carry_over(previous):
                    log.warning(
                        "%s: no new Google Cloud access token (%s): the replaced config's"
                        " serves until it is due for a refresh",
                        self._where,
                        self.failure(exc),
                    )
                    return
                if not isinstance(exc, TransportError) or time.monotonic() + pause > deadline:
                    if not self._outage(exc):
                        raise self._refused(exc) from None
                    # Still an outage: refusing the config would keep the gateway, and
                    # its other providers, from starting for this one.
                    self._become_pending(exc)
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
            except (GoogleAuthError, OSError, ValueError) as exc:
                raise self._refused(exc) from None

    @staticmethod
    def _outage(exc: BaseException) -> bool:
        """Whether ``exc`` says the token endpoint is out of reach or failing for now,
        not that it refused the key."""
        return isinstance(exc, TransportError) or bool(getattr(exc, "retryable", False))

    def _carry_over(self, previous: GcpTokenSource | None) -> bool:
        """Take ``previous``'s token when it is for the same credentials and unexpired."""
        if previous is None or previous._config != self._config or previous._token is None:
            return False
        if time.monotonic() >= previous._refresh_due + REFRESH_AHEAD_S:
            return False  # expired: Vertex would refuse it
        self._token, self._previous = previous._token, previous._previous
        self._quota_project = previous._quota_project
        # Due as it was there: the refresh loop tries again from its next tick.
        self._refresh_due = previous._refresh_due
        return True

    def _become_pending(self, exc: BaseException) -> None:
        self._pending = True
        log.warning(
            "%s: no Google Cloud access token yet (%s): the provider's requests get 503"
            " until one is minted; trying again in the background",
            self._where,
            self.failure(exc),
        )

    async def obtain(self) -> bool:
        """One try to mint the token of a pending source: whether one is held now (True at
        once for a source that is not pending).

        Never raises for a failed try: the config is applied already, so a refusal (the
        key deleted since the start) cannot refuse it; it is logged, and an outage is
        tried again by the runtime in a few seconds."""
        if not self._pending:
            return True
        if self._credentials is None:
            return False  # closed: nothing to mint with
        try:
            await run_in_daemon_thread(self._refresh, TOKEN_THREAD)
        except (GoogleAuthError, OSError, ValueError) as exc:
            if self._outage(exc):
                log.debug(
                    "%s: still no Google Cloud access token (%s)", self._where, self.failure(exc)
                )
            else:
                log.warning(
                    "%s: no Google Cloud access token, the token endpoint refused it (%s):"
                    " the provider's requests get 503 until one is minted",
                    self._where,
                    self.failure(exc),
                )
            return False
        self._pending = False
        log.info("%s: Google Cloud access token obtained", self._where)
        return True

    def _refused(self, exc: BaseException) -> ConfigError:
        return ConfigError(
            "config",
            [f"{self._where}: cannot obtain a Google Cloud access token: {self.failure(exc)}"],
        )

    async def refresh_if_needed(self) -> None:
        """Mint a new token when the one in use expires within ``REFRESH_AHEAD_S``.

        A failure propagates; the token in use stays until it expires. A pending source is
        left to ``obtain()``, which the runtime calls on its own schedule."""
        if self._credentials is None or self._pending or not self._expiring():
            return
        await run_in_daemon_thread(self._refresh, TOKEN_THREAD)

    async def close(self) -> None:
        self._credentials = None
        self._token = self._previous = None
        self._http.clear()

    def _expiring(self) -> bool:
        return time.monotonic() >= self._refresh_due

    def _refresh(self) -> None:
        credentials = self._credentials
        assert credentials is not None
        # google-auth's transport and refresh are not annotated (its package is typed
        # in part): the calls below are checked by the tests instead.
        credentials.refresh(Request(self._http))  # type: ignore[no-untyped-call]
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise ValueError("the token endpoint answered without an access token")
        # google-auth's expiry is naive UTC, from this host's wall clock just now: what
        # is left of it, counted on the monotonic clock. None: a token that names no
        # lifetime, refreshed at every tick (the metadata server always names one).
        expiry = credentials.expiry
        due = time.monotonic()
        if expiry is not None:
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            due += (expiry - now).total_seconds() - REFRESH_AHEAD_S
        quota_project = getattr(credentials, "quota_project_id", None)
        if token != self._token:
            self._previous = self._token
        self._token = token
        self._refresh_due = due
        self._quota_project = quota_project if isinstance(quota_project, str) else None

    def _load(self) -> Credentials:
        path = self._config.credentials_file
        if path is not None:
            return self._from_file(path)
        try:
            credentials, _project = google.auth.default(scopes=SCOPES)
        except GoogleAuthError as exc:
            named = os.environ.get(environment_vars.CREDENTIALS)
            if named:
                # The operator named a file: say what is wrong with it, not "no credentials".
                raise ConfigError(
                    "config", [f"{self._where}: {_named_file_problem(named, exc)}"]
                ) from None
            raise ConfigError(
                "config",
                [
                    f"{self._where}: no credentials: set credentials_file to a service account "
                    "key, or provide Application Default Credentials "
                    f"(GOOGLE_APPLICATION_CREDENTIALS, a metadata server): {type(exc).__name__}"
                ],
            ) from None
        return credentials

    def _from_file(self, path: str) -> Credentials:
        where = f"{self._where}.credentials_file"
        try:
            info: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("config", [f"{where}: cannot read: {exc.strerror}"]) from None
        except ValueError:
            raise ConfigError("config", [f"{where}: not a JSON key file"]) from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ConfigError(
                "config", [f"{where}: not a service account key (its type must be service_account)"]
            )
        try:
            credentials: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=SCOPES
            )
        except (ValueError, KeyError) as exc:
            # A key file missing a field, or a private key that does not parse.
            raise ConfigError(
                "config", [f"{where}: not a usable service account key: {type(exc).__name__}"]
            ) from None
        return credentials


def _named_file_problem(path: str, exc: GoogleAuthError) -> str:
    """Why the file GOOGLE_APPLICATION_CREDENTIALS names gives no credentials (its
    contents never quoted)."""
    try:
        Path(path).read_bytes()
    except OSError as error:
        return f"GOOGLE_APPLICATION_CREDENTIALS: cannot read: {error.strerror}"
    return (
        "GOOGLE_APPLICATION_CREDENTIALS: not credentials google-auth can load: "
        f"{type(exc).__name__}"
    )
