"""API keys created at run time: in a real Valkey, through the request path and the gRPC API.

An operator creates a key and gets its secret once; the store holds only its
SHA-256. A request with that secret is answered from one HGETALL, then from the
process's cache; a revoked key is refused on the next request. The cache keeps
answers 30 s (found) or 5 s (not found), as an injected clock shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.auth.api_keys import ApiKey, key_digest
from extproc.auth.stored_keys import (
    NOT_CACHED,
    KeyCache,
    KeyCreateConflictError,
    KeyIdTakenError,
    StoredKey,
    StoredKeys,
    UnknownKeyIdError,
)
from extproc.config import GatewayConfig
from extproc.config.auth_model import AuthConfig
from extproc.management.audit import AuditLog
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import KeyManagementService, QuotaManagementService, start_server
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.admin_cli import run_admin_cli

PREFIX = "t:"
ADMIN = "dev-admin-token"  # the default config's, with no environment set
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def new_key(key_id: str = "ci-bot", **fields: Any) -> ApiKey:
    values: dict[str, Any] = {
        "user_id": "carol", "group_id": "research", "enabled": True, "expires_at": None,
        "allowed_models": (), "allowed_routes": (), "labels": {},
    }  # fmt: skip
    return ApiKey(id=key_id, **{**values, **fields})


async def expired_key(client: Any, key_id: str = "ci-bot") -> str:
    """A key created two hours ago that expired an hour ago: its secret."""
    earlier = StoredKeys(client, PREFIX, clock=lambda: time.time() - 7200)
    secret, _ = await earlier.create(new_key(key_id, expires_at=time.time() - 3600))
    return secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STORE_TIMEOUT_S = 10.0


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[Any]:
    # A timeout no busy test machine reaches: the shared Valkey took over 2 s to answer
    # one renewal while the whole suite ran beside other work, failing a test of
    # behaviour, not of timeouts (those tests use a store that is not there).
    client = connect(valkey.url, STORE_TIMEOUT_S)
    await client.flushdb()
    await client.config_resetstat()
    yield client
    await client.aclose()


@pytest.fixture
def keys(client: Any) -> StoredKeys:
    return StoredKeys(client, PREFIX)


@pytest.fixture
async def other_process(valkey: EmbeddedValkey) -> AsyncIterator[StoredKeys]:
    """Another gateway process sharing the store: its own connection, cache and listener."""
    other_client = connect(valkey.url, STORE_TIMEOUT_S)
    other = StoredKeys(other_client, PREFIX)
    other.start()
    await asyncio.wait_for(other.listener.subscribed.wait(), 10.0)
    yield other
    await other.close()
    await other_client.aclose()


async def hgetall_calls(client: Any) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


# The store.


async def test_a_created_key_is_stored_only_as_its_hash(keys: StoredKeys, client: Any) -> None:
    secret, stored = await keys.create(new_key(labels={"team": "ml"}))

    assert secret.startswith("aigw-") and len(secret) == len("aigw-") + 43
    digest = key_digest(secret).hex()
    assert sorted(await client.keys("*")) == [f"t:key:{{{digest}}}".encode(), b"t:keyid:ci-bot"]
    assert await client.get("t:keyid:ci-bot") == digest.encode()
    record = await client.hgetall(f"t:key:{{{digest}}}")
    assert record[b"id"] == b"ci-bot" and record[b"labels"] == b'{"team":"ml"}'
    for name in await client.keys("*"):
        value = await client.dump(name)
        assert secret.encode() not in name + value
    assert stored.created_at == pytest.approx(time.time(), abs=5)


async def test_a_created_key_is_found_by_its_secret_and_nothing_else(keys: StoredKeys) -> None:
    secret, _ = await keys.create(new_key(allowed_models=("gpt-4o-mini",), expires_at=2e9))

    found = await keys.lookup(key_digest(secret))
    assert found == new_key(allowed_models=("gpt-4o-mini",), expires_at=2e9)
    assert await keys.lookup(key_digest(secret + "x")) is None
    assert await keys.lookup(key_digest("ci-bot")) is None


async def test_an_id_is_taken_once(keys: StoredKeys) -> None:
    await keys.create(new_key())
    with pytest.raises(KeyIdTakenError, match="an API key with id 'ci-bot' already exists"):
        await keys.create(new_key(user_id="mallory"))


class StalledWrite:
    """The store client, whose write of the record never answers: the create is cut
    between its claim of the id and its record, as when the operator's call is
    cancelled there, or its process dies."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.id_claimed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.id_claimed.set()
        return StalledPipeline()


