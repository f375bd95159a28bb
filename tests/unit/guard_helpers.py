"""Shared helpers for the guardrail tests: configs with policies, SSE chunks, reading streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from extproc.config import GatewayConfig
from extproc.config.guard_model import GuardConfig
from extproc.config.loader import parse_config
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.stream import StreamGuard


def config_with(guardrails: dict[str, Any], routes: dict[str, dict[str, Any]]) -> GatewayConfig:
    """The default config plus a ``guardrails`` section and fields on the named routes."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["guardrails"] = guardrails
    for route in raw["routes"]:
        route.update(routes.get(route["name"], {}))
    return parse_config(yaml.safe_dump(raw), "test", {})


def openai_answer(**message: Any) -> bytes:
    """A whole chat completion whose one choice's message has ``message``'s fields."""
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )


def openai_delta(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """One chat completion stream chunk: choice ``index`` with ``delta`` and ``finish``."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def openai_chunk(text: str | None, finish: str | None = None, index: int = 0) -> bytes:
    return openai_delta({"content": text} if text is not None else {}, finish, index)


def openai_deltas(body: bytes) -> list[dict[str, Any]]:
    """Every choice's delta of an OpenAI stream, in order (error events carry none)."""
    found = []
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:]).get("choices") or ():
                found.append(choice.get("delta") or {})
    return found


def openai_stream_text(body: bytes) -> str:
    """What an OpenAI client shows: the concatenated content deltas."""
    return "".join(delta.get("content") or "" for delta in openai_deltas(body))


# What ``play`` renders where a guard refuses the rest of a stream.
ERROR = b'{"error":{"message":"refused"}}'


def play(guard: StreamGuard, chunks: list[bytes]) -> bytes:
    """The stream a client gets when ``guard`` reads ``chunks`` as they arrive."""
    out = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        out.append(guard.render(guard.split(chunk, last), last, lambda _: ERROR))
    return b"".join(out)


def masked_openai_stream(builtins: list[str], pieces: list[str]) -> bytes:
    """The OpenAI stream a client gets when a guard masking ``builtins`` reads ``pieces`` as
    content chunks, then the stop chunk and ``[DONE]``."""
    guard = StreamGuard(
        Matchers((MatcherGuard(GuardConfig(name="pii", builtins=builtins, action="mask"), 256),)),
        anthropic=False,
    )
    chunks = [openai_chunk(piece) for piece in pieces]
    return play(guard, [*chunks, openai_chunk(None, "stop"), b"data: [DONE]\n\n"])


def anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_stream_text(body: bytes) -> str:
    text = []
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                data = orjson.loads(line[6:])
                if data.get("type") == "content_block_delta":
                    text.append(data["delta"].get("text", ""))
    return "".join(text)
