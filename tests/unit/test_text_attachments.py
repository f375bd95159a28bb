"""Text sent as a file rather than as message text, through the processor: the model reads
it as text, so the request guards must read it and the quota's estimate must count it.

- Bedrock Converse ``document`` blocks in a text format (``txt``, ``csv``, ``md``,
  ``html``) carry their text as base64 ``source.bytes``: unread, a refused word or an
  address passed in one, and the estimate counted nothing for it;
- OpenAI chat ``file`` parts and Responses API ``input_file`` parts carry a file as
  ``file_data``, a base64 data URL: one of a text type (``data:text/plain;base64,...``)
  passed every guard, and counted nothing;
- PDFs, images, file ids and URLs stay unread, as before (Anthropic's base64 document
  source is a PDF: its text documents are plain-text sources, read already); a route
  without guards never decodes a file, and the estimate never does.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from extproc import attached_text
from extproc.converse_api import estimate_prompt_tokens as converse_estimate
from extproc.quota.estimate import estimate_prompt_tokens, estimate_responses_tokens
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, HAIKU, signing_processor
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body

CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"
EMAIL = "jane@example.com"
POLICIES = {"policies": [{"name": "p", "request": [
    {"name": "no-falcon", "literals": ["project falcon"], "case_insensitive": True},
    {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip
# About 10,000 tokens of text, as a file.
LARGE = "word " * 8_000


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decoded(data: str) -> str:
    return base64.b64decode(data).decode()


def refusal(answers: list[Any]) -> tuple[int, dict[str, Any]] | None:
    last = answers[-1]
    return immediate(last) if last.HasField("immediate_response") else None


# --- Bedrock Converse: document bytes in a text format ----------------------------------


def document(fmt: str, text: str, name: str = "notes") -> dict[str, Any]:
    """A Converse document block as the AWS SDKs send it in JSON (bytes as base64)."""
    return {"document": {"format": fmt, "name": name, "source": {"bytes": b64(text)}}}


def converse(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": "Read this."}, *blocks]}]}


async def through_converse(body: dict[str, Any], services: Services) -> list[Any]:
    config = config_with(POLICIES, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        return await run_stream(
            processor,
            [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))],
        )


@pytest.mark.parametrize("fmt", ["txt", "csv", "md", "html"])
async def test_a_converse_text_document_is_masked_where_it_stands(
    fmt: str, services: Services
) -> None:
    answers = await through_converse(converse(document(fmt, f"Mail {EMAIL}\n")), services)
    assert refusal(answers) is None
    sent = upstream_body(answers[1])["messages"][0]["content"][1]["document"]
    assert decoded(sent["source"]["bytes"]) == "Mail <EMAIL>\n", "the address reached Bedrock"
    assert (sent["format"], sent["name"]) == (fmt, "notes")


async def test_a_refused_word_in_a_converse_text_document_is_refused(services: Services) -> None:
    answers = await through_converse(converse(document("txt", "Plans: Project Falcon")), services)
    found = refusal(answers)
    assert found is not None, "the document went to Bedrock"
    assert found[0] == 403


async def test_a_converse_tool_results_text_document_is_read(services: Services) -> None:
    result = {"toolResult": {"toolUseId": "t1", "content": [document("csv", f"a,{EMAIL}")]}}
    answers = await through_converse(converse(result), services)
    sent = upstream_body(answers[1])["messages"][0]["content"][1]["toolResult"]["content"][0]
    assert decoded(sent["document"]["source"]["bytes"]) == "a,<EMAIL>"


async def test_a_converse_pdf_and_office_documents_stay_unread(services: Services) -> None:
    # Their bytes are no text: a PDF whose bytes happen to spell a refused word goes on.
    pdf = document("pdf", "project falcon")
    docx = document("docx", f"x {EMAIL}")
    answers = await through_converse(converse(pdf, docx), services)
    assert refusal(answers) is None
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert sent[1] == pdf and sent[2] == docx


def test_the_converse_estimate_counts_a_text_document_but_not_a_pdf() -> None:
    bare = converse_estimate(converse())
    assert converse_estimate(converse(document("txt", LARGE))) >= bare + len(LARGE) // 4
    assert converse_estimate(converse(document("pdf", LARGE))) == bare


# --- OpenAI chat: file parts ----------------------------------------------------------------


def file_part(text: str, media: str = "text/plain", filename: str = "notes.txt") -> dict[str, Any]:
    data = f"data:{media};base64,{b64(text)}"
    return {"type": "file", "file": {"file_data": data, "filename": filename}}


def chat(*parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "Read this."}, *parts]
    message = {"role": "user", "content": content}
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [message]})


def chat_gateway() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-chat": {"guardrails": "p"}}))


@pytest.mark.parametrize("media", ["text/plain", "text/markdown", "application/json"])
async def test_a_chat_text_file_is_masked_and_keeps_its_data_url(media: str) -> None:
    answers = await chat_gateway().send("/v1/chat/completions", chat(file_part(EMAIL, media)))
    assert refusal(answers) is None
    sent = upstream_body(answers[1])["messages"][0]["content"][1]["file"]
    header, _, data = sent["file_data"].partition(",")
    assert header == f"data:{media};base64"
    assert decoded(data) == "<EMAIL>", "the address reached the provider"
    assert sent["filename"] == "notes.txt"


async def test_a_refused_word_in_a_chat_text_file_is_refused() -> None:
    gateway = chat_gateway()
    answers = await gateway.send("/v1/chat/completions", chat(file_part("project falcon")))
    found = refusal(answers)
    assert found is not None, "the file went to the provider"
    assert found[0] == 403
    assert gateway.log()["guardrails"][0]["guard"] == "no-falcon"


async def test_a_chat_file_of_bare_base64_is_read_by_its_filename() -> None:
    bare = {"type": "file", "file": {"file_data": b64("project falcon"), "filename": "a.md"}}
    found = refusal(await chat_gateway().send("/v1/chat/completions", chat(bare)))
    assert found is not None and found[0] == 403


async def test_chat_pdfs_and_file_ids_stay_unread() -> None:
    pdf = file_part("project falcon", "application/pdf", "scan.pdf")
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    answers = await chat_gateway().send("/v1/chat/completions", chat(pdf, by_id))
    assert refusal(answers) is None
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert sent[1] == pdf and sent[2] == by_id


def test_the_chat_estimate_counts_a_text_file_but_not_a_pdf() -> None:
    def body(*parts: dict[str, Any]) -> dict[str, Any]:
        return orjson.loads(chat(*parts))  # type: ignore[no-any-return]

    bare = estimate_prompt_tokens(body())
    assert estimate_prompt_tokens(body(file_part(LARGE))) >= bare + len(LARGE) // 4
    pdf = file_part(LARGE, "application/pdf", "scan.pdf")
    assert estimate_prompt_tokens(body(pdf)) == bare


# --- OpenAI Responses API: input_file parts ---------------------------------------------


def input_file(text: str, media: str = "text/plain", filename: str = "notes.txt") -> dict[str, Any]:
    data = f"data:{media};base64,{b64(text)}"
    return {"type": "input_file", "filename": filename, "file_data": data}


def responses(*parts: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "input_text", "text": "Read this."}, *parts]
    return {"model": "gpt-4o-mini", "input": [{"role": "user", "content": content}]}


def responses_gateway() -> Gateway:
    return Gateway(config_with(POLICIES, {"openai-responses": {"guardrails": "p"}}))


async def test_a_responses_text_file_is_masked_and_a_refused_word_refused() -> None:
    gateway = responses_gateway()
    masked = await gateway.send("/v1/responses", orjson.dumps(responses(input_file(EMAIL))))
    assert refusal(masked) is None
    sent = upstream_body(masked[1])["input"][0]["content"][1]
    header, _, data = sent["file_data"].partition(",")
    assert (header, decoded(data)) == ("data:text/plain;base64", "<EMAIL>")
    refused = await gateway.send(
        "/v1/responses", orjson.dumps(responses(input_file("project falcon", "text/csv", "a.csv")))
    )
    found = refusal(refused)
    assert found is not None, "the file went to the provider"
    assert found[0] == 403


async def test_a_text_file_a_tool_returned_is_read_as_the_tools() -> None:
    output = {"type": "function_call_output", "call_id": "c1", "output": [input_file(EMAIL)]}
    body = {"model": "gpt-4o-mini", "input": [output]}
    answers = await responses_gateway().send("/v1/responses", orjson.dumps(body))
    sent = upstream_body(answers[1])["input"][0]["output"][0]["file_data"]
    assert decoded(sent.partition(",")[2]) == "<EMAIL>"


async def test_responses_pdfs_file_ids_and_urls_stay_unread() -> None:
    pdf = input_file("project falcon", "application/pdf", "scan.pdf")
    by_id = {"type": "input_file", "file_id": "file-abc"}
    by_url = {"type": "input_file", "file_url": "https://example.com/project-falcon.txt"}
    body = orjson.dumps(responses(pdf, by_id, by_url))
    answers = await responses_gateway().send("/v1/responses", body)
    assert refusal(answers) is None


def test_the_responses_estimate_counts_a_text_file_but_not_a_pdf() -> None:
    bare = estimate_responses_tokens(responses())
    assert estimate_responses_tokens(responses(input_file(LARGE))) >= bare + len(LARGE) // 4
    pdf = input_file(LARGE, "application/pdf", "scan.pdf")
    assert estimate_responses_tokens(responses(pdf)) == bare


# --- Anthropic: text comes as a plain-text source, already read ----------------------------


async def test_an_anthropic_base64_document_is_a_pdf_and_stays_unread() -> None:
    # Anthropic takes a base64 source of application/pdf only (it refuses text/plain
    # there): its bytes are no text the model reads, and the gateway leaves them to it.
    # A plain-text source and a content source are read (test_guardrail_gaps).
    source = {"type": "base64", "media_type": "application/pdf", "data": b64("project falcon")}
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "document", "source": source}]}],
    }
    gateway = Gateway(config_with(POLICIES, {"anthropic-messages": {"guardrails": "p"}}))
    answers = await gateway.send("/v1/messages", orjson.dumps(body))
    assert refusal(answers) is None
    assert upstream_body(answers[1])["messages"][0]["content"][0]["source"] == source


# --- cost: decoded only where a guard reads it ------------------------------------------


def test_the_estimates_never_decode_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: str) -> str:
        raise AssertionError("the estimate decoded a file")

    monkeypatch.setattr(attached_text, "decoded", refuse)
    assert converse_estimate(converse(document("txt", LARGE))) > len(LARGE) // 4
    assert estimate_prompt_tokens(orjson.loads(chat(file_part(LARGE)))) > len(LARGE) // 4
    assert estimate_responses_tokens(responses(input_file(LARGE))) > len(LARGE) // 4


async def test_a_route_without_guards_never_decodes_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: str) -> str:
        raise AssertionError("a file was decoded on a route without guards")

    monkeypatch.setattr(attached_text, "decoded", refuse)
    gateway = Gateway(config_with(POLICIES, {}))
    answers = await gateway.send("/v1/chat/completions", chat(file_part(f"{EMAIL} falcon")))
    assert refusal(answers) is None