class StalledPipeline:
    async def __aenter__(self) -> StalledPipeline:
        await asyncio.Event().wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_a_create_cancelled_half_way_leaves_its_id_free(client: Any) -> None:
    stalled = StalledWrite(client)
    creating = asyncio.create_task(StoredKeys(stalled, PREFIX).create(new_key()))
    await stalled.id_claimed.wait()
    assert await client.get("t:keyid:ci-bot") is not None

    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating

    assert await client.keys("*") == []
    secret, stored = await StoredKeys(client, PREFIX).create(new_key())
    assert stored.key.id == "ci-bot" and secret.startswith("aigw-")


async def test_the_claim_of_a_create_whose_process_died_expires(client: Any) -> None:
    stalled = StalledWrite(client)
    creating = asyncio.create_task(StoredKeys(stalled, PREFIX).create(new_key()))
    await stalled.id_claimed.wait()

    # The process is gone (nothing will clean up): the id is free again within a minute.
    assert 0 < await client.pttl("t:keyid:ci-bot") <= 60_000
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating


class Meanwhile:
    """The store client of one call, which runs ``meanwhile`` just before that call's
    ``at``-th use of ``method`` (then the method itself, unless ``meanwhile`` raises):
    what another caller (or the store) does at that step."""

    def __init__(
        self, client: Any, method: str, meanwhile: Callable[[], Awaitable[None]], at: int = 1
    ) -> None:
        self._client = client
        self._method = method
        self._meanwhile = meanwhile
        self._at = at
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if name != self._method:
            return target
        self._calls += 1
        if self._calls != self._at:
            return target
        if name == "pipeline":
            return self._pipeline_after_meanwhile(target)

        async def after_meanwhile(*args: Any, **kwargs: Any) -> Any:
            await self._meanwhile()
            return await target(*args, **kwargs)

        return after_meanwhile

    def _pipeline_after_meanwhile(self, pipeline: Any) -> Any:
        outer = self

        class PipelineAfterMeanwhile:
            async def __aenter__(self) -> Any:
                await outer._meanwhile()
                self._pipe = pipeline(transaction=True)
                return await self._pipe.__aenter__()

            async def __aexit__(self, *exc: Any) -> Any:
                return await self._pipe.__aexit__(*exc)

        return lambda *args, **kwargs: PipelineAfterMeanwhile()


class RevokeInBetween(Meanwhile):
    """The store client of a create, which lets a revoke of the same id run to its end
    just before the create's call number ``at`` of ``method``: a revoke racing the create
    at that step."""

    def __init__(self, client: Any, method: str, at: int = 1) -> None:
        super().__init__(client, method, self._revoke, at)
        self.revoked: StoredKey | UnknownKeyIdError | None = None

    async def _revoke(self) -> None:
        try:
            self.revoked = await StoredKeys(self._client, PREFIX).revoke("ci-bot")
        except UnknownKeyIdError as exc:
            self.revoked = exc


async def test_a_revoke_before_the_key_is_written_leaves_a_key_its_id_revokes(
    client: Any,
) -> None:
    racing = RevokeInBetween(client, "pipeline")
    secret, _ = await StoredKeys(racing, PREFIX).create(new_key())

    # The key did not exist yet when the revoke ran ...
    assert isinstance(racing.revoked, UnknownKeyIdError)
    keys = StoredKeys(client, PREFIX)
    assert (await keys.lookup(key_digest(secret))) is not None
    # ... and the key that then came to be is one its id revokes.
    assert (await keys.revoke("ci-bot")).key.id == "ci-bot"
    assert await keys.lookup(key_digest(secret)) is None
    assert await client.keys("*") == [b"t:keyid:ci-bot"]  # retired (test_key_id_retired)


