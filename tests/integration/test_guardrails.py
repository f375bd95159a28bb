"""Guardrails and enrichment through the real Envoy, with the official SDKs.

The workshop's flows: a ``credit card`` regex refusing a question with its own
message, a card number masked in an answer (buffered and streamed, cut over
chunks, in OpenAI, translated and native Anthropic streams), a webhook server
written here following kgateway's guardrail API, moderation by the mock's
endpoint, and enrichment that the provider counts as prompt tokens.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import (
    REFUSED_PORT,
    GatewayLog,
    JsonStandIn,
    default_config,
    metric,
    mock_requests,
    running_stack_calling,
    scrape,
    wait_for,
)

KEY = "team1-key"
CARD_MESSAGE = "Requests about credit card numbers are not allowed."
ENRICHMENT = "You are the assistant of the {group_id} team. Keep answers short."
SLOW_S = 3.0


class Webhook(JsonStandIn):
    """A guardrail webhook following kgateway's API (POST /request, POST /response)."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        payload = self.json_body()
        Webhook.seen.append({"path": self.path, "headers": dict(self.headers), **payload})
        if self.path.startswith("/slow"):
            time.sleep(SLOW_S)
        if self.path.endswith("/request"):
            action = self._request(payload["body"]["messages"])
        else:
            action = self._response(payload["body"]["choices"])
        self.answer_json({"action": action})

    @staticmethod
    def _request(messages: list[dict[str, str]]) -> dict[str, Any]:
        text = " ".join(m["content"] for m in messages).lower()
        if "you are stupid" in text:
            return {"body": "Please keep it civil.", "status_code": 422, "reason": "insult"}
        if "pineapple" in text:
            return {"body": "That word is banned here.", "status_code": 403}
        masked = [
            {
                "role": m["role"],
                "content": re.sub(
                    r"\S+@\S+\.\w+", "<EMAIL>", m["content"].replace("4111 1111 1111 1111", "****")
                ),
            }
            for m in messages
        ]
        if masked != messages:
            return {"body": {"messages": masked}, "reason": "pii"}
        return {"reason": "fine"}

    @staticmethod
    def _response(choices: list[dict[str, Any]]) -> dict[str, Any]:
        contents = [c["message"]["content"] for c in choices]
        if any("confidential" in c for c in contents):
            masked = [
                {"message": {"role": "assistant", "content": c.replace("confidential", "[hidden]")}}
                for c in contents
            ]
            return {"body": {"choices": masked}}
        return {}


def guard_config(webhook_port: int, closed_port: int) -> dict[str, Any]:
    raw = default_config()
    mock = "${MOCK_LLM_ADDRESS:-127.0.0.1:8089}"
    raw["guardrails"] = {
        "webhooks": [
            {"name": "civility", "host": "127.0.0.1", "port": webhook_port,
             "forward_headers": ["x-team"], "timeout_ms": 2000},
            {"name": "slow", "host": "127.0.0.1", "port": webhook_port,
             "request_path": "/slow/request", "timeout_ms": 300, "failure_mode": "fail_closed"},
            {"name": "down", "host": "127.0.0.1", "port": closed_port, "timeout_ms": 500,
             "failure_mode": "fail_open"},
        ],
        "moderation": [
            {"name": "openai-moderation", "base_url": f"http://{mock}/v1", "api_key": "mock-key",
             "model": "omni-moderation-latest", "thresholds": {"harassment": 0.8}},
        ],
        "policies": [
            {
                "name": "workshop",
                "request": [
                    {"name": "card-talk", "patterns": [{"pattern": "credit card", "name": "CC"}],
                     "case_insensitive": True, "action": "REJECT", "message": CARD_MESSAGE},
                    {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL", "SSN"], "action": "MASK"},
                    {"name": "evil", "patterns": ["(a+)+$"], "message": "only a's"},
                ],
                "response": [
                    {"name": "pii-answers", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "MASK"},
                ],
            },
            {
                "name": "webhooked",
                "request": [{"name": "civility", "webhook": "civility"}],
                "response": [{"name": "civility-out", "webhook": "civility"}],
            },
            {"name": "withheld",
             "response": [{"name": "no-secrets", "literals": ["top secret"], "action": "reject",
                           "message": "The answer was withheld.", "status": 451}]},
            {"name": "slow", "request": [{"name": "slow-hook", "webhook": "slow"}]},
            {"name": "down", "request": [{"name": "down-hook", "webhook": "down"}]},
            {"name": "moderated",
             "request": [{"name": "moderation", "moderation": "openai-moderation"}]},
        ],
    }  # fmt: skip
    raw["routes"] += [
        {"name": "guarded", "path_prefix": "/guarded", "guardrails": "workshop"},
        {"name": "guarded-claude", "path_prefix": "/guarded-claude", "guardrails": "workshop",
         "provider": "${ANTHROPIC_PROVIDER:-mock-anthropic}"},
        {"name": "guarded-messages", "path": "/guarded-messages/v1/messages",
         "api": "anthropic_messages", "guardrails": ["workshop"]},
        {"name": "webhooked", "path_prefix": "/webhooked", "guardrails": "webhooked"},
        {"name": "slow-hook", "path_prefix": "/slow-hook", "guardrails": "slow"},
        {"name": "withheld", "path_prefix": "/withheld", "guardrails": "withheld"},
        {"name": "down-hook", "path_prefix": "/down-hook", "guardrails": "down"},
        {"name": "moderated", "path_prefix": "/moderated", "guardrails": "moderated"},
        {"name": "enriched", "path_prefix": "/enriched",
         "enrichment": {"prepend": [{"role": "system", "content": ENRICHMENT}]}},
    ]  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def guard_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guardrails")
    closed_port = REFUSED_PORT
    with running_stack_calling(
        Webhook, workdir, lambda webhook_port: guard_config(webhook_port, closed_port)
    ) as running:
        yield running


def client(stack: LocalStack, prefix: str, **headers: str) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.base_url}{prefix}/v1",
        api_key=KEY,
        max_retries=0,
        timeout=30.0,
        default_headers=headers or None,
    )


