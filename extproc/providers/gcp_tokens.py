"""OAuth2 access tokens for Google Cloud (a Vertex AI provider), minted by google-auth.

A Vertex request carries ``Authorization: Bearer <access token>``. The token comes from
the provider's ``gcp.credentials_file`` (a service account key: google-auth signs a JWT
with its key and trades it at the key's ``token_uri``), or, with none given, from
Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's own file,
the metadata server of GKE, Cloud Run or Compute Engine).

Minting a token is network I/O that google-auth does synchronously, so it runs in a
thread: in ``start()``, before the config serves, and in ``refresh_if_needed()``, which
the runtime calls every minute. A token lives an hour; it is replaced once it has less
than ``REFRESH_AHEAD_S`` left, so a failed refresh has several more tries before the
token in use expires. ``authorization()`` runs on the event loop for every request and
only reads the token last minted. Tokens and keys never reach a log or an error
message: errors name the config field and the exception's type.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import google.auth
import urllib3
from google.auth.credentials import Credentials
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.urllib3 import Request
from google.oauth2 import service_account

from extproc.config.loader import ConfigError
from extproc.config.model import GcpConfig

# google-auth can log each token request and answer at DEBUG: an operator turning on
# DEBUG to chase a problem must not write assertions or access tokens out.
for _name in ("google.auth", "google.oauth2"):
    logging.getLogger(_name).setLevel(logging.INFO)

# Vertex AI takes the cloud-platform scope (its own narrower scopes are not on every
# endpoint).
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Replace a token with less than this left: google-auth itself calls one expired 3 min
# 45 s early, and the runtime's refresh runs every minute.
REFRESH_AHEAD_S = 10 * 60


class GcpTokenSource:
    """The access token of one Vertex provider's credentials, kept fresh off the loop."""

    def __init__(self, config: GcpConfig, where: str) -> None:
        self._config = config
        # The config path named in errors (providers.<name>.gcp).
        self._where = where
        self._credentials: Credentials | None = None
        self._http = urllib3.PoolManager()
        self._token: str | None = None
        self._expiry: datetime.datetime | None = None

    @property
    def token(self) -> str | None:
        """The access token in use (None before ``start()``)."""
        return self._token

    def authorization(self) -> str:
        """The ``Authorization`` header's value for a request to Vertex."""
        if self._token is None:
            raise RuntimeError("GcpTokenSource.authorization() called before start()")
        return f"Bearer {self._token}"

    async def start(self) -> None:
        """Load the credentials and mint the first token; ``ConfigError`` when that fails."""
        self._credentials = await asyncio.to_thread(self._load)
        try:
            await asyncio.to_thread(self._refresh)
        except (GoogleAuthError, OSError, ValueError) as exc:
            # The token endpoint's answer can quote the assertion: its type only.
            raise ConfigError(
                "config",
                [f"{self._where}: cannot obtain a Google Cloud access token: {type(exc).__name__}"],
            ) from None

    async def refresh_if_needed(self) -> None:
        """Mint a new token when the one in use expires within ``REFRESH_AHEAD_S``.

        A failure propagates; the token in use stays until it expires."""
        if self._credentials is None or not self._expiring():
            return
        await asyncio.to_thread(self._refresh)

    async def close(self) -> None:
        self._credentials = None
        self._token = None
        self._http.clear()

    def _expiring(self) -> bool:
        if self._expiry is None:
            return True
        left = self._expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        return left.total_seconds() < REFRESH_AHEAD_S

    def _refresh(self) -> None:
        credentials = self._credentials
        assert credentials is not None
        # google-auth's transport and refresh are not annotated (its package is typed
        # in part): the calls below are checked by the tests instead.
        credentials.refresh(Request(self._http))  # type: ignore[no-untyped-call]
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise ValueError("the token endpoint answered without an access token")
        # google-auth's expiry is naive UTC; None: a token that names no lifetime,
        # refreshed at every tick (the metadata server always names one).
        self._token = token
        self._expiry = credentials.expiry

    def _load(self) -> Credentials:
        path = self._config.credentials_file
        if path is not None:
            return self._from_file(path)
        try:
            credentials, _project = google.auth.default(scopes=SCOPES)
        except GoogleAuthError as exc:
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
