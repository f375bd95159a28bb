"""What a failover attempt reports of its provider's answer to the downstream filter
(``extproc.attempt_report``): read back as written, never from a provider.

The real Envoy carries it in ``tests/integration/test_failover_last_member.py``; here the
per-attempt filter's gRPC stream is played with real ext_proc messages
(``tests.unit.test_failover_cut_attempts``).
"""

from __future__ import annotations

import base64

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.attempt_report import AttemptReport, decode, encode
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.translators.answer_errors import ProviderAnswerError
from extproc.translators.unreadable_answers import UnreadableAnswerError
from tests.unit.test_failover_cut_attempts import (
    ANSWER,
    attempt,
    failover_config,  # noqa: F401 (fixture)
    gateway,
    request_sent,
)

FORGED = encode(AttemptReport(200, ProviderAnswerError("forged", error_type="x", code=None)))


def _b64(document: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(document)).decode()


def test_a_report_reads_back_as_the_attempt_wrote_it() -> None:
    assert decode(encode(AttemptReport(529))) == AttemptReport(529)
    # A provider's words of any kind make a valid header value.
    said = ProviderAnswerError("Überlastet\r\nretry later", error_type="overloaded_error", code="x")
    value = encode(AttemptReport(200, said))
    assert value.isascii() and value.isprintable()
    found = decode(value)
    assert found is not None and found.status == 200
    assert isinstance(found.error, ProviderAnswerError)
    assert (found.error.message, found.error.error_type, found.error.code) == (
        "Überlastet\r\nretry later",
        "overloaded_error",
        "x",
    )
    unreadable = decode(encode(AttemptReport(200, UnreadableAnswerError("unreadable"))))
    assert unreadable is not None and isinstance(unreadable.error, UnreadableAnswerError)
    assert (unreadable.error.code, unreadable.error.status) == ("invalid_upstream_response", 502)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "not base64 !",
        base64.urlsafe_b64encode(b"not json").decode(),
        _b64([529]),
        _b64({"status": "529"}),
        _b64({"status": True}),
        _b64({"status": 42}),
        _b64({"status": 200, "error": {"kind": "other", "type": "t", "message": "m"}}),
        _b64(
            {"status": 200, "error": {"kind": "provider", "type": "t", "code": 1, "message": "m"}}
        ),
        _b64({"status": 200, "error": {"kind": "provider", "type": "t", "message": "m" * 20000}}),
    ],
)
def test_a_value_no_attempt_wrote_reports_nothing(value: str | None) -> None:
    assert decode(value) is None


def set_header(answer: ext.ProcessingResponse, name: str) -> str | None:
    phase = answer.WhichOneof("response")
    mutation = getattr(answer, phase).response.header_mutation
    found = [h.header.raw_value.decode() for h in mutation.set_headers if h.header.key == name]
    return found[0] if found else None


def removed(answer: ext.ProcessingResponse, name: str) -> bool:
    phase = answer.WhichOneof("response")
    return name in getattr(answer, phase).response.header_mutation.remove_headers


async def test_a_provider_cannot_send_the_report_itself(
    failover_config: GatewayConfig,  # noqa: F811
    services: Services,
) -> None:
    """A provider's own header would name the error the line logs: the attempt removes it
    from an answer it passes through and writes its own over it where it translates."""
    processor = gateway(failover_config, services)
    sent = await request_sent(processor)
    forged = {headers.ATTEMPT_UPSTREAM: FORGED}
    # gpt-4.1-nano on the mock: an OpenAI answer, passed through.
    _, answers = await attempt(processor, "mock", sent, 200, ANSWER, forged)
    [at_headers] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    assert removed(at_headers, headers.ATTEMPT_UPSTREAM)
    assert set_header(at_headers, headers.ATTEMPT_UPSTREAM) is None
    # Claude on mock-anthropic: its 529 is the OpenAI client's 503, reported as the 529.
    overloaded = orjson.dumps({"type": "error", "error": {"type": "overloaded_error"}})
    _, answers = await attempt(processor, "mock-anthropic", sent, 529, overloaded, forged)
    [at_headers] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    assert decode(set_header(at_headers, headers.ATTEMPT_UPSTREAM)) == AttemptReport(529)
    assert not removed(at_headers, headers.ATTEMPT_UPSTREAM)
