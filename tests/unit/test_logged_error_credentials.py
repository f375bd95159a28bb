"""A refusal that quotes what the client wrote never writes a key into the request log.

Some refusals quote the client's value (``request bodies with content-encoding '...'``,
``Invalid value for 'response_format.type': '...'``). A client that put its own key
there, or another key or token, found it in the request log's ``error_message``, which
operators keep and read; a value cut to 40 characters was no longer a key's shape, and
showed most of an ``aigw-`` key to the client and the log alike. Now the line shows
``[redacted]`` for this request's own credential (whole or a fragment) and for any
well-known shape, and a quoted value that holds a credential is not quoted at all.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import load_config
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog
from tests.unit.sse_play import only_line
from tests.unit.test_query_credential_shapes import GATEWAY_KEY, GITHUB

# The request's own org key: random, of no well-known shape (only knowing it finds it).
OWN_KEY = "org-7Hq2Lm9Xv4Tz8Kp3Wn6Rb1Yc5Fd0Gs"
CONFIG = load_config("config/gateway.yaml", environ={"TEAM1_API_KEY": OWN_KEY})
HEADERS = {"authorization": f"Bearer {OWN_KEY}"}
USER = [{"role": "user", "content": "hi"}]


def shows(text: str, secret: str) -> bool:
    """Whether ``text`` shows ``secret`` or a run of ten of its characters."""
    return any(secret[i : i + 10] in text for i in range(len(secret) - 9))


async def refused(
    path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, Any]]:
    """One request through the processor, refused: the status and body the client got,
    and the request's log line."""
    services = Services(GatewayMetrics(), MemoryLog())
    sent = orjson.dumps(body)
    messages = [request_headers(path, headers={**HEADERS, **(headers or {})}), request_body(sent)]
    answers = await run_stream(processor_for(CONFIG, services), messages)
    refusal = answers[-1].immediate_response
    return refusal.status.code, refusal.body, only_line(services)


@pytest.mark.parametrize("secret", [OWN_KEY, GATEWAY_KEY, GITHUB], ids=["own", "aigw", "github"])
async def test_a_header_value_quoted_by_a_refusal_is_not_logged(secret: str) -> None:
    status, _, line = await refused(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": USER},
        {"content-encoding": secret},
    )
    assert status == 415
    assert line["error_code"] == "unsupported_content_encoding"
    assert "content-encoding '[redacted]'" in line["error_message"]
    assert not shows(orjson.dumps(line).decode(), secret)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("claude-3-5-haiku-latest", {"response_format": {"type": "{secret}"}}),
        ("anthropic.claude-3-haiku-20240307-v1:0", {"response_format": {"type": "{secret}"}}),
        ("anthropic.claude-3-haiku-20240307-v1:0", {"service_tier": "{secret}"}),
    ],
    ids=["anthropic-response-format", "bedrock-response-format", "bedrock-service-tier"],
)
@pytest.mark.parametrize("secret", [OWN_KEY, GATEWAY_KEY, GITHUB], ids=["own", "aigw", "github"])
async def test_a_body_value_quoted_by_a_refusal_is_not_logged(
    model: str, field: dict[str, Any], secret: str
) -> None:
    filled = orjson.loads(orjson.dumps(field).replace(b"{secret}", secret.encode()))
    status, body, line = await refused(
        "/v1/chat/completions", {"model": model, "messages": USER, **filled}
    )
    assert status == 400
    said = orjson.loads(body)["error"]["message"]
    assert said == line["error_message"] or "[redacted]" in line["error_message"]
    assert not shows(orjson.dumps(line).decode(), secret)
    if secret != OWN_KEY:
        # Cut to 40 characters, a key was no longer its shape and was quoted mostly whole
        # to the client too; the client's own key it may see (it sent it).
        assert not shows(said, secret) and "[redacted]" in said


async def test_a_value_of_no_credential_is_still_quoted() -> None:
    status, body, line = await refused(
        "/v1/chat/completions",
        {"model": "claude-3-5-haiku-latest", "messages": USER, "response_format": {"type": "xml"}},
    )
    assert status == 400
    assert "'response_format.type': 'xml'" in orjson.loads(body)["error"]["message"]
    assert "'xml'" in line["error_message"]