def ask(
    stack: LocalStack, prefix: str, text: str, *, model: str = "gpt-4o-mini", **headers: str
) -> Any:
    return client(stack, prefix, **headers).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )


def streamed(stack: LocalStack, prefix: str, text: str, model: str, **headers: str) -> str:
    chunks = client(stack, prefix, **headers).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def last_line(stack: LocalStack, route: str, **fields: Any) -> dict[str, Any] | None:
    """The gateway's latest log line for a route (with the given field values)."""
    for line in reversed(GatewayLog(stack.gateway_log).lines()):
        if line.get("route") == route and all(line.get(k) == v for k, v in fields.items()):
            return line
    return None


def upstream_texts(stack: LocalStack) -> str:
    return orjson.dumps(mock_requests(stack)[-1]["json"]).decode()


# --- the workshop's regex and builtins ------------------------------------------------------


def test_master_card_question_is_rejected_with_the_custom_message(
    guard_stack: LocalStack,
) -> None:
    before = len(mock_requests(guard_stack))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(guard_stack, "/guarded",
            "Can you give me some examples of Master Card credit card numbers?")  # fmt: skip
    assert refused.value.status_code == 403
    assert refused.value.body["message"] == CARD_MESSAGE  # type: ignore[index]
    assert len(mock_requests(guard_stack)) == before  # the provider never saw it
    line = wait_for(lambda: last_line(guard_stack, "guarded", outcome="rejected"))
    assert line["guardrails"] == [{"guard": "card-talk", "phase": "request", "action": "reject"}]
    assert line["http_status_code"] == 403
    assert "Master Card" not in guard_stack.gateway_log.read_text()


def test_card_and_email_are_masked_before_the_provider(guard_stack: LocalStack) -> None:
    answer = ask(guard_stack, "/guarded", "Charge 4111 1111 1111 1111 and mail bob@example.com")
    sent = upstream_texts(guard_stack)
    assert "4111" not in sent and "bob@example.com" not in sent
    assert (
        answer.choices[0].message.content == "Mock reply to: Charge <CREDIT_CARD> and mail <EMAIL>"
    )


def test_card_in_an_answer_is_masked(guard_stack: LocalStack) -> None:
    reply = {"x-mock-reply": "A test card: 5105105105105100."}
    answer = ask(guard_stack, "/guarded", "Give me a test card", **reply)
    assert answer.choices[0].message.content == "A test card: <CREDIT_CARD>."
    assert answer.usage is not None and answer.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("prefix", "model"),
    [("/guarded", "gpt-4o-mini"), ("/guarded-claude", "claude-3-5-haiku-latest")],
    ids=["openai", "translated-anthropic"],
)
def test_card_split_over_three_chunks_is_masked_in_a_stream(
    guard_stack: LocalStack, prefix: str, model: str
) -> None:
    pieces = orjson.dumps(["Here: 4111 11", "11 1111 1", "111. Done"]).decode()
    text = streamed(guard_stack, prefix, "stream a card", model, **{"x-mock-reply": pieces})
    assert text == "Here: <CREDIT_CARD>. Done"


