"""A run-time API key whose record in the store was written over by a person or another
program (a key of another type, fields the gateway never writes so).

Through a real Valkey, the request path and the gRPC API. The key's holder gets a 401
``api_key_unreadable`` saying the key cannot be used (before: a 503
``key_store_unavailable`` on every request, which clients retry for ever), and the
operator a warning naming the record by its digest cut short. Revoking such a key still
revokes it: the record and the id are deleted and the key refused, and the answer is
FAILED_PRECONDITION saying it was applied and why the key's details are missing (before:
UNAVAILABLE "the store did not answer", and the key stayed). A key whose id key was
written over is found by its record's ``id`` and revoked (before: FAILED_PRECONDITION
"cannot be revoked by its id", and the key kept working); with no record to find, the
answer is FAILED_PRECONDITION naming the id's key, never a secret.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from extproc.auth.stored_keys import KeyCache, StoredKeys
from extproc.config import GatewayConfig
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import processor_for
from tests.unit.test_stored_keys import (
    PREFIX,
    Api,
    Clock,
    api,
    client,
    gateway,
    keys,
    new_key,
    send,
)

__all__ = ["api", "client", "gateway", "keys"]  # test_stored_keys's fixtures
WHOLE_DIGEST = re.compile(r"[0-9a-f]{64}")
# The logger the warnings come from (a garbage collection may log others meanwhile).
STORED_KEYS_LOG = "extproc.auth.stored_keys"


async def created(keys: StoredKeys, client: Any) -> tuple[str, str]:
    """A key created at run time: its secret and the store key of its record."""
    secret, _ = await keys.create(new_key("ci-bot"))
    digest = (await client.get(f"{PREFIX}keyid:ci-bot")).decode()
    return secret, f"{PREFIX}key:{{{digest}}}"


async def written_over(client: Any, name: str, how: str) -> None:
    await client.delete(name)
    if how == "string":
        await client.set(name, "see the ticket")
    else:
        await client.rpush(name, "a", "b")


# The request path.


@pytest.mark.parametrize("how", ["string", "list"])
async def test_the_holder_of_a_key_whose_record_is_of_another_type_gets_a_401(
    gateway: Processor,
    services: Services,
    keys: StoredKeys,
    client: Any,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret, record = await created(keys, client)
    await written_over(client, record, how)

    with caplog.at_level("WARNING", logger=STORED_KEYS_LOG):
        status, body = await send(gateway, secret)

    # Before: 503 key_store_unavailable "try again shortly", on every request.
    assert status == 401
    assert body["error"]["code"] == "api_key_unreadable"
    assert body["error"]["message"].startswith("this API key cannot be used")
    assert services.metrics.registry.get_sample_value(
        "aigw_store_errors_total", {"operation": "key_lookup"}
    ) in (None, 0)
    [warning] = [r.getMessage() for r in caplog.records if r.name.startswith(STORED_KEYS_LOG)]
    assert f"{record[: len(PREFIX) + 17]}...}} is a key of another type" in warning
    assert secret not in warning and not WHOLE_DIGEST.search(warning)


async def test_a_record_with_a_field_the_gateway_never_writes_so_is_a_401_too(
    gateway: Processor, keys: StoredKeys, client: Any
) -> None:
    secret, record = await created(keys, client)
    await client.hset(record, "labels", "team=ml")

    status, body = await send(gateway, secret)

    # Before: 503 key_store_unavailable (the record's JSON error taken for an outage).
    assert (status, body["error"]["code"]) == (401, "api_key_unreadable")


async def test_a_record_whose_expiry_is_no_moment_is_a_401_not_a_key_that_never_expires(
    gateway: Processor, keys: StoredKeys, client: Any
) -> None:
    secret, record = await created(keys, client)
    await client.hset(record, "expires_at", "nan")

    status, body = await send(gateway, secret)

    # Before: served, and on every request after: no time is past "nan".
    assert (status, body["error"]["code"]) == (401, "api_key_unreadable")


async def test_the_refusal_is_remembered_5_seconds_like_an_unknown_key(
    config: GatewayConfig, services: Services, client: Any
) -> None:
    clock = Clock()
    keys = StoredKeys(client, PREFIX, cache=KeyCache(clock=clock))
    services.stored_keys = keys
    gateway = processor_for(config, services)
    secret, record = await created(keys, client)
    await written_over(client, record, "string")
    assert (await send(gateway, secret))[0] == 401
    await client.delete(record)
    clock.now += 4.9
    assert (await send(gateway, secret))[1]["error"]["code"] == "api_key_unreadable"

    # The record moved away: within 5 s the key is what the store now says, none.
    clock.now += 0.2
    status, body = await send(gateway, secret)

    assert (status, body["error"]["message"]) == (401, "invalid API key")


# Revoking.


@pytest.mark.parametrize("how", ["string", "list"])
async def test_revoking_a_key_whose_record_is_of_another_type_still_revokes_it(
    api: Api, gateway: Processor, keys: StoredKeys, client: Any, how: str
) -> None:
    secret, record = await created(keys, client)
    await written_over(client, record, how)

    code, details = await api.refusal("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    # Before: UNAVAILABLE "the store did not answer (ResponseError)", and nothing deleted.
    assert code == "FAILED_PRECONDITION"
    assert details.startswith(
        f"the change was applied, but the record of API key 'ci-bot' ({record[:-53]}...}})"
        " is a key of another type"
    )
    assert "the key is refused everywhere" in details
    assert secret not in details and not WHOLE_DIGEST.search(details)
    assert await client.exists(record) == 0
    status, body = await send(gateway, secret)
    assert (status, body["error"]["message"]) == (401, "invalid API key")
    [line] = api.audit_lines()
    assert (line["action"], line["key_id"], line["outcome"]) == ("revoke_key", "ci-bot", "applied")
    # The id is retired as any revoked key's is (test_key_id_retired): its usage is the
    # old key's.
    assert (await client.get(f"{PREFIX}keyid:ci-bot")).startswith(b"revoked:")
    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    assert code == "ALREADY_EXISTS" and "belonged to a key revoked at" in details


async def test_the_cli_says_the_revoke_was_applied_and_exits_1(
    api: Api, keys: StoredKeys, client: Any
) -> None:
    _, record = await created(keys, client)
    await client.hset(record, "allowed_models", '"gpt-4o"')

    code, out, err = await api.cli("keys", "revoke", "--id", "ci-bot")

    assert (code, out) == (1, "")
    assert err.startswith("error: the change was applied, but the record of API key 'ci-bot'")
    assert "its field 'allowed_models' holds no JSON list of strings" in err
    assert await client.exists(record) == 0


async def damage_id(client: Any, value: str | None) -> str:
    """The key's id key written over: a hash (another type), or a string of no digest."""
    id_key = f"{PREFIX}keyid:ci-bot"
    await client.delete(id_key)
    if value is None:
        await client.hset(id_key, "owner", "someone")
    else:
        await client.set(id_key, value)
    return id_key


