"""The one check of the config's URLs and hosts of services the gateway calls.

A provider's ``base_url``, a moderation service's, an agent server's ``url``, a JWKS
``url``, a webhook's ``host``, the OTLP collector's ``HOST:PORT`` and the egress
proxy's host all pass through here, so a URL one field refuses is not taken by
another. Each field says what it takes beyond scheme, host, port and path: a query
(a JWKS URL may need one) or a user and password (for an HTTP client that sends them
as its credential); a fragment never leaves the gateway, so no field takes one.

Messages never quote the value: the loader echoes it with its user, password and
query starred out, and a value this module cannot parse may hold a password anywhere.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# A DNS label as Envoy and aiohttp resolve it: '_' is taken (Compose service names).
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def checked_url(url: str, *, no_query: str | None, no_credentials: str | None) -> str:
    """``url`` without surrounding whitespace, or ValueError saying what is wrong.

    ``no_query`` and ``no_credentials``: why the field takes no query, or no user and
    password (the error ends with it); None when the field takes them."""
    # Surrounding whitespace is a value from a variable (a Secret written with `echo`);
    # inside, a space or line break went out as part of the host or the path.
    url = url.strip()
    if _SPACE_OR_CONTROL.search(url):
        raise ValueError("must hold no spaces or control characters (a space in a path is %20)")
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # An unclosed '[', or a port out of range (which only failed when Envoy's
        # config was rendered, with a traceback).
        raise ValueError("is not a valid URL (a port from 1 to 65535?)") from None
    if not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if port == 0:
        raise ValueError("the port must be between 1 and 65535")
    if (problem := host_problem(parts.hostname)) is not None:
        raise ValueError(problem)
    if parts.fragment or (parts.query and no_query is not None):
        what = "query or fragment" if no_query is not None else "fragment"
        raise ValueError(
            f"must hold no {what}: {no_query or 'a fragment never leaves the gateway'}"
        )
    if no_credentials is not None and (parts.username is not None or parts.password is not None):
        raise ValueError(f"must hold no user or password: {no_credentials}")
    return url


def host_problem(host: str) -> str | None:
    """Why ``host`` (a name, or an IP address, an IPv6 one with or without brackets) is
    no host to connect to, in words that quote none of it; None when it is one."""
    bare = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return None
    try:
        # A name in another script goes out as its punycode (xn--...).
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    labels = name.removesuffix(".").split(".")
    if (
        not name
        or len(name) > 253
        or not all(len(label) <= 63 and _LABEL.match(label) for label in labels)
    ):
        return (
            "must name a host: a DNS name (letters, digits, '-', '_' between dots) or an IP "
            "address, with no scheme, user, password, path or spaces"
        )
    return None