def test_native_anthropic_stream_is_masked(guard_stack: LocalStack) -> None:
    pieces = orjson.dumps(["mail ", "ann@exa", "mple.org", " now"]).decode()
    claude = anthropic.Anthropic(
        base_url=f"{guard_stack.base_url}/guarded-messages", api_key=KEY, max_retries=0,
        default_headers={"x-mock-reply": pieces},
    )  # fmt: skip
    with claude.messages.stream(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        messages=[{"role": "user", "content": "say hi"}],
    ) as stream:
        text = "".join(stream.text_stream)
        usage = stream.get_final_message().usage
    assert text == "mail <EMAIL> now"
    assert usage.output_tokens == 4


def test_catastrophic_pattern_does_not_slow_the_gateway(guard_stack: LocalStack) -> None:
    # (a+)+$ backtracks for ages on "aaa...ab" in a backtracking engine; RE2 answers at once.
    answer = ask(guard_stack, "/guarded", "a" * 30_000 + "b")
    assert answer.choices[0].message.content.startswith("Mock reply to: aaa")
    with pytest.raises(openai.PermissionDeniedError, match="only a's"):
        ask(guard_stack, "/guarded", "a" * 30_000)


def test_benign_prompt_passes_every_guard(guard_stack: LocalStack) -> None:
    before = scrape(guard_stack.metrics_url)
    answer = ask(guard_stack, "/guarded", "What is a good name for a cat?")
    assert answer.choices[0].message.content == "Mock reply to: What is a good name for a cat?"
    after = scrape(guard_stack.metrics_url)
    name = "aigw_guardrail_decisions_total"
    for guard in ("card-talk", "pii", "evil"):
        passes = metric(after, name, guard=guard, phase="request", action="pass")
        assert passes - metric(before, name, guard=guard, phase="request", action="pass") == 1


def test_answer_refused_by_a_response_guard_still_counts_its_tokens(
    guard_stack: LocalStack,
) -> None:
    reply = {"x-mock-reply": "This is top secret material."}
    with pytest.raises(openai.APIStatusError) as refused:
        ask(guard_stack, "/withheld", "tell me", **reply)
    assert refused.value.status_code == 451
    assert refused.value.body["message"] == "The answer was withheld."  # type: ignore[index]
    line = wait_for(lambda: last_line(guard_stack, "withheld", stream=False))
    assert line["outcome"] == "rejected"
    assert line["completion_tokens"] == count_tokens("This is top secret material.")


def test_stream_refused_by_a_response_guard_ends_with_an_error(guard_stack: LocalStack) -> None:
    pieces = orjson.dumps(["Fine so far. ", "This is top ", "secret, more."]).decode()
    seen = []
    with pytest.raises(openai.APIError, match="The answer was withheld"):
        for chunk in client(
            guard_stack, "/withheld", **{"x-mock-reply": pieces}
        ).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True
        ):
            seen.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    shown = "".join(seen)
    # Only the tail that could begin "top secret" was held: "s top " of "This is top ".
    assert shown == "Fine so far. This i"
    line = wait_for(lambda: last_line(guard_stack, "withheld", stream=True))
    assert {"guard": "no-secrets", "phase": "response", "action": "reject"} in line["guardrails"]
    # The SDK hangs up at the refusal: the usage is the provider's count when its last
    # chunk came before that, else the estimate of a cut stream (docs/guardrails.md),
    # the refused text included either way.
    assert line["usage_reported"] or line["usage_estimated"]
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


# --- the webhook ----------------------------------------------------------------------------


def test_webhook_rejects_an_insult_with_its_own_body_and_status(guard_stack: LocalStack) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        ask(guard_stack, "/webhooked", "you are stupid")
    assert refused.value.status_code == 422
    assert refused.value.body["message"] == "Please keep it civil."  # type: ignore[index]


def test_webhook_rejects_a_banned_word(guard_stack: LocalStack) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=r"That word is banned here\."):
        ask(guard_stack, "/webhooked", "I like pineapple on pizza")


def test_webhook_masks_card_and_email_and_sees_forwarded_headers(guard_stack: LocalStack) -> None:
    Webhook.seen.clear()
    answer = ask(
        guard_stack, "/webhooked", "card 4111 1111 1111 1111, mail me: jo@example.com",
        **{"x-team": "blue"},
    )  # fmt: skip
    assert answer.choices[0].message.content == "Mock reply to: card ****, mail me: <EMAIL>"
    sent = upstream_texts(guard_stack)
    assert "4111" not in sent and "jo@example.com" not in sent
    request_call = next(call for call in Webhook.seen if call["path"] == "/request")
    assert request_call["body"]["messages"][0]["role"] == "user"
    headers = {k.lower(): v for k, v in request_call["headers"].items()}
    assert headers["x-team"] == "blue"
    assert "authorization" not in headers


