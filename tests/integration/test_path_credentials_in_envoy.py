"""A key in the request's path, through the real Envoy: its access log and its span.

The gateway's log line showed a path segment holding a credential as ``[redacted]``,
but Envoy's access log ``path`` and the span's ``http.url`` kept the path as sent, the
key with it. Now Envoy records the path as the gateway recorded it, and a path with a
well-known key shape the gateway never answered for (Envoy refused it first) as
``/[redacted]``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    envoy_access_log,
    wait_for,
)
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.test_tracing import running_traced_stack

ORG_KEY = "team1-key"
# Well-known shapes: a Google API key (as a Gemini client sends it) and an OpenAI key.
GOOGLE_KEY = "AIzaSyD4x9Q2wE7rT1yU6iO3pA8sD5fG0hJ2kLz"
OPENAI_KEY = "sk-proj-q8Wd3T3BlbkFJx7Rk2mPzL9vNc4YhGt6Sb1Ue5Af0Qj"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
BEARER = {"authorization": f"Bearer {ORG_KEY}"}
# A key of base64's alphabet, whose '+' and '=' a client percent-encodes in a path, and
# Envoy leaves encoded (it decodes only letters, digits and -._~).
ENCODED_KEY = "t3+Kq8Wd=Zp4Lm"
ENCODED_KEY_IN_PATH = "t3%2BKq8Wd%3DZp4Lm"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    def with_more_routes_and_keys(config: dict[str, Any]) -> None:
        gemini = {"name": "gemini-beta", "path_prefix": "/v1beta/models",
                  "api": "gemini_generate_content"}  # fmt: skip
        # An MCP server the gateway passes calls to (no one listens: Envoy answers 503,
        # after the gateway let the call through).
        mcp = {"name": "tools", "path_prefix": "/mcp/tools", "api": "mcp", "server": "tools"}
        config["routes"] = [mcp, gemini, *config["routes"]]
        config["auth"]["api_keys"].append(
            {"id": "team3", "key": ENCODED_KEY, "user_id": "carol", "group_id": "engineering"}
        )
        config["agents"] = {
            "servers": [
                {"name": "tools", "protocol": "mcp", "url": f"http://127.0.0.1:{REFUSED_PORT}/mcp"}
            ]
        }

    with running_traced_stack(
        tmp_path_factory,
        collector,
        "path-credentials",
        changed=with_more_routes_and_keys,
    ) as running:
        yield running


def traced() -> tuple[str, dict[str, str]]:
    """A fresh trace id and the traceparent that makes it the request's: Envoy's access
    log line and span are found by it, whatever Envoy answered."""
    trace_id = secrets.token_hex(16)
    return trace_id, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def post_traced(
    stack: LocalStack, path: str, headers: dict[str, str], **body: Any
) -> tuple[str, httpx.Response]:
    """``path`` posted with ``headers`` (and ``json=`` or ``content=``), traced: the trace
    id that finds Envoy's records of it, and the answer."""
    trace_id, traceparent = traced()
    answer = httpx.post(
        f"{stack.base_url}{path}", headers={**headers, **traceparent}, timeout=30.0, **body
    )
    return trace_id, answer


def envoy_records(
    stack: LocalStack, collector: OtlpReceiver, trace_id: str
) -> tuple[dict[str, Any], ReceivedSpan]:
    """Envoy's access log line and server span of the request traced by ``trace_id``."""
    return envoy_line(stack, trace_id), server_span(collector, trace_id)


def envoy_line(stack: LocalStack, trace_id: str) -> dict[str, Any]:
    found = wait_for(
        lambda: [line for line in envoy_access_log(stack).splitlines() if trace_id in line], 30
    )
    [line] = found
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


