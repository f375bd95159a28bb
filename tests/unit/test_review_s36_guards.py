"""Review s36: ways a guarded secret or forbidden text gets past a guard.

Driven through the real processor with the messages Envoy sends. Each test asserts what a
user sees: the client's bytes never carry the secret, or the request is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import StreamGuard
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with, openai_deltas, openai_stream_text, play
from tests.unit.test_gemini_guard_flow import (
    FROM_VERTEX,
    GENERATE,
    POLICIES,
    vertex,  # noqa: F401  (a fixture)
)
from tests.unit.test_gemini_guard_flow import answer as gemini_answer
from tests.unit.test_gemini_guard_flow import gateway as gemini_gateway
from tests.unit.test_gemini_guard_flow import user as gemini_user
from tests.unit.test_guard_flow import AUTH, Gateway, chat

SSE = {"content-type": "text/event-stream"}
CARD = "4111 1111 1111 1111"
# The tokens a model writes the card in, as its logprobs name them.
CARD_TOKENS = ["411", "1", " ", "111", "1", " ", "111", "1", " ", "111", "1"]
MASK_ANSWERS = {
    "policies": [
        {
            "name": "answers",
            "response": [
                {"name": "pii-out", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"}
            ],
        }
    ]
}


def guarded(route: str = "openai-chat") -> Gateway:
    return Gateway(config_with(MASK_ANSWERS, {route: {"guardrails": "answers"}}))


def token_entry(token: str) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": -0.01,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": token, "logprob": -0.01, "bytes": list(token.encode())}],
    }


async def exchange(
    gateway: Gateway, path: str, body: bytes, chunks: list[bytes], *, stream: bool
) -> tuple[int | None, bytes]:
    """Play a request and its answer: (the status of a refusal, None when the request went
    on) and what the client received of the answer."""
    head = [request_headers(path, headers=AUTH), request_body(body)]
    answers = await run_stream(gateway.processor, head)
    if answers[-1].WhichOneof("response") == "immediate_response":
        return answers[-1].immediate_response.status.code, b""
    headers = SSE if stream else {"content-length": str(sum(map(len, chunks)))}
    messages = [
        *head,
        response_headers(200, headers),
        *(response_body(c, end_of_stream=i == len(chunks) - 1) for i, c in enumerate(chunks)),
    ]
    answers = await run_stream(gateway.processor, messages)
    return None, client_body(chunks, answers)


def reconstructed(tokens: list[str]) -> str:
    return "".join(tokens)


# --- logprobs: the answer's tokens, beside the masked text --------------------------------


async def test_chat_logprobs_do_not_carry_a_masked_card_to_the_client() -> None:
    """A client asking for ``logprobs`` reads every token of the answer: masking the
    content alone leaves the card in ``choices[].logprobs.content[].token``."""
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"Card {CARD}"},
                "logprobs": {
                    "content": [token_entry(t) for t in ["Card", " ", *CARD_TOKENS]],
                    "refusal": None,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
    }
    body = chat("my card?", logprobs=True, top_logprobs=1)
    refused, got = await exchange(
        guarded(), "/v1/chat/completions", body, [orjson.dumps(answer)], stream=False
    )
    if refused is not None:
        assert refused == 400  # refused before the provider: nothing to leak
        return
    shown = orjson.loads(got)
    assert shown["choices"][0]["message"]["content"] == "Card <CREDIT_CARD>"
    tokens = [e["token"] for e in (shown["choices"][0].get("logprobs") or {}).get("content") or []]
    assert CARD not in reconstructed(tokens)
    assert b"411" not in got


def logprob_chunk(text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "delta": {"content": text},
                "logprobs": {"content": [token_entry(text)], "refusal": None},
                "finish_reason": None,
            }
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def test_streamed_logprobs_do_not_carry_a_masked_card_to_the_client() -> None:
    """In a stream the held-back digits leave at once in each chunk's ``logprobs``."""
    finish = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    }
    chunks = [
        *(logprob_chunk(t) for t in ["Card", " ", *CARD_TOKENS]),
        b"data: " + orjson.dumps(finish) + b"\n\ndata: [DONE]\n\n",
    ]
    body = chat("my card?", stream=True, logprobs=True)
    refused, got = await exchange(guarded(), "/v1/chat/completions", body, chunks, stream=True)
    if refused is not None:
        assert refused == 400
        return
    assert openai_stream_text(got) == "Card <CREDIT_CARD>"
    tokens = []
    for event in got.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:]).get("choices") or ():
                tokens += [e["token"] for e in (choice.get("logprobs") or {}).get("content") or []]
    assert CARD not in reconstructed(tokens)


