"""The agent routes' check for keys given twice or spelt in another case: what it refuses,
and that a large body costs it about one parse, not a Python call per object.

A message that names ``method`` (or its ``params`` ``name``) twice, or as ``"Method"``,
is read one way by the gateway and another by some servers: refused. Keys deeper in a
tool's ``arguments`` are the tool's business.
"""

from __future__ import annotations

import random
import sys
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.agents import jsonrpc
from extproc.agents.jsonrpc import RpcParseError

ENVELOPE = ("jsonrpc", "id", "method", "params", "result", "error")
# Spellings of the keys the gateway reads by that some parser reads as them.
SPELLINGS = {
    "jsonrpc": ["jsonrpc", "JSONRPC", "j\u017fonrpc"],
    "id": ["id", "ID", "Id"],
    "method": ["method", "Method", "METHOD"],
    "params": ["params", "Params", "param\u017f"],
    "result": ["result", "Result"],
    "error": ["error", "Error"],
    "name": ["name", "Name", "NAME"],
}
OTHER_KEYS = ["arguments", "_meta", "x", 'a"b', "a\\b", "é", "naming", "ids"]


def _encode_key(key: str, rnd: random.Random) -> str:
    """The key as JSON, each character as it is or as a ``\\u`` escape."""
    out = []
    for char in key:
        if char in '"\\' or rnd.random() < 0.3:
            out.append("".join(f"\\u{unit:04x}" for unit in _utf16(char)))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _utf16(char: str) -> list[int]:
    data = char.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _space(rnd: random.Random) -> str:
    return "".join(rnd.choice(" \t\n\r") for _ in range(rnd.choice([0, 0, 1, 2])))


def _object(pairs: list[tuple[str, str]], rnd: random.Random) -> str:
    """An object of already encoded values, its keys escaped at random."""
    members = [
        _space(rnd) + _encode_key(key, rnd) + _space(rnd) + ":" + _space(rnd) + value + _space(rnd)
        for key, value in pairs
    ]
    return "{" + ",".join(members) + _space(rnd) + "}"


def _deep(rnd: random.Random) -> str:
    """A tool's arguments: equal keys and every spelling, which the check leaves alone."""
    keys = [rnd.choice([*OTHER_KEYS, *SPELLINGS["name"], *SPELLINGS["method"]]) for _ in range(3)]
    inner = _object([(key, '"v"') for key in keys + keys[:1]], rnd)
    return _object([("x", "[" + inner + "," + inner + "]"), ("y", inner)], rnd)


def _message(rnd: random.Random, message_id: int) -> tuple[str, bool]:
    """A JSON-RPC request, and whether a server could read it otherwise than orjson."""
    name_keys = ["name"] + [
        rnd.choice(SPELLINGS["name"] + OTHER_KEYS) for _ in range(rnd.choice([0, 0, 1, 2]))
    ]
    rnd.shuffle(name_keys)
    params = [
        (key, '"echo"') if key in SPELLINGS["name"] else (key, _deep(rnd)) for key in name_keys
    ]
    keys = ["jsonrpc", "id", "method", "params"]
    keys += [
        rnd.choice([s for group in SPELLINGS.values() for s in group] + OTHER_KEYS)
        for _ in range(rnd.choice([0, 0, 0, 1, 2]))
    ]
    rnd.shuffle(keys)
    values = {"jsonrpc": '"2.0"', "id": str(message_id), "method": '"tools/list"'}
    pairs = []
    for key in keys:
        folded = key.casefold()
        if folded == "params":
            pairs.append((key, _object(params, rnd)))
        elif folded in values:
            pairs.append((key, values[folded]))
        elif folded in ("result", "error"):
            pairs.append((key, "{}"))
        else:
            pairs.append((key, _deep(rnd)))
    misread = _clashes(keys, ENVELOPE) or (
        # Only the exact params is read (a second or other-cased one is refused anyway).
        _clashes(name_keys, ("name",))
    )
    return _object(pairs, rnd), misread


