"""Every limit on client input, and the timeout on every outbound call, is enforced.

The defaults are the documented ones (docs/configuration.md, docs/security.md);
each test sends just past one limit and reads the answer a client would get.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.auth.jwks import RemoteJwks
from extproc.config import GatewayConfig, load_config
from extproc.config.auth_model import JwksConfig
from extproc.config.model import LimitsConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.input_limits import nesting_depth_over
from extproc.processor import Processor
from extproc.store.connection import connect
from extproc.testing import processor_for, request_body, request_headers, run_stream

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}


def chat(**fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    # The standard library writes what orjson will not (deeper than 254 levels).
    return json.dumps(body).encode()


async def refusal(
    processor: Processor, body: bytes | None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """The immediate answer Envoy gets for this request, or None when it goes on."""
    messages = [request_headers(CHAT, headers=headers or AUTH)]
    if body is not None:
        messages.append(request_body(body))
    answers = await run_stream(processor, messages)
    last = answers[-1]
    if not last.HasField("immediate_response"):
        return None
    answer = last.immediate_response
    return int(answer.status.code), orjson.loads(answer.body)["error"]


def test_the_documented_defaults() -> None:
    limits = LimitsConfig()
    assert limits.max_request_body_bytes == 1_048_576
    assert limits.max_messages == 1000
    assert limits.max_json_depth == 64
    assert limits.max_request_headers_kb == 64
    assert limits.max_request_headers == 100
    assert (
        GatewayConfig.model_validate(
            {
                "providers": [{"name": "p", "base_url": "http://h"}],
                "models": [{"name": "m", "provider": "p"}],
            }
        ).auth.max_token_bytes
        == 8192
    )


def nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_depth_is_counted_in_containers() -> None:
    assert not nesting_depth_over({"a": [1, 2, {"b": "c"}]}, 3)
    assert nesting_depth_over({"a": [1, 2, {"b": ["c"]}]}, 3)
    assert not nesting_depth_over("text", 1)
    # No recursion: a structure far deeper than Python's stack is fine to check.
    assert nesting_depth_over(nested(100_000), 64)


def depth_over_by_stack(value: Any, limit: int) -> bool:
    """The walk ``nesting_depth_over`` replaced (one container popped at a time)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if depth > limit:
            return True
        children = current.values() if isinstance(current, dict) else current
        if isinstance(current, dict | list):
            pending.extend(
                (child, depth + 1) for child in children if isinstance(child, dict | list)
            )
    return False


_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON, limit=st.integers(0, 8))
def test_nesting_depth_reads_as_the_walk_it_replaced(value: Any, limit: int) -> None:
    """Gathered level by level (half the time on an agent's 100 KB request), the
    answer is the one-by-one walk's on any JSON value and limit."""
    assert nesting_depth_over(value, limit) is depth_over_by_stack(value, limit)


async def test_a_body_nested_past_the_limit_is_a_400(processor: Processor) -> None:
    # 300 levels: orjson parses it, but could not write it back for the provider.
    status, error = await refusal(processor, chat(metadata=nested(300))) or (0, {})
    assert status == 400
    assert error["message"] == "request body nests deeper than 64 levels"
    # The messages array sits at depth 3: a limit of 64 leaves room for real bodies.
    assert await refusal(processor, chat(metadata=nested(60))) is None


async def test_the_depth_limit_counts_structure_not_brackets_in_text(
    processor: Processor,
) -> None:
    # The body object is level 1; nested(n) adds n - 1 containers.
    status, _ = await refusal(processor, chat(metadata=nested(65))) or (0, {})
    assert status == 400
    assert await refusal(processor, chat(metadata=nested(64))) is None
    # Brackets inside strings are text, however many there are.
    text = "[{" * 500
    assert await refusal(processor, chat(messages=[{"role": "user", "content": text}])) is None


async def test_too_many_messages_is_a_400_naming_the_field(processor: Processor) -> None:
    many = [{"role": "user", "content": "x"}] * 1001
    status, error = await refusal(processor, chat(messages=many)) or (0, {})
    assert (status, error["param"]) == (400, "messages")
    assert "limit is 1000" in error["message"]
    assert await refusal(processor, chat(messages=many[:1000])) is None


async def test_a_body_over_the_size_limit_is_a_413(processor: Processor) -> None:
    big = chat(messages=[{"role": "user", "content": "y" * 1_048_576}])
    status, error = await refusal(processor, big) or (0, {})
    assert (status, error["code"]) == (413, "request_too_large")


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_a_credential_over_the_token_limit_is_a_401_before_any_parsing(
    processor: Processor, header: str
) -> None:
    value = "eyJ" + "a" * 9000 + ".b.c"
    sent = {header: f"Bearer {value}" if header == "authorization" else value}
    status, error = await refusal(processor, None, sent) or (0, {})
    assert status == 401
    assert error["message"] == "invalid token: too large"
    assert value not in orjson.dumps(error).decode()


async def test_the_token_limit_counts_bytes_not_characters(processor: Processor) -> None:
    # 3,000 characters of three bytes each: 9,000 bytes, over the 8 KiB default.
    status, error = await refusal(processor, None, {"x-api-key": "\u20ac" * 3000}) or (0, {})
    assert (status, error["message"]) == (401, "invalid token: too large")


def test_envoy_refuses_oversized_headers_itself(config: GatewayConfig) -> None:
    limits = config.limits.model_copy(
        update={"max_request_headers_kb": 16, "max_request_headers": 50}
    )
    rendered = render_bootstrap(config.model_copy(update={"limits": limits}))
    listener = rendered["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["max_request_headers_kb"] == 16
    assert hcm["common_http_protocol_options"]["max_headers_count"] == 50


# --- timeouts on outbound calls ------------------------------------------------------


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung peer)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    yield sock.getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_hung_jwks_url_times_out_and_keeps_serving(silent_server: int) -> None:
    import aiohttp

    config = JwksConfig(url=f"http://127.0.0.1:{silent_server}/jwks.json", timeout_s=0.2)
    source = RemoteJwks("idp", config, ("RS256",), clock=lambda: 0.0)
    async with aiohttp.ClientSession() as session:
        # Bounded far above timeout_s: without the timeout this would never return.
        await asyncio.wait_for(source.start(session), 10)
        await source.close()
    assert len(source.keys) == 0


async def test_a_hung_store_times_out(silent_server: int) -> None:
    client = connect(f"redis://127.0.0.1:{silent_server}/0", timeout_s=0.2)
    try:
        # redis-py's own timeout, well before the outer bound.
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.wait_for(client.ping(), 10)
    finally:
        await client.aclose()


@pytest.fixture
def processor(config: GatewayConfig) -> Processor:
    return processor_for(config)


@pytest.fixture
def config() -> GatewayConfig:
    return load_config("config/gateway.yaml", environ={})
