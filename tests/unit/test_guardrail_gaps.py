"""Guardrail and enrichment gaps a client or an operator would notice, through the processor.

- a card number right after a code ending in a digit ("order A1 4111 ...") was not
  taken for a card, so it reached the provider (and the client) unmasked;
- a case-insensitive word spelled with a character that only folds to its letter
  (the Kelvin sign for "k", the long s for "s") was masked in a buffered answer but
  leaked from a stream when it was cut over two chunks;
- the text of an Anthropic document block (plain text or content) was never read,
  so a refused word passed in one;
- enrichment on an ``anthropic_count_tokens`` route was added as OpenAI messages (a
  ``system`` role in ``messages``), which Anthropic refuses;
- a moderation service's 429 became a 503 without ``retry-after``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from extproc.config import GatewayConfig
from extproc.config.guard_model import GuardConfig
from extproc.guardrails import moderation
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.guardrails.moderation import MAX_RETRY_AFTER_S, retry_after_seconds
from extproc.guardrails.stream import TextStream
from tests.unit.guard_helpers import config_with, openai_chunk, openai_stream_text
from tests.unit.test_guard_flow import Gateway, chat, immediate, upstream_body
from tests.unit.test_guardrail_review import Hook, serving, stream_through

DONE = b"data: [DONE]\n\n"


def messages_body(*content: Any, system: Any = None) -> bytes:
    body: dict[str, Any] = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": list(content)}],
    }
    if system is not None:
        body["system"] = system
    return orjson.dumps(body)


# --- CREDIT_CARD next to a code -----------------------------------------------------------

PII = {"policies": [{"name": "pii", "request": [
    {"name": "pii", "builtins": ["CREDIT_CARD"], "action": "mask"}]}]}  # fmt: skip


@pytest.mark.parametrize(
    ("said", "sent"),
    [
        ("Order A1 4111 1111 1111 1111 please", "Order A1 <CREDIT_CARD> please"),
        ("Use v2 5105-1051-0510-5100", "Use v2 <CREDIT_CARD>"),
        ("Card 4111 1111 1111 1111 7B is mine", "Card <CREDIT_CARD> 7B is mine"),
        # Glued to the letters themselves, it stands alone no more: not a card.
        ("ref x4111111111111111", "ref x4111111111111111"),
    ],
)
async def test_a_card_after_a_code_ending_in_a_digit_is_still_masked(said: str, sent: str) -> None:
    gateway = Gateway(config_with(PII, {"openai-chat": {"guardrails": "pii"}}))
    answers = await gateway.send("/v1/chat/completions", chat(said))
    # A guarded route sends the body as the gateway parsed it, masked or not.
    prompt = upstream_body(answers[1])["messages"][0]["content"]
    assert prompt == sent, "the provider got another prompt than the guards left"


# --- case folding in streams ---------------------------------------------------------------

CODENAME = {"policies": [{"name": "codename", "response": [
    {"name": "codename", "literals": ["project kestrel"], "case_insensitive": True,
     "action": "mask"}]}]}  # fmt: skip
KELVIN = "\u212a"  # KELVIN SIGN, which case-folds to "k"


async def test_a_case_folded_word_cut_over_two_chunks_is_masked_as_in_a_buffered_answer() -> None:
    gateway = Gateway(config_with(CODENAME, {"openai-chat": {"guardrails": "codename"}}))
    chunks = [
        openai_chunk(f"Status of Project {KELVIN}"),
        openai_chunk("estrel: on track."),
        openai_chunk(None, "stop"),
        DONE,
    ]
    got, _ = await stream_through(gateway, chunks)
    assert openai_stream_text(got) == "Status of ****: on track."
    assert got.endswith(DONE)


WORDS = GuardConfig.model_validate(
    {"name": "w", "literals": ["kestrel", "sauce"], "case_insensitive": True, "action": "mask"}
)
PATTERN = GuardConfig.model_validate(
    {"name": "p", "patterns": [r"kest[a-z]+l"], "case_insensitive": True, "action": "mask"}
)
INLINE = GuardConfig.model_validate(
    {"name": "i", "patterns": [r"(?i)sk-[a-z]{4}"], "action": "mask"}
)
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S, which case-folds to "s"


@pytest.mark.parametrize(
    ("guard", "text"),
    [
        (WORDS, f"the {KELVIN}ESTREL"),
        (WORDS, f"a {LONG_S}auce"),
        (PATTERN, f"the {KELVIN}ESTREL"),
        (INLINE, f"key {LONG_S}k-abcd ok"),
    ],
)
def test_every_cut_of_a_folded_word_masks_as_the_whole_text(guard: GuardConfig, text: str) -> None:
    matchers = Matchers((MatcherGuard(guard, 256),))
    _, hits, _ = matchers.scan_all(text)
    whole = apply(text, hits)
    assert "****" in whole  # RE2 folds case: the buffered guard masks it
    for cut in range(1, len(text)):
        stream = TextStream(matchers)
        assert stream.push(text[:cut]) + stream.push(text[cut:]) + stream.flush() == whole


# --- Anthropic document blocks -------------------------------------------------------------

WORKSHOP = {"policies": [{"name": "workshop", "request": [
    {"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True},
    {"name": "pii", "builtins": ["EMAIL"], "action": "mask"}]}]}  # fmt: skip


async def test_a_refused_word_in_a_plain_text_document_is_refused() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain",
                   "data": "List every Credit Card number you know."},
    }  # fmt: skip
    answers = await gateway.send("/v1/messages", messages_body(document))
    assert answers[-1].HasField("immediate_response"), "the document went to the provider"
    status, error = immediate(answers[-1])
    assert status == 403
    assert error["error"]["type"] == "permission_error"
    assert gateway.log()["guardrails"][0] == {
        "guard": "card-talk",
        "phase": "request",
        "action": "reject",
    }


async def test_pii_in_document_content_title_and_context_is_masked() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"anthropic-messages": {"guardrails": "workshop"}}))
    document = {
        "type": "document",
        "title": "Mail from jane@example.com",
        "context": "Forwarded by ops@example.com",
        "source": {
            "type": "content",
            "content": [{"type": "text", "text": "Reply to bob@example.com"}],
        },
    }
    plain = {"type": "document", "source": {"type": "content", "content": "cc amy@example.com"}}
    result = {
        "type": "search_result",
        "source": "https://wiki/x",
        "title": "Owner tom@example.com",
        "content": [{"type": "text", "text": "Ask sue@example.com"}],
    }
    answers = await gateway.send("/v1/messages", messages_body(document, plain, result))
    assert answers[1].request_body.response.HasField("body_mutation"), "nothing was masked"
    sent = upstream_body(answers[1])["messages"][0]["content"]
    assert sent[0]["title"] == "Mail from <EMAIL>"
    assert sent[0]["context"] == "Forwarded by <EMAIL>"
    assert sent[0]["source"]["content"][0]["text"] == "Reply to <EMAIL>"
    assert sent[1]["source"]["content"] == "cc <EMAIL>"
    assert sent[2]["title"] == "Owner <EMAIL>"
    assert sent[2]["content"][0]["text"] == "Ask <EMAIL>"
    assert sent[2]["source"] == "https://wiki/x"  # an address, not text the model reads


# --- enrichment on Anthropic's token counting ---------------------------------------------

ENRICHMENT = {
    "prepend": [{"role": "system", "content": "Answer as the {group_id} team."}],
    "append": [{"role": "user", "content": "Be brief."}],
}


async def test_enrichment_on_the_count_tokens_route_takes_anthropics_shape() -> None:
    # The same enrichment on /v1/messages and on its count: the count must be of the
    # prompt the Messages call sends, in a body Anthropic takes (no "system" role).
    routes = {name: {"enrichment": ENRICHMENT}
              for name in ("anthropic-messages", "anthropic-count-tokens")}  # fmt: skip
    gateway = Gateway(config_with({}, routes))
    body = orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Hi"}]}
    )
    counted = upstream_body((await gateway.send("/v1/messages/count_tokens", body))[1])
    message = orjson.loads(body)
    message["max_tokens"] = 50
    sent = upstream_body((await gateway.send("/v1/messages", orjson.dumps(message)))[1])
    assert [m["role"] for m in counted["messages"]] == ["user"]
    assert counted["system"] == [{"type": "text", "text": "Answer as the engineering team."}]
    assert counted["messages"] == sent["messages"]
    assert counted["system"] == sent["system"]


# --- moderation rate limited ---------------------------------------------------------------


def moderated(port: int, *, route: str = "openai-chat", mode: str = "fail_closed") -> GatewayConfig:
    guardrails = {
        "moderation": [{"name": "mod", "base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key": "mod-key", "failure_mode": mode}],
        "policies": [{"name": "moderated", "request": [{"name": "moderation",
                                                         "moderation": "mod"}]}],
    }  # fmt: skip
    return config_with(guardrails, {route: {"guardrails": "moderated"}})


def limited(headers: dict[str, str]) -> Any:
    def reply(_: Any) -> web.Response:
        error = {"error": {"message": "Rate limit reached for requests", "type": "requests"}}
        return web.json_response(error, status=429, headers=headers)

    return reply


def in_a_minute() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)


@pytest.mark.parametrize(
    ("given", "retry_after"),
    [
        ({"retry-after": "20"}, 20),
        ({"retry-after": "1.2"}, 2),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 3),  # OpenAI's finer header first
        ({}, 1),
        ({"retry-after": "soon"}, 1),
    ],
)
async def test_a_rate_limited_moderation_service_tells_the_client_when_to_retry(
    given: dict[str, str], retry_after: int
) -> None:
    hook = Hook(limited(given))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    response = answers[-1].immediate_response
    status, error = immediate(answers[-1])
    assert status == 429
    shown = {h.header.key: h.header.raw_value.decode() for h in response.headers.set_headers}
    assert shown["retry-after"] == str(retry_after)
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["code"] == "guardrail_rate_limited"
    assert error["error"]["message"] == (
        f"Guardrail 'moderation' is rate limited by its moderation service; "
        f"try again in {retry_after} second{'' if retry_after == 1 else 's'}"
    )
    line = gateway.log()
    assert line["http_status_code"] == 429
    assert line["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "fail_closed"}
    ]
    assert (line["prompt_tokens"], line["total_tokens"]) == (0, 0)
    assert "mod-key" not in orjson.dumps(line).decode()


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), st.text(max_size=40)))
def test_any_retry_after_header_becomes_whole_seconds_within_a_day(headers: dict[str, str]) -> None:
    assert 1 <= retry_after_seconds(headers) <= MAX_RETRY_AFTER_S


async def test_a_retry_after_date_becomes_seconds() -> None:
    hook = Hook(limited({"retry-after": in_a_minute()}))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    response = answers[-1].immediate_response
    shown = {h.header.key: h.header.raw_value.decode() for h in response.headers.set_headers}
    assert response.status.code == 429
    assert 55 <= int(shown["retry-after"]) <= 61


async def test_anthropic_clients_get_their_rate_limit_error() -> None:
    hook = Hook(limited({"retry-after": "7"}))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port, route="anthropic-messages"))
        body = messages_body({"type": "text", "text": "hello"})
        answers = await gateway.send("/v1/messages", body)
    status, error = immediate(answers[-1])
    assert status == 429
    assert error["type"] == "error"
    assert error["error"]["type"] == "rate_limit_error"


async def test_a_moderation_service_error_is_still_a_503() -> None:
    hook = Hook(lambda _: web.Response(status=500, headers={"retry-after": "5"}))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, error = immediate(answers[-1])
    assert status == 503
    assert error["error"]["code"] == "guardrail_unavailable"


async def test_a_rate_limited_moderation_service_failing_open_lets_the_prompt_through() -> None:
    hook = Hook(limited({"retry-after": "20"}))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port, mode="fail_open"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert answers[1].HasField("request_body")
    assert upstream_body(answers[1])["messages"] == [{"role": "user", "content": "hello"}]
    assert gateway.log()["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "fail_open"}
    ]


def out_of_credit(_: web.Request) -> web.Response:
    """OpenAI's answer for an account whose credit or budget is spent: a 429 too."""
    error = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    return web.json_response(error, status=429)


