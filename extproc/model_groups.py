"""Model groups: one name clients ask for, served by one of several models in turn.

A group (``model_groups``) spreads one model over its deployments (OpenAI's and Azure's
``gpt-4o``; Claude on Anthropic, Bedrock and Vertex): each request for the group's name
is served by one member, drawn at random in proportion to the members' weights among
those that can serve it (``stages.chat_request.choose_member``: the route's provider
and API, the caller's access rules, the body). From there on the request is that
member's: its failover chain, price, provider credentials and quota rules.

A member whose provider failed a request of this process (429, a 5xx, Envoy's own 503
or 504 for a connection that failed, was reset or timed out) is passed over for the
group's ``cooldown_s``, unless every member that could serve the request is: then all
of them are drawn from by weight. The failures are kept here, in this process's memory
(``Services.balancer``, shared across reloads): each gateway process, and each worker,
learns of them from its own requests; nothing is shared through the store.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from extproc.config.model import GatewayConfig


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    # (member model's configured name, weight), in config order.
    members: tuple[tuple[str, int], ...]
    cooldown_s: float

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.members)


def groups_of(config: GatewayConfig) -> dict[str, ModelGroup]:
    """The config's model groups by name."""
    return {
        group.name: ModelGroup(
            group.name,
            tuple((member.model, member.weight) for member in group.members),
            group.cooldown_s,
        )
        for group in config.model_groups
    }


def fails_provider(status: int) -> bool:
    """Whether an upstream status says the provider failed: a 429 or any 5xx (Envoy's own
    503 for a connection refused or reset, 504 for a timeout, among them)."""
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Candidate:
    """A member that can serve the request at hand."""

    model: str
    weight: int
    provider: str


@dataclass(frozen=True, slots=True)
class Draw:
    """The member drawn, and those passed over as cooling down."""

    chosen: Candidate
    passed_over: tuple[Candidate, ...]


class Balancer:
    """Draws group members and remembers which providers failed lately, per process.

    ``clock`` (monotonic seconds) and ``draw`` (a float in [0, 1)) are the sources of
    time and chance: tests pass their own."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._draw = draw
        # Provider name -> when a request to it last failed (by ``clock``).
        self._failed: dict[str, float] = {}

    def provider_failed(self, provider: str) -> None:
        self._failed[provider] = self._clock()

    def cooling(self, provider: str, cooldown_s: float) -> bool:
        """Whether ``provider`` failed less than ``cooldown_s`` ago."""
        failed = self._failed.get(provider)
        return failed is not None and self._clock() - failed < cooldown_s

    def choose(self, candidates: Sequence[Candidate], cooldown_s: float) -> Draw:
        """One of ``candidates`` (not empty), at random by weight, among those whose
        provider is not cooling down; among all of them when every one is."""
        warm = [each for each in candidates if not self.cooling(each.provider, cooldown_s)]
        pool = warm or list(candidates)
        passed_over = tuple(each for each in candidates if each not in pool)
        point = self._draw() * sum(each.weight for each in pool)
        for each in pool:
            point -= each.weight
            if point < 0:
                return Draw(each, passed_over)
        return Draw(pool[-1], passed_over)  # a draw of 1.0 (or a float's rounding)
