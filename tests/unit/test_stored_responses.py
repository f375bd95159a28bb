"""A stored Responses API response by its id (retrieve, delete, input items, cancel)
through the processor: served only to the caller who created it, at the provider the
gateway recorded, never billed (``stages.stored_responses``), on a real Valkey."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import ResponseOwner, ResponseOwners
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.sse_play import only_line
from tests.unit.test_guard_flow import immediate
from tests.unit.test_response_owners import (
    ALICE,
    BOB,
    CREATED,
    TEXT_JSON,
    gateway,
    unreachable,
)

STORED = f"/v1/responses/{CREATED}"
OPENAI_KEY_401 = (
    b'{"error":{"message":"Incorrect API key provided: mock-pro****-key. You can find your '
    b'API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_api_key"}}'
)


@pytest.fixture
async def owners(quota_store: QuotaStore, valkey: EmbeddedValkey) -> AsyncIterator[ResponseOwners]:
    """The records on the shared Valkey (emptied by ``quota_store``), Alice's response in."""
    client = connect(valkey.url, 2.0)
    found = ResponseOwners(client, "test:", 30)
    await found.record(CREATED, ResponseOwner("user:alice", "mock", 123))
    yield found
    await client.aclose()


def mutation(answer: ext.ProcessingResponse) -> tuple[dict[str, str], list[str]]:
    """The request-headers answer's headers set, and those removed."""
    found = answer.request_headers.response.header_mutation
    return (
        {h.header.key: h.header.raw_value.decode() for h in found.set_headers},
        list(found.remove_headers),
    )


async def ask(
    services_owners: ResponseOwners | None,
    path: str = STORED,
    method: str = "GET",
    caller: dict[str, str] = ALICE,
    answer: tuple[int, bytes] | None = None,
) -> tuple[list[ext.ProcessingResponse], Services]:
    """One bodyless request; ``answer``: the provider's status and body, if it gets one."""
    processor, services = gateway(services_owners)
    messages = [request_headers(path, method=method, headers=caller, end_of_stream=True)]
    if answer is not None:
        messages += [response_headers(answer[0]), response_body(answer[1])]
    return await run_stream(processor, messages), services


@pytest.mark.parametrize(
    ("path", "method", "upstream"),
    [
        (STORED, "GET", STORED),
        (STORED, "DELETE", STORED),
        (
            f"{STORED}/input_items?limit=2&order=asc",
            "GET",
            f"{STORED}/input_items?limit=2&order=asc",
        ),
        (f"{STORED}/cancel", "POST", f"{STORED}/cancel"),
        (f"/openai/v1/responses/{CREATED}", "GET", STORED),
        (f"/openai/responses/{CREATED}/input_items", "GET", f"{STORED}/input_items"),
    ],
)
async def test_the_creator_reaches_the_providers_endpoint_with_the_providers_key(
    owners: ResponseOwners, path: str, method: str, upstream: str
) -> None:
    answers, _ = await ask(owners, path, method)
    set_headers, removed = mutation(answers[0])
    assert set_headers[headers.CLUSTER] == "provider_mock"
    assert set_headers["authorization"] == "Bearer mock-provider-key"
    assert "authorization" not in removed  # the client's went, the provider's stays
    assert set_headers.get(":path", path) == upstream
    assert answers[0].request_headers.response.clear_route_cache


@pytest.mark.parametrize("path", [STORED, f"{STORED}/input_items", "/v1/responses/resp_never"])
async def test_another_caller_or_an_unknown_id_gets_openais_404_for_an_unknown_id(
    owners: ResponseOwners, path: str
) -> None:
    answers, services = await ask(owners, path, caller=BOB)
    status, body = immediate(answers[0])
    response_id = path.split("/")[3]
    assert status == 404
    assert body["error"]["message"] == f"Response with id '{response_id}' not found."
    assert body["error"]["type"] == "invalid_request_error"
    assert only_line(services)["provider"] is None  # nothing reached a provider


async def test_a_retrieved_response_passes_through_and_is_never_billed(
    owners: ResponseOwners,
) -> None:
    # The stored response carries the usage it was billed for when it was created.
    answers, services = await ask(owners, answer=(200, TEXT_JSON))
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["route"], line["provider"], line["http_status_code"]) == (
        "openai-responses-stored",
        "mock",
        200,
    )
    assert line["total_tokens"] == 0 and not line["cost_usd"]
    assert line["usage_reported"] is False and line["usage_estimated"] is False
    consumed = [
        s
        for family in services.metrics.registry.collect()
        for s in family.samples
        if s.name == "aigw_tokens_consumed_total"
    ]
    assert consumed == []


async def test_a_deletion_the_provider_confirms_forgets_the_record(
    owners: ResponseOwners,
) -> None:
    deleted = orjson.dumps({"id": CREATED, "object": "response", "deleted": True})
    await ask(owners, method="DELETE", answer=(500, b'{"error":{"message":"try again"}}'))
    assert await owners.find(CREATED) is not None  # not deleted: still hers
    await ask(owners, method="DELETE", answer=(200, deleted))
    assert await owners.find(CREATED) is None
    answers, _ = await ask(owners)
    assert immediate(answers[0])[0] == 404