def test_webhook_passes_a_benign_prompt_and_masks_the_answer(guard_stack: LocalStack) -> None:
    reply = {"x-mock-reply": "This is confidential, sorry."}
    answer = ask(guard_stack, "/webhooked", "Tell me a secret", **reply)
    assert answer.choices[0].message.content == "This is [hidden], sorry."


def test_slow_webhook_fails_closed_within_its_timeout(guard_stack: LocalStack) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:
        ask(guard_stack, "/slow-hook", "hello")
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "guardrail_unavailable"  # type: ignore[index]
    # Not a timing assertion on the gateway's speed: the answer came before the webhook's.
    assert time.monotonic() - started < SLOW_S + 2


def test_webhook_down_fails_open(guard_stack: LocalStack) -> None:
    answer = ask(guard_stack, "/down-hook", "hello")
    assert answer.choices[0].message.content == "Mock reply to: hello"
    line = wait_for(lambda: last_line(guard_stack, "down-hook"))
    assert line["guardrails"] == [{"guard": "down-hook", "phase": "request", "action": "fail_open"}]


# --- moderation and enrichment ----------------------------------------------------------------


def test_moderation_rejects_naming_the_category(guard_stack: LocalStack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(guard_stack, "/moderated", "you are an idiot")
    assert "harassment" in refused.value.body["message"]  # type: ignore[index]
    assert ask(guard_stack, "/moderated", "you are kind").choices[0].message.content


def test_moderation_reads_images_and_a_refused_one_is_a_400_not_retried(
    guard_stack: LocalStack,
) -> None:
    """omni-moderation reads images: one the mock reads as gore (the word is in its bytes)
    is refused; an image the service cannot download is the client's 400, which the SDK
    does not retry (a 503 it retried twice, each time for the same refusal)."""
    sdk = OpenAI(base_url=f"{guard_stack.base_url}/moderated/v1", api_key=KEY, timeout=30.0)

    def with_image(url: str) -> Any:
        part = {"type": "image_url", "image_url": {"url": url}}
        content = [{"type": "text", "text": "What is in this picture?"}, part]
        return sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
        )

    def image(word: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n " + word).decode()

    with pytest.raises(openai.PermissionDeniedError) as refused:
        with_image(image(b"gore"))
    assert refused.value.body["message"] == (  # type: ignore[index]
        "Rejected by guardrail 'moderation': flagged for violence/graphic (in an image)"
    )
    assert with_image(image(b"kittens")).choices[0].message.content
    # The text's call and the image's go side by side (in either order), then the chat.
    *calls, chat = mock_requests(guard_stack)[-3:]
    assert chat["path"] == "/v1/chat/completions"
    inputs = sorted((c["json"]["input"] for c in calls), key=lambda i: orjson.dumps(i))
    assert inputs == [
        ["What is in this picture?"],
        [{"type": "image_url", "image_url": {"url": image(b"kittens")}}],
    ]

    def moderation_calls() -> int:
        return sum(1 for r in mock_requests(guard_stack) if r["path"] == "/v1/moderations")

    before = moderation_calls()
    with pytest.raises(openai.BadRequestError) as unchecked:
        with_image("https://img.test/unfetchable.png")
    assert unchecked.value.code == "guardrail_input_refused"
    # Once each, the text's call and the image's; a retried 503 made three rounds of them.
    assert moderation_calls() - before == 2
    line = wait_for(lambda: last_line(guard_stack, "moderated", http_status_code=400))
    assert line["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "fail_closed"}
    ]


def test_enrichment_raises_prompt_tokens_by_the_prepended_message(guard_stack: LocalStack) -> None:
    plain = ask(guard_stack, "", "Hello there")
    enriched = ask(guard_stack, "/enriched", "Hello there")
    rendered = ENRICHMENT.format(group_id="engineering")
    assert plain.usage is not None and enriched.usage is not None
    # The mock's rule: tokens of the message's text + 4 per message.
    assert enriched.usage.prompt_tokens - plain.usage.prompt_tokens == count_tokens(rendered) + 4
    sent = mock_requests(guard_stack)[-1]["json"]["messages"]
    assert sent[0] == {"role": "system", "content": rendered}


def test_guard_traffic_never_carries_provider_or_client_keys(guard_stack: LocalStack) -> None:
    calls = [c for c in Webhook.seen if "headers" in c]
    assert calls
    for call in calls:
        values = " ".join(call["headers"].values())
        assert KEY not in values and "mock-provider-key" not in values
    assert httpx.get(f"{guard_stack.mock_url}/_mock/health").status_code == 200
