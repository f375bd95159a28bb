"""The secrets a config file holds or reads, starred out of whatever the loader says.

A config error echoes the value it refuses (``providers[0].base_url: must be an http://
or https:// URL (got '...')``), and some messages quote it themselves (``routes[0].provider:
unknown provider '...'``); a warning quotes a rule's model names. A key put in the wrong
field by mistake (``provider: ${OPENAI_API_KEY}``, a key variable in ``allowed_models``) was
echoed whole by ``check-config``, by ``serve`` and in the log line of a refused reload,
unless it happened to look like a well-known key (``errors.without_secrets``): a key of a
self-hosted server, an org key, an admin token look like nothing in particular.

What the loader knows to be secret: the values of the environment variables the file
reads whose names say so (``OPENAI_API_KEY``, ``AIGW_ADMIN_TOKEN``,
``AWS_SECRET_ACCESS_KEY``), and the values written in fields whose names say so
(``api_key``, ``shared_secret``...), whatever field they reached. The ids of the file's
own keys are none, though an access rule lists them under ``api_keys``: every request
line logs them (``api_key_id``), and an error about a key names it by its id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from extproc.errors import REDACTED

# A variable or field whose name says it holds a secret.
SECRET_NAME = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
# Fields whose names look like a secret's but which hold counts or names.
NOT_SECRET_FIELDS = frozenset(
    {
        "tokens_per_minute",
        "tokens_per_hour",
        "tokens_per_day",
        "default_max_tokens",
        "above_input_tokens",
        "max_token_bytes",
        "key_prefix",
        "api_key_header",
    }
)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
# As errors.without_secrets: a shorter value could be a word of the message.
MIN_HIDDEN = 8


def is_secret_field(name: object) -> bool:
    text = str(name)
    return text not in NOT_SECRET_FIELDS and SECRET_NAME.search(text) is not None


def secrets_of_file(text: str, environ: Mapping[str, str], tree: Any) -> frozenset[str]:
    """The secrets of one config file: those of the variables ``text`` references by a
    secret's name, and those ``tree`` (the file, interpolated) holds in secret fields."""
    found = {
        value
        for name in _REFERENCE.findall(text)
        if SECRET_NAME.search(name) and (value := environ.get(name))
    }
    found.update(_in_secret_fields(tree))
    # An access rule's ``api_keys`` list the keys' ids: starred out, a message about a
    # key ("(key 'analytics-batch')") no longer said which.
    return frozenset(found - _key_ids(tree))


def hidden(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """``lines`` with every sight of ``secrets`` replaced by ``[redacted]``. Only whole:
    a config error quotes a value whole, and the loader's own masks (a URL's
    ``***@host``) must stay readable. Too short, a "secret" could be any word of the
    message (``errors.without_secrets`` keeps those too)."""
    known = sorted((secret for secret in secrets if len(secret) >= MIN_HIDDEN), key=len)
    out = []
    for line in lines:
        for secret in reversed(known):  # the longest first: one may hold another
            line = line.replace(secret, REDACTED)
        out.append(line)
    return out


def _key_ids(tree: Any) -> set[str]:
    """The ids of the keys ``auth.api_keys`` defines (a value no secret field holds)."""
    auth = tree.get("auth") if isinstance(tree, dict) else None
    keys = auth.get("api_keys") if isinstance(auth, dict) else None
    return {
        key["id"]
        for key in (keys if isinstance(keys, list) else ())
        if isinstance(key, dict) and isinstance(key.get("id"), str)
    }


def _in_secret_fields(value: Any, secret: bool = False) -> Iterator[str]:
    """Each string under a secret field: its value, or the strings of a list it holds
    (a mapping under it, such as ``api_keys``' entries, is read field by field)."""
    if isinstance(value, str):
        if secret:
            yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _in_secret_fields(item, is_secret_field(key))
    elif isinstance(value, list):
        for item in value:
            yield from _in_secret_fields(item, secret and not isinstance(item, dict | list))
