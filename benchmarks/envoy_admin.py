"""What Envoy's admin endpoint tells the benchmark: ext_proc streams and messages so far."""

from __future__ import annotations

import urllib.request


def ext_proc_counters(admin_url: str) -> tuple[int, int]:
    """Envoy's ext_proc streams started and messages received from the processor, so far."""
    url = f"{admin_url}/stats?filter=ext_proc"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals = {"streams_started": 0, "stream_msgs_received": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        stat = name.rpartition(".")[2]
        if stat in totals and value.strip().isdigit():
            totals[stat] += int(value)
    return totals["streams_started"], totals["stream_msgs_received"]


def messages_per_stream(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Messages per ext_proc stream between two readings (None: no stream in between)."""
    streams, messages = after[0] - before[0], after[1] - before[1]
    return messages / streams if streams > 0 else None
