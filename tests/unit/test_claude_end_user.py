"""An OpenAI client's end user (``user``, ``safety_identifier``) reaching Claude.

OpenAI takes any string as ``user``, and apps often send the user's e-mail address.
Anthropic's ``metadata.user_id`` takes an opaque id of at most 256 characters and refuses
one holding an e-mail address with a 400, so the gateway's translation failed every
request of such an app on Claude ("metadata.user_id: user_id appears to contain an email
address"), naming a field the client never sent. Now what Anthropic would refuse is left
out, and the request is answered as one naming no end user.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.mock_llm.anthropic_api import InvalidRequestError, parse_messages_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.testing import request_body, request_headers, run_stream

AUTH = {"authorization": "Bearer team1-key"}
EMAIL = "jane.doe@example.com"
OPAQUE = "5f0c2b9e-3d4a-4e61-9b1f-2a7c8d9e0f11"


async def sent_to_claude(processor: Processor, **fields: Any) -> dict[str, Any]:
    """The Anthropic body the gateway sends for an OpenAI chat request with ``fields``."""
    chat = {
        "model": "claude-sonnet-4-0",
        "messages": [{"role": "user", "content": "Hi"}],
        **fields,
    }
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=AUTH), request_body(orjson.dumps(chat))],
    )
    [answer] = [a for a in answers if a.WhichOneof("response") == "request_body"]
    assert isinstance(answer, ext.ProcessingResponse)
    sent: dict[str, Any] = orjson.loads(answer.request_body.response.body_mutation.body)
    # Anthropic's API takes it (the mock refuses what the real API refuses).
    parse_messages_request(Body.parse(orjson.dumps(sent)))
    return sent


def test_anthropic_refuses_an_email_address_as_the_user_id() -> None:
    # What the gateway sent before, as the mock (like Anthropic) answers it.
    doc = {
        "model": "claude-sonnet-4-0",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
        "metadata": {"user_id": EMAIL},
    }
    with pytest.raises(InvalidRequestError, match="appears to contain an email address"):
        parse_messages_request(Body.parse(orjson.dumps(doc)))


@pytest.mark.parametrize(
    "fields",
    [
        {"user": EMAIL},
        {"safety_identifier": f"user:{EMAIL}"},
        {"user": "u" * 257},
    ],
    ids=["user-email", "safety-identifier-email", "user-too-long"],
)
async def test_an_end_user_id_anthropic_refuses_is_left_out(
    processor: Processor, fields: dict[str, Any]
) -> None:
    sent = await sent_to_claude(processor, **fields)
    assert "metadata" not in sent


@pytest.mark.parametrize(
    ("fields", "user_id"),
    [
        ({"user": OPAQUE}, OPAQUE),
        ({"safety_identifier": "u" * 256}, "u" * 256),
        # An app moving to safety_identifier may still send the address as `user`.
        ({"user": EMAIL, "safety_identifier": OPAQUE}, OPAQUE),
        ({"user": "u-1", "safety_identifier": OPAQUE}, "u-1"),
    ],
    ids=["uuid", "at-the-bound", "address-beside-an-opaque-id", "user-first"],
)
async def test_an_opaque_end_user_id_goes_as_metadata_user_id(
    processor: Processor, fields: dict[str, Any], user_id: str
) -> None:
    sent = await sent_to_claude(processor, **fields)
    assert sent["metadata"] == {"user_id": user_id}
