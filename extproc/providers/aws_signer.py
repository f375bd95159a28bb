"""SigV4 signatures for requests to AWS (Bedrock), computed by botocore, and their credentials.

Credentials come from the provider's ``aws`` config: the static values, or the files they
name (read once per (re)load, like ``api_key_file``); with neither, botocore's default chain
(environment, web identity token file for Kubernetes service accounts, shared config and
credentials files, container and instance metadata).

The chain can reach the network (STS, IMDS), and temporary credentials refresh themselves
over it, so that I/O runs in a daemon thread, one the gateway's stop does not wait for: in
``start()`` and in ``refresh_if_needed()``, which the runtime calls periodically.
``sign()`` runs on the event loop for every request and only hashes: it uses a frozen
snapshot of the credentials taken by those two, never botocore's refreshing object, whose
properties may block on a refresh. The body's hash is the one part
that grows with the request (an InvokeModel body with images or documents runs to megabytes:
64 MiB took 68 ms to hash here, which every open request waited through): a caller hashes a
body of ``HASHED_OFF_LOOP_BYTES`` or more in a thread (``payload_sha256``) and hands the hash
to ``sign()``, which then signs without hashing again.

What is signed: method, path, body hash, ``host`` (the endpoint's authority as written in
``base_url``, which is what Envoy sends), ``content-type: application/json``, ``x-amz-date``
and, with session credentials, ``x-amz-security-token``, plus any ``x-amz-*`` header the
caller passes. Other headers are left unsigned on purpose: Envoy adds and rewrites some on
the way, which would break the signature. Credentials never reach a log or an error
message; errors name the config field.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from pydantic import SecretStr

from extproc.config.loader import ConfigError
from extproc.config.model import AwsConfig
from extproc.daemon_threads import run_in_daemon_thread
from extproc.providers import credentials_pending

# botocore logs secrets at DEBUG: botocore.auth each canonical request it signs, the
# session token with it; botocore.endpoint and botocore.parsers each call the default chain
# makes to STS and its answer (a Kubernetes service account's token in, the role's secret
# key and session token out). An operator turning on DEBUG to chase a problem must not
# write credentials out, so all of botocore stays at INFO, as google-auth does.
logging.getLogger("botocore").setLevel(logging.INFO)
log = logging.getLogger(__name__)

# The headers sign() hands back for the caller to set; botocore adds
# x-amz-content-sha256 only for services that want it (S3), never for Bedrock today.
_SIGNATURE_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
_SCHEMES = ("http", "https")
# How long a reload waits for new credentials when the replaced config's can carry over.
RELOAD_CREDENTIALS_WAIT_S = 10.0
# How long a start (or a reload with nothing to carry over) waits for the default chain's
# first credentials before it serves without them (credentials_pending): an STS that takes
# connections and never answers holds botocore for minutes (60 s per try, tried again).
FIRST_CREDENTIALS_WAIT_S = 20.0
# STS error codes that say "not now" rather than "not you": retried, not refused.
_OUTAGE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "IDPCommunicationError",
    }
)
# The name of the threads the default chain runs in. Not the loop's executor: a fetch an
# STS never answers goes on for minutes after a reload stops waiting for it, and the
# executor's threads are waited for when the gateway stops (extproc/daemon_threads.py).
CREDENTIALS_THREAD = "aws-credentials"

# A body at least this large is hashed off the event loop before it is signed. A thread hop
# costs more than hashing a small body (10 KB hash in microseconds), and most requests are
# small: they are hashed inline, as before.
HASHED_OFF_LOOP_BYTES = 256 * 1024
# Where sign() leaves a hash the caller computed, for _PrehashedSigV4Auth to take.
_PAYLOAD_SHA256 = "aigw_payload_sha256"


def payload_sha256(body: bytes) -> str:
    """The hex SHA-256 of a request body, as SigV4 signs it (run in a thread for a large
    body: hashlib releases the GIL while it hashes)."""
    return hashlib.sha256(body).hexdigest()


class _PrehashedSigV4Auth(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's SigV4 signer, taking the body's hash from the request's context when the
    caller computed it already (off the event loop), instead of hashing the body again."""

    def payload(self, request: AWSRequest) -> str:
        known = request.context.get(_PAYLOAD_SHA256)
        if isinstance(known, str):
            return known
        computed: str = super().payload(request)
        return computed


