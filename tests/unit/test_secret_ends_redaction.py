"""A provider key's ends are hidden where they show the key, not inside other words.

The gateway hides the first and last four characters of its provider keys wherever a
provider's error words show them (OpenAI names the key it refused by its ends). It hid
them anywhere, inside any word: with a key ending in "-key" (the mock's
``mock-provider-key``), Anthropic's own 401 ("invalid x-api-key") reached an Anthropic
client as "invalid x-api[redacted]". Four characters with a letter or digit against
them that the key has not there are another word's, and are kept; the key's ends
shown standing apart, or running on as the key does, are hidden as before.
"""

from __future__ import annotations

import anthropic
import httpx2
import orjson
import pytest

from extproc.errors import REDACTED, without_secrets
from extproc.processor import Processor
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

MOCK_KEY = "mock-provider-key"  # the default config's key of the mock providers
KEY = "Zq4vPROVIDERkey-openai-7d1c0e5aW9x3"  # shaped like a real one
MESSAGES_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
FROM_ANTHROPIC = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}


async def test_anthropics_invalid_x_api_key_reaches_the_client_unmangled(
    processor: Processor,
) -> None:
    refusal = orjson.dumps(
        {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    )
    request = {"model": "claude-3-5-haiku-latest", "max_tokens": 8,
               "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=MESSAGES_KEY),
            request_body(orjson.dumps(request)),
            response_headers(401, FROM_ANTHROPIC),
            response_body(refusal),
        ],
    )
    body = client_body([refusal], answers)

    def reply(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(502, headers={"content-type": "application/json"}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(reply))
    client = anthropic.Anthropic(
        base_url="http://gateway", api_key="team1-key", http_client=http, max_retries=0
    )
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**request)  # type: ignore[call-overload]
    message = raised.value.body["error"]["message"]  # type: ignore[index]
    assert message.endswith("The provider said: invalid x-api-key")
    assert "not a problem with your API key" in message


@pytest.mark.parametrize(
    ("said", "secret"),
    [
        ("invalid x-api-key", MOCK_KEY),  # "-key" inside "x-api-key"
        ("the mockingbird sings", MOCK_KEY),  # "mock" inside a word
        ("model not-found", "not-needed-placeholder"),  # a local server's placeholder
        ("the header is Zq4vs", KEY),  # a letter past the key's first four
        ("fooW9x3 is unknown", KEY),  # a letter before the key's last four
    ],
)
def test_four_characters_inside_another_word_are_kept(said: str, secret: str) -> None:
    assert without_secrets(said, [secret]) == said


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        (f"Incorrect API key provided: {KEY[:4]}...{KEY[-4:]}.", "Incorrect API key provided: "),
        (f"key ending in '{KEY[-4:]}'", "key ending in '"),
        (f"key {KEY[:4]} refused", "key "),
        (f"key xxxxxxxx{KEY[-4:]}", "key xxxxxxxx"),  # a mask of letters is no word
        (f"key {KEY[:4]}{KEY[-4:]}", "key "),  # the two ends glued to each other
        (f"key {KEY[:10]}zz", "key "),  # more than four of the key's in a row
        (f"key Q{KEY[-9:]}", "key Q"),
        (f"bad header x-api-key: {MOCK_KEY}", "bad header x-api-key: "),
    ],
)
def test_a_keys_ends_shown_are_hidden_as_before(said: str, shown: str) -> None:
    scrubbed = without_secrets(said, [KEY, MOCK_KEY])
    assert scrubbed.startswith(shown + REDACTED)
    for piece in (KEY[:4], KEY[-4:]):
        assert piece not in scrubbed
    assert MOCK_KEY not in scrubbed


def test_what_is_redacted_already_is_not_redacted_again() -> None:
    assert without_secrets("sk-ant-api03-Abc123 refused", ["abcdefgh-redacted"]) == (
        f"{REDACTED} refused"
    )


@pytest.mark.parametrize(
    ("secret", "said"),
    [
        ("sk-no-key-required", "The field 'messages' is required."),
        ("not-needed-placeholder", "A key is not needed; the placeholder was refused."),
        ("dummy-key-value", "Invalid value for key: value must be a string."),
        # A word-like key's start standing apart is a word, and tells nothing of a key.
        (MOCK_KEY, "key mock refused"),
    ],
)
def test_a_word_like_placeholder_key_leaves_the_providers_words_alone(
    secret: str, said: str
) -> None:
    # A local OpenAI-compatible server's placeholder key is words: its ends are words'
    # ends, and hiding them mangled the provider's message ("is [redacted]").
    assert without_secrets(said, [secret]) == said
    # Shown whole, it is hidden still.
    assert secret not in without_secrets(f"key {secret} refused", [secret])


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-Zq4vW9x3LmN8pQ2rT6yU1iO5aS7dF0gH",
        "AIzaSyD3xampleKeyValue1234567890abcdEFg",
        "gsk_ABCDEFGHIJKLMNOPQRSTUVWXyz0123456789",
        "a1b2c3d4e5f6a7b8c9d0",
    ],
)
def test_a_random_keys_ends_are_still_hidden(secret: str) -> None:
    for shown in (secret[:6], secret[-6:], f"{secret[:4]}...{secret[-4:]}"):
        out = without_secrets(f"Incorrect API key provided: {shown}.", [secret])
        assert secret[:4] not in out or secret[-4:] not in out, out
        assert shown not in out, out
