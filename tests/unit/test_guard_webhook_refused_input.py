"""A guardrail webhook that refuses what it was sent (a 400, 413 or 422: a prompt too
large for it, a shape it does not take) would refuse the same request again. Before, a
request guard failing closed turned it into a 503 ``guardrail_unavailable``, which the
openai and anthropic SDKs retry (twice by default), each retry calling the webhook for
the same refusal, while a moderation service's refusal was already a 400
``guardrail_input_refused``. Webhooks now answer as moderation does: the same code, the
webhook's status named and never its body, ``failure_mode`` still deciding.

The webhook servers here stand in for the operator's own; the gateway's side is the
real processor, fed the messages Envoy sends.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import openai_chunk, openai_stream_text
from tests.unit.test_bedrock_bedrock import converse_answer
from tests.unit.test_bedrock_invoke_review import AUTH as BEARER
from tests.unit.test_bedrock_invoke_review import signing_processor
from tests.unit.test_guard_flow import Gateway, chat, immediate
from tests.unit.test_guard_tool_definitions import CONVERSE, converse
from tests.unit.test_guard_webhook_rate_limit import (
    ANSWER,
    DONE,
    HOOK_TOKEN,
    shown_headers,
    webhooked,
)
from tests.unit.test_guardrail_gaps import messages_body
from tests.unit.test_guardrail_review import Hook, serving, stream_through

PROMPT = "the quarterly numbers of project falcon"


def refusing(status: int) -> Any:
    """A webhook refusing the payload, quoting it in its body as servers do."""

    def reply(call: dict[str, Any]) -> web.Response:
        quoted = call["body"]["messages"][0]["content"] if "messages" in call["body"] else ""
        return web.json_response({"detail": f"payload too large: {quoted}"}, status=status)

    return reply


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_refused_input_is_a_400_not_a_retried_503(status: int) -> None:
    hook = Hook(refusing(status))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    code, body = immediate(answers[-1])
    assert code == 400
    assert body["error"] == {
        "message": "Guardrail 'civility-guard' cannot check this request: its webhook "
        f"refused the input (HTTP {status}), as it would again",
        "type": "invalid_request_error",
        "param": None,
        "code": "guardrail_input_refused",
    }
    line = gateway.log()
    assert line["http_status_code"] == 400
    assert line["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_closed"}
    ]
    # Refused before the provider: nothing reserved or charged.
    assert line["total_tokens"] == 0
    # Neither the webhook's body (it quotes the prompt) nor its token go anywhere.
    shown = orjson.dumps([body, line]).decode()
    assert "payload too large" not in shown and HOOK_TOKEN not in shown
    assert len(hook.calls) == 1


async def test_anthropic_clients_get_their_invalid_request_error() -> None:
    hook = Hook(refusing(413))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, route="anthropic-messages"))
        answers = await gateway.send("/v1/messages", messages_body({"type": "text", "text": "hi"}))
    code, body = immediate(answers[-1])
    assert code == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "its webhook refused the input (HTTP 413)" in body["error"]["message"]


async def test_a_refused_input_failing_open_passes() -> None:
    hook = Hook(refusing(413))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, mode="fail_open"))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    assert answers[-1].HasField("request_body")
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "request", "action": "fail_open"}
    ]


@pytest.mark.parametrize("status", [401, 404, 409])
async def test_other_client_errors_of_the_webhook_stay_an_outage(status: int) -> None:
    """A wrong token or path is the operator's to mend, not the client's input."""
    hook = Hook(lambda _: web.Response(status=status, text="no"))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port))
        answers = await gateway.send("/v1/chat/completions", chat(PROMPT))
    code, body = immediate(answers[-1])
    assert (code, body["error"]["code"]) == (503, "guardrail_unavailable")


# --- a response webhook refusing to read the answer ----------------------------------------

REFUSED_ANSWER = (
    "Guardrail 'civility-guard' cannot check the model's answer: its webhook refused to "
    "read it (HTTP {status}); the {what} is withheld"
)


async def refuse_answer(status: int, *, route: str = "openai-chat", mode: str = "fail_closed",
                        path: str = "/v1/chat/completions", body: bytes | None = None,
                        answer: bytes | None = None) -> tuple[Gateway, Any, Hook]:  # fmt: skip
    hook = Hook(lambda _: web.Response(status=status, text="answer too large: code 1234"))
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, phase="response", route=route, mode=mode))
        answers = await gateway.send(
            path,
            body if body is not None else chat(PROMPT),
            response_headers(200),
            response_body(answer if answer is not None else orjson.dumps(ANSWER)),
        )
    return gateway, answers[-1], hook


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_response_webhook_refusing_the_answer_says_so_and_is_not_retried(
    status: int,
) -> None:
    """What it refused is the provider's answer, not the client's input, so no 400; nor is
    its webhook unavailable, as the 503 said, which SDKs retried twice, each retry an
    answer generated, charged and refused again. A 502 naming what happened, not retried."""
    gateway, answer, hook = await refuse_answer(status)
    code, body = immediate(answer)
    assert code == 502
    assert body["error"] == {
        "message": REFUSED_ANSWER.format(status=status, what="answer"),
        "type": "upstream_error",
        "param": None,
        "code": "guardrail_answer_refused",
    }
    assert shown_headers(answer)["x-should-retry"] == "false"
    line = gateway.log()
    assert (line["http_status_code"], line["error_message"]) == (502, body["error"]["message"])
    assert line["guardrails"] == [
        {"guard": "civility-guard", "phase": "response", "action": "fail_closed"}
    ]
    # The provider wrote the answer: charged, as any refused answer is.
    assert line["completion_tokens"] == 3
    # Neither the answer nor the webhook's body (it quotes it) reach the client or the log.
    shown = orjson.dumps([body, line]).decode()
    assert "1234" not in shown and "too large" not in shown
    assert len(hook.calls) == 1


async def test_anthropic_clients_get_an_api_error_for_a_refused_answer() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
              "content": [{"type": "text", "text": "code 1234"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 5, "output_tokens": 3}}  # fmt: skip
    _, reply, _ = await refuse_answer(
        413,
        route="anthropic-messages",
        path="/v1/messages",
        body=messages_body({"type": "text", "text": "hi"}),
        answer=orjson.dumps(answer),
    )
    code, body = immediate(reply)
    assert code == 502
    assert body == {
        "type": "error",
        "error": {"type": "api_error", "message": REFUSED_ANSWER.format(status=413, what="answer")},
    }


async def test_aws_sdk_clients_get_a_model_error_they_do_not_retry_for_a_refused_answer(
    services: Services,
) -> None:
    """boto3 reads no ``x-should-retry`` and retries every 502 (botocore's transient
    statuses): the 502 ``InternalServerException`` was retried twice by default (four
    times in legacy mode), each retry a Converse answer generated, charged and refused
    the same way. Bedrock's own exception for an answer that could not be processed,
    ``ModelErrorException`` (424), is not retried."""
    hook = Hook(lambda _: web.Response(status=413, text="answer too large: code 1234"))
    async with serving(hook.handle) as port:
        config = webhooked(port, phase="response", route="bedrock-converse")
        async with signing_processor(config, services) as processor:
            answers = await run_stream(
                processor,
                [
                    request_headers(CONVERSE, headers=BEARER),
                    request_body(orjson.dumps(converse())),
                    response_headers(200, {"content-type": "application/json"}),
                    response_body(converse_answer()),
                ],
            )
    code, body = immediate(answers[-1])
    assert code == 424
    assert shown_headers(answers[-1])["x-amzn-errortype"] == "ModelErrorException"
    assert body == {
        "message": REFUSED_ANSWER.format(status=413, what="answer"),
        "code": "guardrail_answer_refused",
    }
    line = services.access_log.lines()[-1]  # type: ignore[attr-defined]
    assert (line["http_status_code"], line["error_type"]) == (424, "upstream_error")
    assert len(hook.calls) == 1


async def test_a_refused_answer_failing_open_reaches_the_client() -> None:
    gateway, answer, _ = await refuse_answer(413, mode="fail_open")
    assert not answer.HasField("immediate_response")
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "response", "action": "fail_open"}
    ]


async def test_a_stream_whose_webhook_refuses_a_chunk_ends_saying_so() -> None:
    """The 200 has left: the error event names what happened, as the buffered 502 does."""
    hook = Hook({"action": {}}, lambda _: web.Response(status=413, text="too large"))
    chunks = [openai_chunk("Fine. "), openai_chunk("more text"), openai_chunk(None, "stop"),
              DONE]  # fmt: skip
    async with serving(hook.handle) as port:
        gateway = Gateway(webhooked(port, phase="response"))
        got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "Fine. "
    error = orjson.loads(got.split(b"\n\n")[-3][6:])["error"]
    assert error["code"] == "guardrail_answer_refused"
    assert error["message"] == REFUSED_ANSWER.format(status=413, what="rest of the answer")
    assert got.endswith(DONE)
    assert len(hook.calls) == 2
    assert gateway.log()["guardrails"] == [
        {"guard": "civility-guard", "phase": "response", "action": "fail_closed"}
    ]


async def test_other_errors_of_a_response_webhook_stay_unavailable() -> None:
    _, answer, _ = await refuse_answer(401)
    code, body = immediate(answer)
    assert (code, body["error"]["code"]) == (503, "guardrail_unavailable")