async def test_a_moderation_account_out_of_credit_is_an_outage_not_a_rate_limit() -> None:
    """No wait cures a spent account: failing closed, the client is told the guard is
    unavailable (503) rather than to retry in a second, over and over."""
    hook = Hook(out_of_credit)
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    response = answers[-1].immediate_response
    status, error = immediate(answers[-1])
    assert status == 503
    assert error["error"]["code"] == "guardrail_unavailable"
    assert "retry-after" not in {h.header.key for h in response.headers.set_headers}


def chunked_results(size: int) -> web.Response:
    """A well-formed moderation answer padded to ``size`` bytes, sent chunked: no
    content-length announces how much is coming."""
    result = {"flagged": False, "categories": {}, "category_scores": {}, "pad": "x" * size}
    reply = web.Response(body=orjson.dumps({"results": [result]}), content_type="application/json")
    reply.enable_chunked_encoding()
    return reply


async def test_a_chunked_moderation_answer_past_the_bound_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer-size bound holds when the service streams its answer without a
    content-length (else a runaway service fills the gateway's memory)."""
    monkeypatch.setattr(moderation, "MAX_ANSWER_BYTES", 4096)
    hook = Hook(lambda _: chunked_results(8192))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, error = immediate(answers[-1])
    assert status == 503
    assert error["error"]["code"] == "guardrail_unavailable"


async def test_a_chunked_moderation_answer_within_the_bound_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(moderation, "MAX_ANSWER_BYTES", 4096)
    hook = Hook(lambda _: chunked_results(1024))
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated(port))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert upstream_body(answers[1])["messages"] == [{"role": "user", "content": "hello"}]
