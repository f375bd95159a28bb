"""``egress``: the HTTP forward proxy every outbound call goes through, when one is set.

Networks whose only way out is a corporate proxy (Squid, Zscaler, an egress gateway)
name it here. Envoy reaches each provider and agent server (MCP, A2A) through it with
HTTP/1.1 ``CONNECT``, and
the gateway's own calls (JWKS, guardrail webhooks, moderation, Google's token
endpoint) use it too. Proxies from the environment (``HTTPS_PROXY``) are never read:
the proxy is configured, like every other destination (docs/security.md).

``no_proxy`` lists the hosts reached directly: a name matches itself and every name
under it (``corp.example`` matches ``idp.corp.example``; a leading dot or ``*.`` is
the same), an IP address itself (``::1`` or ``[::1]``), a CIDR block (``10.0.0.0/8``)
the addresses in it, and ``*`` everything. It may also be one comma-separated string,
as a ``NO_PROXY`` variable is written (``no_proxy: ${NO_PROXY_HOSTS:-}``). An entry
covers every port of its host, so ``host:port`` is refused rather than read as
narrower than it is. A provider or agent server whose host is listed is reached
directly by Envoy as well.

A proxy URL that is not ``http://[user:password@]host:port`` is refused at load with
an error naming ``egress.proxy_url`` and never quoting it. The URL may carry
``user:password`` for the gateway's own calls; it is never logged or echoed. Envoy
1.40 cannot send ``Proxy-Authorization`` on its ``CONNECT``, and dials the proxy by IP
address only, so the config is refused when a provider or an agent server goes through
a proxy named by host name or with credentials (``egress_problems``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator

from extproc.config.section import Section as _Section
from extproc.config.service_urls import host_problem
from extproc.envoy_values import is_ip

# Longest no_proxy list: each entry is matched against every outbound host.
MAX_NO_PROXY = 256
# The no_proxy entry that sends everything direct, as in NO_PROXY.
EVERYTHING = "*"


class EgressConfig(_Section):
    """The forward proxy for outbound traffic; none set: everything goes direct."""

    # http://[user:password@]host:port. A SecretStr: it may hold the proxy's password.
    proxy_url: SecretStr | None = None
    no_proxy: tuple[str, ...] = ()

    @field_validator("proxy_url")
    @classmethod
    def _empty_is_none(cls, url: SecretStr | None) -> SecretStr | None:
        # `proxy_url: ${EGRESS_PROXY:-}` turns the proxy off where the variable is unset.
        # The URL itself is checked with the whole config (egress_problems): an error of
        # this field would echo its value, and the value may hold the proxy's password.
        return url if url is not None and url.get_secret_value() else None

    @field_validator("no_proxy", mode="before")
    @classmethod
    def _split_string(cls, entries: object) -> object:
        # NO_PROXY's own form, one comma-separated string, for a list from a variable.
        if isinstance(entries, str):
            return tuple(entry for entry in entries.split(",") if entry.strip())
        return entries

    @field_validator("no_proxy")
    @classmethod
    def _check_no_proxy(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        if len(entries) > MAX_NO_PROXY:
            raise ValueError(f"at most {MAX_NO_PROXY} entries")
        return tuple(_no_proxy_entry(entry) for entry in entries)

    @property
    def enabled(self) -> bool:
        return self.proxy_url is not None


def proxy_url_problem(url: str) -> str | None:
    """Why ``url`` is no usable proxy URL, in words that never quote it (it may hold a
    password); None when it is one."""
    # Everything up to the last '@' is the user and password: a raw '/' or '#' in a
    # password would otherwise end the authority inside it.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "must be an http:// URL (http://host:port)"
    if scheme.lower() != "http":
        return (
            "the scheme must be http:// (the proxy is spoken to in plain HTTP/1.1; "
            "the calls inside its CONNECT tunnels keep their own TLS)"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    if at and (":" not in userinfo or not userinfo.partition(":")[0]):
        return "credentials must be written user:password@"
    try:
        parts = urlsplit(f"http://{hostpart}")
        port = parts.port
    except ValueError:
        return "the port must be a number between 1 and 65535"
    if not parts.hostname:
        return "must name the proxy's host"
    if host_problem(parts.hostname) is not None:
        # A space or a stray character: every call through the proxy then failed.
        return "must name the proxy's host: a DNS name or an IP address, with no spaces"
    if port is None:
        return "must name the proxy's port (http://host:3128)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must have no path, query or fragment (http://host:port)"
    return None


def _no_proxy_entry(entry: str) -> str:
    """``entry`` as ``bypassed`` matches it, or ValueError saying what is wrong with it."""
    value = entry.strip().lower()
    if value == EVERYTHING:
        return value
    if value.startswith("[") and value.endswith("]"):
        # A bracketed IPv6 address, as URLs write it.
        value = value[1:-1]
        if not is_ip(value):
            raise ValueError(f"{entry!r} is no IP address inside its brackets")
        return value
    value = value.removeprefix("*.").lstrip(".").rstrip(".")
    if _network(value):
        return value
    host, colon, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if colon and port.isdigit() and (bracketed or (host and ":" not in host)):
        raise ValueError(
            f"{entry!r}: no_proxy takes no port (an entry covers every port of its host): "
            f"write {host.strip('[]')!r}"
        )
    if "*" in value:
        raise ValueError(
            f"{entry!r}: a wildcard is '*' alone (everything direct) or a leading '*.' (a domain)"
        )
    if not value or any(c in value for c in " /:@[]"):
        raise ValueError(f"{entry!r} is not a host name, a domain, an IP address or a CIDR block")
    return value


def _network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def bypassed(host: str, no_proxy: tuple[str, ...]) -> bool:
    """Whether ``host`` is reached directly under ``no_proxy`` (entries as validated)."""
    name = host.strip("[]").lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == EVERYTHING:
            return True
        if address is not None:
            if _network(entry) and address in ipaddress.ip_network(entry, strict=False):
                return True
        elif name == entry or name.endswith("." + entry):
            return True
    return False


def egress_problems(egress: EgressConfig, destinations: list[tuple[str, str]]) -> Iterator[str]:
    """Why ``egress.proxy_url`` is unusable, or what Envoy cannot do with it for the
    destinations that go through it (``destinations``: the config path and host of each
    provider and agent server). Checked with the whole config, whose errors quote no
    value."""
    if egress.proxy_url is None:
        return
    url = egress.proxy_url.get_secret_value()
    problem = proxy_url_problem(url)
    if problem is not None:
        yield f"egress.proxy_url: {problem}"
        return
    proxied = [where for where, host in destinations if not bypassed(host, egress.no_proxy)]
    if not proxied:
        return
    rest = url.partition("://")[2]
    _userinfo, at, hostpart = rest.rpartition("@")
    named = ", ".join(proxied)
    if at:
        yield (
            "egress.proxy_url: Envoy cannot send proxy credentials (Proxy-Authorization) on "
            f"its CONNECT, and {named} go through the proxy: let the proxy admit the "
            "gateway's address without credentials, or list those hosts in "
            "egress.no_proxy"
        )
    host = urlsplit(f"http://{hostpart}").hostname or ""
    if not is_ip(host):
        yield (
            f"egress.proxy_url: Envoy dials the proxy by IP address only, and {named} go "
            f"through it: write the proxy's IP address instead of {host!r} (a Kubernetes "
            "Service's cluster IP, say), or list those hosts in egress.no_proxy"
        )