def _clashes(keys: list[str], read: tuple[str, ...]) -> bool:
    """A key of ``read`` given other than once, exactly spelt."""
    return any([k for k in keys if k.casefold() == key] not in ([key], []) for key in read)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=3), st.booleans())
def test_a_message_is_refused_exactly_when_a_read_key_is_given_twice_or_spelt_otherwise(
    rnd: random.Random, count: int, batch: bool
) -> None:
    messages = [_message(rnd, index) for index in range(count if batch else 1)]
    body = ("[" + ",".join(m for m, _ in messages) + "]" if batch else messages[0][0]).encode()
    misread = any(bad for _, bad in messages)
    try:
        jsonrpc.parse_body(body)
    except RpcParseError as error:
        assert misread, f"refused a body every parser reads alike: {error.message}: {body!r}"
        assert error.code == jsonrpc.INVALID_REQUEST
    else:
        assert not misread, f"a server could read this body otherwise: {body!r}"


@pytest.mark.parametrize(
    "body",
    [
        # Escapes spell the key the server reads: "m\u0065thod" is method.
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","\\u006dethod":"tools/call"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/list","\\u006Dethod":"tools/call"}]',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
        b'{"name":"echo","arguments":{"a":"\\u00e9"},"\\u006e\\u0061\\u006d\\u0065":"deploy"}}',
        b'[{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":2,'
        b'"method":"tools/list","params":{"name":"a","Name":"b"}}]',
        # Whitespace of every kind between the tokens.
        b'{ "jsonrpc" :\t"2.0" ,\r\n "id" : 1 , "method" : "a" ,\n"method"\t:\r"b" }',
    ],
)
def test_keys_given_twice_are_refused_however_they_are_written(body: bytes) -> None:
    with pytest.raises(RpcParseError) as raised:
        jsonrpc.parse_body(body)
    assert raised.value.code == jsonrpc.INVALID_REQUEST


def _python_calls(body: bytes) -> int:
    """Calls of the gateway's Python functions while the body is parsed (C functions,
    and others' such as a garbage collector's callbacks, not counted)."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_globals.get("__name__", "").startswith("extproc."):
            calls += 1

    sys.setprofile(profile)
    try:
        jsonrpc.parse_body(body)
    finally:
        sys.setprofile(None)
    return calls


def test_the_check_does_no_python_work_per_object_of_a_tools_arguments() -> None:
    # A client may send max_request_body_bytes of small objects with \u escapes, which
    # the check must read: one Python call per object held the event loop for a tenth
    # of a second or more per MiB, for every request on the worker. The work done in
    # Python must not grow with the number of objects in the arguments.
    def body(objects: int) -> bytes:
        items = ",".join(['{"k\\u00e9y":"\\u00e9"}'] * objects)
        return (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
            f'"arguments":{{"items":[{items}]}}}}}}'
        ).encode()

    small, large = _python_calls(body(10)), _python_calls(body(5000))
    assert large == small, f"{small} Python calls for 10 objects, {large} for 5,000"


def test_nor_per_object_in_the_messages_of_a_batch() -> None:
    def batch(objects: int) -> bytes:
        items = ",".join(['{"k\\u00e9y":"\\u00e9"}'] * objects)
        one = '{"jsonrpc":"2.0","method":"notifications/x","params":{"items":[' + items + "]}}"
        return ("[" + ",".join([one] * 20) + "]").encode()

    small, large = _python_calls(batch(10)), _python_calls(batch(1000))
    assert large == small, f"{small} Python calls for 10 objects a message, {large} for 1,000"


@pytest.mark.parametrize("body", [b'"\\u0041"', b' "caf\\u00e9" ', b'["\\u0041"]'])
def test_a_body_that_is_no_message_is_refused_as_such_escapes_or_not(body: bytes) -> None:
    with pytest.raises(RpcParseError) as raised:
        jsonrpc.parse_body(body)
    assert raised.value.message == "each message must be a JSON-RPC 2.0 object"
