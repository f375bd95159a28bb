"""A gateway's management API (quotas and usage reports) over the test store, for tests of
`extproc usage report --api` and the CLI clients: what another host's gateway serves."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.audit import AuditLog
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import QuotaManagementService, start_server
from extproc.management.usage import UsageReportService
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import free_port
from extproc.store.usage import UsageStore
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics


@asynccontextmanager
async def management_api(
    store_url: str, admin_token: str, prefix: str, retention_s: int
) -> AsyncIterator[tuple[str, UsageStore]]:
    """The default config's management API (``admin_token`` its token) on a free port, its
    store emptied first: the API's address, and the usage store it reports from."""
    client = connect(store_url, 2.0)
    await client.flushdb()
    environ = {"AIGW_ADMIN_TOKEN": admin_token}
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", environ)
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    store = UsageStore(client, prefix, retention_s)
    audit = AuditLog(io.BytesIO())
    quotas = QuotaManagementService(
        lambda: runtime, QuotaAdmin(client, prefix, QuotaStore(client, prefix)), audit
    )
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(
        address, quotas, None, UsageReportService(lambda: runtime, store, audit)
    )
    try:
        yield address, store
    finally:
        await server.stop(None)
        await client.aclose()
