"""What guardrails cost per request: the gateway's CPU time for one 4 KB prompt, guarded or not.

Plays whole ext_proc streams (request headers and body, response headers and
body, as Envoy sends them) through the real processor and stages, in process,
and reads the CPU time they take; no Envoy, no sockets, so the figure is the
gateway's own work and holds on a shared machine (ratios even more so). Rows:

- no guard: the default config's ``openai-chat`` route;
- regex guard: one case-insensitive ``credit card`` pattern (reject) on the request;
- builtins: ``CREDIT_CARD``, ``SSN``, ``EMAIL``, ``PHONE_NUMBER``, ``CA_SIN`` (mask) on
  the request and ``CREDIT_CARD``, ``EMAIL`` on the answer;
- regex + builtins: both.

The prompt is 4 KB of prose with nothing to find (every guard scans it all,
the common case); the answer is a short completion.

A second table plays a tool's output instead (a tool message of 4 KB and 64 KB: records
as ``json.dumps`` writes them), under the regex guard and regex + builtins, written with
``ensure_ascii`` (``Ren\\u00e9e``: read as written and decoded) and without (``Renée``:
no backslash, read once, and skipped when the joined search finds nothing in it).
A third spelling is digit-heavy: order records with numeric ids, Unix times, ISO
timestamps and prices (``records``), what agents' tools return most, holding no card,
phone number or other builtin's match. The last (``arguments``) puts such records, each
with a customer's name written with ``ensure_ascii``, in the assistant's tool call
instead: a tool call's arguments are read string by string and number by number.

A third table plays answers of order records holding one address the answer's builtins
mask, after a line of prose: the records in a Markdown ```json fence (masked as JSON, so
the block the user copies stays JSON) or written on as prose.

    .venv/bin/python -m benchmarks.guardrails [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import orjson

from benchmarks.configs import GATEWAY_CONFIG
from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

SENTENCE = "The quarterly report covers revenue, hiring plans and the roadmap for next year. "
PROMPT = (SENTENCE * (4096 // len(SENTENCE) + 1))[:4096]
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]})
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A short, harmless summary."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 900, "completion_tokens": 6, "total_tokens": 906},
    }
)
REGEX = {"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True}
BUILTINS = {
    "name": "pii",
    "builtins": ["CREDIT_CARD", "SSN", "EMAIL", "PHONE_NUMBER", "CA_SIN"],
    "action": "mask",
}
ANSWER_BUILTINS = {"name": "pii-out", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"}
ROWS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]] | None] = {
    "no guard": None,
    "regex guard": ([REGEX], []),
    "builtins": ([BUILTINS], [ANSWER_BUILTINS]),
    "regex + builtins": ([REGEX, BUILTINS], [ANSWER_BUILTINS]),
}


TOOL_RECORD = {"customer": "Renée Müller", "city": "Zürich", "note": SENTENCE.strip()}


def order_record(index: int) -> dict[str, Any]:
    """An order as a shop's API returns it: ids, times and prices, every one a digit run."""
    return {
        "id": 184467 + index,
        "order_id": f"ord_20240611_{index:04d}",
        "created_at": f"2024-06-11T09:{index % 60:02d}:17Z",
        "ts": 1718098937 + 37 * index,
        "price": round(19.99 + index * 1.25, 2),
        "qty": index % 7 + 1,
        "sku": f"SKU-{421 + index:05d}-B",
        "customer_id": 7731902 + 11 * index,
    }


def order_records(size: int, customer: bool = False) -> str:
    """About ``size`` characters of order records as JSON, each naming the customer
    (``ensure_ascii``: ``Ren\\u00e9e``) with ``customer``."""
    orders: list[dict[str, Any]] = []
    length = 1
    while length < size:
        order = order_record(len(orders))
        if customer:
            order["customer"] = TOOL_RECORD["customer"]
        orders.append(order)
        length += len(json.dumps(order)) + 2  # and ", "
    return json.dumps(orders)


