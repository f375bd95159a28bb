"""CPU time of reading an agent route's JSON-RPC body (``jsonrpc.parse_body``: the orjson
parse plus the check for keys given twice or spelt in another case) against the orjson
parse alone, for 1 MiB bodies shaped to make the check work hard: ``\\u`` escapes, which
always make it read the keys as written, and many small objects.

    python -m benchmarks.agent_key_check

Best of seven runs per body, in milliseconds; the event loop is held that long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from extproc.agents import jsonrpc

MIB = 1 << 20


def _call(arguments: str) -> bytes:
    return (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":'
        + arguments
        + "}}"
    ).encode()


def _items(item: str, size: int) -> bytes:
    return _call('{"e":"\\u00e9","x":[' + ",".join([item] * (size // (len(item) + 1))) + "]}")


def bodies() -> dict[str, bytes]:
    keys = ",".join(f'"k\\u00e9{i}":"' + "\\u00e9" * 14 + '"' for i in range(10_000))
    notification = '{"jsonrpc":"2.0","method":"n\\u00e9","params":{}}'
    return {
        "10k keys, strings of \\u00e9": _call("{" + keys + "}"),
        "empty objects {}": _items("{}", MIB),
        'objects {"\\u00e9":0}': _items('{"\\u00e9":0}', MIB),
        "objects of 6 keys": _items('{"a":0,"b":1,"c":2,"d":3,"e":4,"f":5}', MIB),
        "batch of notifications": ("[" + ",".join([notification] * (MIB // 48)) + "]").encode(),
        "batch of one, empty objects": b"[" + _items("{}", MIB) + b"]",
    }


def best_ms(read: Callable[[bytes], Any], body: bytes, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        read(body)
        times.append(time.process_time() - started)
    return min(times) * 1000.0


def main() -> None:
    print(f"{'body':32s} {'MiB':>5s} {'orjson ms':>10s} {'parse_body ms':>14s}")
    for label, body in bodies().items():
        parse = best_ms(jsonrpc.parse_body, body)
        print(
            f"{label:32s} {len(body) / MIB:5.2f} {best_ms(orjson.loads, body):10.1f} {parse:14.1f}"
        )


if __name__ == "__main__":
    main()
