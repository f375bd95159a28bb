"""The mock's prompt cache: Claude's breakpoints checked, and reads and writes reported.

A request that marks breakpoints (Anthropic's ``cache_control`` on a tool, a system
block or a message block; Converse's ``cachePoint`` block after one) caches the prompt
up to each of them, as Claude does. The mock remembers each prefix it cached (by a hash
of the model and the prefix, markers aside) for the life of the server, and reports:

- read: the tokens of the longest marked prefix it had cached before;
- written: the tokens from there to the last breakpoint, each stretch in the cache of
  the breakpoint that ends it (``ttl`` ``1h``: the 1-hour cache, else the 5-minute one).

Tokens are the mock's (``tokens``): a prefix's are the input tokens a request holding
that prefix alone would report. Claude's least cacheable prompt (1,024 tokens for most
models) is not applied: any prefix is cached, so tests need no long prompts.

Markers are checked as Anthropic checks them (``anthropic_breakpoints``): a type other
than ``ephemeral``, a ``ttl`` other than ``5m`` or ``1h``, and more than four in a
request are refused with Anthropic's words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

MAX_BREAKPOINTS = 4
_TTLS = ("5m", "1h")
_ONE_HOUR = "1h"


class BreakpointError(ValueError):
    """A request's breakpoints cannot be taken; the message is the provider's."""


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A cached prefix: its hash, its tokens and the cache it goes to."""

    key: bytes
    tokens: int
    ttl: str


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one request read from and wrote to the cache, in prompt tokens."""

    read: int = 0
    five_minutes: int = 0
    one_hour: int = 0


class PromptCache:
    """The prefixes one mock server has cached."""

    def __init__(self) -> None:
        self._cached: set[bytes] = set()

    def use(self, breakpoints: list[Breakpoint]) -> CacheUse:
        """Read the longest prefix cached before, write the rest up to the last breakpoint."""
        read = max((b.tokens for b in breakpoints if b.key in self._cached), default=0)
        written = {"5m": 0, "1h": 0}
        done = read
        for point in sorted(breakpoints, key=lambda b: b.tokens):
            if point.tokens > done:
                written[point.ttl] += point.tokens - done
                done = point.tokens
            self._cached.add(point.key)
        return CacheUse(read, written["5m"], written["1h"])


def _key(model: str, prefix: object) -> bytes:
    return hashlib.sha256(orjson.dumps([model, prefix], option=orjson.OPT_SORT_KEYS)).digest()


def _unmarked(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _check_marker(value: object, where: str) -> str:
    """The ttl of an Anthropic ``cache_control``; BreakpointError as Anthropic refuses it."""
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise BreakpointError(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = value.get("ttl", "5m")
    if ttl not in _TTLS:
        raise BreakpointError(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    extra = set(value) - {"type", "ttl"}
    if extra:
        raise BreakpointError(
            f"{where}.cache_control.{sorted(extra)[0]}: Extra inputs are not permitted"
        )
    return str(ttl)


def anthropic_breakpoints(
    doc: dict[str, Any], count: Callable[[list[Any], str | None, list[Any]], int]
) -> list[Breakpoint]:
    """The breakpoints of an Anthropic Messages body, in the order Claude reads the prompt
    (tools, system, messages); ``count`` is the mock's input token count of a prompt
    (messages, system text, tools). BreakpointError for markers Anthropic refuses."""
    model = str(doc.get("model"))
    tools: list[Any] = doc.get("tools") or []
    system = doc.get("system")
    system_blocks: list[Any] = system if isinstance(system, list) else []
    messages: list[Any] = doc.get("messages") or []
    points: list[Breakpoint] = []
    for where, prefix in _anthropic_prefixes(tools, system, system_blocks, messages):
        block, (p_tools, p_system, p_messages) = prefix
        if "cache_control" not in block:
            continue
        ttl = _check_marker(block["cache_control"], where)
        system_text = (
            " ".join(b["text"] for b in p_system) if isinstance(p_system, list) else p_system
        )
        tokens = count(p_messages, system_text, p_tools)
        plain = [
            [_unmarked(t) for t in p_tools],
            [_unmarked(b) for b in p_system] if isinstance(p_system, list) else p_system,
            [
                {**m, "content": [_unmarked(b) for b in m["content"]]}
                if isinstance(m["content"], list)
                else m
                for m in p_messages
            ],
        ]
        points.append(Breakpoint(_key(model, plain), tokens, ttl))
    if len(points) > MAX_BREAKPOINTS:
        raise BreakpointError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(points)}."
        )
    return points


_Prefix = tuple[dict[str, Any], tuple[list[Any], Any, list[Any]]]


def _anthropic_prefixes(
    tools: list[Any], system: Any, system_blocks: list[Any], messages: list[Any]
) -> Iterator[tuple[str, _Prefix]]:
    """Each block that may carry a marker, with the prompt up to and including it."""
    for i, tool in enumerate(tools):
        yield f"tools.{i}", (tool, (tools[: i + 1], None, []))
    for i, block in enumerate(system_blocks):
        yield f"system.{i}", (block, (tools, system_blocks[: i + 1], []))
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if isinstance(block, dict):
                cut = {**message, "content": content[: j + 1]}
                yield f"messages.{i}.content.{j}", (block, (tools, system, [*messages[:i], cut]))


def converse_breakpoints(
    model: str, doc: dict[str, Any], count: Callable[[list[Any], list[Any], list[Any]], int]
) -> list[Breakpoint]:
    """The breakpoints of a Converse body for ``model``: each ``cachePoint`` block caches
    what comes before it, in the order the model reads the prompt (tools, system,
    messages); ``count`` is the mock's input token count of (messages, system blocks,
    tools)."""
    tool_config = doc.get("toolConfig")
    tools: list[Any] = tool_config.get("tools") or [] if isinstance(tool_config, dict) else []
    system: list[Any] = doc.get("system") or []
    messages: list[Any] = doc.get("messages") or []
    points: list[Breakpoint] = []

    def point(p_tools: list[Any], p_system: list[Any], p_messages: list[Any], mark: Any) -> None:
        ttl = mark.get("ttl", "5m") if isinstance(mark, dict) else "5m"
        ttl = _ONE_HOUR if ttl == _ONE_HOUR else "5m"
        tokens = count(p_messages, p_system, p_tools)
        points.append(Breakpoint(_key(model, [p_tools, p_system, p_messages]), tokens, ttl))

    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and "cachePoint" in tool:
            point(tools[:i], [], [], tool["cachePoint"])
    for i, block in enumerate(system):
        if isinstance(block, dict) and "cachePoint" in block:
            point(tools, system[:i], [], block["cachePoint"])
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if isinstance(block, dict) and "cachePoint" in block:
                cut = {**message, "content": content[:j]}
                point(tools, system, [*messages[:i], cut], block["cachePoint"])
    if len(points) > MAX_BREAKPOINTS:
        raise BreakpointError(
            f"The number of cache points in the request ({len(points)}) exceeds the "
            f"maximum of {MAX_BREAKPOINTS}."
        )
    return points