def server_span(collector: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    spans = wait_for(
        lambda: [s for s in collector.trace(trace_id) if "guid:x-request-id" in s.attributes], 30
    )
    return spans[0]


def test_a_swapped_openai_client_leaves_its_key_in_neither_envoy_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # The openai SDK with its settings swapped: its key in the base URL, a model name as
    # its key. The gateway refuses it (401) and its line showed /openai/[redacted]/...;
    # Envoy's access log and span kept /openai/team1-key/chat/completions.
    trace_id, headers = traced()
    swapped = openai.OpenAI(
        base_url=f"{stack.base_url}/openai/{ORG_KEY}",
        api_key="gpt-4o-mini",
        max_retries=0,
        default_headers=headers,
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        swapped.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    recorded = "/openai/[redacted]/chat/completions"
    assert line["path"] == recorded
    envoy, span = envoy_records(stack, collector, trace_id)
    assert (envoy["response_code"], envoy["path"]) == (401, recorded)
    assert span.attributes["http.url"].endswith(f"{stack.base_url.split('//')[1]}{recorded}")
    assert ORG_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_gemini_key_as_the_model_of_the_path_is_in_neither_envoy_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # Gemini's clients name the model in the path: a key given as the model is refused
    # (400 credential_in_model), and Envoy kept the path it received.
    trace_id, answer = post_traced(
        stack,
        f"/v1beta/models/{GOOGLE_KEY}:generateContent",
        {"x-goog-api-key": ORG_KEY},
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    assert answer.status_code == 400, answer.text
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == "/v1beta/models/[redacted]"
    assert span.attributes["http.url"].endswith("/v1beta/models/[redacted]")
    assert GOOGLE_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_served_request_with_its_own_key_in_the_path_is_recorded_without_it(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # The /openai route serves whatever follows the model's segment: the client's own
    # key there reached Envoy's records as sent.
    trace_id, answer = post_traced(
        stack, f"/openai/gpt-4o-mini/{ORG_KEY}/chat/completions", BEARER, json=CHAT
    )
    assert answer.status_code == 200, answer.text
    recorded = "/openai/gpt-4o-mini/[redacted]/chat/completions"
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == recorded
    assert span.attributes["http.url"].endswith(recorded)


def test_a_key_shape_in_a_path_envoy_refused_first_is_hidden_by_envoy(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # A body over Envoy's buffer is refused by Envoy (413) before the gateway reads it:
    # the gateway tells Envoy nothing, and Envoy finds the key's shape itself.
    trace_id, answer = post_traced(
        stack,
        f"/openai/{OPENAI_KEY}/chat/completions",
        {**BEARER, "content-type": "application/json"},
        content=orjson.dumps({**CHAT, "user": "x" * 1_300_000}),
    )
    assert answer.status_code == 413
    envoy, span = envoy_records(stack, collector, trace_id)
    assert (envoy["response_code"], envoy["path"]) == (413, "/[redacted]")
    assert span.attributes["http.url"].endswith("/[redacted]")
    assert OPENAI_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_an_ordinary_request_keeps_its_path_in_both_envoy_records(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    trace_id, answer = post_traced(
        stack, "/openai/gpt-4o-mini/chat/completions?api-version=2024-10-21", BEARER, json=CHAT
    )
    assert answer.status_code == 200, answer.text
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == "/openai/gpt-4o-mini/chat/completions"
    url = span.attributes["http.url"]
    assert url == f"{stack.base_url}/openai/gpt-4o-mini/chat/completions"


def test_a_percent_encoded_key_in_the_path_is_in_no_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # A key percent-encoded in the path: Envoy's normalize_path decodes -, letters and
    # digits, so the gateway and Envoy's RE2 read the key itself.
    for sent in (OPENAI_KEY.replace("-", "%2D"), "%73" + OPENAI_KEY[1:]):
        trace_id, answer = post_traced(stack, f"/openai/{sent}/chat/completions", BEARER, json=CHAT)
        assert answer.status_code == 400, answer.text
        recorded = "/openai/[redacted]/chat/completions"
        [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
        assert line["path"] == recorded
        envoy, span = envoy_records(stack, collector, trace_id)
        assert envoy["path"] == recorded
        assert span.attributes["http.url"].endswith(recorded)
        records = orjson.dumps([line, envoy]).decode() + repr(span)
        assert OPENAI_KEY not in records and sent not in records
        assert OPENAI_KEY[9:30] not in records


def test_a_served_request_with_its_own_key_percent_encoded_in_the_path_is_recorded_without_it(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # The key's '+' and '=' sent as %2B and %3D stay encoded through Envoy: the gateway's
    # substring test missed them, and its line, Envoy's access log and the span kept it.
    trace_id, answer = post_traced(
        stack,
        f"/openai/gpt-4o-mini/{ENCODED_KEY_IN_PATH}/chat/completions",
        {"authorization": f"Bearer {ENCODED_KEY}"},
        json=CHAT,
    )
    assert answer.status_code == 200, answer.text
    recorded = "/openai/gpt-4o-mini/[redacted]/chat/completions"
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert line["path"] == recorded
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == recorded
    assert span.attributes["http.url"].endswith(recorded)


def test_an_mcp_client_with_its_key_in_the_url_leaves_it_in_no_record(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # An MCP client configured with its key in the server's URL as well as its header:
    # the gateway passes the call on, and Envoy's access log and span kept the key.
    trace_id, answer = post_traced(
        stack,
        f"/mcp/tools/{ORG_KEY}",
        {**BEARER, "accept": "application/json, text/event-stream"},
        json=INITIALIZE,
    )
    assert answer.status_code == 503, answer.text
    recorded = "/mcp/tools/[redacted]"
    [line] = GatewayLog(stack.gateway_log).for_request(answer.headers["x-request-id"])
    assert line["path"] == recorded
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == recorded
    assert span.attributes["http.url"].endswith(recorded)
    assert ORG_KEY not in orjson.dumps([line, envoy]).decode() + repr(span)


def test_a_path_no_route_serves_keeps_the_callers_key_out_of_envoys_records(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # A path of no gateway route: the gateway writes no line, and Envoy answers its own
    # 404. Envoy's access log and span kept the caller's key, which has no well-known
    # shape for Envoy to find.
    trace_id, headers = traced()
    answer = httpx.get(
        f"{stack.base_url}/internal/{ORG_KEY}/status",
        headers={"authorization": f"Bearer {ORG_KEY}", **headers},
        timeout=30.0,
    )
    assert answer.status_code == 404, answer.text
    recorded = "/internal/[redacted]/status"
    envoy, span = envoy_records(stack, collector, trace_id)
    assert envoy["path"] == recorded
    assert span.attributes["http.url"].endswith(recorded)
    assert ORG_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_key_shape_in_a_served_path_is_hidden_by_the_gateway_for_envoy(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # A segment the gateway serves without searching it (its own line keeps it): the
    # gateway's first answer names the path /[redacted], which Envoy prints as it is.
    trace_id, answer = post_traced(
        stack, f"/openai/gpt-4o-mini/{GOOGLE_KEY}/chat/completions?a=1", BEARER, json=CHAT
    )
    assert answer.status_code == 200, answer.text
    envoy, span = envoy_records(stack, collector, trace_id)
    assert (envoy["method"], envoy["path"], envoy["route"]) == ("POST", "/[redacted]", "openai")
    assert span.attributes["http.url"].endswith("/[redacted]")
    assert span.attributes["http.method"] == "POST"
    assert GOOGLE_KEY not in orjson.dumps(envoy).decode() + repr(span)


def test_a_request_envoy_refused_first_is_logged_once_from_what_envoy_read(
    stack: LocalStack, collector: OtlpReceiver
) -> None:
    # Envoy's own 413 (a body over its buffer) for a path without a key shape: the
    # line's method and path are Envoy's reading of the request, the query left out,
    # written by one logger alone (the envoy_line helper finds exactly one line).
    trace_id, answer = post_traced(
        stack,
        "/openai/gpt-4o-mini/chat/completions?api-version=1",
        {**BEARER, "content-type": "application/json"},
        content=orjson.dumps({**CHAT, "user": "x" * 1_300_000}),
    )
    assert answer.status_code == 413
    envoy, span = envoy_records(stack, collector, trace_id)
    assert (envoy["response_code"], envoy["method"]) == (413, "POST")
    assert envoy["path"] == "/openai/gpt-4o-mini/chat/completions"
    assert span.attributes["http.url"].endswith("/openai/gpt-4o-mini/chat/completions")
