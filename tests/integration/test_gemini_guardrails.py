"""Guardrails and enrichment on Gemini's own API, end to end: Google's ``google-genai`` SDK
(as Gemini CLI and ADK use it) through real Envoy and the gateway to Google's models on
the mock's Vertex AI. What the mock received is what the guards let through; what the SDK
raises is what the guards refused; the log line's usage is Google's count, guarded or not.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.genai import errors

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog
from tests.integration.mock_vertex import stack_serving, vertex_requests
from tests.integration.test_gemini_api import client, gemini_config, request_id

MODEL = "gemini-2.5-flash"
EMAIL = "jane@example.com"
GUARDS = {
    "name": "gemini-guards",
    "request": [
        {"name": "secrets", "literals": ["hunter2"], "message": "No passwords, please."},
        {"name": "emails", "builtins": ["EMAIL"], "action": "mask"},
    ],
    "response": [
        {"name": "answer-secrets", "literals": ["hunter2"], "status": 422},
        {"name": "answer-emails", "builtins": ["EMAIL"], "action": "mask"},
    ],
}
ENRICHMENT = {
    "prepend": [
        {"role": "system", "content": "You answer for the {group_id} team."},
        {"role": "user", "content": "Context first."},
    ],
    "append": [{"role": "user", "content": "Answer briefly."}],
}


def guarded_gemini_config() -> dict[str, Any]:
    """test_gemini_api's config, with a route that guards prompts and answers and one
    that enriches prompts."""
    raw = gemini_config()
    raw["guardrails"]["policies"].append(GUARDS)
    raw["routes"] = [
        {"name": "fully-guarded", "path_prefix": "/full/v1/models",
         "api": "gemini_generate_content", "guardrails": GUARDS["name"]},
        {"name": "enriched", "path_prefix": "/enriched/v1/models",
         "api": "gemini_generate_content", "enrichment": ENRICHMENT},
        *raw["routes"],
    ]  # fmt: skip
    return raw


stack = stack_serving(guarded_gemini_config, "gemini-guardrails")


def guarded(stack: LocalStack, reply: list[str] | None = None) -> Any:
    """The SDK on the guarded route; ``reply``: the pieces the mock answers with."""
    headers = {"x-mock-reply": orjson.dumps(reply).decode()} if reply is not None else {}
    return client(stack, "/full", **headers).models


def last_sent(stack: LocalStack) -> dict[str, Any]:
    """The body the mock's Vertex received last."""
    sent: dict[str, Any] = vertex_requests(stack)[-1]["json"]
    return sent


def decisions(line: dict[str, Any]) -> dict[str, str]:
    return {d["guard"]: d["action"] for d in line["guardrails"]}