DAMAGED = pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "is a key of another type"),
        ("not-a-digest", "holds no SHA-256 of a key"),
    ],
    ids=["another-type", "no-digest"],
)


@DAMAGED
async def test_a_key_whose_id_key_is_written_over_is_found_by_its_record_and_revoked(
    api: Api, gateway: Processor, keys: StoredKeys, client: Any, value: str | None,
    reason: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    secret, record = await created(keys, client)
    # Other keys, enough that the search reads more than one SCAN batch.
    async with client.pipeline(transaction=False) as pipe:
        for n in range(2500):
            pipe.hset(f"{PREFIX}key:{{{n:064x}}}", mapping={"id": f"other-{n}"})
        await pipe.execute()
    assert (await send(gateway, secret))[0] == 200
    id_key = await damage_id(client, value)

    with caplog.at_level("WARNING", logger=STORED_KEYS_LOG):
        info = await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    # Before: FAILED_PRECONDITION "cannot be revoked by its id", and the key still worked.
    assert info.id == "ci-bot"
    assert await client.exists(record) == 0
    # The id is retired as any revoked key's is, no longer holding what was written there.
    assert (await client.get(id_key)).startswith(b"revoked:")
    assert await client.exists(f"{PREFIX}key:{{{7:064x}}}") == 1  # the others stay
    status, body = await send(gateway, secret)
    assert (status, body["error"]["message"]) == (401, "invalid API key")
    [line] = api.audit_lines()
    assert (line["action"], line["key_id"], line["outcome"]) == ("revoke_key", "ci-bot", "applied")
    [warning] = [r.getMessage() for r in caplog.records if r.name.startswith(STORED_KEYS_LOG)]
    assert f"found by its record: its id key {id_key} {reason}" in warning
    assert secret not in warning and not WHOLE_DIGEST.search(warning)
    # Retired, not freed: a new key of this id would be billed with the old one.
    code, details = await api.refusal("CreateKey", pb.CreateKeyRequest(id="ci-bot"))
    assert code == "ALREADY_EXISTS" and "revoked at" in details


@DAMAGED
async def test_an_id_key_written_over_with_no_record_is_a_failed_precondition_naming_it(
    api: Api, keys: StoredKeys, client: Any, value: str | None, reason: str
) -> None:
    _, record = await created(keys, client)
    await client.delete(record)
    id_key = await damage_id(client, value)

    code, details = await api.refusal("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    assert code == "FAILED_PRECONDITION"
    assert details.startswith(
        f"no API key with id 'ci-bot' was created at run time (no record has it), but {id_key}"
        f" {reason}"
    )
    assert "move the key away" in details
    # Nothing was changed, and a refusal writes no audit line.
    assert await client.exists(id_key) == 1
    assert api.audit_lines() == []


async def test_a_found_record_the_gateway_cannot_read_is_revoked_and_said_so(
    api: Api, gateway: Processor, keys: StoredKeys, client: Any
) -> None:
    secret, record = await created(keys, client)
    await client.hset(record, "labels", "team=ml")
    await damage_id(client, "not-a-digest")

    code, details = await api.refusal("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))

    assert code == "FAILED_PRECONDITION"
    assert details.startswith("the change was applied, but API key 'ci-bot' was found by its")
    assert "its field 'labels' holds no JSON" in details and "refused everywhere" in details
    assert secret not in details and not WHOLE_DIGEST.search(details)
    assert await client.exists(record) == 0
    assert (await send(gateway, secret))[1]["error"]["message"] == "invalid API key"


# Rotating and renewing: both read the record the id names, and refuse to change one
# they cannot read, naming it by its digest cut short.

CHANGES = pytest.mark.parametrize(
    ("method", "change", "done"),
    [
        ("RotateKey", pb.RotateKeyRequest(id="ci-bot", grace_seconds=60), "rotated"),
        ("RenewKey", pb.RenewKeyRequest(id="ci-bot", expires_at=4102444800), "renewed"),
        (
            "RenewKey",
            pb.RenewKeyRequest(id="ci-bot", expires_at=4102444800, rotate=True),
            "rotated",
        ),
    ],
    ids=["rotate", "renew", "renew-and-rotate"],
)


@CHANGES
async def test_a_key_whose_record_is_of_another_type_is_not_changed(
    api: Api, keys: StoredKeys, client: Any, method: str, change: Any, done: str
) -> None:
    secret, record = await created(keys, client)
    await written_over(client, record, "list")

    code, details = await api.refusal(method, change)

    assert code == "FAILED_PRECONDITION"
    assert details == (
        f"API key 'ci-bot' cannot be {done}: its record {record[:-53]}...}} is a key of"
        " another type, not a stored API key's record (written by a person or another"
        " program): move the key away"
    )
    assert secret not in details and not WHOLE_DIGEST.search(details)
    assert await client.lrange(record, 0, -1) == [b"a", b"b"]
    assert api.audit_lines() == []  # nothing was changed


@CHANGES
async def test_a_key_whose_record_holds_a_field_never_written_so_is_not_changed(
    api: Api, keys: StoredKeys, client: Any, method: str, change: Any, done: str
) -> None:
    secret, record = await created(keys, client)
    await client.hset(record, "labels", "team=ml")

    code, details = await api.refusal(method, change)

    assert code == "FAILED_PRECONDITION"
    assert details == (
        f"API key 'ci-bot' cannot be {done}: is the record of API key 'ci-bot', but its"
        " field 'labels' holds no JSON"
    )
    assert secret not in details and not WHOLE_DIGEST.search(details)
    assert await client.hget(record, "labels") == b"team=ml"
    assert await client.get(f"{PREFIX}keyid:ci-bot") == record.encode()[-65:-1]
