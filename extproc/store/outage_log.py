"""Store failures in the diagnostic log: one line when they start, one a minute while
they last, one when the store answers again.

While the store is down, every reservation under a ``fail_open`` rule, every usage
flush (each 0.5 s), every settlement batch (each 20 ms under load) and every spool
replay fails. Logged each, a busy gateway wrote hundreds of warnings a second to
stderr, from its event loop, and buried the line that said what happened and the one
that said it was over. Every failure is still counted in the metrics
(``aigw_store_errors_total{operation}``); the log tells the story.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# How often a failure that goes on is said again.
REPEAT_S = 60.0


class OutageLog:
    """The failures of one kind of store call (``what``: the line's subject)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        repeat_s: float = REPEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._repeat_s = repeat_s
        self._clock = clock
        # When the failures began (None: the store answers), when they were last said,
        # and how many there have been.
        self._since: float | None = None
        self._said = 0.0
        self._failures = 0

    def failed(self, exc: BaseException, *, said: bool = False) -> None:
        """One failure; ``said``: the caller logged the outage's start in its own words
        (its end and its repeats are still this log's)."""
        now = self._clock()
        self._failures += 1
        why = type(exc).__name__
        if self._since is None:
            self._since = self._said = now
            if not said:
                self._log.warning(
                    "%s: %s (said again once a minute while it lasts)", self._what, why
                )
        elif now - self._said >= self._repeat_s:
            self._said = now
            self._log.warning(
                "%s: still, for %.0f s, %d times (%s last)",
                self._what, now - self._since, self._failures, why,
            )  # fmt: skip

    def answered(self) -> None:
        """The call went through: one line if it had been failing. Cheap otherwise (the
        request path calls it)."""
        if self._since is None:
            return
        self._log.info(
            "%s: over, the store answers again after %.0f s (%d failures)",
            self._what, self._clock() - self._since, self._failures,
        )  # fmt: skip
        self._since, self._failures = None, 0
