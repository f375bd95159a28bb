"""Org API keys: loaded from config, env, files or a Secret directory; looked up by hash.

Only SHA-256 digests are kept in memory. A presented key is hashed and the
digest looked up in a dict: the time taken depends on the digest, not on how
much of some real key the guess matched, so there is no timing oracle on the
secret. Keys are never stored or logged in clear.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from extproc.config.auth_model import ApiKeyConfig, AuthConfig
from extproc.config.loader import ConfigError

# Why a key whose id is a secret is refused, in words that never quote either.
SECRET_AS_ID = (
    "is the secret of a key (its own or another's): an id is shown in every request's "
    "log line, metrics and quota keys; give the key an id that is no secret"
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str | None
    group_id: str | None
    enabled: bool
    expires_at: float | None
    allowed_models: tuple[str, ...]
    allowed_routes: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class ApiKeyStore:
    def __init__(self, config: AuthConfig) -> None:
        self._by_digest: dict[bytes, tuple[bytes, ApiKey]] = {}
        directory = _read_directory(config.api_key_directory)
        problems: list[str] = []
        # Where each secret came from, to name both places when a second one has it.
        sources: dict[bytes, str] = {}

        def add(digest: bytes, where: str, spec: ApiKeyConfig) -> None:
            first = sources.get(digest)
            if first is not None:
                # One secret under two ids: whichever identity won, the other's user,
                # group and limits would silently never apply to any request.
                problems.append(
                    f"{where}: the same secret as {first}; give each key a secret of its own"
                )
                return
            sources[digest] = where
            self._by_digest[digest] = (digest, api_key_of(spec))

        read: list[tuple[int, ApiKeyConfig, bytes | str]] = []
        for index, spec in enumerate(config.api_keys):
            try:
                read.append((index, spec, _digest_of(spec, directory)))
            except ValueError as exc:
                read.append((index, spec, str(exc)))
        # An id is written in every request's log line, metric labels and quota keys: one
        # that is a key's secret (its own, or another's) would publish that key there.
        secrets = {found for _, _, found in read if isinstance(found, bytes)}
        secrets.update(key_digest(secret) for secret in directory.values())
        for index, spec, found in read:
            if key_digest(spec.id) in secrets:
                # Named by its place alone: the id is the secret.
                problems.append(f"auth.api_keys[{index}].id: {SECRET_AS_ID}")
                continue
            where = f"auth.api_keys[{index}] ({spec.id})"
            if isinstance(found, str):
                problems.append(f"{where}: {found}")
                continue
            add(found, where, spec)
        known = {spec.id for spec in config.api_keys}
        # Files in the directory with no matching entry are keys with no identity beyond their id.
        for key_id, secret in directory.items():
            if key_id in known:
                continue
            if key_digest(key_id) in secrets:
                # The file's name is the id, and a secret: not said.
                problems.append(f"auth.api_key_directory: a file's name {SECRET_AS_ID}")
                continue
            where = f"auth.api_key_directory/{key_id}"
            if len(secret) < 8:
                problems.append(f"{where}: the key is shorter than 8 characters")
                continue
            try:
                spec = ApiKeyConfig(id=key_id)
            except ValidationError:
                # A Secret may hold keys (`_legacy`, a 200-character name) that no
                # key id can be: say which file, not a traceback.
                problems.append(
                    f"{where}: the file name is not a valid key id "
                    "(a letter or digit, then letters, digits and _ . : @ -, at most 128)"
                )
                continue
            add(key_digest(secret), where, spec)
        if problems:
            raise ConfigError("auth", problems)
        # Sorted once per config: each page of a paged listing reads it, and a sort of
        # a key directory's hundred thousand keys per page held the event loop.
        self._records = tuple(
            sorted((record for _, record in self._by_digest.values()), key=lambda k: k.id)
        )

    def __len__(self) -> int:
        return len(self._by_digest)

    def records(self) -> tuple[ApiKey, ...]:
        """Every key of the config, by id (for listing: never a secret or a digest)."""
        return self._records

    def lookup(self, presented: str) -> ApiKey | None:
        digest = key_digest(presented)
        found = self._by_digest.get(digest)
        if found is None:
            return None
        stored, record = found
        # The dict already matched the digest; the constant-time compare documents
        # that no byte-by-byte comparison of secrets ever happens.
        return record if hmac.compare_digest(stored, digest) else None


def api_key_of(spec: ApiKeyConfig) -> ApiKey:
    """The identity a config entry (or a key created at run time) gives its requests."""
    return ApiKey(
        id=spec.id,
        user_id=spec.user_id,
        group_id=spec.group_id,
        enabled=spec.enabled,
        expires_at=spec.expires_at.timestamp() if spec.expires_at else None,
        allowed_models=spec.allowed_models,
        allowed_routes=spec.allowed_routes,
        labels=dict(spec.labels),
    )


def _digest_of(spec: ApiKeyConfig, directory: dict[str, str]) -> bytes:
    if spec.key_sha256 is not None:
        return bytes.fromhex(spec.key_sha256)
    if spec.key is not None:
        # As for a key_file: a header value never starts or ends with whitespace, so a
        # key from an env var filled from a file (its newline kept) could never match.
        secret = spec.key.get_secret_value().strip()
    elif spec.key_file is not None:
        try:
            secret = Path(spec.key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read key_file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError("key_file is not UTF-8 text") from None
    elif spec.id in directory:
        secret = directory[spec.id]
    else:
        raise ValueError("no secret: set key, key_file or key_sha256, or add it to the directory")
    if len(secret) < 8:
        raise ValueError("the key is shorter than 8 characters")
    return key_digest(secret)


def _read_directory(path: str | None) -> dict[str, str]:
    """A mounted Secret: one file per key, named by its id (dotfiles are Kubernetes' own)."""
    if path is None:
        return {}
    root = Path(path)
    where = "auth.api_key_directory"
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError("auth", [f"{where}: {path} is not a directory"]) from None
    except OSError as exc:
        # Not readable by the gateway's user (a Secret mounted with a mode or group
        # that leaves it out), or a path the system refuses: a config mistake, said
        # as one (exit status 2, a refused reload), not a traceback.
        raise ConfigError("auth", [f"{where}: cannot read {path}: {exc.strerror}"]) from None
    keys: dict[str, str] = {}
    problems: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            secret = entry.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{where}/{entry.name}: cannot read: {exc.strerror}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{where}/{entry.name}: not UTF-8 text")
            continue
        if secret:
            keys[entry.name] = secret
    if problems:
        raise ConfigError("auth", problems)
    return keys