async def test_the_providers_refusal_of_the_gateways_key_never_shows_a_piece_of_it(
    owners: ResponseOwners,
) -> None:
    answers, _ = await ask(owners, answer=(401, OPENAI_KEY_401))
    sent = answers[-1].response_body.response.body_mutation.body
    error = orjson.loads(sent)["error"]
    assert error["code"] == "upstream_credentials_refused"
    assert b"mock-pro" not in sent and b"****" not in sent


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [(STORED, "POST", "GET, DELETE"), (f"{STORED}/cancel", "GET", "POST")],
)
async def test_a_method_the_path_does_not_take_is_a_405_naming_those_it_does(
    owners: ResponseOwners, path: str, method: str, allowed: str
) -> None:
    answers, _ = await ask(owners, path, method)
    assert immediate(answers[0])[0] == 405
    found = answers[0].immediate_response.headers.set_headers
    assert {h.header.key: h.header.raw_value.decode() for h in found}["allow"] == allowed


@pytest.mark.parametrize(
    "path", ["/v1/responses/", f"{STORED}/output", f"{STORED}/input_items/extra"]
)
async def test_a_path_that_names_no_stored_response_is_a_404(
    owners: ResponseOwners, path: str
) -> None:
    answers, _ = await ask(owners, path)
    status, body = immediate(answers[0])
    assert (status, body["error"]["code"]) == (404, "route_not_found")


async def test_without_records_no_stored_response_is_served() -> None:
    answers, _ = await ask(None)
    status, body = immediate(answers[0])
    assert (status, body["error"]["code"]) == (404, "route_not_found")


async def test_a_store_that_cannot_answer_is_a_503() -> None:
    answers, _ = await ask(unreachable())
    status, body = immediate(answers[0])
    assert (status, body["error"]["code"]) == (503, "response_store_unavailable")


# --- a response whose answer the route's guards checked ---------------------------------------

# Masks a word of the recorded answer (text.json: "...a unicorn named Lumina...").
MASKED_ANSWERS = """
guardrails:
  policies:
    - name: no-unicorns
      response:
        - name: unicorns
          literals: [unicorn]
          action: MASK
"""


def guarding_answers(owners: ResponseOwners) -> tuple[Processor, Services]:
    """The default config whose /v1/responses route masks a word in every answer."""
    text = DEFAULT_CONFIG.replace(
        "    path: /v1/responses\n    api: openai_responses\n",
        "    path: /v1/responses\n    api: openai_responses\n    guardrails: no-unicorns\n",
        1,
    )
    services = Services(GatewayMetrics(), MemoryLog(), response_owners=owners)
    runtime = Runtime(parse_config(text + MASKED_ANSWERS, "t", {}), services)
    return Processor(lambda: runtime, default_stages()), services


@pytest.mark.parametrize("path", [STORED, f"{STORED}/input_items"])
async def test_an_answer_a_guard_masked_is_not_served_unmasked_by_its_id(
    quota_store: QuotaStore, valkey: EmbeddedValkey, path: str
) -> None:
    client = connect(valkey.url, 2.0)
    owners = ResponseOwners(client, "test:", 30)
    processor, _ = guarding_answers(owners)
    created = await run_stream(
        processor,
        [
            request_headers("/v1/responses", headers=ALICE),
            request_body(orjson.dumps({"model": "gpt-4o-mini", "input": "A story?"})),
            response_headers(200),
            response_body(TEXT_JSON),
        ],
    )
    got = created[-1].response_body.response.body_mutation.body
    assert CREATED.encode() in got and b"unicorn" not in got  # she got it masked
    # By its id the provider would send the answer as it stored it, unmasked.
    processor, services = guarding_answers(owners)
    answers = await run_stream(
        processor, [request_headers(path, method="GET", headers=ALICE, end_of_stream=True)]
    )
    assert answers[0].WhichOneof("response") == "immediate_response"
    status, body = immediate(answers[0])
    assert (status, body["error"]["code"]) == (403, "stored_response_guarded")
    assert only_line(services)["provider"] is None  # nothing reached a provider
    # Deleting it is still hers to do.
    deleted, _ = await ask(owners, method="DELETE")
    assert headers.CLUSTER in mutation(deleted[0])[0]
    await client.aclose()


async def test_the_provider_answers_uncompressed_so_its_refusal_of_the_key_can_be_rewritten(
    owners: ResponseOwners,
) -> None:
    # The openai SDK accepts gzip. A compressed refusal would be unreadable to the gateway,
    # and its plain JSON replacement, still marked gzip, unreadable to the client.
    answers, _ = await ask(owners, caller={**ALICE, "accept-encoding": "gzip, deflate"})
    assert "accept-encoding" in mutation(answers[0])[1]


async def test_a_compressed_refusal_of_the_key_reaches_the_client_as_plain_json(
    owners: ResponseOwners,
) -> None:
    processor, _ = gateway(owners)
    answers = await run_stream(
        processor,
        [
            request_headers(STORED, method="GET", headers=ALICE, end_of_stream=True),
            response_headers(401, {"content-encoding": "gzip"}),
            response_body(gzip.compress(OPENAI_KEY_401)),
        ],
    )
    removed = answers[1].response_headers.response.header_mutation.remove_headers
    assert "content-encoding" in removed  # the client must not gunzip the plain JSON
    sent = answers[-1].response_body.response.body_mutation.body
    assert orjson.loads(sent)["error"]["code"] == "upstream_credentials_refused"
