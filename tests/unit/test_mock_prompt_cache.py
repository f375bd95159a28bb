"""The mock's prompt cache: Claude's breakpoints checked as the providers check them, and
each marked prefix written on first sight and read back on the next request."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.mock_llm.anthropic_api import InvalidRequestError, parse_messages_request
from extproc.mock_llm.bedrock_api import AwsError, parse_converse_request
from extproc.mock_llm.prompt_cache import PromptCache
from extproc.mock_llm.recorder import Body
from extproc.mock_llm.tokens import count_tokens

CLAUDE = "claude-sonnet-4-0"
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
EPHEMERAL = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
RULES = "Answer in French."
POINT = {"cachePoint": {"type": "default"}}


def messages_body(*blocks: dict[str, Any], system: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": list(blocks)}],
    }
    if system is not None:
        body["system"] = system
    return body


def anthropic(body: dict[str, Any]) -> Any:
    return parse_messages_request(Body.parse(orjson.dumps(body)), "2023-06-01")


def converse(body: dict[str, Any]) -> Any:
    return parse_converse_request(BEDROCK_CLAUDE, Body.parse(orjson.dumps(body)))


def test_a_marked_prefix_is_written_then_read() -> None:
    system = [{"type": "text", "text": RULES, "cache_control": ONE_HOUR}]
    body = messages_body(
        {"type": "text", "text": "Bonjour", "cache_control": EPHEMERAL},
        {"type": "text", "text": "Ça va ?"},
        system=system,
    )
    req = anthropic(body)
    cache = PromptCache()

    first = cache.use(list(req.breakpoints))
    again = cache.use(list(req.breakpoints))

    system_prefix = count_tokens(RULES) + 4 + 2
    both = system_prefix + count_tokens("Bonjour") + 4
    assert (first.read, first.one_hour, first.five_minutes) == (
        0,
        system_prefix,
        both - system_prefix,
    )
    assert (again.read, again.one_hour, again.five_minutes) == (both, 0, 0)


def test_a_changed_prefix_reads_only_what_stayed_the_same() -> None:
    system = [{"type": "text", "text": RULES, "cache_control": EPHEMERAL}]
    cache = PromptCache()
    cache.use(list(anthropic(messages_body(
        {"type": "text", "text": "Bonjour", "cache_control": EPHEMERAL}, system=system
    )).breakpoints))  # fmt: skip

    other = anthropic(
        messages_body({"type": "text", "text": "Salut", "cache_control": EPHEMERAL}, system=system)
    )
    use = cache.use(list(other.breakpoints))

    assert use.read == count_tokens(RULES) + 4 + 2
    assert use.five_minutes == count_tokens("Salut") + 4


def test_converse_cache_points_are_written_then_read() -> None:
    body = {"system": [{"text": RULES}, POINT], "messages": [
        {"role": "user", "content": [{"text": "Bonjour"}, POINT, {"text": "Ça va ?"}]}
    ]}  # fmt: skip
    req = converse(body)
    cache = PromptCache()

    first = cache.use(list(req.breakpoints))
    again = cache.use(list(req.breakpoints))

    both = count_tokens(RULES) + 4 + 2 + count_tokens("Bonjour") + 4
    assert (first.read, first.five_minutes + first.one_hour) == (0, both)
    assert again.read == both


def test_a_fifth_breakpoint_is_refused_as_anthropic_refuses_it() -> None:
    blocks = [{"type": "text", "text": f"part {n}", "cache_control": EPHEMERAL} for n in range(5)]
    with pytest.raises(InvalidRequestError, match="A maximum of 4 blocks with cache_control"):
        anthropic(messages_body(*blocks))


@pytest.mark.parametrize(
    "marker",
    [{"type": "persistent"}, {"type": "ephemeral", "ttl": "2h"}, {"type": "ephemeral", "x": 1}],
)
def test_a_marker_anthropic_does_not_take_is_refused(marker: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match=r"messages\.0\.content\.0\.cache_control"):
        anthropic(messages_body({"type": "text", "text": "Hi", "cache_control": marker}))


def test_a_fifth_cache_point_is_refused() -> None:
    content = [block for n in range(5) for block in ({"text": f"part {n}"}, POINT)]
    with pytest.raises(AwsError, match="exceeds the maximum of 4"):
        converse({"messages": [{"role": "user", "content": content}]})
