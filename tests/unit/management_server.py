"""The management API's three services on a gRPC port of their own, on a real Valkey, as
a gateway serves them: for tests that call it over a real channel."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from extproc.auth.stored_keys import StoredKeys
from extproc.management.audit import AuditLog
from extproc.management.guesses import FailedAttempts
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import (
    KeyManagementService,
    QuotaManagementService,
    start_server,
)
from extproc.management.usage import UsageReportService
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.store.usage import UsageStore


@dataclass
class Served:
    address: str
    # What the audit log wrote, one JSON line per change.
    audit: io.BytesIO


@asynccontextmanager
async def serving_management(
    valkey: EmbeddedValkey,
    runtime: Callable[[], Runtime],
    prefix: str,
    *,
    attempts: FailedAttempts | None = None,
    credentials: Any = None,
    empty: bool = True,
) -> AsyncIterator[Served]:
    """Quota, key and usage services on a free loopback port, sharing one audit log and
    one guess tracker (``attempts``), over TLS with ``credentials``; the store emptied
    (unless not ``empty``: a second gateway of the same store)."""
    client = connect(valkey.url, 2.0)
    if empty:
        await client.flushdb()
    quota_store = QuotaStore(client, prefix)
    await quota_store.start()
    audit = io.BytesIO()
    log = AuditLog(audit)
    attempts = attempts or FailedAttempts()
    quotas = QuotaManagementService(runtime, QuotaAdmin(client, prefix, quota_store), log, attempts)
    keys = KeyManagementService(runtime, StoredKeys(client, prefix), log, attempts)
    usage = UsageReportService(runtime, UsageStore(client, prefix, 30), log, attempts)
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, quotas, keys, usage, credentials)
    try:
        yield Served(address, audit)
    finally:
        await server.stop(None)
        await quota_store.close()
        await client.aclose()
