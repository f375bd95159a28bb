"""Small value formats shared by every renderer of Envoy and Gateway API config."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from extproc.headers import METADATA_NAMESPACE, metadata_key


def is_ip(host: str) -> bool:
    """An IP literal (a STATIC cluster) rather than a name to resolve (STRICT_DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def duration(seconds: float) -> str:
    """Envoy's Duration string: ``300s``, ``0.25s``."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def metadata_response_headers(names: Iterable[str]) -> list[dict[str, Any]]:
    """A route's ``response_headers_to_add`` for headers whose values the gateway returns
    as dynamic metadata (the quota stage's rate-limit headers). A request without such
    metadata formats an empty value, which adds no header."""
    return [
        {
            "header": {
                "key": name,
                "value": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{metadata_key(name)})%",
            },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
        for name in names
    ]


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal, quoted: a config value (a route's path prefix)
    put into a CEL expression as written. Unescaped, a ``'`` ended the literal (Envoy
    refused the bootstrap) and a ``\\`` began an escape (``\\b``: a backspace, so the
    expression tested another path)."""
    escaped = "".join(_CEL_ESCAPES.get(char, char) for char in text)
    return f"'{escaped}'"


# CEL's escapes for the characters a single-quoted literal cannot hold as themselves.
_CEL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"} | {
    chr(code): f"\\x{code:02x}" for code in (*range(0x20), 0x7F) if chr(code) not in "\n\r\t"
}
