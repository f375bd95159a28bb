"""A PDF attached with the openai client, answered by Claude on Anthropic and on Bedrock.

Through the real Envoy and gateway to the mock providers, which refuse a document that is
no PDF and (Converse) two documents of one name in a request. The part used to be refused
by the gateway with a 400 ("content parts of type 'file' cannot be sent to this model").
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

KEY = "team1-key"
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n").decode()


def attached(filename: str, text: str) -> Any:
    part = {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}"}}
    part["file"]["filename"] = filename
    return {"role": "user", "content": [part, {"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("route", "model"),
    [("/anthropic", "claude-3-5-haiku-latest"), ("/bedrock/haiku", "haiku")],
    ids=["anthropic", "bedrock"],
)
def test_a_conversation_with_pdfs_is_answered(
    stack: LocalStack, gateway_log: GatewayLog, route: str, model: str
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}{route}", api_key=KEY, max_retries=0)
    # The same file attached twice in one conversation (Converse needs the names apart).
    messages = [
        attached("report.pdf", "Summarise this."),
        {"role": "assistant", "content": "It is a quarterly report."},
        attached("report.pdf", "And this newer one?"),
    ]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "stop"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["http_status_code"] == 200 and line["completion_tokens"] > 0
    sent = str(mock_requests(stack)[-1]["json"]["messages"])
    assert sent.count(PDF) == 2
