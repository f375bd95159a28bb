"""What Envoy adds about the client is not sent to a provider.

A provider is a third party: the address of the employee's machine is not its business.
Envoy writes the client's address into ``x-forwarded-for`` and
``x-envoy-external-address`` on every request it forwards; provider routes remove them
(and a client's own ``x-forwarded-for``, which would tell the provider whatever the
client wrote).
"""

from __future__ import annotations

import httpx

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# Headers that carry the client's address to the provider.
ABOUT_THE_CLIENT = ("x-forwarded-for", "x-envoy-external-address")


def test_the_provider_does_not_learn_the_clients_address(
    stack: LocalStack,
) -> None:
    httpx.delete(f"{stack.mock_url}/_mock/requests")
    answer = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer team1-key", "x-forwarded-for": "203.0.113.7"},
    )
    assert answer.status_code == 200

    [received] = mock_requests(stack)
    sent = {name.lower() for name in received["headers"]}
    assert "authorization" in sent  # the provider's key: the request is the gateway's
    assert [name for name in ABOUT_THE_CLIENT if name in sent] == []
    assert "203.0.113.7" not in str(received["headers"])
