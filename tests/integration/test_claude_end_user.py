"""An app that names its end user by e-mail address, talking to Claude with the openai client.

Through the real Envoy and gateway to the mock Anthropic API, which refuses a
``metadata.user_id`` holding an e-mail address as Anthropic does. OpenAI takes any string as
``user``; the same request to Claude used to fail with a 400 about ``metadata.user_id``, a
field the client never sent. Now it is answered, whole and streamed, and billed; an opaque
id still reaches Anthropic.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

KEY = "team1-key"
MODEL = "claude-3-5-haiku-latest"
EMAIL = "jane.doe@example.com"


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_email_address_as_user_is_answered_without_it(
    stack: LocalStack, gateway_log: GatewayLog, stream: bool
) -> None:
    messages: Any = [{"role": "user", "content": "Hi"}]
    raw = client(stack).chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, user=EMAIL, stream=stream
    )
    if stream:
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
        )
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text
    sent = mock_requests(stack)[-1]["json"]
    # The address never reached Anthropic, under any name.
    assert "metadata" not in sent
    assert EMAIL not in str(sent)
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["http_status_code"] == 200
    assert line["completion_tokens"] > 0


def test_an_opaque_user_id_reaches_anthropic(stack: LocalStack) -> None:
    completion = client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], user="u-7f3a9c"
    )
    assert completion.choices[0].finish_reason == "stop"
    assert mock_requests(stack)[-1]["json"]["metadata"] == {"user_id": "u-7f3a9c"}
