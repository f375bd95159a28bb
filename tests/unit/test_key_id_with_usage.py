"""A key created under an id the usage rollups still bill is refused, unless asked for.

A config key removed from the config leaves its usage in the rollups (and its quota
counters) under its id; no key has the id any more, so a create of it went through,
and the new holder's requests were reported by api_key, labelled and limited together
with the old holder's: two holders billed as one, the new one starting with the old
one's spent quota. Now the rollups note each id's last hour (``usage:key_ids``) and a
create of such an id is ALREADY_EXISTS, naming ``continue_usage`` for the operator who
moves the same holder from the config to a stored key. Through a real Valkey, the
processor, the management API and the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from extproc.auth.stored_keys import (
    KeyIdRetiredError,
    KeyIdTakenError,
    KeyIdUsedError,
    StoredKeys,
)
from extproc.config import GatewayConfig
from extproc.management.v1 import management_pb2 as pb
from extproc.runtime import Runtime, Services
from extproc.store.usage import UsageEntry, UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_stored_keys import (
    BODY,
    PREFIX,
    Api,
    Clock,
    client,
    keys,
    new_key,
    serve_api,
)

__all__ = ["client", "keys"]  # test_stored_keys's fixtures
DAY_S = 86400.0
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
)  # fmt: skip


def without_team1(config: GatewayConfig) -> GatewayConfig:
    """The config after the operator removed the key team1 and reloaded."""
    auth = config.auth.model_copy(update={"api_keys": config.auth.api_keys[1:]})
    return config.model_copy(update={"auth": auth})


@pytest.fixture
async def api(
    config: GatewayConfig, client: Any, keys: StoredKeys, services: Services
) -> AsyncIterator[Api]:
    """The management API of a gateway whose config no longer has team1."""
    services.stored_keys = keys
    async with serve_api(Runtime(without_team1(config), services), client, keys) as served:
        yield served


async def team1_sends_a_request(config: GatewayConfig, client: Any, keys: StoredKeys) -> None:
    """team1 (a config key) sends one chat request; its usage lands in the rollups."""
    writer = UsageWriter(UsageStore(client, PREFIX, 400), on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer, stored_keys=keys)
    answers = await run_stream(
        processor_for(config, services),
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(BODY),
            response_headers(200, {"content-type": "application/json"}),
            response_body(ANSWER),
        ],
    )
    assert not answers[-1].HasField("immediate_response")
    assert await writer.flush() is True


async def test_a_removed_config_keys_id_is_not_given_to_a_new_key(
    config: GatewayConfig, client: Any, keys: StoredKeys, api: Api
) -> None:
    await team1_sends_a_request(config, client, keys)

    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id="team1", user_id="dan"))

    # Before: created, and dan's requests were billed and limited together with alice's.
    assert code == "ALREADY_EXISTS"
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00Z")
    assert details.startswith(
        f"API key id 'team1' has usage in the rollups up to the hour of {hour}, but no key"
        " has it now (a key removed from the config"
    )
    assert "choose another id" in details and "--continue-usage" in details
    # Nothing is left behind: the id is free for a create that says so, and no record.
    assert await client.get(f"{PREFIX}keyid:team1") is None
    assert (await keys.listing()).keys == []
    other = await api.call("CreateKey", pb.CreateKeyRequest(id="team1-dan", user_id="dan"))
    assert other.key.startswith("aigw-")


async def test_the_same_holder_moved_to_a_stored_key_carries_its_usage_on(
    config: GatewayConfig, client: Any, keys: StoredKeys, api: Api
) -> None:
    await team1_sends_a_request(config, client, keys)

    code, out, err = await api.cli(
        "keys", "create", "--id", "team1", "--user", "alice", "--continue-usage"
    )

    assert (code, err.count("Store this key now")) == (0, 1) and "aigw-" in out
    assert (await keys.listing()).keys[0].key.user_id == "alice"


async def test_the_cli_names_the_id_and_the_way_past_it(
    config: GatewayConfig, client: Any, keys: StoredKeys, api: Api
) -> None:
    await team1_sends_a_request(config, client, keys)

    code, out, err = await api.cli("keys", "create", "--id", "team1")

    assert (code, out) == (2, "")
    assert "API key id 'team1' has usage in the rollups" in err and "--continue-usage" in err


async def test_an_id_with_no_usage_within_the_retention_is_free(client: Any) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    usage = UsageStore(client, PREFIX, 30)
    entry = UsageEntry(clock.now - 40 * DAY_S, {"api_key_id": "old"}, 1, 1)
    await usage.record(entry)
    await usage.record(UsageEntry(clock.now - 3600, {"api_key_id": "recent"}, 1, 1))
    keys = StoredKeys(client, PREFIX, clock=clock, retire_ids_for_s=30 * DAY_S)

    await keys.create(new_key("old"))
    with pytest.raises(KeyIdUsedError, match="up to the hour of 2027-01-15T07:00:00Z"):
        await keys.create(new_key("recent"))
    # Noted once: the old id went from the index with its rollups' retention.
    assert await client.zrange(f"{PREFIX}usage:key_ids", 0, -1) == [b"recent"]


async def test_a_live_or_retired_id_keeps_its_own_refusal(client: Any, keys: StoredKeys) -> None:
    await UsageStore(client, PREFIX, 400).record(
        UsageEntry(datetime.now(UTC).timestamp(), {"api_key_id": "ci-bot"}, 1, 1)
    )
    await keys.create(new_key(), continue_usage=True)

    with pytest.raises(KeyIdTakenError) as live:
        await keys.create(new_key())
    assert str(live.value) == "an API key with id 'ci-bot' already exists"
    await keys.revoke("ci-bot")
    with pytest.raises(KeyIdRetiredError):
        await keys.create(new_key())