async def test_completion_logprobs_do_not_carry_a_masked_card_to_the_client() -> None:
    """A text completion's ``logprobs.tokens`` (and ``top_logprobs``' keys) spell it too."""
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "text": f"Card {CARD}",
                "logprobs": {
                    "tokens": ["Card", " ", *CARD_TOKENS],
                    "token_logprobs": [-0.01] * 13,
                    "top_logprobs": [{t: -0.01} for t in ["Card", " ", *CARD_TOKENS]],
                    "text_offset": list(range(13)),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 13, "total_tokens": 18},
    }
    body = orjson.dumps({"model": "gpt-4o-mini", "prompt": "my card?", "logprobs": 1})
    refused, got = await exchange(
        guarded("openai-completions"), "/v1/completions", body, [orjson.dumps(answer)], stream=False
    )
    if refused is not None:
        assert refused == 400
        return
    shown = orjson.loads(got)
    assert shown["choices"][0]["text"] == "Card <CREDIT_CARD>"
    assert CARD not in reconstructed(
        (shown["choices"][0].get("logprobs") or {}).get("tokens") or []
    )


async def test_responses_output_text_logprobs_do_not_carry_a_masked_card() -> None:
    """A Responses answer's ``output_text`` parts carry ``logprobs`` (asked with
    ``include: ["message.output_text.logprobs"]``): each token's text."""
    answer = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": f"Card {CARD}",
                        "annotations": [],
                        "logprobs": [
                            {"token": t, "logprob": -0.01, "bytes": [], "top_logprobs": []}
                            for t in ["Card", " ", *CARD_TOKENS]
                        ],
                    }
                ],
            }
        ],
        "usage": {"input_tokens": 5, "output_tokens": 13, "total_tokens": 18},
    }
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "input": "my card?",
            "include": ["message.output_text.logprobs"],
            "top_logprobs": 1,
        }
    )
    refused, got = await exchange(
        guarded("openai-responses"), "/v1/responses", body, [orjson.dumps(answer)], stream=False
    )
    if refused is not None:
        assert refused == 400
        return
    part = orjson.loads(got)["output"][0]["content"][0]
    assert part["text"] == "Card <CREDIT_CARD>"
    assert CARD not in reconstructed([e["token"] for e in part.get("logprobs") or []])