# The id is kept by a script (EVALSHA) that checks it still names the key, the key by PERSIST.
@pytest.mark.parametrize(
    "method", ["evalsha", "persist"], ids=["before-the-id-is-kept", "before-the-key"]
)
async def test_a_revoke_after_the_key_is_written_fails_the_create(client: Any, method: str) -> None:
    racing = RevokeInBetween(client, method)

    with pytest.raises(KeyCreateConflictError, match="revoked while it was being created"):
        await StoredKeys(racing, PREFIX).create(new_key())

    # The revoke took the key; no key is left, working or not, and the id is free: the
    # revoke retired it, but for a key whose secret was never handed out.
    assert isinstance(racing.revoked, StoredKey) and racing.revoked.key.id == "ci-bot"
    assert await client.keys("*") == []
    secret, _ = await StoredKeys(client, PREFIX).create(new_key())
    assert secret.startswith("aigw-")


async def test_a_finished_key_keeps_no_expiry(keys: StoredKeys, client: Any) -> None:
    await keys.create(new_key())

    assert [await client.pttl(name) for name in await client.keys("*")] == [-1, -1]


async def test_the_list_has_every_stored_key_by_id_and_no_secret(keys: StoredKeys) -> None:
    await keys.create(new_key("zeta"))
    await keys.create(new_key("alpha", user_id=None, group_id=None))

    listed = await keys.list()

    assert [stored.key for stored in listed] == [
        new_key("alpha", user_id=None, group_id=None),
        new_key("zeta"),
    ]


async def test_a_revoked_key_is_gone_from_the_store(keys: StoredKeys, client: Any) -> None:
    secret, _ = await keys.create(new_key())

    revoked = await keys.revoke("ci-bot")

    assert revoked.key.id == "ci-bot"
    assert await keys.lookup(key_digest(secret)) is None
    # Only the id is left, retired (test_key_id_retired), and never the secret's record.
    assert await client.keys("*") == [b"t:keyid:ci-bot"]
    assert (await client.get("t:keyid:ci-bot")).startswith(b"revoked:")
    with pytest.raises(UnknownKeyIdError, match="no API key with id 'ci-bot'"):
        await keys.revoke("ci-bot")


# The cache.


def test_a_found_key_is_remembered_30_seconds_and_a_missing_one_5() -> None:
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.put(b"found", new_key(), cache.generation)
    cache.put(b"missing", None, cache.generation)

    clock.now += 4.9
    assert (cache.get(b"found"), cache.get(b"missing")) == (new_key(), None)
    clock.now += 0.1
    assert cache.get(b"missing") is NOT_CACHED
    clock.now += 24.9
    assert cache.get(b"found") == new_key()
    clock.now += 0.1
    assert cache.get(b"found") is NOT_CACHED
    assert len(cache) == 0


def test_the_cache_forgets_the_least_recently_used_first() -> None:
    cache = KeyCache(max_entries=2, clock=Clock())
    cache.put(b"a", new_key("a"), 0)
    cache.put(b"b", new_key("b"), 0)
    assert cache.get(b"a") is not NOT_CACHED  # a is now the most recently used

    cache.put(b"c", None, 0)

    assert cache.get(b"b") is NOT_CACHED
    assert cache.get(b"a") == new_key("a") and cache.get(b"c") is None


def test_an_answer_read_before_a_revocation_is_not_cached() -> None:
    cache = KeyCache(clock=Clock())
    started_at = cache.generation  # a lookup goes out to the store...
    cache.forget(b"revoked")  # ...a revocation lands meanwhile...
    cache.put(b"revoked", new_key(), started_at)  # ...and its answer comes back.

    assert cache.get(b"revoked") is NOT_CACHED


async def test_revoking_clears_this_processs_cache_at_once(keys: StoredKeys) -> None:
    secret, _ = await keys.create(new_key())
    digest = key_digest(secret)
    await keys.lookup(digest)
    assert keys.cached(digest) == new_key()

    await keys.revoke("ci-bot")

    assert keys.cached(digest) is NOT_CACHED
    assert await keys.lookup(digest) is None


# The request path.


@pytest.fixture
def gateway(config: GatewayConfig, services: Services, keys: StoredKeys) -> Processor:
    services.stored_keys = keys
    return processor_for(config, services)


async def send(processor: Processor, key: str | None) -> tuple[int, dict[str, Any]]:
    """A chat request with the key (None: no key); the status and error body it gets."""
    auth = {"authorization": f"Bearer {key}"} if key is not None else {}
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=auth), request_body(BODY)],
    )
    last = answers[-1]
    if not last.HasField("immediate_response"):
        return 200, {}
    return last.immediate_response.status.code, orjson.loads(last.immediate_response.body)


