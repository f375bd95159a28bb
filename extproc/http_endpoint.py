"""The gateway's HTTP side: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

Liveness means the process serves; readiness means the config is loaded and the
store answers, so Kubernetes and ``make run`` send traffic only when it can be
accounted.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


class HttpListenError(RuntimeError):
    """The HTTP side cannot take ``server.http_address`` (in use, or not this host's)."""


def create_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

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
