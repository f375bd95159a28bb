"""Google's OAuth2 for the mock's Vertex AI surface: service account keys and access tokens.

A Vertex client authenticates with an OAuth2 access token, ``Authorization: Bearer
<token>``. A service account gets one with the JWT-bearer grant (RFC 7523): it signs a
JWT with its private key (RS256, header ``kid`` = the key's ``private_key_id``; claims
``iss`` = its ``client_email``, ``aud`` = the key file's ``token_uri`` or Google's own
token URL, which google-auth always signs, ``scope``, ``iat``, ``exp`` at most an hour
later) and posts it to ``token_uri`` as the form fields
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``. The answer
is ``{"access_token", "expires_in", "token_type": "Bearer"}``; a refusal is a 400
``{"error", "error_description"}``.

``write_service_account`` makes a key file like the ones Google hands out (a fresh RSA
key each time) for tests and ``make run``; ``TokenIssuer`` is the token endpoint's logic:
it checks an assertion against the key file as Google checks it, and issues and checks
opaque tokens (``ya29.mock-...``). The key file is read for each token request, so a test
can write it once the mock's port (and so its token URL) is known, and rotate it.

Simplification: Google issues a token for any scopes and Vertex then refuses one without
cloud-platform (403); here the token endpoint refuses it (``invalid_scope``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Google's token endpoint. google-auth signs it as the audience whatever the key file's
# token_uri says; other clients (Go's oauth2) sign the token_uri: Google takes both.
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
# Google refuses an assertion that would live longer than this.
MAX_ASSERTION_LIFETIME_S = 3600
# How far the caller's clock may be off, for iat and exp.
CLOCK_SKEW_S = 60
TOKEN_PREFIX = "ya29.mock-"

# Google's words for an assertion outside its time rules.
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
_BAD_SIGNATURE = "Invalid JWT Signature."
_NO_ACCOUNT = "Invalid grant: account not found"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What a test needs of a service account key file it wrote."""

    path: Path
    project_id: str
    client_email: str
    private_key_id: str
    token_uri: str
    public_key: rsa.RSAPublicKey


def write_service_account(
    path: Path | str, token_uri: str, project: str = "mock-project"
) -> ServiceAccount:
    """Write a service account key file with a fresh RSA key, readable by its owner only;
    ``token_uri`` is where clients trade assertions for tokens (the mock's ``/token``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = f"mock-gateway@{project}.iam.gserviceaccount.com"
    document = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),  # 21 digits, as Google's
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": (
            f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email, safe='')}"
        ),
        "universe_domain": "googleapis.com",
    }
    key_file = Path(path)
    # The file holds a private key: make it private before the key is in it.
    key_file.touch(mode=0o600, exist_ok=True)
    key_file.chmod(0o600)
    key_file.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return _account(key_file, document, key.public_key())


def read_service_account(path: Path | str) -> ServiceAccount:
    """The account a key file describes, its public key derived from the private one;
    raises ValueError (or OSError) for a file that is not a service account key."""
    key_file = Path(path)
    document = orjson.loads(key_file.read_bytes())
    if not isinstance(document, dict) or document.get("type") != "service_account":
        raise ValueError("not a service account key file")
    # Imported here, as the key file is read on each token request: cryptography is a
    # tenth of the mock's start-up, and most mocks never see a Vertex AI call.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private_key = serialization.load_pem_private_key(
        str(document["private_key"]).encode(), password=None
    )
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError("the key file's private_key is not an RSA key")
    return _account(key_file, document, private_key.public_key())


def _account(path: Path, document: dict[str, Any], public_key: rsa.RSAPublicKey) -> ServiceAccount:
    return ServiceAccount(
        path=path,
        project_id=str(document["project_id"]),
        client_email=str(document["client_email"]),
        private_key_id=str(document["private_key_id"]),
        token_uri=str(document["token_uri"]),
        public_key=public_key,
    )


class TokenRequestError(Exception):
    """A token request Google refuses: a 400 with ``error`` and ``error_description``."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    def document(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int

    def document(self) -> dict[str, Any]:
        """The token endpoint's answer."""
        return {
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }


