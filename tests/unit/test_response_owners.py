"""Stored Responses API responses belong to the caller who created them: only they
continue, compact or count one by its ``previous_response_id``, and the quota reserves
the stored context a continuation adds (``stages.response_owner``), on a real Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import ConfigError, parse_config
from extproc.context import Identity
from extproc.processor import Processor
from extproc.quota.estimate import estimate_responses_tokens
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import NOBODY, ResponseOwner, ResponseOwners, owner_of
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG, capped_runtime
from tests.unit.sse_play import SSE, only_line, play_sse
from tests.unit.test_guard_flow import immediate, upstream_body
from tests.unit.test_responses_api import TEXT_JSON, TEXT_SSE, responses, split_events

RESPONSES = "/v1/responses"
ALICE = {"authorization": "Bearer team1-key"}  # key team1, user alice
BOB = {"authorization": "Bearer team2-key"}  # key team2, user bob
# The id both recorded answers carry, and their usage's total_tokens.
CREATED = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
JSON_TOTAL, STREAM_TOTAL = 123, 45


@pytest.fixture
async def owners(quota_store: QuotaStore, valkey: EmbeddedValkey) -> AsyncIterator[ResponseOwners]:
    """The records on the shared Valkey (emptied by ``quota_store``)."""
    client = connect(valkey.url, 2.0)
    yield ResponseOwners(client, "test:", 30)
    await client.aclose()


def gateway(owners: ResponseOwners | None, extra: str = "") -> tuple[Processor, Services]:
    services = Services(GatewayMetrics(), MemoryLog(), response_owners=owners)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + extra, "t", {}), services)
    return Processor(lambda: runtime, default_stages()), services


async def create(processor: Processor, body: bytes, answer: bytes = TEXT_JSON) -> None:
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=ALICE),
            request_body(body),
            response_headers(200),
            response_body(answer),
        ],
    )


async def continue_(
    processor: Processor, caller: dict[str, str], path: str = RESPONSES, **fields: Any
) -> ext.ProcessingResponse:
    """The gateway's answer to a request continuing ``CREATED``: its request body's."""
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "input": "And then?", "previous_response_id": CREATED, **fields}
    )
    answers = await run_stream(
        processor, [request_headers(path, headers=caller), request_body(body)]
    )
    return answers[1]


def refused_as_not_found(answer: ext.ProcessingResponse) -> dict[str, Any]:
    assert not forwarded(answer), "the request went on to the provider"
    status, body = immediate(answer)
    assert status == 400
    error: dict[str, Any] = body["error"]
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    return error


def forwarded(answer: ext.ProcessingResponse) -> bool:
    """Whether the request went on to the provider (no answer of the gateway's own)."""
    return answer.WhichOneof("response") == "request_body"


# --- who may continue a response ----------------------------------------------------------


async def test_only_the_caller_who_created_a_response_continues_it(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    await create(processor, responses())
    assert await owners.find(CREATED) == ResponseOwner("user:alice", "mock", JSON_TOTAL)

    assert forwarded(await continue_(processor, ALICE))

    processor, services = gateway(owners)
    refused = refused_as_not_found(await continue_(processor, BOB))
    # Told exactly what an unknown id is told: nothing about whose it is.
    assert refused["message"] == f"Previous response with id '{CREATED}' not found."
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


async def test_a_response_stored_by_another_provider_is_refused_naming_both(
    owners: ResponseOwners,
) -> None:
    # Created at provider "openai"; gpt-4o-mini is the mock's in the default config.
    await owners.record(CREATED, ResponseOwner("user:alice", "openai", 10))
    processor, services = gateway(owners)
    status, body = immediate(await continue_(processor, ALICE))
    assert (status, body["error"]["code"]) == (400, "previous_response_elsewhere")
    assert "'openai'" in body["error"]["message"] and "'mock'" in body["error"]["message"]
    assert only_line(services)["quota_decision"] is None  # before the quota counted it


async def test_an_id_never_recorded_is_not_found(owners: ResponseOwners) -> None:
    processor, _ = gateway(owners)
    refused_as_not_found(await continue_(processor, ALICE))


@pytest.mark.parametrize("path", ["/v1/responses/compact", "/v1/responses/input_tokens"])
async def test_compacting_or_counting_anothers_response_is_refused_the_same_way(
    owners: ResponseOwners, path: str
) -> None:
    processor, _ = gateway(owners)
    await create(processor, responses())
    refused_as_not_found(await continue_(processor, BOB, path))
    assert forwarded(await continue_(processor, ALICE, path))


async def test_a_stream_is_recorded_at_its_terminal_event_even_when_the_client_leaves_then(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    # The client hangs up right after the terminal event: Envoy sends no end of stream.
    await play_sse(
        processor, RESPONSES, ALICE, responses(stream=True), split_events(TEXT_SSE), ended=False
    )
    assert await owners.find(CREATED) == ResponseOwner("user:alice", "mock", STREAM_TOTAL)


async def test_a_stream_the_client_left_before_its_end_is_recorded_all_the_same(
    owners: ResponseOwners,
) -> None:
    events = split_events(TEXT_SSE)
    # The client hangs up after the first three events, long before the terminal one.
    await play_sse(gateway(owners)[0], RESPONSES, ALICE, responses(stream=True), events[:3],
                   ended=False)  # fmt: skip
    found = None
    for _ in range(100):  # written off the request path: wait for it to land
        found = await owners.find(CREATED)
        if found is not None:
            break
        await asyncio.sleep(0.01)
    assert found is not None and found.owner == "user:alice"


async def test_a_response_not_stored_is_not_recorded_and_cannot_be_continued(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    await create(processor, responses(store=False))
    assert await owners.find(CREATED) is None
    refused_as_not_found(await continue_(processor, ALICE))


async def test_a_provider_error_records_nothing(owners: ResponseOwners) -> None:
    processor, _ = gateway(owners)
    error = b'{"error":{"message":"bad","type":"invalid_request_error","id":"resp_x"}}'
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=ALICE),
            request_body(responses()),
            response_headers(400),
            response_body(error),
        ],
    )
    assert await owners.find("resp_x") is None


async def test_a_previous_response_id_that_is_no_string_is_a_400_naming_it(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    answer = await continue_(processor, ALICE, previous_response_id=7)
    status, body = immediate(answer)
    assert (status, body["error"]["param"]) == (400, "previous_response_id")


def test_a_persons_keys_share_their_responses_and_a_key_without_a_user_keeps_its_own() -> None:
    by_key = Identity(method="api_key", api_key_id="team1", user_id="alice")
    by_token = Identity(method="jwt", user_id="alice", jwt_provider="okta")
    assert owner_of(by_key) == owner_of(by_token) == "user:alice"
    assert owner_of(Identity(method="api_key", api_key_id="ci")) == "key:ci"
    assert owner_of(Identity(method="none")) == NOBODY


async def test_a_response_created_on_an_open_route_may_be_continued_by_anyone(
    owners: ResponseOwners,
) -> None:
    await owners.record(CREATED, ResponseOwner(NOBODY, "mock", 10))
    processor, _ = gateway(owners)
    assert forwarded(await continue_(processor, BOB))


async def test_without_records_any_caller_continues_any_response() -> None:
    # store.response_owner_retention_days: 0 (no ResponseOwners): the provider decides.
    processor, _ = gateway(None)
    assert forwarded(await continue_(processor, BOB))


@pytest.mark.parametrize(("days", "valid"), [(0, True), (90, True), (-1, False)])
def test_the_retention_is_zero_or_more_days(days: int, valid: bool) -> None:
    store = f"\nstore:\n  response_owner_retention_days: {days}\n"
    text = DEFAULT_CONFIG.replace("\nstore:\n", store, 1)
    if valid:
        assert parse_config(text, "t", {}).store.response_owner_retention_days == days
    else:
        with pytest.raises(ConfigError, match="response_owner_retention_days"):
            parse_config(text, "t", {})


# --- the quota ------------------------------------------------------------------------------


async def continued_under_a_cap(
    quota_store: QuotaStore, owners: ResponseOwners, stored_tokens: int, budget: int
) -> ext.ProcessingResponse:
    """Alice continues her response of ``stored_tokens`` under a hard cap of ``budget``."""
    await owners.record(CREATED, ResponseOwner("user:alice", "mock", stored_tokens))
    runtime, services = capped_runtime(quota_store, budget)
    services.response_owners = owners
    return await continue_(Processor(lambda: runtime, default_stages()), ALICE)


async def test_a_hard_cap_counts_the_stored_context_a_continuation_adds(
    quota_store: QuotaStore, owners: ResponseOwners
) -> None:
    answer = await continued_under_a_cap(quota_store, owners, 2000, 3000)
    body = {"model": "gpt-4o-mini", "input": "And then?", "previous_response_id": CREATED}
    prompt = estimate_responses_tokens(body)
    # Without the record the cap would have left 3000 - prompt for the answer.
    assert upstream_body(answer)["max_output_tokens"] == 3000 - prompt - 2000


async def test_a_stored_context_larger_than_the_budget_is_refused_by_the_hard_cap(
    quota_store: QuotaStore, owners: ResponseOwners
) -> None:
    answer = await continued_under_a_cap(quota_store, owners, 5000, 3000)
    status, body = immediate(answer)
    assert status == 429 and body["error"]["code"] == "insufficient_quota"


# --- the store down ---------------------------------------------------------------------------


def unreachable() -> ResponseOwners:
    return ResponseOwners(connect("redis://127.0.0.1:1", 0.2), "test:", 30)


async def test_a_lookup_the_store_cannot_answer_is_a_503_by_default() -> None:
    processor, services = gateway(unreachable())
    status, body = immediate(await continue_(processor, ALICE))
    assert status == 503 and body["error"]["code"] == "response_store_unavailable"
    assert _store_errors(services, "response_owner_lookup") == 1


async def test_a_lookup_the_store_cannot_answer_goes_on_unchecked_when_failing_open() -> None:
    processor, _ = gateway(unreachable(), "\nquotas:\n  on_store_failure: fail_open\n")
    assert forwarded(await continue_(processor, BOB))


async def test_a_record_the_store_cannot_take_leaves_the_answer_whole() -> None:
    processor, services = gateway(unreachable())
    await create(processor, responses())
    line = only_line(services)
    assert line["http_status_code"] == 200 and line["total_tokens"] == JSON_TOTAL
    assert _store_errors(services, "response_owner_record") == 1


def _store_errors(services: Services, operation: str) -> float:
    for family in services.metrics.registry.collect():
        for found in family.samples:
            if found.name == "aigw_store_errors_total" and found.labels["operation"] == operation:
                return found.value
    return 0.0


# --- a token that names no user -------------------------------------------------------------

JWT_SECRET = "a-shared-secret-of-at-least-32-bytes!"
# The default config's auth section, with a JWT provider before its API keys.
WITH_TOKENS = f"""auth:
  jwt_providers:
    - name: corp
      issuer: https://idp.example.com
      shared_secret: "{JWT_SECRET}"
      algorithms: [HS256]
  api_keys:"""


def token(**claims: Any) -> dict[str, str]:
    """The headers of a caller with a token of the ``corp`` provider holding ``claims``."""
    payload = {"iss": "https://idp.example.com", "exp": int(time.time()) + 600, **claims}
    return {"authorization": "Bearer " + jwt.encode(payload, JWT_SECRET, algorithm="HS256")}


def with_tokens(owners: ResponseOwners) -> Processor:
    """The default config whose routes also take tokens of the ``corp`` provider."""
    text = DEFAULT_CONFIG.replace("auth:\n  api_keys:", WITH_TOKENS, 1)
    services = Services(GatewayMetrics(), MemoryLog(), response_owners=owners)
    runtime = Runtime(parse_config(text, "t", {}), services)
    return Processor(lambda: runtime, default_stages())


async def test_a_response_created_with_a_token_naming_only_a_group_is_not_anyones(
    owners: ResponseOwners,
) -> None:
    # A token naming a group and no user (a service's token) is accepted; its response
    # is that caller's, not free for any caller of the gateway to continue.
    research = token(groups=["research"])
    processor = with_tokens(owners)
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=research),
            request_body(responses()),
            response_headers(200),
            response_body(TEXT_JSON),
        ],
    )
    assert await owners.find(CREATED) is not None
    refused_as_not_found(await continue_(processor, BOB))
    refused_as_not_found(await continue_(processor, token(groups=["sales"])))
    assert forwarded(await continue_(processor, research))


# --- a client that leaves while the record is being written ---------------------------------


class StallingStore:
    """A store whose first write hangs until the request is cancelled; later ones land."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.writing = asyncio.Event()  # set once the first write is under way

    async def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        if not self.writing.is_set():
            self.writing.set()
            await asyncio.Event().wait()
        self.values[key] = value

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)


async def test_a_stream_the_client_leaves_while_its_record_is_written_is_recorded_after() -> None:
    # The terminal event waits for the record; the client hangs up meanwhile, and Envoy
    # ends the call. The client had the id from the first event, so it may continue.
    store = StallingStore()
    owners = ResponseOwners(store, "test:", 30)
    processor, _ = gateway(owners)
    messages = [
        request_headers(RESPONSES, headers=ALICE),
        request_body(responses(stream=True)),
        response_headers(200, SSE),
        *(response_body(event, end_of_stream=False) for event in split_events(TEXT_SSE)),
    ]
    call = asyncio.create_task(run_stream(processor, messages))
    await store.writing.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await owners.close()  # the records written off the request path have landed
    assert await owners.find(CREATED) == ResponseOwner("user:alice", "mock", STREAM_TOTAL)
