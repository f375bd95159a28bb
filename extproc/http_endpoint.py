"""The gateway's HTTP side: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

Liveness means the process serves; readiness means the config is loaded and the
store has answered, so Kubernetes and ``make run`` send traffic only once it can be
accounted. A store that stops answering later does not make the process unready:
the store is shared, so every replica would leave the Service at once and no
request could follow its rules' ``on_store_failure`` (a ``fail_open`` rule would
fail closed for everyone, routes without quotas too), while usage is spooled and
nothing measured is lost.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


class StoreReadiness:
    """The store's part of readiness: answered once since the process started."""

    def __init__(self) -> None:
        self._answered = False

    async def check(
        self, ping: Callable[[], Awaitable[object]], timeout_s: float
    ) -> tuple[bool, str | None]:
        """Ready or not, and what is wrong with the store (None: it answers)."""
        try:
            await asyncio.wait_for(ping(), timeout_s)
        except Exception as exc:
            problem = f"store does not answer: {type(exc).__name__}"
            if not self._answered:
                return False, problem
            return True, f"{problem}; requests follow on_store_failure, usage is spooled"
        self._answered = True
        return True, None


class HttpListenError(RuntimeError):
    """The HTTP side cannot take ``server.http_address`` (in use, or not this host's)."""


def create_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        # Rendered off the event loop: thousands of series (routes x providers x models,
        # each histogram a line per bucket) take a second or more to render, and every
        # stream and health check waited through each scrape. The registry's metrics
        # take their own locks, so a request recorded meanwhile is safe.
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = await readiness()
        return web.json_response(
            {"status": "ready" if ready else "not ready", "reason": reason},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start(app: web.Application, address: str) -> web.AppRunner:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address is written [::]:9464
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        why = (
            "the address is in use (another gateway with the same server.http_address?)"
            if exc.errno == errno.EADDRINUSE
            else exc.strerror or str(exc)
        )
        # A user error like a taken gRPC port: one line naming the setting, not a traceback.
        raise HttpListenError(f"server.http_address: cannot listen on {address}: {why}") from None
    return runner
