"""Shared helpers for the guardrail tests: configs with policies, SSE chunks, reading streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config


def config_with(guardrails: dict[str, Any], routes: dict[str, dict[str, Any]]) -> GatewayConfig:
    """The default config plus a ``guardrails`` section and fields on the named routes."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["guardrails"] = guardrails
    for route in raw["routes"]:
        route.update(routes.get(route["name"], {}))
    return parse_config(yaml.safe_dump(raw), "test", {})


def openai_chunk(text: str | None, finish: str | None = None, index: int = 0) -> bytes:
    delta = {"content": text} if text is not None else {}
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def openai_stream_text(body: bytes) -> str:
    """What an OpenAI client shows: the concatenated content deltas."""
    text = []
    for event in body.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue
        for choice in orjson.loads(event[6:]).get("choices") or ():
            text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


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
