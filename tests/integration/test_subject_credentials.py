"""Keys where a client's value goes, through the real Envoy with the openai SDK: in a
header a quota counts by (refused before anything is counted), and in a body value a
refusal quotes (never in the gateway's log line, another's never quoted back)."""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    envoy_access_log,
    mock_requests,
    running_stack,
    wait_for,
    write_config,
)
from tests.unit.test_query_credential_shapes import GATEWAY_KEY

# The client's own key: random, of no well-known shape.
KEY = "Zr4kSUBJECTkey-team-8c1e7b3dWq2m"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("subject-credentials")
    config = default_config()
    config["auth"]["api_keys"].append({"id": "subject-review", "key": KEY})
    rule = {"name": "each-team", "subject": "header:x-team", "requests_per_minute": 100}
    config.setdefault("quotas", {}).setdefault("rules", []).append(rule)
    with running_stack(workdir, write_config(workdir, config)) as stack:
        yield stack


def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


@pytest.mark.parametrize("secret", [KEY, GATEWAY_KEY], ids=["own-key", "gateway-key"])
def test_a_key_in_a_counted_header_is_refused_before_any_provider(
    counted: LocalStack, secret: str
) -> None:
    before = len(mock_requests(counted))
    with pytest.raises(openai.BadRequestError) as refused:
        client(counted).chat.completions.create(
            model="gpt-4o-mini", messages=USER, extra_headers={"x-team": secret}
        )
    error = refused.value
    assert error.status_code == 400 and error.code == "credential_in_header"
    assert "header 'x-team' holds" in error.message and secret not in error.response.text
    assert len(mock_requests(counted)) == before
    [line] = GatewayLog(counted.gateway_log).for_request(error.response.headers["x-request-id"])
    assert line["error_code"] == "credential_in_header"
    assert secret not in str(line)
    # The same client with its team's name is served.
    answer = client(counted).chat.completions.create(
        model="gpt-4o-mini", messages=USER, extra_headers={"x-team": "blue"}
    )
    assert answer.choices[0].message.content


def test_a_key_in_a_quoted_body_value_is_not_logged(counted: LocalStack) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(counted).chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=USER,
            response_format={"type": GATEWAY_KEY},  # type: ignore[typeddict-item]
        )
    error = refused.value
    assert error.status_code == 400
    assert "'response_format.type': [redacted]" in error.message
    assert GATEWAY_KEY[5:25] not in error.response.text
    [line] = GatewayLog(counted.gateway_log).for_request(error.response.headers["x-request-id"])
    assert "[redacted]" in line["error_message"]
    assert GATEWAY_KEY[5:25] not in str(line)


def test_a_providers_error_quoting_the_clients_key_shows_it_starred(counted: LocalStack) -> None:
    # The gateway passes service_tier on to an OpenAI-compatible provider, whose 400
    # quotes the value it refused, as OpenAI's does: the client's own key, sent there by
    # mistake, came back whole into whatever logs its errors. Starred, its length kept:
    # the answer takes the lean path, whose headers have left before its body is read.
    with pytest.raises(openai.BadRequestError) as refused:
        client(counted).chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            service_tier=KEY,  # type: ignore[arg-type]
        )
    error = refused.value
    assert error.status_code == 400
    assert f"Invalid value for 'service_tier': '{'*' * len(KEY)}'" in error.message
    assert KEY not in error.response.text
    [line] = GatewayLog(counted.gateway_log).for_request(error.response.headers["x-request-id"])
    assert line["http_status_code"] == 400
    assert KEY not in str(line)


def test_a_providers_error_event_quoting_the_clients_key_shows_it_starred(
    counted: LocalStack,
) -> None:
    # The stream's 200 has left when the provider refuses the value the client sent as
    # its user (its own key, by mistake) in an error event quoting it: the SDK raised it
    # with the key whole in its message, and the log line's error_message held it.
    fault = {"x-mock-fault": "error_after=1;error_quotes_user=1"}
    stream = client(counted).chat.completions.create(
        model="gpt-4o-mini", messages=USER, user=KEY, stream=True, extra_headers=fault
    )
    with stream, pytest.raises(openai.APIError) as failed:
        for _ in stream:
            pass
    error = failed.value
    assert f"Invalid value for 'user': '{'*' * len(KEY)}'" in error.message
    assert KEY not in str(error.body)
    [line] = GatewayLog(counted.gateway_log).for_request(stream.response.headers["x-request-id"])
    assert line["outcome"] == "upstream_error"
    assert "Invalid value for 'user'" in line["error_message"]
    assert KEY not in str(line)


def _hpack_literal(name: str, value: str) -> bytes:
    """One header as HPACK's literal without indexing, its name and value unencoded."""
    assert len(name) < 127 and len(value) < 127  # one-byte lengths
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame: a 24-bit length, its type, flags and stream, then ``payload``."""
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)
    return head + payload


def send_h2_method(stack: LocalStack, method: str, path: str) -> None:
    """One HTTP/2 request (cleartext, prior knowledge) with ``method`` as its :method:
    the HTTP/1.1 codec refuses a method it does not know before any filter, HTTP/2's
    takes any token. The clients at hand (httpx, the SDKs) upper-case a method or speak
    HTTP/1.1 alone, hence the frames by hand; the answer is read from the logs."""
    host, port = stack.base_url.removeprefix("http://").rsplit(":", 1)
    fields = {":method": method, ":scheme": "http", ":path": path, ":authority": "gateway",
              "authorization": f"Bearer {KEY}"}  # fmt: skip
    block = b"".join(_hpack_literal(name, value) for name, value in fields.items())
    settings = _h2_frame(0x4, 0, 0, b"")
    headers = _h2_frame(0x1, 0x4 | 0x1, 1, block)  # END_HEADERS | END_STREAM
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers)
        connection.settimeout(1.0)
        try:
            while connection.recv(65536):  # Envoy's answer, until it closes or goes quiet
                pass
        except TimeoutError:
            pass  # answered; Envoy keeps an HTTP/2 connection open


@pytest.mark.parametrize(
    "method", ["sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 3, KEY], ids=["project-key", "own-key"]
)
def test_a_key_sent_as_the_method_is_in_neither_log(counted: LocalStack, method: str) -> None:
    # Over HTTP/2 Envoy passed the method on: the gateway's 405 and its log line's
    # method quoted a project key whole, and Envoy's access log (%REQ(:METHOD)%) held
    # the client's own key as well.
    path = f"/openai/probe-{uuid.uuid4().hex[:12]}"
    send_h2_method(counted, method, path)
    [line] = wait_for(
        lambda: [line for line in GatewayLog(counted.gateway_log).lines() if line["path"] == path],
        10.0,
    )
    assert (line["http_status_code"], line["method"]) == (405, "[redacted]")
    assert method not in str(line)
    envoy = [text for text in envoy_access_log(counted).splitlines() if path in text]
    assert len(envoy) == 1
    assert '"method":"[redacted]"' in envoy[0] and '"response_code":405' in envoy[0]
    assert method not in envoy_access_log(counted)


def test_a_registered_method_is_in_both_logs_as_sent(counted: LocalStack) -> None:
    path = f"/openai/probe-{uuid.uuid4().hex[:12]}"
    send_h2_method(counted, "PATCH", path)
    [line] = wait_for(
        lambda: [line for line in GatewayLog(counted.gateway_log).lines() if line["path"] == path],
        10.0,
    )
    assert (line["http_status_code"], line["method"]) == (405, "PATCH")
    envoy = [text for text in envoy_access_log(counted).splitlines() if path in text]
    assert len(envoy) == 1 and '"method":"PATCH"' in envoy[0]
