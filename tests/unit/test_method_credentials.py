"""A key sent as the request's HTTP method is repeated by no one.

Envoy passes a method of any token characters on over HTTP/2, and the gateway
repeated it in its 405, its log line's ``method`` and (through Envoy's own
``%REQ(:METHOD)%``) Envoy's access log and span. A method that holds a credential is
``[redacted]`` in all of them now; a registered method, or another that holds none,
is recorded as sent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.headers import METADATA_NAMESPACE
from extproc.http_methods import ENVOY_METHOD, REGISTERED_METHODS
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import request_headers, run_stream
from tests.unit.sse_play import only_line

KEY = "team1-key"
PROJECT_KEY = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 3
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2


async def refused(processor: Processor, method: str) -> tuple[ext.ProcessingResponse, Any]:
    """The gateway's answer to ``method`` on the chat route, and its metadata."""
    headers = {"authorization": f"Bearer {KEY}"}
    [answer] = await run_stream(
        processor, [request_headers("/v1/chat/completions", method=method, headers=headers)]
    )
    metadata = answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
    return answer, metadata


@pytest.mark.parametrize(
    "method",
    [PROJECT_KEY, PROJECT_KEY.upper(), GITHUB_TOKEN, KEY, KEY.upper(), f"X-{KEY}"],
    ids=["project-key", "project-key-upper-cased", "github-token", "own-key",
         "own-key-upper-cased", "own-key-inside"],
)  # fmt: skip
async def test_a_method_holding_a_credential_is_redacted_for_every_reader(
    processor: Processor, services: Services, method: str
) -> None:
    answer, metadata = await refused(processor, method)
    refusal = answer.immediate_response
    assert refusal.status.code == 405
    assert orjson.loads(refusal.body)["error"]["message"] == (
        "[redacted] is not allowed on /v1/chat/completions; use POST"
    )
    line = only_line(services)
    assert line["method"] == "[redacted]"
    # Envoy's access log and span read the method from here (ENVOY_METHOD).
    assert metadata.fields["method"].string_value == "[redacted]"
    for seen in (refusal.body, orjson.dumps(line), answer.SerializeToString()):
        assert method.encode() not in seen
        assert method.lower().encode() not in seen


@pytest.mark.parametrize("method", ["GET", "PROPFIND", "FETCH"])
async def test_a_method_holding_no_credential_is_recorded_as_sent(
    processor: Processor, services: Services, method: str
) -> None:
    answer, metadata = await refused(processor, method)
    message = orjson.loads(answer.immediate_response.body)["error"]["message"]
    assert message == f"{method} is not allowed on /v1/chat/completions; use POST"
    assert only_line(services)["method"] == method
    # Envoy's access log prints the method the gateway's first answer names.
    assert metadata.fields["method"].string_value == method


def test_envoys_method_is_the_gateways_or_a_registered_one() -> None:
    # Envoy's own %REQ(:METHOD)% wrote a key sent as the method whole to its access
    # log; without the gateway's metadata (a gateway not reachable) it writes a
    # registered method as sent, and no other.
    ours = f"metadata.filter_metadata['{METADATA_NAMESPACE}']"
    assert ENVOY_METHOD.startswith(f"%CEL('{METADATA_NAMESPACE}' in metadata.filter_metadata")
    assert f"? {ours}['method'] : request.method in ['ACL', " in ENVOY_METHOD
    assert all(f"'{method}'" in ENVOY_METHOD for method in REGISTERED_METHODS)
    assert ENVOY_METHOD.endswith(": '[redacted]')%")
    # The formatter ends the expression at its first ")": none inside it.
    assert ENVOY_METHOD.count(")") == 1
