"""What every request reads from Envoy's messages is read once per request, with the same
answer each later reader got when each read for itself (issue #2's last microseconds)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.phase_budget import CONFIG, messages
from extproc.config import load_config, parse_config
from extproc.context import BodyHints, RequestContext
from extproc.devstack import DEFAULT_CONFIG
from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.processor import body_hints
from extproc.runtime import Runtime, Services
from extproc.stages import authentication
from extproc.stages.authentication import presented_credential
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_headers, run_stream
from tests.unit.conftest import MemoryLog

PARTNER_ROUTE = """
  - name: partner
    path_prefix: /partner
    auth: {methods: [api_key], api_key_header: x-partner-key}
"""


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
async def test_the_clients_credential_is_read_from_its_headers_once(
    monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """Authentication, the model's credential check and the log line's redaction each
    ask for the key the request presented: the headers are searched for it once."""
    reads: list[str | None] = []
    read = authentication._credential

    def counted(headers: dict[str, str], route_header: str | None) -> str | None:
        reads.append(route_header)
        return read(headers, route_header)

    monkeypatch.setattr(authentication, "_credential", counted)
    log = MemoryLog()
    processor = processor_for(load_config(CONFIG, environ={}), Services(GatewayMetrics(), log))
    await run_stream(processor, [message for _, message in messages(lean=lean)])
    [line] = log.lines()
    assert (line["outcome"], line["api_key_id"]) == ("completed", "team1")
    assert len(reads) == 1


def test_a_route_that_names_another_key_header_reads_the_credential_anew() -> None:
    """The credential read is kept with the header its route names: a request whose route
    changes (a failover attempt takes its client's route) reads the one that route takes."""
    text = DEFAULT_CONFIG.read_text().replace("\nroutes:\n", "\nroutes:" + PARTNER_ROUTE, 1)
    config = parse_config(text, "gateway.yaml", {})
    runtime = Runtime(config, Services(GatewayMetrics(), MemoryLog()))
    routes = {route.name: route for route in config.routes}
    ctx = RequestContext(runtime=runtime)
    ctx.request_headers = {"x-partner-key": "partner-key-1", "x-api-key": "team-key-22"}
    for name, presented in [
        ("partner", "partner-key-1"),
        ("openai-chat", "team-key-22"),
        ("partner", "partner-key-1"),
    ]:
        ctx.route = routes[name]
        assert presented_credential(ctx) == presented
    ctx.route = None
    assert presented_credential(ctx) is None


@pytest.mark.parametrize(
    ("read", "hints"),
    [
        ({"model": "gpt-4o-mini", "stream": True}, BodyHints("gpt-4o-mini", True)),
        ({"model": "gpt-4o-mini", "stream": False}, BodyHints("gpt-4o-mini", False)),
        # No `stream` in a body Envoy parsed: not streamed, as the APIs define it.
        ({"model": "gpt-4o-mini"}, BodyHints("gpt-4o-mini", False)),
        # A `stream` of another type is no hint: the gateway's parse refuses it.
        ({"model": "gpt-4o-mini", "stream": "yes"}, BodyHints("gpt-4o-mini", None)),
        ({"model": "gpt-4o-mini", "stream": None}, BodyHints("gpt-4o-mini", None)),
        ({"model": 4, "stream": False}, None),
        ({"model": None}, None),
        ({"stream": True}, None),
        (None, None),
    ],
)
def test_envoys_reading_of_the_body_is_taken_by_each_values_kind(
    read: dict[str, Any] | None, hints: BodyHints | None
) -> None:
    message = request_headers("/v1/chat/completions")
    if read is not None:
        message.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(read)
    assert body_hints(message.metadata_context) == hints