class TokenIssuer:
    """Checks JWT-bearer assertions against one service account key file, issues access
    tokens for those it takes, and tells a token it issued (and has not expired) from
    any other. ``key_file`` None: no account exists, every request is an invalid grant."""

    def __init__(
        self,
        key_file: Path | str | None,
        lifetime_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lifetime_s < 0:
            raise ValueError("gcp_token_lifetime_s must be >= 0")
        self._key_file = None if key_file is None else Path(key_file)
        self._lifetime_s = lifetime_s
        self._clock = clock
        # token -> when it expires, on self._clock
        self._tokens: dict[str, float] = {}
        self._issued = 0

    @property
    def issued(self) -> int:
        """How many tokens were issued, so a test can see a client refresh."""
        return self._issued

    def issue(self, form: Mapping[str, str]) -> IssuedToken:
        """A token for the form's assertion; raises TokenRequestError as Google refuses."""
        if self._key_file is None:
            raise TokenRequestError("invalid_grant", _NO_ACCOUNT)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise TokenRequestError("invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER_GRANT:
            raise TokenRequestError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            raise TokenRequestError("invalid_request", "Missing required parameter: assertion")
        try:
            account = read_service_account(self._key_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The mock's own setup is wrong; say so without naming the file.
            raise TokenRequestError(
                "invalid_grant",
                f"the mock cannot read its service account key file ({type(exc).__name__})",
            ) from None
        _check_scope(_verified_claims(assertion, account))
        return self._new_token()

    def _new_token(self) -> IssuedToken:
        now = self._clock()
        # Forget expired tokens, so a long run does not keep every token it issued.
        self._tokens = {token: end for token, end in self._tokens.items() if end > now}
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._tokens[token] = now + self._lifetime_s
        self._issued += 1
        return IssuedToken(token, self._lifetime_s)

    def is_valid(self, token: str) -> bool:
        """Whether ``token`` is one this issuer issued and it has not expired."""
        expires_at = self._tokens.get(token)
        return expires_at is not None and self._clock() < expires_at


def _verified_claims(assertion: str, account: ServiceAccount) -> dict[str, Any]:
    """The assertion's claims, once its signature, key id, issuer, audience and times pass
    Google's checks; raises TokenRequestError (invalid_grant) naming the first that fails."""
    # Imported on the first token request: PyJWT (and the X.509 half of cryptography it
    # loads) is a fifth of the mock's start-up, and most mocks never see a Vertex AI call.
    import jwt

    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.DecodeError:
        raise TokenRequestError(
            "invalid_grant", "Invalid JWT: the assertion is not a JWT"
        ) from None
    if header.get("kid") != account.private_key_id:
        # Google looks the key up by kid: another key id means no key verifies it.
        raise TokenRequestError("invalid_grant", _BAD_SIGNATURE)
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            audience=[account.token_uri, GOOGLE_TOKEN_URL],
            issuer=account.client_email,
            leeway=CLOCK_SKEW_S,
            options={"require": ["iss", "aud", "iat", "exp"]},
        )
    except jwt.InvalidSignatureError:
        raise TokenRequestError("invalid_grant", _BAD_SIGNATURE) from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise TokenRequestError("invalid_grant", _SHORT_LIVED) from None
    except jwt.InvalidIssuerError:
        raise TokenRequestError("invalid_grant", _NO_ACCOUNT) from None
    except jwt.InvalidAudienceError:
        raise TokenRequestError(
            "invalid_grant",
            f"Invalid JWT: aud must be the token URL, {account.token_uri} or {GOOGLE_TOKEN_URL}",
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRequestError(
            "invalid_grant", f"Invalid JWT: the {exc.claim} claim is required"
        ) from None
    except jwt.InvalidTokenError as exc:
        raise TokenRequestError("invalid_grant", f"Invalid JWT: {exc}") from None
    if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME_S:
        raise TokenRequestError("invalid_grant", _SHORT_LIVED)
    return claims


def _check_scope(claims: Mapping[str, Any]) -> None:
    scope = claims.get("scope")
    scopes = scope.split() if isinstance(scope, str) else []
    if not scopes:
        raise TokenRequestError("invalid_scope", "Empty or missing scope not allowed.")
    if CLOUD_PLATFORM_SCOPE not in scopes:
        raise TokenRequestError(
            "invalid_scope", f"Vertex AI needs the {CLOUD_PLATFORM_SCOPE} scope."
        )
