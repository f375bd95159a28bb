"""The configured egress proxy as the gateway's own HTTP clients use it.

Every outbound call the gateway makes itself (a JWKS fetch, a guardrail webhook, a
moderation check, a Google token request) asks an ``EgressProxy`` which proxy, if
any, its URL goes through: ``egress.proxy_url``, unless the URL's host is in
``egress.no_proxy``. Proxies from the environment are never consulted (the aiohttp
sessions keep ``trust_env=False``). Envoy's side of the same config is rendered in
``envoy_bootstrap``.

The proxy's user and password leave this module only as ``aiohttp.BasicAuth`` or a
``Proxy-Authorization`` header, never inside a URL a log line or an exception could
quote.
"""

from __future__ import annotations

from typing import Any, TypedDict
from urllib.parse import unquote, urlsplit

import aiohttp
import urllib3

from extproc.config.egress_model import EgressConfig, bypassed


class AiohttpProxy(TypedDict):
    """The proxy arguments of one aiohttp request (``session.get(url, **proxy)``)."""

    proxy: str | None
    proxy_auth: aiohttp.BasicAuth | None


class EgressProxy:
    """Which proxy a URL goes through; ``DIRECT`` when none is configured."""

    def __init__(self, config: EgressConfig | None = None) -> None:
        self._no_proxy: tuple[str, ...] = ()
        self._url: str | None = None
        self._user = ""
        self._password = ""
        if config is None or config.proxy_url is None:
            return
        self._no_proxy = config.no_proxy
        scheme, _, rest = config.proxy_url.get_secret_value().partition("://")
        userinfo, at, hostpart = rest.rpartition("@")
        parts = urlsplit(f"http://{hostpart}")
        self._url = f"{scheme.lower()}://{parts.netloc}"
        if at:
            user, _, password = userinfo.partition(":")
            self._user, self._password = unquote(user), unquote(password)

    @property
    def enabled(self) -> bool:
        return self._url is not None

    @property
    def url(self) -> str | None:
        """The proxy's URL without credentials (None: no proxy)."""
        return self._url

    def __repr__(self) -> str:
        # The address only: never the credentials.
        return f"EgressProxy({self._url or 'direct'})"

    def with_direct(self, hosts: tuple[str, ...]) -> EgressProxy:
        """This proxy with ``hosts`` (no_proxy entries) reached directly as well."""
        copy = EgressProxy()
        copy._url, copy._user, copy._password = self._url, self._user, self._password
        copy._no_proxy = (*self._no_proxy, *hosts)
        return copy

    def proxy_for(self, url: str) -> str | None:
        """The proxy (its URL without credentials) ``url`` goes through; None: direct."""
        if self._url is None:
            return None
        host = urlsplit(url).hostname or ""
        return None if bypassed(host, self._no_proxy) else self._url

    def aiohttp(self, url: str) -> AiohttpProxy:
        """The proxy arguments of an aiohttp request to ``url``."""
        proxy = self.proxy_for(url)
        auth = None
        if proxy is not None and self._user:
            auth = aiohttp.BasicAuth(self._user, self._password)
        return {"proxy": proxy, "proxy_auth": auth}

    def urllib3_pool(self, timeout: urllib3.Timeout) -> ProxiedPool:
        """A urllib3 pool that sends each request through the proxy or directly, by its
        URL's host (google-auth takes a pool with ``request()``)."""
        return ProxiedPool(self, timeout)

    def proxy_headers(self) -> dict[str, str]:
        if not self._user:
            return {}
        return urllib3.make_headers(proxy_basic_auth=f"{self._user}:{self._password}")


DIRECT = EgressProxy()


class ProxiedPool:
    """urllib3's ``PoolManager`` interface, routing each request through the egress
    proxy or directly: a metadata server or a token endpoint inside the network must
    not be asked through a proxy that cannot reach it."""

    def __init__(self, egress: EgressProxy, timeout: urllib3.Timeout) -> None:
        self._egress = egress
        self._direct = urllib3.PoolManager(timeout=timeout)
        self._proxied: urllib3.ProxyManager | None = None
        if egress.url is not None:
            self._proxied = urllib3.ProxyManager(
                egress.url, proxy_headers=egress.proxy_headers(), timeout=timeout
            )

    def pool_for(self, url: str) -> urllib3.PoolManager:
        if self._proxied is not None and self._egress.proxy_for(url) is not None:
            return self._proxied
        return self._direct

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        return self.pool_for(url).request(method, url, **kwargs)

    def clear(self) -> None:
        self._direct.clear()
        if self._proxied is not None:
            self._proxied.clear()