async def test_a_created_key_authenticates_from_one_store_read_then_the_cache(
    gateway: Processor, services: Services, keys: StoredKeys, client: Any
) -> None:
    secret, _ = await keys.create(new_key(labels={"team": "ml"}))

    assert (await send(gateway, secret))[0] == 200
    assert (await send(gateway, secret))[0] == 200

    assert await hgetall_calls(client) == 1
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    identity = [(line["api_key_id"], line["user_id"], line["group_id"]) for line in lines]
    assert identity == [("ci-bot", "carol", "research")] * 2
    # Config keys never wait for the store.
    assert (await send(gateway, "team1-key"))[0] == 200
    assert await hgetall_calls(client) == 1


async def test_an_unknown_key_is_401_and_asked_for_once_in_5_seconds(
    gateway: Processor, client: Any
) -> None:
    for _ in range(3):
        status, body = await send(gateway, "aigw-made-up")
        assert (status, body["error"]["message"]) == (401, "invalid API key")
    assert await hgetall_calls(client) == 1


async def test_a_revoked_key_is_refused_on_the_next_request(
    gateway: Processor, keys: StoredKeys
) -> None:
    secret, _ = await keys.create(new_key())
    assert (await send(gateway, secret))[0] == 200

    await keys.revoke("ci-bot")

    status, body = await send(gateway, secret)
    assert (status, body["error"]["message"]) == (401, "invalid API key")


async def test_expiry_and_allowed_routes_apply_as_to_config_keys(
    gateway: Processor, keys: StoredKeys
) -> None:
    expired, _ = await keys.create(new_key("old", expires_at=time.time() - 1))
    elsewhere, _ = await keys.create(new_key("partner-only", allowed_routes=("partner",)))

    status, body = await send(gateway, expired)
    assert (status, body["error"]["message"]) == (401, "API key 'old' has expired")
    status, body = await send(gateway, elsewhere)
    assert status == 403
    assert body["error"]["message"] == "API key 'partner-only' may not use route 'openai-chat'"


async def test_with_the_management_api_on_a_config_without_keys_still_asks_for_one(
    config: GatewayConfig, services: Services, keys: StoredKeys
) -> None:
    services.stored_keys = keys
    keyless = processor_for(config.model_copy(update={"auth": AuthConfig()}), services)
    secret, _ = await keys.create(new_key())

    status, body = await send(keyless, None)
    assert (status, body["error"]["message"].split(":")[0]) == (401, "no API key found")
    assert (await send(keyless, secret))[0] == 200


