"""Slowing down admin token guesses: an address whose calls keep failing the token check
is refused for a while, whatever it sends.

Whoever reaches the management port can try tokens as fast as the server answers. After
``MAX_FAILURES`` calls without a valid admin token from one address within
``WINDOW_S``, every call from it is refused (``RESOURCE_EXHAUSTED``) until the window
has fewer: before its token is looked at, so the refusals tell a guesser nothing.
A valid token from that address is refused meanwhile too (else the one right guess
among thousands would still go through at full speed); an admin sharing the address
waits out the window. Addresses are hosts, without the port (each call may come from a
new one); at most ``MAX_ADDRESSES`` are tracked, the longest quiet dropped first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

# 30 a minute: a script retrying with a token being rotated (its file not reloaded yet)
# stays under it; a guesser gets 43,200 tries a day, nothing against a random token of
# 16 characters or more (shorter ones are warned of: config.admin_token_strength).
MAX_FAILURES = 30
WINDOW_S = 60.0
MAX_ADDRESSES = 4096


def host_of_peer(peer: str) -> str:
    """The host of a gRPC peer (``ipv4:10.0.0.7:51234``, ``ipv6:[fd00::1]:51234``,
    ``unix:/run/aigw.sock``): the address a guesser keeps, whatever its port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


class FailedAttempts:
    """Failed admin token checks by address, over a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, peer: str) -> float | None:
        """Seconds until ``peer``'s address may try again; None when it may now."""
        found = self._recent(host_of_peer(peer))
        if found is None or len(found) < MAX_FAILURES:
            return None
        # Free once the oldest failure that keeps it at the limit leaves the window.
        return max(1.0, found[-MAX_FAILURES] + WINDOW_S - self._clock())

    def failed(self, peer: str) -> None:
        host = host_of_peer(peer)
        found = self._recent(host)
        if found is None:
            found = self._failures[host] = deque(maxlen=MAX_FAILURES)
        found.append(self._clock())
        self._failures.move_to_end(host)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, host: str) -> deque[float] | None:
        found = self._failures.get(host)
        if found is None:
            return None
        horizon = self._clock() - WINDOW_S
        while found and found[0] <= horizon:
            found.popleft()
        if not found:
            del self._failures[host]
            return None
        return found


def retry_text(seconds: float) -> str:
    whole = math.ceil(seconds)
    return f"{whole} second{'' if whole == 1 else 's'}"