def tool_body(size: int, spelling: str) -> bytes:
    """A chat request whose tool message holds about ``size`` characters of records:
    customers ``as is`` or ``escaped`` (``ensure_ascii``), or ``records`` of orders; or
    whose assistant's tool call has order records as its ``arguments``."""
    arguments = "{}"
    if spelling == "records":
        output = order_records(size)
    elif spelling == "arguments":
        arguments, output = order_records(size, customer=True), "[]"
    else:
        records = [TOOL_RECORD] * (size // len(json.dumps(TOOL_RECORD)) + 1)
        output = json.dumps(records, ensure_ascii=spelling == "escaped")
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "Who are our customers in Zurich?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": output},
            ],
        }
    )  # fmt: skip


SPELLINGS = ("as is", "escaped", "records", "arguments")


def processor(guards: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None) -> Processor:
    import yaml

    raw = yaml.safe_load(GATEWAY_CONFIG.read_text(encoding="utf-8"))
    if guards is not None:
        request, response = guards
        raw["guardrails"] = {
            "policies": [{"name": "bench", "request": request, "response": response}]
        }
        for route in raw["routes"]:
            if route["name"] == "openai-chat":
                route["guardrails"] = "bench"
    config = parse_config(yaml.safe_dump(raw), "bench", {})
    return processor_for(config, Services(GatewayMetrics(), AccessLog(stdout=False)))


def fenced_answer(size: int, fenced: bool) -> bytes:
    """A whole answer of about ``size`` characters: a sentence of prose, then order records
    as JSON, one of them holding an address the answer guard masks; in a ```json fence
    with ``fenced``, else written on as prose (a fence is only read where a mask matched)."""
    records = json.loads(order_records(size))
    records[len(records) // 2]["email"] = "jane@example.com"
    block = json.dumps(records, indent=1)
    text = "Here are the orders:\n" + (f"```json\n{block}\n```\n" if fenced else block + "\n")
    answer = orjson.loads(ANSWER)
    answer["choices"][0]["message"]["content"] = text
    return orjson.dumps(answer)


async def cpu_per_request(
    gateway: Processor, requests: int, body: bytes = BODY, answer: bytes = ANSWER
) -> float:
    """CPU seconds per request, over ``requests`` whole streams after a warm-up."""
    messages = [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(body),
        response_headers(200),
        response_body(answer),
    ]
    for _ in range(50):
        await run_stream(gateway, messages)
    started = time.process_time()
    for _ in range(requests):
        answers = await run_stream(gateway, messages)
    spent = time.process_time() - started
    assert len(answers) == 4 and not answers[-1].HasField("immediate_response")
    return spent / requests


async def main(requests: int) -> None:
    print(f"4 KB prompt ({len(BODY)} byte body), {requests} requests per row, CPU per request")
    print(f"{'row':<18} {'us/request':>11} {'x no guard':>11} {'guard us':>9}")
    base = None
    for name, guards in ROWS.items():
        spent = await cpu_per_request(processor(guards), requests) * 1e6
        base = base if base is not None else spent
        print(f"{name:<18} {spent:>11.1f} {spent / base:>11.2f} {spent - base:>9.1f}")
    print("\na tool's output, CPU per request")
    for name in ("regex guard", "regex + builtins"):
        guarded = processor(ROWS[name])
        for size in (4096, 65536):
            for spelling in SPELLINGS:
                body = tool_body(size, spelling)
                count = max(requests * 4096 // size, 20)
                spent = await cpu_per_request(guarded, count, body) * 1e6
                print(f"{name:<18} {size // 1024:>3} KB {spelling:<9} {spent:>11.1f} us")
    print("\nan answer of records holding an address to mask, CPU per request")
    guarded = processor(ROWS["builtins"])
    for size in (4096, 65536):
        for fenced in (False, True):
            count = max(requests * 4096 // size, 20)
            spent = await cpu_per_request(guarded, count, answer=fenced_answer(size, fenced)) * 1e6
            shape = "in a json fence" if fenced else "no fence"
            print(f"{'builtins':<18} {size // 1024:>3} KB {shape:<16} {spent:>11.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
