"""The soak in short: ~12 s of mixed load (a fifth of it warm-up) leave no reservation
unsettled, no answer unexpected, and the gateway's memory and open files where they
were (``make soak`` runs the same for five minutes). Some 600 requests after the
warm-up: a file or a socket left open per request, or ~100 KiB kept, crosses the bounds."""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import MIX, format_result, run_soak


def test_a_short_soak_leaves_nothing_behind(tmp_path: Path) -> None:
    result = run_soak(tmp_path / "soak", duration_s=12.0, workers=4)
    print(format_result(result))
    assert result.unexpected == {}
    assert all(result.requests.get(name, 0) >= 3 for name in MIX), result.requests
    assert result.end.unsettled_tokens == 0
    assert result.end.store_errors == 0
    assert result.end.rss_mib - result.start.rss_mib < 64
    assert result.end.open_files - result.start.open_files <= 16
    assert result.ok, result.failures
