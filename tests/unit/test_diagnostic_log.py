"""The diagnostic log's queue: a stuck stderr drops lines past the bound, and says so."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from extproc.telemetry.diagnostic_log import DiagnosticLog
from tests.integration.conftest import wait_for


class StuckSink(logging.Handler):
    """stderr that takes no line until the test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.entered = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.open.wait(10.0)
        self.lines.append(record.getMessage())


@pytest.fixture
def sink() -> Iterator[StuckSink]:
    root = logging.getLogger()
    kept, level = list(root.handlers), root.level
    for handler in kept:
        root.removeHandler(handler)
    stuck = StuckSink()
    root.addHandler(stuck)
    root.setLevel(logging.INFO)
    yield stuck
    stuck.open.set()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in kept:
        root.addHandler(handler)
    root.setLevel(level)


def test_lines_past_the_bound_are_dropped_and_counted_not_waited_for(sink: StuckSink) -> None:
    diagnostics = DiagnosticLog(queue_lines=2)
    log = logging.getLogger("extproc.test")
    try:
        log.warning("first")
        assert sink.entered.wait(10.0)
        # The writer is stuck on "first": two lines wait, the other three are dropped,
        # and none of these calls waits for the sink.
        for index in range(5):
            log.warning("line %d", index)
        sink.open.set()
        assert wait_for(lambda: "line 1" in sink.lines)
        log.warning("after")
        assert wait_for(lambda: "after" in sink.lines)
    finally:
        diagnostics.close()
    dropped = "3 diagnostic log line(s) dropped so far: stderr did not take them"
    assert sink.lines == ["first", dropped, "line 0", "line 1", "after"]
    # Closed: lines are written where they are logged again.
    log.warning("closed")
    assert sink.lines[-1] == "closed"
