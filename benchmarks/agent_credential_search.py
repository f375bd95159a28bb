"""CPU time of searching an agent server's answer for the gateway's credential for it
(``agents.credential_echo.StarredAnswer``): what each answer of a server with an
``api_key`` pays, against feeding the same chunks to nothing.

    python -m benchmarks.agent_credential_search

Answers of 1 KiB, 64 KiB and 1 MiB, whole (a JSON answer in one chunk) and as an SSE
stream of 4 KiB chunks that end mid-event (each chunk's tail is checked for the start
of the credential), without the credential (the common case) and quoting it once;
and, for a request that presented a key, with the search for that key in a JSON-RPC
error (``agents.caller_key_echo``, its forms made per answer as the gateway makes them).
Best of seven runs, in microseconds per answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from extproc.agents.caller_key_echo import caller_key_search
from extproc.agents.credential_echo import StarredAnswer
from extproc.credential_forms import quoted_forms

KEY = "sk-tools-4f9a/7Qz+e1X=wq"
CALLERS_KEY = "aigw-Zq4vW9x3Lm8Tn2Rb7Yc5Hd1Kf6Gs0Jp3Xw9Qe4Ua8"
FORMS = quoted_forms.__wrapped__((KEY,))
SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}
CHUNK = 4 << 10


def _answer(size: int, quoting: bool) -> bytes:
    text = ("tool output line with words and numbers 12345 " * (size // 46 + 1))[:size]
    if quoting:
        middle = size // 2
        text = text[:middle] + KEY + text[middle + len(KEY) :]
    return b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + (
        text.encode() + b'"}]}}'
    )


def _chunks(body: bytes, whole: bool) -> list[bytes]:
    if whole:
        return [body]
    # Chunks cut mid-event, as a server flushing its output in 4 KiB writes sends them.
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def _searched(chunks: list[bytes]) -> None:
    answer = StarredAnswer(None, FORMS, lambda: None)
    last = len(chunks) - 1
    for index, chunk in enumerate(chunks):
        answer.feed(chunk, index == last)


def _searched_with_callers(chunks: list[bytes]) -> None:
    caller = caller_key_search(CALLERS_KEY, 200, sse=len(chunks) > 1)
    answer = StarredAnswer(None, FORMS, lambda: None, caller)
    last = len(chunks) - 1
    for index, chunk in enumerate(chunks):
        answer.feed(chunk, index == last)


def _unsearched(chunks: list[bytes]) -> None:
    for chunk in chunks:
        len(chunk)


def best_us(play: Callable[[list[bytes]], None], chunks: list[bytes], runs: int = 7) -> float:
    repeat = max(1, 2_000_000 // sum(len(chunk) for chunk in chunks))
    times = []
    for _ in range(runs):
        started = time.process_time()
        for _ in range(repeat):
            play(chunks)
        times.append((time.process_time() - started) / repeat)
    return min(times) * 1e6


def main() -> None:
    print(
        f"{'answer':22s} {'chunks':>6s} {'plain us':>9s} {'quoting us':>11s}"
        f" {'+caller us':>11s} {'none us':>8s}"
    )
    for label, size in SIZES.items():
        for whole in (True, False):
            plain = _chunks(_answer(size, False), whole)
            quoting = _chunks(_answer(size, True), whole)
            name = f"{label} {'JSON' if whole else 'SSE 4 KiB'}"
            print(
                f"{name:22s} {len(plain):6d} {best_us(_searched, plain):9.1f}"
                f" {best_us(_searched, quoting):11.1f}"
                f" {best_us(_searched_with_callers, plain):11.1f}"
                f" {best_us(_unsearched, plain):8.1f}"
            )


if __name__ == "__main__":
    main()
