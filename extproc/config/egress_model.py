"""``egress``: the HTTP forward proxy every outbound call goes through, when one is set.

Networks whose only way out is a corporate proxy (Squid, Zscaler, an egress gateway)
name it here. Envoy reaches each provider and agent server (MCP, A2A) through it with
HTTP/1.1 ``CONNECT``, and
the gateway's own calls (JWKS, guardrail webhooks, moderation, Google's token
endpoint) use it too. Proxies from the environment (``HTTPS_PROXY``) are never read:
the proxy is configured, like every other destination (docs/security.md).

``no_proxy`` lists the hosts reached directly: a name matches itself and every name
under it (``corp.example`` matches ``idp.corp.example``; a leading dot or ``*.`` is
the same), an IP address itself, a CIDR block (``10.0.0.0/8``) the addresses in it.
A provider or agent server whose host is listed is reached directly by Envoy as well.

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

# Longest no_proxy list: each entry is matched against every outbound host.
MAX_NO_PROXY = 256


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

    @field_validator("no_proxy")
    @classmethod
    def _check_no_proxy(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        if len(entries) > MAX_NO_PROXY:
            raise ValueError(f"at most {MAX_NO_PROXY} entries")
        cleaned: list[str] = []
        for entry in entries:
            value = entry.strip().lower().removeprefix("*.").lstrip(".").rstrip(".")
            if not value or (any(c in value for c in " /:@") and not _network(value)):
                raise ValueError(
                    f"{entry!r} is not a host name, a domain, an IP address or a CIDR block"
                )
            cleaned.append(value)
        return tuple(cleaned)

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
    if port is None:
        return "must name the proxy's port (http://host:3128)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must have no path, query or fragment (http://host:port)"
    return None


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
    try:
        ipaddress.ip_address(host)
    except ValueError:
        yield (
            f"egress.proxy_url: Envoy dials the proxy by IP address only, and {named} go "
            f"through it: write the proxy's IP address instead of {host!r} (a Kubernetes "
            "Service's cluster IP, say), or list those hosts in egress.no_proxy"
        )
