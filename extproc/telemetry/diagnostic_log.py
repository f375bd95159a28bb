"""The diagnostic log (stderr) of a serving process, written by a thread of its own.

``logging``'s stream handler writes each line where it is logged: on the event
loop, for nearly every line the gateway logs while it serves. When stderr is a
pipe nobody reads for a while (a log shipper that stopped, a full node disk
behind the container runtime), the write blocks, and every stream and health
check of the process waited with it. Here the loop only formats the line and
appends it to a bounded queue; a writer thread does the write. Lines that find
the queue full (the sink stuck that long) are dropped and counted, and the count
said once the sink takes lines again, as the request log does with its lines
(``log_writer``).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading

# Lines held while stderr does not take them: a few MB of diagnostics at most.
QUEUE_LINES = 10_000
# How long the process waits at exit for held lines to be written.
FLUSH_AT_EXIT_S = 2.0


class _Enqueue(logging.handlers.QueueHandler):
    """Hands each formatted record to the writer; a full queue drops it, counted."""

    def __init__(self, lines: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(lines)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # an int add under the GIL: no lock needed for a count


class DiagnosticLog:
    """Moves the root logger's handlers (``logging.basicConfig``'s) behind a queue."""

    def __init__(self, queue_lines: int = QUEUE_LINES) -> None:
        self._lines: queue.Queue[logging.LogRecord | None] = queue.Queue(queue_lines)
        root = logging.getLogger()
        self._handlers = list(root.handlers)
        self._enqueue = _Enqueue(self._lines)
        for handler in self._handlers:
            root.removeHandler(handler)
        root.addHandler(self._enqueue)
        self._said_dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="diagnostic-log", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while (record := self._lines.get()) is not None:
            dropped = self._enqueue.dropped
            if dropped != self._said_dropped:
                self._said_dropped = dropped
                self._emit(
                    logging.makeLogRecord(
                        {
                            "name": __name__,
                            "levelno": logging.WARNING,
                            "levelname": "WARNING",
                            "msg": f"{dropped} diagnostic log line(s) dropped so far:"
                            " stderr did not take them",
                        }
                    )
                )
            self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        for handler in self._handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def close(self) -> None:
        """Write what is held (for up to FLUSH_AT_EXIT_S: a stuck stderr must not keep
        the process from ending), then log as before, on the caller's thread."""
        if self._closed:
            return
        self._closed = True
        root = logging.getLogger()
        root.removeHandler(self._enqueue)
        for handler in self._handlers:
            root.addHandler(handler)
        try:
            self._lines.put(None, timeout=FLUSH_AT_EXIT_S)
        except queue.Full:
            return
        self._thread.join(FLUSH_AT_EXIT_S)