def test_a_masked_prompt_reaches_the_model_masked(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    answer = guarded(stack).generate_content(
        model=MODEL,
        contents=f"Write to {EMAIL} about the meeting.",
        config={"system_instruction": f"The user's manager is boss@example.com, not {EMAIL}."},
    )

    sent = last_sent(stack)
    assert sent["contents"][0]["parts"] == [{"text": "Write to <EMAIL> about the meeting."}]
    assert sent["systemInstruction"]["parts"] == [
        {"text": "The user's manager is <EMAIL>, not <EMAIL>."}
    ]
    assert EMAIL not in orjson.dumps(sent).decode()
    [line] = gateway_log.for_request(request_id(answer))
    assert decisions(line)["emails"] == "mask" and decisions(line)["secrets"] == "pass"


def test_a_rejected_prompt_is_raised_by_the_sdk_and_never_sent(stack: LocalStack) -> None:
    before = len(vertex_requests(stack))
    with pytest.raises(errors.ClientError) as refused:
        guarded(stack).generate_content(model=MODEL, contents="My password is hunter2.")

    assert refused.value.code == 403 and refused.value.status == "PERMISSION_DENIED"
    assert refused.value.message == "No passwords, please."
    assert len(vertex_requests(stack)) == before, "the prompt never reached the model"


def test_a_token_count_is_guarded_as_the_prompt_it_counts(stack: LocalStack) -> None:
    counted = guarded(stack).count_tokens(model=MODEL, contents=f"I am {EMAIL}")

    assert counted.total_tokens
    assert last_sent(stack)["contents"][0]["parts"] == [{"text": "I am <EMAIL>"}]
    with pytest.raises(errors.ClientError) as refused:
        guarded(stack).count_tokens(model=MODEL, contents="hunter2")
    assert refused.value.code == 403


def test_a_masked_answer_reaches_the_sdk_masked_and_is_billed_as_google_counted(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    answer = guarded(stack, ["Write to ", EMAIL, " today."]).generate_content(
        model=MODEL, contents="Whom should I write to?"
    )

    assert answer.text == "Write to <EMAIL> today."
    usage = answer.usage_metadata
    assert usage is not None and usage.candidates_token_count == 3
    [line] = gateway_log.for_request(request_id(answer))
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_token_count,
        usage.candidates_token_count,
    )
    assert decisions(line)["answer-emails"] == "mask"


def test_a_rejected_answer_is_raised_with_the_guards_status(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with pytest.raises(errors.ClientError) as refused:
        guarded(stack, ["The password is ", "hunter2", "."]).generate_content(
            model=MODEL, contents="What is the password?"
        )

    assert refused.value.code == 422
    assert refused.value.message == "Rejected by guardrail 'answer-secrets'"
    assert "hunter2" not in str(refused.value.details)
    [line] = gateway_log.for_request(refused.value.response.headers["x-request-id"])
    # The model wrote the answer: its tokens are charged, as Google counted them.
    assert line["http_status_code"] == 422 and line["usage_reported"] is True
    assert line["completion_tokens"] == 3


def test_a_stream_is_masked_across_events_and_billed_by_its_last_counts(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # The address is cut over three events, as a model streams it.
    pieces = ["Write to jane", "@exam", "ple.com today, ", "please."]
    chunks = list(guarded(stack, pieces).generate_content_stream(model=MODEL, contents="Whom?"))

    assert "".join(chunk.text or "" for chunk in chunks) == "Write to <EMAIL> today, please."
    final = chunks[-1].usage_metadata
    assert final is not None and final.candidates_token_count == len(pieces)
    [line] = gateway_log.for_request(request_id(chunks[0]))
    assert line["stream"] is True and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.prompt_token_count,
        final.candidates_token_count,
    )
    assert line["finish_reasons"] == ["STOP"]
    assert decisions(line)["answer-emails"] == "mask"


def test_a_rejected_stream_ends_with_an_error_the_sdk_raises(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    pieces = ["The password ", "is hunter", "2, keep it safe."]
    received: list[Any] = []
    with pytest.raises(errors.ClientError) as refused:
        for chunk in guarded(stack, pieces).generate_content_stream(model=MODEL, contents="?"):
            received.append(chunk)

    assert refused.value.code == 422
    assert refused.value.message == "Rejected by guardrail 'answer-secrets'"
    text = "".join(chunk.text or "" for chunk in received)
    assert "hunter" not in text and text.startswith("The password")
    [line] = gateway_log.for_request(request_id(received[0]))
    assert line["http_status_code"] == 200
    assert decisions(line)["answer-secrets"] == "reject"


def test_enrichment_reaches_the_model_in_geminis_shape(stack: LocalStack) -> None:
    answer = client(stack, "/enriched").models.generate_content(
        model=MODEL, contents="Hi", config={"system_instruction": "Client's own rule."}
    )

    assert answer.text
    sent = last_sent(stack)
    system = [part["text"] for part in sent["systemInstruction"]["parts"]]
    assert system[0].startswith("You answer for the ") and system[0].endswith(" team.")
    assert system[1:] == ["Client's own rule."]
    assert [(c["role"], c["parts"]) for c in sent["contents"]] == [
        ("user", [{"text": "Context first."}]),
        ("user", [{"text": "Hi"}]),
        ("user", [{"text": "Answer briefly."}]),
    ]
    # The model read the route's last user message last.
    assert answer.text == "Mock reply to: Answer briefly."