async def test_gemini_logprobs_do_not_carry_a_masked_address(vertex: Any) -> None:  # noqa: F811
    """Gemini's ``responseLogprobs`` answer carries each chosen token's text in
    ``logprobsResult.chosenCandidates[].token``."""
    tokens = ["Ask", " jane", "@", "example", ".", "com", "."]
    whole = gemini_answer("Ask jane@example.com.")
    whole["candidates"][0]["logprobsResult"] = {
        "chosenCandidates": [{"token": t, "logProbability": -0.01} for t in tokens],
        "topCandidates": [{"candidates": [{"token": t, "logProbability": -0.01}]} for t in tokens],
    }
    body = {**gemini_user("Who?"), "generationConfig": {"responseLogprobs": True, "logprobs": 1}}
    async with gemini_gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(GENERATE, body)
        if answers[-1].WhichOneof("response") == "immediate_response":
            assert answers[-1].immediate_response.status.code == 400
            return
        answers = await gw.send(
            GENERATE, body, response_headers(200, FROM_VERTEX), response_body(orjson.dumps(whole))
        )
    got = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    candidate = got["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "Ask <EMAIL>."}]
    chosen = (candidate.get("logprobsResult") or {}).get("chosenCandidates") or []
    assert "jane@example.com" not in "".join(c["token"] for c in chosen)


# --- what was checked and holds: masks across every cut of the body -----------------------

PII = GuardConfig(name="pii", builtins=["CREDIT_CARD", "EMAIL"], action="mask")
KEY = GuardConfig(
    name="key", patterns=[{"pattern": r"sk-[A-Za-z0-9]{8}", "name": "KEY"}], action="mask"
)


def stream_guard() -> StreamGuard:
    return StreamGuard(Matchers((MatcherGuard(PII, 256), MatcherGuard(KEY, 256))), anthropic=False)


def crlf_event(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """An event as a provider writing ASCII-escaped JSON and CRLF line ends sends it."""
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return ("data: " + json.dumps(chunk) + "\r\n\r\n").encode()


TEXT = (
    'Caf\u00e9 "x" jane.doe@example.com \u00e9\u4e2d sk-ABCDEFGH \u00e9 card '
    "4111 1111 1111 1111 end"
)
SHOWN = 'Caf\u00e9 "x" <EMAIL> \u00e9\u4e2d <KEY> \u00e9 card <CREDIT_CARD> end'


def event_ends(body: bytes) -> list[int]:
    return [0, *(at + 4 for at in range(len(body)) if body.startswith(b"\r\n\r\n", at))]


def cuts(body: bytes, step: int) -> list[int]:
    """Every ``step``-th cut of a stream of events, and every cut into its first ``data:``
    and from the end of the finish event on (its CRLFs and ``[DONE]``).

    Each cut replays the whole stream, so cutting at every byte costs the square of its
    length. With ``step`` prime to the events' lengths, the cuts fall at another offset in
    each next event; ``every_offset_is_cut`` says whether there are events enough for that
    to reach every offset (into ``data:``, the JSON, its escapes, the CRLFs).
    """
    edges = [*range(1, len(b"data: ") + 1), *range(event_ends(body)[-2] - 4, len(body))]
    return sorted({*range(1, len(body), step), *edges})


def every_offset_is_cut(body: bytes, chosen: list[int]) -> bool:
    ends = event_ends(body)
    starts = ends[1:-3]  # of the events between the first and the last two
    shortest = min(end - start for start, end in zip(starts, ends[2:-2], strict=True))
    offsets = {cut - max(s for s in starts if s <= cut) for cut in chosen if cut >= starts[0]}
    return offsets >= set(range(shortest))


def test_text_masks_hold_at_every_offset_cut_of_an_escaped_crlf_stream() -> None:
    pieces = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]
    body = b"".join(crlf_event({"content": p}) for p in pieces)
    body += crlf_event({}, "stop") + b"data: [DONE]\r\n\r\n"
    chosen = cuts(body, 11)
    assert every_offset_is_cut(body, chosen)
    for cut in chosen:
        assert openai_stream_text(play(stream_guard(), [body[:cut], body[cut:]])) == SHOWN, cut


# Arguments cut in 3 or 7 characters make too few events for a sparser step to cut every
# offset: every fifth cut there.
@pytest.mark.parametrize(("size", "step"), [(1, 19), (2, 19), (3, 5), (7, 5)])
def test_escaped_tool_arguments_split_over_many_deltas_are_masked(size: int, step: int) -> None:
    args = json.dumps(
        {"to": "jane@example.com", "note": "caf\u00e9 sk-ABCDEFGH", "n": 4111111111111111}
    ).replace("@", "\\u0040")
    body = crlf_event(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        }
    )
    for i in range(0, len(args), size):
        fragment = {"index": 0, "function": {"arguments": args[i : i + size]}}
        body += crlf_event({"tool_calls": [fragment]})
    body += crlf_event({}, "tool_calls") + b"data: [DONE]\r\n\r\n"
    chosen = cuts(body, step)
    assert step == 5 or every_offset_is_cut(body, chosen)
    for cut in chosen:
        out = play(stream_guard(), [body[:cut], body[cut:]])
        sent = "".join(
            call["function"].get("arguments", "")
            for delta in openai_deltas(out)
            for call in delta.get("tool_calls", [])
        )
        assert json.loads(sent) == {
            "to": "<EMAIL>",
            "note": "caf\u00e9 <KEY>",
            "n": "<CREDIT_CARD>",
        }


def test_choices_and_fields_of_one_event_are_each_masked() -> None:
    """n > 1 choices and reasoning beside content, in the same events."""
    halves = [("jane.doe@exa", "mple.com ok"), ("4111 1111 ", "1111 1111 ok")]
    events = []
    for first in (0, 1):
        choices = [
            {"index": i, "delta": {"content": halves[i][first],
                                   "reasoning_content": halves[1 - i][first]},
             "finish_reason": None}
            for i in (0, 1)
        ]  # fmt: skip
        events.append(b"data: " + orjson.dumps({"choices": choices}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    out = play(stream_guard(), [b"".join(events)])
    assert b"jane" not in out and b"4111" not in out


# --- a Gemini body naming one field in both of Google's spellings -------------------------


@pytest.mark.parametrize(
    "body",
    [
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "system_instruction": {"parts": [{"text": "Owner: jane@example.com"}]},
            **gemini_user("Hello"),
        },
        {
            "contents": [
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "f", "args": {"to": "bob"}},
                            "function_call": {"name": "f", "args": {"to": "jane@example.com"}},
                        }
                    ],
                }
            ]
        },
    ],
    ids=["system-instruction", "function-call"],
)
async def test_a_gemini_field_in_both_spellings_is_guarded_in_both(
    vertex: tuple[str, Path],  # noqa: F811  (the fixture)
    body: dict[str, Any],
) -> None:
    # Google's REST API takes camelCase and snake_case names: whichever of the two it
    # reads, the guards have read (and masked) it. A field the quota reads given twice
    # (the system instruction) is refused before anything reaches Google.
    async with gemini_gateway(vertex, POLICIES, guardrails="pii") as gw:
        answers = await gw.send(GENERATE, body)
        if answers[1].HasField("immediate_response"):
            assert answers[1].immediate_response.status.code == 400
            assert b"is given twice" in answers[1].immediate_response.body
            return
        mutation = answers[1].request_body.response.body_mutation.body
        assert b"jane@example.com" not in (mutation or orjson.dumps(body))
