"""``make soak``: a bounded mixed load on loopback, and what it leaves behind.

A whole local stack (``extproc.devstack.LocalStack``: mock provider, gateway,
embedded Valkey, Envoy) gets, for a set time, a mix of what production sees:
chat answers whole and streamed, streams the client hangs up on, Anthropic
messages, Bedrock translations, upstream errors, malformed bodies, bad keys,
and requests refused by a rate limit. The gateway's resident memory and open
files are read from ``/proc`` when the load has warmed up and again when it has
ended; the quota counters of the soak's key are compared with the usage its log
lines record (anything left over is a reservation never settled); the clients'
unexpected answers and the gateway's store errors are counted.

Exit status 0 when nothing was left unsettled, no answer was unexpected and
memory and open files stayed within the bounds; 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson

from extproc.devstack import DEFAULT_CONFIG, LocalStack, Ports
from extproc.management.client import QuotaClient

SOAK_KEY = "soak-key-3a5c7e9b1d"
LIMITED_KEY = "soak-limited-2b4d6f8a0c"
ADMIN_TOKEN = "dev-admin-token"
RULES = """
quotas:
  rules:
    - {name: soak-tokens, subject: api_key, match: soak, tokens_per_day: 1000000000000}
    - {name: soak-limited, subject: api_key, match: soak-limited, requests_per_second: 1}
"""
# Generous: a leak shows as steady growth well past these over a few minutes.
MAX_RSS_GROWTH_MIB = 64.0
MAX_FD_GROWTH = 16


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    open_files: int
    unsettled_tokens: int
    store_errors: float


@dataclass
class SoakResult:
    duration_s: float
    requests: dict[str, int]
    unexpected: dict[str, int]
    start: Sample
    end: Sample
    peak_rss_mib: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def soak_config(workdir: Path) -> Path:
    text = DEFAULT_CONFIG.read_text()
    keys = f"    - {{id: soak, key: {SOAK_KEY}}}\n    - {{id: soak-limited, key: {LIMITED_KEY}}}\n"
    text = text.replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + RULES)
    return config


# --- the mix -------------------------------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "soak test, hello"}]}


def _post(
    client: httpx.Client, path: str, body: object, key: str = SOAK_KEY, **headers: str
) -> int:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = client.post(
        path,
        content=raw,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
    )
    return answer.status_code


def _stream(client: httpx.Client, keep: int | None) -> int:
    body = orjson.dumps({**CHAT, "stream": True})
    headers = {"authorization": f"Bearer {SOAK_KEY}", "x-mock-fault": "chunks=12;interval=0.02"}
    with client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as answer:
        events = 0
        for line in answer.iter_lines():
            if line.startswith("data:"):
                events += 1
                if keep is not None and events >= keep:
                    return 499  # the client hung up, as nginx would log it
        return answer.status_code


# name -> (request, the statuses that are expected)
MIX: dict[str, tuple[Callable[[httpx.Client], int], frozenset[int]]] = {
    "chat": (lambda c: _post(c, "/v1/chat/completions", CHAT), frozenset({200})),
    "stream": (lambda c: _stream(c, None), frozenset({200})),
    "stream, client hangs up": (lambda c: _stream(c, 3), frozenset({499})),
    "anthropic messages": (
        lambda c: _post(
            c,
            "/v1/messages",
            {**CHAT, "model": "claude-3-5-haiku-latest", "max_tokens": 32},
            **{"x-api-key": SOAK_KEY},
        ),
        frozenset({200}),
    ),
    "bedrock": (lambda c: _post(c, "/bedrock/haiku/chat/completions", CHAT), frozenset({200})),
    "upstream error": (
        lambda c: _post(c, "/v1/chat/completions", CHAT, **{"x-mock-fault": "status=503"}),
        frozenset({503}),
    ),
    "malformed body": (
        lambda c: _post(c, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": ['),
        frozenset({400}),
    ),
    "bad key": (lambda c: _post(c, "/v1/chat/completions", CHAT, "sk-not-a-key"), frozenset({401})),
    "rate limited": (
        lambda c: _post(c, "/v1/chat/completions", CHAT, LIMITED_KEY),
        frozenset({200, 429}),
    ),
}


class Load:
    """Worker threads cycling through the mix until stopped."""

    def __init__(self, base_url: str, workers: int) -> None:
        self.requests: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(base_url, offset), daemon=True)
            for offset in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def total(self) -> int:
        return sum(self.requests.values())

    def _work(self, base_url: str, offset: int) -> None:
        names = itertools.islice(itertools.cycle(MIX), offset, None)
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            for name in names:
                if self._stop.is_set():
                    return
                send, expected = MIX[name]
                try:
                    status = send(client)
                    outcome = None if status in expected else f"{name}: HTTP {status}"
                except httpx.HTTPError as exc:
                    outcome = f"{name}: {type(exc).__name__}"
                with self._lock:
                    self.requests[name] += 1
                    if outcome is not None:
                        self.unexpected[outcome] += 1


# --- what the gateway holds ----------------------------------------------------------


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def unsettled_tokens(stack: LocalStack) -> int:
    """Tokens the soak key's counter holds beyond the usage its log lines record."""
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as client:
        state = client.get("api_key", "soak")
    counted = sum(limit.used for limit in state.limits if limit.kind == "tokens")
    logged = 0
    for line in stack.gateway_log.read_bytes().splitlines():
        if line.startswith(b"{"):
            record = orjson.loads(line)
            if record.get("api_key_id") == "soak":
                logged += int(record["total_tokens"])
    return counted - logged


