"""A failover attempt serves the request under the config it was admitted with.

The downstream filter writes the chain it resolved into the body every attempt starts
from; an attempt reads its model from there, whatever config serves it (a reload in
between, another worker), and takes only the provider's credentials from that config.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.config import parse_config
from extproc.context import PhaseOutput, RequestContext
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_failover import failover_cluster_name
from extproc.errors import UpstreamError
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import AttemptStage
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.test_aliases_and_failover import attempt_on

DEFAULT = DEFAULT_CONFIG.read_text()
MESSAGES = [{"role": "user", "content": "hi"}]
# "primary" (a provider that is down) fails over to claude-3-5-haiku-latest on mock-anthropic,
# then to the Bedrock model; an access rule keeps the Anthropic fallback for engineering.
ADMITTED = (
    DEFAULT.replace(
        "\nproviders:\n",
        "\nproviders:\n"
        "  - {name: down, base_url: 'http://127.0.0.1:1/v1', api_key: down-key-123}\n",
        1,
    )
    .replace(
        "\nmodels:\n",
        "\nmodels:\n  - {name: primary, provider: down,"
        " fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]}\n",
        1,
    )
    .replace(
        "\nauth:\n",
        "\nauth:\n  access_rules:\n"
        "    - {name: haiku-for-engineering, models: [claude-3-5-haiku-latest],"
        " groups: [engineering]}\n",
        1,
    )
)
# Reloads that land while the request waits on its primary.
PRIMARY_RETIRED = ADMITTED.replace(
    "  - {name: primary, provider: down,"
    " fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]}\n",
    "",
)
FALLBACK_SWAPPED = ADMITTED.replace(
    "fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]}\n",
    "fallbacks: [claude-new, amazon.titan-text-express-v1]}\n"
    "  - {name: claude-new, provider: mock-anthropic, upstream_model: claude-new-upstream}\n",
)
KEY_ROTATED = ADMITTED.replace(
    "\nproviders:\n",
    "\nproviders:\n  - {name: placeholder, base_url: 'http://127.0.0.1:2/v1'}\n",
    1,
).replace("${MOCK_LLM_API_KEY:-mock-provider-key}\n  # ...and", "rotated-key-456\n  # ...and", 1)


async def attempt_body(config_text: str, key: str) -> bytes:
    """The body the downstream filter hands Envoy for a failover request: what every
    attempt starts from."""
    body = orjson.dumps({"model": "primary", "messages": MESSAGES})
    answers = await run_stream(
        processor_for(parse_config(config_text, "gateway.yaml", {})),
        [
            request_headers("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}),
            request_body(body),
        ],
    )
    mutation = answers[-1].request_body.response
    cluster = {
        o.header.key: o.header.raw_value.decode() for o in mutation.header_mutation.set_headers
    }[headers.CLUSTER]
    assert cluster.startswith(failover_cluster_name("primary"))
    sent: bytes = mutation.body_mutation.body
    return sent


def attempt(
    config_text: str, services: Services, provider: str, body: bytes
) -> tuple[RequestContext, PhaseOutput]:
    """One attempt at ``provider``, served by a worker running ``config_text``."""
    ctx = RequestContext(runtime=Runtime(parse_config(config_text, "gateway.yaml", {}), services))
    ctx.attributes = attempt_on(provider)
    ctx.request_headers = {":path": "/v1/chat/completions", headers.REQUEST_ID: "req-7"}
    stage = AttemptStage()
    stage.request_headers(ctx, PhaseOutput())
    out = PhaseOutput()
    stage.request_body(ctx, out, body)
    return ctx, out


def sent_json(out: PhaseOutput) -> dict[str, Any]:
    assert out.body is not None
    sent: dict[str, Any] = orjson.loads(out.body)
    return sent


async def test_the_chain_travels_in_the_body_without_the_fallbacks_the_caller_may_not_use() -> None:
    everyone = orjson.loads(await attempt_body(ADMITTED, "team1-key"))
    assert everyone[headers.FAILOVER_CHAIN_KEY] == [
        ["down", "primary", "primary"],
        ["mock-anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"],
        ["mock-bedrock", "amazon.titan-text-express-v1", "amazon.titan-text-express-v1"],
    ]
    marketing = orjson.loads(await attempt_body(ADMITTED, "team2-key"))
    assert [member[0] for member in marketing[headers.FAILOVER_CHAIN_KEY]] == [
        "down",
        "mock-bedrock",
    ]
    assert marketing["messages"] == MESSAGES


async def test_a_client_cannot_write_the_chain_itself() -> None:
    forged = [["mock-anthropic", "claude-3-5-haiku-latest", "claude-3-opus"]]
    body = orjson.dumps(
        {"model": "primary", "messages": MESSAGES, headers.FAILOVER_CHAIN_KEY: forged}
    )
    answers = await run_stream(
        processor_for(parse_config(ADMITTED, "gateway.yaml", {})),
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team2-key"}),
            request_body(body),
        ],
    )
    sent = orjson.loads(answers[-1].request_body.response.body_mutation.body)
    assert "mock-anthropic" not in str(sent[headers.FAILOVER_CHAIN_KEY])


@pytest.mark.parametrize("reloaded", [ADMITTED, PRIMARY_RETIRED, FALLBACK_SWAPPED])
async def test_an_attempt_after_a_reload_serves_the_fallback_the_request_was_admitted_with(
    services: Services, reloaded: str
) -> None:
    body = await attempt_body(ADMITTED, "team1-key")
    ctx, out = attempt(reloaded, services, "mock-anthropic", body)
    # Named, and so priced and logged, as the fallback it was admitted with.
    assert ctx.model == "claude-3-5-haiku-latest"
    assert out.set_headers[":path"] == "/v1/messages"
    sent = sent_json(out)
    assert sent["model"] == "claude-3-5-haiku-latest"
    assert headers.FAILOVER_CHAIN_KEY not in sent


async def test_an_openai_attempt_sends_the_clients_body_without_the_chain(
    services: Services,
) -> None:
    body = await attempt_body(ADMITTED, "team1-key")
    _, out = attempt(PRIMARY_RETIRED, services, "down", body)
    assert sent_json(out) == {"model": "primary", "messages": MESSAGES}
    assert out.set_headers["content-length"] == str(len(out.body or b""))
    assert out.set_headers["authorization"] == "Bearer down-key-123"


async def test_an_attempt_signs_with_the_credentials_of_the_config_serving_it(
    services: Services,
) -> None:
    body = await attempt_body(ADMITTED, "team1-key")
    _, out = attempt(KEY_ROTATED, services, "mock-anthropic", body)
    assert out.set_headers["x-api-key"] == "rotated-key-456"


async def test_a_fallback_whose_provider_a_reload_removed_is_a_clear_502(
    services: Services,
) -> None:
    body = await attempt_body(ADMITTED, "team1-key")
    gone = ADMITTED.replace(
        "  - {name: down, base_url: 'http://127.0.0.1:1/v1', api_key: down-key-123}\n", ""
    ).replace(
        "  - {name: primary, provider: down,"
        " fallbacks: [claude-3-5-haiku-latest, amazon.titan-text-express-v1]}\n",
        "",
    )
    with pytest.raises(UpstreamError) as refused:
        attempt(gone, services, "down", body)
    assert refused.value.status == 502
    assert refused.value.code == "failover_provider_removed"
    assert "down-key-123" not in str(refused.value)


async def test_an_attempt_on_a_provider_its_chain_does_not_name_is_refused(
    services: Services,
) -> None:
    # team2 may not use the Anthropic fallback: its chain leaves it out.
    body = await attempt_body(ADMITTED, "team2-key")
    with pytest.raises(UpstreamError) as refused:
        attempt(ADMITTED, services, "mock-anthropic", body)
    assert refused.value.code == "failover_misrouted"


def test_an_attempt_without_a_chain_is_refused(services: Services) -> None:
    body = orjson.dumps({"model": "primary", "messages": MESSAGES})
    with pytest.raises(UpstreamError) as refused:
        attempt(ADMITTED, services, "mock-anthropic", body)
    assert refused.value.code == "failover_misrouted"
