"""A provider's error page reaches google-genai as Google's error, not as the page.

Google's front answers some 502s and 503s with an HTML page, and a proxy in front of
Vertex (the gateway's egress proxy, a corporate one) answers its own errors so. Passed on
as it came to a client of Gemini's API, google-genai raised the whole page as the error's
message, with the reason phrase ("Service Unavailable") as its ``status`` where Google
names one (``UNAVAILABLE``); on the Anthropic and Bedrock routes such a page already
became the client's own error shape. Each test plays the call through the processor, then
hands what the client receives to the real SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
)
from tests.unit.test_gemini_review import KEY, PREFIX, memory_services, play, vertex

__all__ = ["vertex"]

FROM_VERTEX = {"x-envoy-upstream-service-time": "3"}
GOOGLE_PAGE = (
    b"<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title>"
    b"<p><b>502.</b> <ins>That's an error.</ins><p>The server encountered a temporary error"
    b" and could not complete your request.<p>Please try again in 30 seconds.</html>"
)


async def what_the_client_gets(
    vertex: tuple[str, Path], operation: str, status: int, content_type: str, page: bytes
) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body a Gemini client receives of Vertex's error answer."""
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}:{operation}", headers=KEY),
            request_body(b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}'),
            response_headers(status, {"content-type": content_type, **FROM_VERTEX}),
            response_body(page),
        ],
        memory_services(),
    )
    [at_headers] = [a for a in answers if a.WhichOneof("response") == "response_headers"]
    mutation = at_headers.response_headers.response.header_mutation
    sent = {"content-type": content_type}
    for removed in mutation.remove_headers:
        sent.pop(removed, None)
    sent.update({h.header.key: h.header.raw_value.decode() for h in mutation.set_headers})
    return status, sent, client_body([page], answers)


def genai_raises(answer: tuple[int, dict[str, str], bytes], operation: str) -> errors.APIError:
    """What google-genai raises for ``answer``, the call being ``operation``."""
    status, headers, body = answer

    def reply(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=body)

    http = httpx.Client(transport=httpx.MockTransport(reply))
    options = types.HttpOptions(base_url="http://gateway", api_version="v1beta", httpx_client=http)
    client = genai.Client(api_key="team1-key", http_options=options)
    calls: dict[str, Any] = {
        "generateContent": lambda: client.models.generate_content(
            model="gemini-2.5-flash", contents="hi"
        ),
        "streamGenerateContent?alt=sse": lambda: list(
            client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        ),
        "countTokens": lambda: client.models.count_tokens(model="gemini-2.5-flash", contents="hi"),
    }
    with pytest.raises(errors.APIError) as raised:
        calls[operation]()
    return raised.value


OPERATIONS = ["generateContent", "streamGenerateContent?alt=sse", "countTokens"]
PROXY_503 = b"upstream connect error or disconnect/reset before headers"


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    ("status", "content_type", "page", "google_status"),
    [
        (502, "text/html; charset=UTF-8", GOOGLE_PAGE, "UNAVAILABLE"),
        (503, "text/plain", PROXY_503, "UNAVAILABLE"),
        (429, "text/html", b"<html><body>Too many requests</body></html>", "RESOURCE_EXHAUSTED"),
        (500, "application/json", b"", "INTERNAL"),
    ],
    ids=["googles-502-page", "a-proxys-503", "a-proxys-429", "no-body"],
)  # fmt: skip
async def test_a_page_instead_of_googles_error_is_raised_as_googles_error(
    vertex: tuple[str, Path],
    operation: str,
    status: int,
    content_type: str,
    page: bytes,
    google_status: str,
) -> None:
    answer = await what_the_client_gets(vertex, operation, status, content_type, page)
    raised = genai_raises(answer, operation)
    assert (raised.code, raised.status) == (status, google_status)
    assert raised.message == f"the provider answered with HTTP {status}"
    assert isinstance(raised, errors.ServerError if status >= 500 else errors.ClientError)


async def test_googles_own_error_still_reaches_the_sdk_as_it_came(
    vertex: tuple[str, Path],
) -> None:
    said = (
        b'{"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com/'
        b'generate_content_requests_per_minute", "status": "RESOURCE_EXHAUSTED"}}'
    )
    answer = await what_the_client_gets(vertex, "generateContent", 429, "application/json", said)
    assert answer[2] == said
    raised = genai_raises(answer, "generateContent")
    assert (raised.code, raised.status) == (429, "RESOURCE_EXHAUSTED")
    assert raised.message.startswith("Quota exceeded for aiplatform")
