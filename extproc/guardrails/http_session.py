"""The HTTP session the guards' calls share (webhooks, moderation), owned by a runtime."""

from __future__ import annotations

import aiohttp

from extproc.egress import DIRECT, EgressProxy


class SessionsClosedError(Exception):
    """The runtime that owns the session has closed it: no call is made."""

    def __init__(self) -> None:
        super().__init__(
            "not called: the config this request started on was replaced and its clients are closed"
        )


class SessionHolder:
    """One aiohttp session for every webhook and moderation call, made on first use
    (it needs the running event loop) and closed with the runtime. ``egress`` says
    which calls go through the configured proxy (each call passes it: the session
    itself trusts no proxy of the environment).

    Once closed it stays closed: a stream still running on a replaced config after its
    clients were closed (an hour after the reload, or the process stopping) gets
    ``SessionsClosedError``, its guard's failure mode deciding, as the runtime says.
    Before, ``get`` opened a new session that nothing would close (aiohttp's
    "Unclosed client session" at exit, its connections held meanwhile)."""

    def __init__(self, egress: EgressProxy = DIRECT) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.egress = egress

    def get(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SessionsClosedError()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
                # Proxies from the environment would take guard traffic elsewhere: the
                # configured one (egress) is passed with each call.
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