class AwsSigner:
    """Signs requests to one AWS endpoint with one provider's credentials."""

    def __init__(self, config: AwsConfig, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ValueError("endpoint must be an http:// or https:// URL with a host")
        self._config = config
        self._origin = f"{parts.scheme}://{parts.netloc}"
        # AWS checks the signature against the `host` it receives, and Envoy sends the
        # endpoint's authority exactly as the config writes it (the provider route's
        # host_rewrite_literal, a failover attempt's :authority): capitals and a written-out
        # default port included. botocore's own form (lowercase, no default port) would
        # sign another host than the one sent, and AWS would answer 403.
        self.host = parts.netloc.rpartition("@")[2]
        self._source: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._auth: SigV4Auth | None = None
        # The default chain's fetch still running for a pending signer (obtain()): a
        # silent STS holds one for minutes, and tries must not pile threads up meanwhile.
        self._fetching: asyncio.Future[ReadOnlyCredentials] | None = None

    @property
    def pending(self) -> bool:
        """Whether ``start()`` found the credential source out of reach and left this
        signer without credentials (its requests get a 503 until ``obtain()`` gets some)."""
        return self._source is not None and self._auth is None

    @property
    def method(self) -> str | None:
        """Where the credentials came from, in botocore's words (env, web identity...)."""
        return None if self._source is None else str(self._source.method)

    async def start(self, previous: AwsSigner | None = None) -> None:
        """Resolve the credentials; raises ``ConfigError`` when there are none to use, or
        when their source answers and refuses them.

        ``previous``: the signer of the config a reload replaces. When the default chain
        cannot hand over credentials now (STS out of reach for a service account's web
        identity) and ``previous`` signs for the same provider with credentials that have
        not expired, those carry over, refreshed by botocore as they were there: a reload
        during an STS outage is applied, as the replaced config would have gone on
        signing, rather than refused. With nothing to carry over, the signer is left
        ``pending`` after ``FIRST_CREDENTIALS_WAIT_S`` (providers.credentials_pending);
        one whose ``previous`` waits the same way takes its wait over at once."""
        source = await run_in_daemon_thread(self._resolve, CREDENTIALS_THREAD)
        if self._still_pending(previous, source):
            return
        fetching = _fetch(source)
        # An STS that takes connections and never answers holds botocore for minutes
        # (60 s timeouts, retried): a reload, and any reload after it (a key revoked), would
        # wait that long for credentials it has; a start would not serve at all meanwhile.
        wait_s = (
            RELOAD_CREDENTIALS_WAIT_S if self._carries_over(previous) else FIRST_CREDENTIALS_WAIT_S
        )
        try:
            frozen = await asyncio.wait_for(asyncio.shield(fetching), wait_s)
        except Exception as exc:
            if self._carry_over(previous):
                log.warning(
                    "AWS credentials for %s not obtained (%s, %s): the replaced config's"
                    " sign until they are due for a refresh",
                    self.host,
                    source.method,
                    type(exc).__name__,
                )
                return
            if _outage(exc):
                # One provider's credential source down must not keep the gateway, and
                # every other provider, from serving: this one answers 503 meanwhile.
                self._source = source
                self._fetching = None if fetching.done() else fetching
                log.warning(
                    "AWS credentials for %s not obtained (%s, %s): its requests are answered"
                    " 503 provider_credentials_unavailable until they are",
                    self.host,
                    source.method,
                    type(exc).__name__,
                )
                return
            # Say which source failed and how, without the exception's text: STS and IMDS
            # errors can quote the token or role they were given.
            raise ConfigError(
                "aws",
                [
                    f"cannot obtain credentials from the AWS default chain "
                    f"({source.method}): {type(exc).__name__}"
                ],
            ) from None
        self._use(source, frozen)

    def check_key_files(self) -> None:
        """Read the credential files the config names, as ``start`` does, without the
        default chain (which may ask the network): ``ConfigError`` when one cannot be read."""
        self._static_credentials()

    def sign(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        body_sha256: str | None = None,
    ) -> dict[str, str]:
        """The headers to set on the request so that AWS accepts it.

        ``path`` is the request path as sent (percent-encoded, with any query string);
        ``body`` the exact bytes sent. From ``headers``, only ``x-amz-*`` ones are signed
        (the caller must send them unchanged); host and content-type are always signed as
        ``self.host`` and ``application/json``. ``body_sha256``: the body's hash
        (``payload_sha256``), computed by the caller off the event loop; None: hashed here.
        """
        if self._auth is None:
            if self._source is not None:
                raise credentials_pending.unavailable()
            raise RuntimeError("AwsSigner.sign() called before start()")
        signed = {
            name.lower(): value
            for name, value in headers.items()
            if name.lower().startswith("x-amz-") and name.lower() not in _SIGNATURE_HEADERS
        }
        signed["host"] = self.host
        signed["content-type"] = "application/json"
        request = AWSRequest(method=method, url=self._origin + path, data=body, headers=signed)
        if body_sha256 is not None:
            request.context[_PAYLOAD_SHA256] = body_sha256
        self._auth.add_auth(request)
        result: dict[str, str] = {}
        for name, value in request.headers.items():
            lname = name.lower()
            if lname in _SIGNATURE_HEADERS:
                result[lname] = value.decode() if isinstance(value, bytes) else str(value)
        return result

    async def refresh_if_needed(self) -> None:
        """Refresh temporary credentials before they expire; cheap when there is nothing to do.

        botocore refreshes within 15 minutes of expiry, so this must run more often than
        every 5 minutes (its mandatory window is the last 10). A failure propagates and the
        previous credentials stay in use until they expire.
        """
        source = self._source
        if self.pending or not isinstance(source, RefreshableCredentials):
            return  # a pending signer is obtain()'s
        if not source.refresh_needed():
            return
        frozen = await run_in_daemon_thread(source.get_frozen_credentials, CREDENTIALS_THREAD)
        if frozen != self._frozen:
            self._use(source, frozen)

    async def obtain(self) -> bool:
        """One more try for a pending signer's credentials: True once it has some. A try
        that fails is logged (a refusal as a warning: the config is in use already and
        cannot be refused now) and left for the next; one the source never answers is
        waited for by the tries after it, not started again."""
        source = self._source
        if not self.pending or source is None:
            return self._auth is not None
        if self._fetching is None:
            self._fetching = _fetch(source)
        fetching = self._fetching
        try:
            frozen = await asyncio.wait_for(asyncio.shield(fetching), FIRST_CREDENTIALS_WAIT_S)
        except TimeoutError:
            log.debug("AWS credentials for %s: still no answer", self.host)
            return False
        except Exception as exc:
            self._fetching = None
            if _outage(exc):
                log.debug("AWS credentials for %s: %s", self.host, type(exc).__name__)
            else:
                log.warning(
                    "AWS credentials for %s refused (%s, %s): its requests are answered 503"
                    " until the source hands some over",
                    self.host,
                    source.method,
                    type(exc).__name__,
                )
            return False
        self._fetching = None
        if self._source is not source:
            return False  # closed meanwhile
        self._use(source, frozen)
        log.info("AWS credentials for %s obtained (%s): it serves", self.host, self.method)
        return True

    def _still_pending(self, previous: AwsSigner | None, source: Credentials) -> bool:
        """Take over ``previous``'s pending state when it waits for the same credentials
        (the same provider, and the default chain's same source): a reload during the
        outage (a key revoked) is applied at once instead of after another wait for the
        source, and the fetch ``previous`` started goes on for this signer. A chain that
        now resolves elsewhere (static keys an operator wrote to the shared credentials
        file to get round the outage) is started afresh."""
        if previous is None or not previous.pending or previous._source is None:
            return False
        if (previous._config, previous._origin) != (self._config, self._origin):
            return False
        if previous._source.method != source.method:
            return False
        self._source = previous._source
        self._fetching = previous._fetching
        return True

    def _carries_over(self, previous: AwsSigner | None) -> bool:
        """Whether ``previous`` signs for the same provider with credentials that have
        not expired, which this signer may start from."""
        if previous is None or (previous._config, previous._origin) != (
            self._config,
            self._origin,
        ):
            return False
        source = previous._source
        if source is None or previous._frozen is None:
            return False
        # refresh_needed(0): past the expiry itself, which AWS would refuse.
        return not (isinstance(source, RefreshableCredentials) and source.refresh_needed(0))

    def _carry_over(self, previous: AwsSigner | None) -> bool:
        """Take ``previous``'s credentials when ``_carries_over`` allows it."""
        if previous is None or not self._carries_over(previous):
            return False
        assert previous._source is not None and previous._frozen is not None
        self._use(previous._source, previous._frozen)
        return True

    async def close(self) -> None:
        self._auth = None
        self._frozen = None
        self._source = None
        self._fetching = None

    def _use(self, source: Credentials, frozen: ReadOnlyCredentials) -> None:
        self._source = source
        self._frozen = frozen
        # SigV4Auth reads only access_key, secret_key and token: the frozen tuple has them.
        self._auth = _PrehashedSigV4Auth(frozen, self._config.service, self._config.region)

    def _resolve(self) -> Credentials:
        """Static credentials from the config, else the default chain (may do network I/O)."""
        static = self._static_credentials()
        if static is not None:
            return static
        config = self._config
        try:
            credentials = default_chain_credentials(config.region)
        except BotoCoreError as exc:
            # A shared file half-written by a rotation tool, a profile that names a missing
            # source: the type says which, the text may quote the file.
            raise ConfigError(
                "aws", [f"the AWS default chain could not be read: {type(exc).__name__}"]
            ) from None
        if credentials is None:
            raise ConfigError(
                "aws",
                [
                    "no credentials: set access_key_id and secret_access_key (or their _file "
                    "fields), or provide them to the AWS default chain (environment, web "
                    "identity, shared config, instance metadata)"
                ],
            )
        return credentials

    def _static_credentials(self) -> Credentials | None:
        """The config's own keys (values or files); None when it names none."""
        config = self._config
        access_key = _secret(config.access_key_id, config.access_key_id_file, "access_key_id")
        secret_key = _secret(
            config.secret_access_key, config.secret_access_key_file, "secret_access_key"
        )
        if access_key is None or secret_key is None:
            return None
        return Credentials(access_key, secret_key, _session_token(config), method="gateway-config")


def _fetch(source: Credentials) -> asyncio.Future[ReadOnlyCredentials]:
    """The credentials of ``source``, fetched in a daemon thread. Its callers wait for it
    shielded, and may stop waiting: a failure nobody waits for any more is dropped (not
    logged as an exception never retrieved)."""
    fetching = run_in_daemon_thread(source.get_frozen_credentials, CREDENTIALS_THREAD)
    fetching.add_done_callback(lambda done: done.cancelled() or done.exception())
    return fetching


def _outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the credential source is out of reach or failing for now (no
    answer, a connection refused or reset, a 5xx or throttling from STS), not that it
    refused the credentials (a role that does not trust the token, an expired token)."""
    if isinstance(exc, TimeoutError | HTTPClientError | BotocoreConnectionError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _OUTAGE_CODES or int(status or 0) >= 500
    return False


def default_chain_credentials(region: str) -> Credentials | None:
    """botocore's default credential chain; web identity credentials load lazily (no STS yet)."""
    session = botocore.session.get_session()
    # STS (web identity, assumed roles) is then called in the provider's own region.
    session.set_config_variable("region", region)
    credentials: Credentials | None = session.get_credentials()
    return credentials


def shared_aws_files() -> list[Path]:
    """The shared credentials and config files the default chain reads, as botocore finds
    them (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``, else ``~/.aws/``).

    Their keys never refresh themselves, yet rotation tools (and operators) rewrite them
    in place, often with session keys that expire within the hour: the config reloader
    watches them (``config.watched_files``), and a new signer reads the chain again."""
    # botocore's own lookup, without a botocore session (several MB, and this runs at
    # every poll of the config reloader).
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    return [Path(credentials).expanduser(), Path(config).expanduser()]


def _session_token(config: AwsConfig) -> str | None:
    """The static credentials' session token; None for long-term keys.

    An empty value means none: ``session_token: ${AWS_SESSION_TOKEN:-}`` is how a config
    (the documented one included) takes a token when the environment has one, and
    long-term keys come without. An empty token *file* is still refused, as a mounted
    Secret that lost its content.
    """
    value = config.session_token
    if value is not None and not value.get_secret_value().strip():
        value = None
    return _secret(value, config.session_token_file, "session_token")


def _secret(value: SecretStr | None, path: str | None, field: str) -> str | None:
    """A SecretStr value, else the stripped contents of its file; None when neither is set."""
    if value is not None:
        text = value.get_secret_value().strip()
    elif path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("aws", [f"{field}_file: cannot read: {exc.strerror}"]) from None
    else:
        return None
    if not text:
        raise ConfigError("aws", [f"{field}{'' if value is not None else '_file'}: is empty"])
    return text
