"""A /metrics scrape renders off the event loop.

Rendering a registry of thousands of series (routes x providers x models, a line
per histogram bucket) took a second or more, on the event loop: every stream and
health check of the process waited through each scrape. Here a collector the
test controls holds the render until the test lets it go; /healthz must answer
meanwhile. A fallback lets it go should the loop be the one held, so a failure
is an assertion, not a hung test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.config.loader import load_config
from extproc.devstack import free_port, free_port_block
from extproc.server import Gateway
from tests.unit.test_reload_edges import SERVING

FALLBACK_S = 10.0


class SlowSeries(Collector):
    """A collector whose render takes until the test says (or FALLBACK_S passed)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.released_by_fallback = False

    def describe(self) -> Iterator[Metric]:
        # Described, not collected, when registered: only a scrape waits.
        yield GaugeMetricFamily("slow_series", "held by the test")

    def collect(self) -> Iterator[Metric]:
        self.entered.set()
        if not self.release.wait(FALLBACK_S):
            self.released_by_fallback = True
        yield GaugeMetricFamily("slow_series", "held by the test", value=1.0)


def _scrape_and_check_health(slow: SlowSeries, http: str) -> tuple[bool, str]:
    """In threads of their own: whether /healthz answered while /metrics rendered."""
    scraped: list[str] = []
    scrape = threading.Thread(
        target=lambda: scraped.append(httpx.get(f"{http}/metrics", timeout=60.0).text)
    )
    scrape.start()
    assert slow.entered.wait(FALLBACK_S), "the scrape never rendered"
    answer = httpx.get(f"{http}/healthz", timeout=FALLBACK_S * 3)
    during = not slow.released_by_fallback
    assert answer.status_code == 200
    slow.release.set()
    scrape.join(FALLBACK_S * 3)
    return during, scraped[0] if scraped else ""


async def test_a_slow_metrics_render_leaves_the_gateway_answering(tmp_path: Path) -> None:
    http_port = free_port()
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        SERVING.format(
            grpc_port=free_port_block(1, avoid={http_port}),
            http_port=http_port,
            store_port=free_port_block(1, avoid={http_port}),
        )
    )
    gateway = Gateway(load_config(config_file), config_file)
    slow = SlowSeries()
    gateway.metrics.registry.register(slow)
    await gateway.start()
    try:
        during, text = await asyncio.to_thread(
            _scrape_and_check_health, slow, f"http://127.0.0.1:{http_port}"
        )
        assert during, "the health check waited for the /metrics render"
        assert "slow_series 1.0" in text  # the scrape itself still completes
    finally:
        slow.release.set()
        await gateway.stop()
