"""A request's host, as the gateway's routes and quota rules name it.

Envoy moves HTTP/1.1's ``Host`` into the ``:authority`` pseudo-header before any
filter runs, so the gateway reads the host there; the same host routes a request
(``routes[].hosts``) and counts it for a rule whose subject is the host.
"""

from __future__ import annotations

from collections.abc import Mapping

AUTHORITY = ":authority"


def request_host(authority: str | None) -> str:
    """The request's host as routes name it: lower case, no port, no trailing dot.

    Clients send ``Host: OpenAI.Gateway.Local:10000`` as readily as the bare
    name: DNS names ignore case, and the port says nothing about the route.
    """
    host = (authority or "").strip().lower()
    if host.startswith("["):  # an IPv6 literal, which no route names
        return host.partition("]")[0] + "]"
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    return host.removesuffix(".")


def host_of(headers: Mapping[str, str]) -> str:
    """The host of a request with these headers (``host`` only where no Envoy moved it)."""
    return request_host(headers.get(AUTHORITY) or headers.get("host"))
