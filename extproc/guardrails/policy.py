"""The guardrails config compiled for serving: per route, what runs in each phase.

Built once per config (re)load: patterns are compiled here, webhook and
moderation clients made here, and routes without policies or enrichment get
no entry at all, so their requests skip every guard with one dict lookup.
A route naming several policies runs their guards in the order listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.config.guard_model import EnrichmentConfig, GuardConfig, GuardrailsConfig
from extproc.egress import DIRECT, EgressProxy
from extproc.errors import GatewayError
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.guardrails.moderation import ModerationClient
from extproc.guardrails.webhook import SessionHolder, WebhookClient

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    # The gateway's own 502s name it so (errors.UpstreamError): a guard refusing an answer
    # is trouble on the answer's side, no outage. 424 is that refusal to AWS SDKs
    # (Bedrock's ModelErrorException, stages.guardrails._refused_answer).
    424: "upstream_error",
    502: "upstream_error",
}


class GuardrailRejectedError(GatewayError):
    """A guard refused the request or the answer; status and message come from config
    (or from a webhook's RejectAction)."""

    def __init__(
        self,
        message: str,
        status: int,
        *,
        code: str = "guardrail_rejected",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.status = status
        self.error_type = _ERROR_TYPES.get(
            status, "invalid_request_error" if status < 500 else "service_unavailable"
        )


@dataclass(frozen=True, slots=True)
class PhaseGuards:
    """One phase's guards, by kind, in the order they run."""

    webhooks: tuple[tuple[GuardConfig, WebhookClient], ...]
    matchers: Matchers
    moderation: tuple[tuple[GuardConfig, ModerationClient], ...]

    @property
    def empty(self) -> bool:
        return not (self.webhooks or self.matchers or self.moderation)

    @property
    def waits(self) -> bool:
        """True when a guard of this phase calls out (the phase cannot stay synchronous)."""
        return bool(self.webhooks or self.moderation)


@dataclass(frozen=True, slots=True)
class RouteGuards:
    request: PhaseGuards
    response: PhaseGuards
    enrichment: EnrichmentConfig | None


class Guardrails:
    """Every route's guards and enrichment; shared HTTP session for the outbound calls."""

    def __init__(
        self,
        config: GuardrailsConfig,
        routes: dict[str, tuple[tuple[str, ...], EnrichmentConfig | None]],
        egress: EgressProxy = DIRECT,
    ) -> None:
        # Webhook and moderation calls go through the egress proxy (docs/security.md).
        self.session = SessionHolder(egress)
        webhooks = {w.name: WebhookClient(w, self.session) for w in config.webhooks}
        moderation = {m.name: ModerationClient(m, self.session) for m in config.moderation}
        policies = {p.name: p for p in config.policies}
        self._routes: dict[str, RouteGuards] = {}
        for route, (names, enrichment) in routes.items():
            chosen = [policies[name] for name in names]
            if not chosen and enrichment is None:
                continue
            phases = []
            for phase in ("request", "response"):
                guards: list[tuple[GuardConfig, int]] = [
                    (guard, policy.stream_max_match)
                    for policy in chosen
                    for guard in getattr(policy, phase)
                ]
                phases.append(
                    PhaseGuards(
                        webhooks=tuple(
                            (g, webhooks[g.webhook]) for g, _ in guards if g.webhook is not None
                        ),
                        matchers=Matchers(
                            tuple(MatcherGuard(g, cap) for g, cap in guards if g.kind == "matcher")
                        ),
                        moderation=tuple(
                            (g, moderation[g.moderation])
                            for g, _ in guards
                            if g.moderation is not None
                        ),
                    )
                )
            self._routes[route] = RouteGuards(phases[0], phases[1], enrichment)

    def for_route(self, route: str) -> RouteGuards | None:
        return self._routes.get(route)

    def guards_answers(self, route: str) -> bool:
        """True when the route has response guards (its answers' headers are processed)."""
        guards = self._routes.get(route)
        return guards is not None and not guards.response.empty

    async def close(self) -> None:
        await self.session.close()