async def test_a_store_that_does_not_answer_is_503_never_401(
    config: GatewayConfig, services: Services
) -> None:
    nowhere = connect(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    services.stored_keys = StoredKeys(nowhere, PREFIX)
    try:
        status, body = await send(processor_for(config, services), "aigw-some-key")
    finally:
        await nowhere.aclose()

    assert status == 503
    assert body["error"]["code"] == "key_store_unavailable"
    errors = services.metrics.registry.get_sample_value(
        "aigw_store_errors_total", {"operation": "key_lookup"}
    )
    assert errors == 1


# The gRPC API.


@dataclass
class Api:
    channel: grpc_aio.Channel
    stub: Any
    audit: io.BytesIO
    address: str

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``extproc <args>`` against this API: exit code, stdout, stderr."""
        return await run_admin_cli(self.address, ADMIN, *args)

    async def call(self, method: str, request: Any, token: str = ADMIN) -> Any:
        return await getattr(self.stub, method)(
            request, metadata=(("authorization", f"Bearer {token}"),)
        )

    async def refusal(self, method: str, request: Any) -> tuple[str, str]:
        with pytest.raises(grpc_aio.AioRpcError) as refused:
            await self.call(method, request)
        return refused.value.code().name, refused.value.details() or ""

    def audit_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.audit.getvalue().splitlines()]


@pytest.fixture
async def api(config: GatewayConfig, client: Any, keys: StoredKeys) -> AsyncIterator[Api]:
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False), stored_keys=keys))
    async with serve_api(runtime, client, keys) as served:
        yield served


@contextlib.asynccontextmanager
async def serve_api(runtime: Runtime, client: Any, keys: StoredKeys) -> AsyncIterator[Api]:
    """The management API (quotas and keys) of a gateway running ``runtime``."""
    quota_store = QuotaStore(client, PREFIX)
    audit = io.BytesIO()
    quotas = QuotaManagementService(
        lambda: runtime, QuotaAdmin(client, PREFIX, quota_store), AuditLog(audit)
    )
    service = KeyManagementService(lambda: runtime, keys, AuditLog(audit))
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, quotas, service)
    channel = grpc_aio.insecure_channel(address)
    try:
        yield Api(channel, pb_grpc.KeyManagementStub(channel), audit, address)
    finally:
        await channel.close()
        await server.stop(None)


async def test_an_operator_creates_lists_and_revokes_a_key(api: Api, keys: StoredKeys) -> None:
    request = pb.CreateKeyRequest(
        id="ci-bot", user_id="carol", group_id="research", labels={"team": "ml"},
        expires_at=2e9, allowed_models=["gpt-4o-mini"],
    )  # fmt: skip
    created = await api.call("CreateKey", request)

    assert created.key.startswith("aigw-")
    assert (created.info.id, created.info.source, created.info.enabled) == ("ci-bot", "store", True)
    assert await keys.lookup(key_digest(created.key)) is not None

    listed = await api.call("ListKeys", pb.ListKeysRequest())
    assert [(k.id, k.source) for k in listed.keys] == [
        ("team1", "config"), ("team2", "config"), ("ci-bot", "store"),
    ]  # fmt: skip
    assert listed.keys[2] == created.info
    assert created.key not in str(listed)

    revoked = await api.call("RevokeKey", pb.RevokeKeyRequest(id="ci-bot"))
    assert revoked == created.info
    assert [k.id for k in (await api.call("ListKeys", pb.ListKeysRequest())).keys] == [
        "team1", "team2",
    ]  # fmt: skip

    create_line, revoke_line = api.audit_lines()
    assert (create_line["action"], create_line["caller"], create_line["key_id"]) == (
        "create_key", "ops", "ci-bot",
    )  # fmt: skip
    assert (create_line["labels"], create_line["allowed_models"]) == (
        {"team": "ml"},
        ["gpt-4o-mini"],
    )
    assert (revoke_line["action"], revoke_line["key_id"]) == ("revoke_key", "ci-bot")
    assert created.key.encode() not in api.audit.getvalue()


@pytest.mark.parametrize(
    ("method", "request_", "code", "message"),
    [
        ("CreateKey", pb.CreateKeyRequest(id="team1"), "ALREADY_EXISTS",
         "an API key with id 'team1' already exists (in the config)"),
        ("CreateKey", pb.CreateKeyRequest(id=""), "INVALID_ARGUMENT", "id is required"),
        ("CreateKey", pb.CreateKeyRequest(id="no spaces"), "INVALID_ARGUMENT",
         "id: String should match pattern"),
        ("CreateKey", pb.CreateKeyRequest(id="late", expires_at=1.0), "INVALID_ARGUMENT",
         "expires_at must be in the future (or 0: never)"),
        # Kept to a route the config lacks, the key would be refused everywhere.
        ("CreateKey", pb.CreateKeyRequest(id="ci-bot", allowed_routes=["openai-chta"]),
         "INVALID_ARGUMENT", "allowed_routes: unknown route 'openai-chta'; did you mean"
         " 'openai-chat'?"),
        # Kept to a misspelt model, the key would get 403 model_not_allowed on every
        # request; before, it was created and its secret handed out all the same.
        ("CreateKey", pb.CreateKeyRequest(id="ci-bot", allowed_models=["gpt-4o-mni"]),
         "INVALID_ARGUMENT", "allowed_models: 'gpt-4o-mni' is no model the gateway knows;"
         " did you mean 'gpt-4o-mini'? (the key would be refused it with 403"
         " model_not_allowed)"),
        ("CreateKey", pb.CreateKeyRequest(id="ci-bot", allowed_models=["gpt-4o-mini", "gtp-4*"]),
         "INVALID_ARGUMENT", "allowed_models: 'gtp-4*' matches no model the gateway knows;"
         " did you mean 'gpt-4*'?"),
        ("RevokeKey", pb.RevokeKeyRequest(id="team1"), "INVALID_ARGUMENT",
         "API key 'team1' comes from the config"),
        ("RevokeKey", pb.RevokeKeyRequest(id="nobody"), "NOT_FOUND",
         "no API key with id 'nobody' was created at run time"),
    ],
    ids=[
        "config-id", "no-id", "bad-id", "past-expiry", "unknown-route", "unknown-model",
        "unknown-pattern", "config-key", "unknown",
    ],
)  # fmt: skip
async def test_what_cannot_be_done_is_refused_clearly(
    api: Api, method: str, request_: Any, code: str, message: str
) -> None:
    found_code, details = await api.refusal(method, request_)

    assert found_code == code
    assert details.startswith(message)
    assert api.audit_lines() == []


async def test_a_key_kept_to_known_models_and_patterns_is_created(api: Api) -> None:
    # An alias, a prefix pattern and a price-table name are all models the config knows.
    models = ["gpt-4o-mini", "gpt-4*", "claude*"]
    created = await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot", allowed_models=models))

    assert list(created.info.allowed_models) == models


async def test_a_model_a_reload_will_add_is_accepted_when_the_operator_says_so(
    api: Api, gateway: Processor, keys: StoredKeys
) -> None:
    request = pb.CreateKeyRequest(
        id="early", allowed_models=["gpt-5-preview"], allow_unknown_models=True
    )
    created = await api.call("CreateKey", request)

    assert list(created.info.allowed_models) == ["gpt-5-preview"]
    status, body = await send(gateway, created.key)
    assert (status, body["error"]["code"]) == (403, "model_not_allowed")


async def test_the_cli_names_the_unknown_model_and_the_way_past_it(api: Api) -> None:
    argv = ["keys", "create", "--id", "ci-bot", "--model", "gpt4o-mini"]

    code, out, err = await api.cli(*argv)

    assert (code, out) == (2, "")
    assert "'gpt4o-mini' is no model the gateway knows; did you mean 'gpt-4o-mini'?" in err
    assert "--allow-unknown-model" in err
    code, out, err = await api.cli(*argv, "--allow-unknown-model", "--format", "json")
    assert code == 0, err
    assert orjson.loads(out)["info"]["allowed_models"] == ["gpt4o-mini"]


async def test_a_second_key_with_the_same_id_is_already_exists(api: Api) -> None:
    await api.call("CreateKey", pb.CreateKeyRequest(id="ci-bot"))

    assert await api.refusal("CreateKey", pb.CreateKeyRequest(id="ci-bot")) == (
        "ALREADY_EXISTS", "an API key with id 'ci-bot' already exists",
    )  # fmt: skip


async def test_health_answers_for_the_key_service(api: Api) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    status = await health.Check(
        health_pb2.HealthCheckRequest(service="aigw.management.v1.KeyManagement")
    )

    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_key_calls_need_the_admin_token(api: Api) -> None:
    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.call("ListKeys", pb.ListKeysRequest(), token="team1-key")

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_config_key_taking_a_stored_keys_id_is_named_at_load(
    config: GatewayConfig, services: Services, keys: StoredKeys, caplog: pytest.LogCaptureFixture
) -> None:
    # CreateKey refuses the config's ids; a config written later may still take one.
    await keys.create(new_key("team1"))
    await keys.create(new_key("ci-bot"))
    services.stored_keys = keys
    runtime = Runtime(config, services)
    with caplog.at_level("WARNING", logger="extproc.runtime"):
        await runtime.start()
    await runtime.close()
    [warning] = [r.getMessage() for r in caplog.records if "created at run time" in r.getMessage()]
    assert "API key ids team1 are in the config" in warning
    assert "ci-bot" not in warning


async def test_no_word_when_the_config_and_the_store_name_other_keys(
    config: GatewayConfig, services: Services, keys: StoredKeys, caplog: pytest.LogCaptureFixture
) -> None:
    await keys.create(new_key("ci-bot"))
    services.stored_keys = keys
    runtime = Runtime(config, services)
    with caplog.at_level("WARNING", logger="extproc.runtime"):
        await runtime.start()
    await runtime.close()
    assert not [r for r in caplog.records if "created at run time" in r.getMessage()]
