"""``ListQuotas`` of many subjects, over real gRPC on a real Valkey.

An organisation with per-user daily quotas has thousands of users with a counter in
the current window. The list read each subject's state in a round trip of its own:
20,000 users took 15 s on loopback (``extproc quota list`` gives up after 10 s).
Now it reads a batch of subjects per round trip, and each subject still gets its own
state, a stray key among them still named and the others listed.
"""

from __future__ import annotations

import io
from typing import Any

from grpc import aio as grpc_aio

from extproc.management.audit import AuditLog
from extproc.management.quotas import READ_BATCH, QuotaAdmin
from extproc.management.service import QuotaManagementService, start_server
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.test_management import PREFIX, TOKEN, early_in_the_minute, gateway_config

AUTH = (("authorization", f"Bearer {TOKEN}"),)
SUBJECTS = 2 * READ_BATCH + 1


class CountedPipelines:
    """The real store client, counting the pipelines (round trips) opened through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.pipelines = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return self._client.pipeline(*args, **kwargs)


async def test_a_list_of_many_subjects_reads_them_in_batches_each_with_its_own_state(
    valkey: EmbeddedValkey,
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    runtime = Runtime(gateway_config(), Services(GatewayMetrics(), AccessLog(stdout=False)))
    counted = CountedPipelines(client)
    service = QuotaManagementService(
        lambda: runtime, QuotaAdmin(counted, PREFIX, quota_store), AuditLog(io.BytesIO())
    )
    admin = QuotaAdmin(client, PREFIX, quota_store)
    rules = runtime.quota_rules
    # Subject i has used i % 7 + 1 requests this minute (a counter may pass its limit),
    # so a state given to the wrong subject shows.
    names = [f"key{index:04d}" for index in range(SUBJECTS)]
    early_in_the_minute()  # every counter in one window: the list shows current ones
    for index, name in enumerate(names):
        [limit] = admin.limits(rules, "api_key", name)
        await quota_store.settle_now([(limit, index % 7 + 1)])
    stray = names[READ_BATCH + 3]
    [stray_limit] = admin.limits(rules, "api_key", stray)
    await client.set(stray_limit.key(PREFIX), "lots")
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, service)
    try:
        async with grpc_aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaManagementStub(channel)
            answer = await stub.ListQuotas(
                pb.ListQuotasRequest(subject_kind="api_key"), metadata=AUTH
            )
    finally:
        await server.stop(None)
        await quota_store.close()
        await client.aclose()

    used = {state.subject: state.limits[0].used for state in answer.states}
    assert used == {name: index % 7 + 1 for index, name in enumerate(names) if name != stray}
    assert [(found.subject, found.key) for found in answer.unreadable_keys] == [
        (stray, stray_limit.key(PREFIX))
    ]
    # Three round trips of reads for 1,001 subjects; before, one per subject.
    assert counted.pipelines <= 3
