"""A PDF an OpenAI chat client attaches, sent to Claude and to Bedrock's Converse.

The ``openai`` SDK sends a PDF as a ``file`` content part with its bytes in ``file_data``
(a base64 data URL). Claude and Converse's document models read PDFs, yet the gateway
refused the part with a 400 ("content parts of type 'file' cannot be sent to this model").
Now it goes as their ``document`` block; what cannot go (a ``file_id``, a file that is no
PDF) is a 400 naming the field. The mocks refuse what the providers refuse: a document
that is no PDF, a Converse document name outside its characters, two of one name.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.mock_llm.anthropic_api import parse_messages_request
from extproc.mock_llm.bedrock_api import parse_converse_request
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream

AUTH = {"authorization": "Bearer team1-key"}
HAIKU_ID = "anthropic.claude-3-haiku-20240307-v1:0"
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n").decode()
PDF_URL = f"data:application/pdf;base64,{PDF}"


def pdf_part(data: str = PDF_URL, filename: str | None = None) -> dict[str, Any]:
    file: dict[str, Any] = {"file_data": data}
    if filename is not None:
        file["filename"] = filename
    return {"type": "file", "file": file}


def asked(*parts: dict[str, Any], text: str = "What does it say?") -> dict[str, Any]:
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


async def translated(
    processor: Processor, model: str, messages: list[Any]
) -> tuple[int, dict[str, Any]]:
    """(0, the provider's body) for a chat request, or (status, the client's error)."""
    chat = orjson.dumps({"model": model, "messages": messages})
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=AUTH), request_body(chat)],
    )
    last = answers[-1]
    if last.HasField("immediate_response"):
        return last.immediate_response.status.code, orjson.loads(last.immediate_response.body)
    return 0, orjson.loads(last.request_body.response.body_mutation.body)


@pytest.fixture
async def gateway(services: Services, config: GatewayConfig) -> AsyncIterator[Processor]:
    # Bedrock's requests are signed: the runtime starts its signer.
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


async def test_a_pdf_reaches_claude_as_a_document(gateway: Processor) -> None:
    status, sent = await translated(
        gateway, "claude-sonnet-4-0", [asked(pdf_part(filename="report.pdf"))]
    )
    assert status == 0, sent
    [document, question] = sent["messages"][0]["content"]
    assert document == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
    }
    assert question == {"type": "text", "text": "What does it say?"}
    parse_messages_request(Body.parse(orjson.dumps(sent)))  # Anthropic takes it


async def test_a_pdf_reaches_bedrock_as_a_named_document(gateway: Processor) -> None:
    status, sent = await translated(
        gateway, "haiku", [asked(pdf_part(filename="Q3 report.v2.pdf"))]
    )
    assert status == 0, sent
    [document, question] = sent["messages"][0]["content"]
    assert document == {
        "document": {"format": "pdf", "name": "Q3 report v2", "source": {"bytes": PDF}}
    }
    assert question == {"text": "What does it say?"}
    parse_converse_request(HAIKU_ID, Body.parse(orjson.dumps(sent)))  # Bedrock takes it


async def test_documents_of_one_name_are_named_apart_on_bedrock(gateway: Processor) -> None:
    # The same file attached again later in the conversation, and two without a name
    # (bare base64, and a PDF under a loose label): Converse refuses a request with two
    # documents of one name, on every later turn of the conversation.
    messages = [
        asked(pdf_part(filename="report.pdf")),
        {"role": "assistant", "content": "It is the Q3 report."},
        asked(
            pdf_part(filename="Report.pdf"),
            pdf_part(PDF),
            pdf_part(f"data:application/octet-stream;base64,{PDF}"),
            text="And these?",
        ),
    ]
    status, sent = await translated(gateway, "haiku", messages)
    assert status == 0, sent
    names = [
        block["document"]["name"]
        for turn in sent["messages"]
        for block in turn["content"]
        if "document" in block
    ]
    assert names == ["report", "Report (2)", "document", "document (2)"]
    parse_converse_request(HAIKU_ID, Body.parse(orjson.dumps(sent)))


@pytest.mark.parametrize("model", ["claude-sonnet-4-0", "haiku"])
@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "file", "file": {"file_id": "file-abc123"}}, "file.file_id"),
        (pdf_part("data:text/plain;base64,aGVsbG8="), "file.file_data"),
        (pdf_part("not base64 at all"), "file.file_data"),
        ({"type": "file"}, "file"),
    ],
    ids=["file-id", "text-file", "not-a-pdf", "no-file"],
)
async def test_a_file_that_cannot_go_is_a_400_naming_it(
    gateway: Processor, model: str, part: dict[str, Any], param: str
) -> None:
    status, error = await translated(gateway, model, [asked(part)])
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == f"messages[0].content[0].{param}"