def _store_errors(stack: LocalStack) -> float:
    text = httpx.get(stack.metrics_url, timeout=10.0).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aigw_store_errors_total")
    )


def sample(stack: LocalStack, started: float) -> Sample:
    pid = stack.process("gateway").pid
    return Sample(
        at_s=round(time.monotonic() - started, 1),
        rss_mib=round(_proc_rss_mib(pid), 1),
        open_files=_open_files(pid),
        unsettled_tokens=_settled_view(stack),
        store_errors=_store_errors(stack),
    )


def _settled_view(stack: LocalStack, timeout_s: float = 10.0) -> int:
    """Unsettled tokens once in-flight settlements (batched every 20 ms) have landed."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = unsettled_tokens(stack)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# --- the run ---------------------------------------------------------------------------


def run_soak(workdir: Path, duration_s: float, workers: int = 4) -> SoakResult:
    """Soak a fresh stack under ``workdir`` for ``duration_s`` seconds of load."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir, ports=Ports.free(), config_path=soak_config(workdir))
    stack.start()
    try:
        started = time.monotonic()
        load = Load(stack.base_url, workers)
        load.start()
        # The first fifth warms up (imports, caches, connection pools) before the
        # baseline is taken; the load keeps running while sampling.
        warmup = min(10.0, duration_s / 5)
        time.sleep(warmup)
        first = _sample_during_load(stack, started)
        peak = first.rss_mib
        end_at = started + duration_s
        while time.monotonic() < end_at:
            time.sleep(min(2.0, max(0.0, end_at - time.monotonic())))
            peak = max(peak, _proc_rss_mib(stack.process("gateway").pid))
        load.stop()
        last = sample(stack, started)
        result = SoakResult(
            duration_s=round(time.monotonic() - started, 1),
            requests=dict(load.requests),
            unexpected=dict(load.unexpected),
            start=first,
            end=last,
            peak_rss_mib=round(max(peak, last.rss_mib), 1),
        )
    finally:
        stack.stop()
    result.failures = _judge(result)
    return result


def _sample_during_load(stack: LocalStack, started: float) -> Sample:
    pid = stack.process("gateway").pid
    # Under load, reservations are in flight: the baseline's unsettled count is
    # what was open at that instant, reported but not judged.
    return Sample(
        at_s=round(time.monotonic() - started, 1),
        rss_mib=round(_proc_rss_mib(pid), 1),
        open_files=_open_files(pid),
        unsettled_tokens=unsettled_tokens(stack),
        store_errors=_store_errors(stack),
    )


def _judge(result: SoakResult) -> list[str]:
    failures = []
    if result.unexpected:
        failures.append(f"unexpected answers: {result.unexpected}")
    if result.end.unsettled_tokens:
        failures.append(f"{result.end.unsettled_tokens} tokens reserved and never settled")
    if result.end.store_errors:
        failures.append(f"{result.end.store_errors:.0f} store errors")
    growth = result.end.rss_mib - result.start.rss_mib
    if growth > MAX_RSS_GROWTH_MIB:
        failures.append(f"resident memory grew {growth:.1f} MiB (bound {MAX_RSS_GROWTH_MIB})")
    if result.end.open_files - result.start.open_files > MAX_FD_GROWTH:
        grew = f"{result.start.open_files} to {result.end.open_files}"
        failures.append(f"open files grew from {grew}")
    missing = [name for name in MIX if not result.requests.get(name)]
    if missing:
        failures.append(f"no request of kind {missing}")
    return failures


def format_result(result: SoakResult) -> str:
    rows = [
        ("", "start", "end"),
        ("at (s)", f"{result.start.at_s}", f"{result.end.at_s}"),
        ("gateway RSS (MiB)", f"{result.start.rss_mib}", f"{result.end.rss_mib}"),
        ("gateway open files", f"{result.start.open_files}", f"{result.end.open_files}"),
        (
            "unsettled reserved tokens",
            f"{result.start.unsettled_tokens} (in flight)",
            f"{result.end.unsettled_tokens}",
        ),
        ("store errors", f"{result.start.store_errors:.0f}", f"{result.end.store_errors:.0f}"),
    ]
    lines = [f"soak: {sum(result.requests.values())} requests in {result.duration_s} s"]
    lines += [f"  {name:<26}{start:>18}{end:>10}" for name, start, end in rows]
    lines.append(f"  peak gateway RSS: {result.peak_rss_mib} MiB")
    lines.append("  requests: " + ", ".join(f"{k} {v}" for k, v in result.requests.items()))
    lines.append(f"  unexpected answers: {sum(result.unexpected.values())}")
    for failure in result.failures:
        lines.append(f"  FAIL: {failure}")
    lines.append("  result: " + ("ok" if result.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aigw-soak-") as folder:
        result = run_soak(Path(folder), args.duration, args.workers)
    print(format_result(result), flush=True)
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps({**asdict(result), "ok": result.ok}, option=orjson.OPT_INDENT_2)
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
