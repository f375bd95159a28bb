"""An agent server's error never hands Bob his own key back unstarred.

Bob (key ``team2-key``) calls the MCP server ``tools`` and the A2A agent ``helper``, both
with a gateway ``api_key``, so their answers are searched. His key never goes upstream,
but a client whose settings were swapped sends it in a tool's arguments or a message's
text, and the server's error quotes it ("invalid value ..."). Bob's SDK raises that
error and whatever logs his errors kept the key: the answer was searched for the
server's key alone, while the LLM path stars the client's own key out of a provider's
errors. Now it is starred in error answers (HTTP 4xx/5xx, a JSON-RPC error under HTTP
200, an SSE event of one); a result that echoes what Bob sent is his own data and
passes as it came, and nothing is counted as the server's credential echo.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.runtime import Services
from tests.unit.test_agent_credential_echo import MESSAGE, SSE, answered

BOBS_KEY = "team2-key"


def stars(body: bytes, form: str = BOBS_KEY) -> bytes:
    return body.replace(form.encode(), b"*" * len(form))


def rpc_error(request_id: object, message: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": message}}
    )


def tool_result(text: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}]}}
    )


def echoes_counted(services: Services) -> float | None:
    return services.metrics.registry.get_sample_value(
        "aigw_agent_credential_echoes_total", {"server": "tools"}
    )


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        pytest.param(400, b'{"detail": "bad argument token=team2-key"}', id="400-json"),
        pytest.param(422, rpc_error(7, "invalid value 'team2-key' for 'q'"), id="422-jsonrpc"),
        pytest.param(500, b"<html>crashed on team2-key</html>", id="500-page-with-json-type"),
        pytest.param(200, rpc_error(7, "invalid value 'team2-key' for 'q'"), id="200-jsonrpc"),
    ],
)
async def test_an_error_quoting_bobs_own_key_reaches_him_starred(
    config: GatewayConfig, services: Services, status: int, answer: bytes
) -> None:
    headers = {"content-type": "application/json"}
    seen, _ = await answered(config, services, [answer], status=status, headers=headers)
    assert seen == stars(answer)
    # Bob's key is no credential of the gateway's: no echo of the server's to fix.
    assert echoes_counted(services) == 0.0


async def test_a_result_echoing_what_bob_sent_is_his_own_and_passes(
    config: GatewayConfig, services: Services
) -> None:
    answer = tool_result("echo: team2-key")
    seen, _ = await answered(config, services, [answer])
    assert seen == answer


async def test_in_a_stream_only_the_error_event_is_starred_even_split_over_chunks(
    config: GatewayConfig, services: Services
) -> None:
    echoed = b"event: message\r\ndata: " + tool_result("echo: team2-key") + b"\r\n\r\n"
    error = b"event: message\r\ndata: " + rpc_error(7, "refused team2-key") + b"\r\n\r\n"
    after = b"data: " + tool_result("again team2-key") + b"\n\n"
    stream = echoed + error + after
    expected = echoed + stars(error) + after
    # Cut between the "error" member and the key, inside the member, inside the key.
    at = len(echoed)
    for cut in (at + error.index(b'"error"') + 3, at + error.index(BOBS_KEY.encode()) + 4):
        chunks = [stream[:cut], stream[cut:]]
        seen, _ = await answered(config, services, chunks, headers={"content-type": SSE})
        assert seen == expected, cut


async def test_an_a2a_agents_error_under_200_is_starred(
    config: GatewayConfig, services: Services
) -> None:
    answer = rpc_error("m1", "cannot parse message part 'team2-key'")
    seen, _ = await answered(config, services, [answer], path="/a2a/helper/", body=MESSAGE)
    assert seen == stars(answer)


async def test_a_header_of_an_error_quoting_bobs_key_is_starred(
    config: GatewayConfig, services: Services
) -> None:
    debug = {"x-debug-argument": "q=team2-key", "content-type": "application/json"}
    _, head = await answered(config, services, [b"{}"], status=400, headers=debug)
    mutation = head.response_headers.response.header_mutation
    changed = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert changed["x-debug-argument"] == "q=" + "*" * len(BOBS_KEY)
    assert echoes_counted(services) == 0.0


async def test_a_server_without_a_gateway_credential_still_pays_nothing(
    config: GatewayConfig, services: Services
) -> None:
    answer = b'{"detail": "bad argument team2-key"}'
    _, head = await answered(config, services, [answer], path="/open", status=400)
    # Envoy delivers the answer: no body message reaches the gateway.
    assert head.mode_override.response_body_mode == head.mode_override.NONE
