"""Keys where a client's value goes, through the real Envoy with the openai SDK: in a
header a quota counts by (refused before anything is counted), and in a body value a
refusal quotes (never in the gateway's log line, another's never quoted back)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    mock_requests,
    running_stack,
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
