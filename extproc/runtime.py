"""What a loaded config means at run time: route table, model map, provider keys.

A ``Runtime`` is built once per (re)load and never mutated, so a request keeps
the snapshot it started with while a reload swaps in a new one. Long-lived
services (store, metrics, access log) are shared across reloads.

A runtime owns clients (webhook and moderation HTTP sessions, the JWKS
refresher, AWS credential refresh). Each ext_proc stream that serves on it is
counted (``hold``) until the stream's task ends; a runtime a reload replaced
(``retire``) closes those clients when its last stream has ended, so a long
stream keeps its guards working to its end and nothing is left open after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extproc import background, headers
from extproc.agents.directory import AgentDirectory
from extproc.answer_cache import AnswerCache
from extproc.auth import credential_shapes
from extproc.auth.access import AccessPolicy
from extproc.auth.api_keys import ApiKeyStore
from extproc.auth.jwt_verifier import JwtVerifier
from extproc.chargeback.pricing import PriceTable
from extproc.config.auth_model import AuthMethod, RouteAuthConfig
from extproc.config.loader import ConfigError
from extproc.config.model import (
    GatewayConfig,
    ProviderConfig,
    ProviderType,
    RouteApi,
    RouteConfig,
    cluster_name,
)
from extproc.egress import EgressProxy
from extproc.envoy_failover import longest_failover_wait_s
from extproc.envoy_request_record import envoy_reads_request
from extproc.guardrails.policy import Guardrails
from extproc.model_groups import Balancer, groups_of
from extproc.model_names import anthropic_spelling
from extproc.providers import credentials_pending
from extproc.providers.aws_signer import AwsSigner
from extproc.quota.rules import RuleSet
from extproc.response_path import is_lean, lean_routes

if TYPE_CHECKING:
    from extproc.auth.stored_keys import StoredKeys
    from extproc.management.quotas import QuotaAdmin
    from extproc.providers.gcp_tokens import GcpTokenSource
    from extproc.quota.store import QuotaStore
    from extproc.store.agent_owners import AgentOwners
    from extproc.store.attempts_in_flight import AttemptsInFlight
    from extproc.store.response_owners import ResponseOwners
    from extproc.store.usage import UsageStore
    from extproc.store.usage_writer import UsageWriter
    from extproc.telemetry.access_log import AccessLog
    from extproc.telemetry.metrics import GatewayMetrics
    from extproc.telemetry.quota_gauges import SubjectTracker


log = logging.getLogger(__name__)
CREDENTIAL_REFRESH_INTERVAL_S = 60.0
ATTEMPT_RECORD_SLACK_S = 60.0


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    api: RouteApi
    forced_model: str | None
    prefix: str | None = None
    model_from_path: bool = False
    model_header: str | None = None
    model_query: str | None = None
    provider: str | None = None
    # An exact route's path (None on a prefix route): where a model list's entries
    # (`<path>/{model}`) start.
    path: str | None = None
    # The route's own body limit; None: limits.max_request_body_bytes.
    max_request_body_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Everything needed to send one model's requests to its provider."""

    provider: ProviderConfig
    cluster: str
    # The provider's endpoint for its own API (chat completions or messages).
    path: str
    upstream_model: str
    # The headers carrying the provider's credential; empty when none is configured.
    credential_headers: dict[str, str]
    # Bedrock: signs each request with SigV4 instead of a static credential.
    signer: AwsSigner | None = None
    # Vertex: an OAuth2 access token, kept fresh, instead of a static credential.
    token_source: GcpTokenSource | None = None


@dataclass(slots=True)
class Services:
    metrics: GatewayMetrics
    access_log: AccessLog
    store: UsageStore | None = None
    usage_writer: UsageWriter | None = None
    quota_store: QuotaStore | None = None
    # Reads quota state as the management API does: for a caller's own limits
    # (stages.limits_view); None without a store.
    quota_admin: QuotaAdmin | None = None
    # API keys created at run time (the management API); None without a store.
    stored_keys: StoredKeys | None = None
    # Who created each stored response (None without a store, or with records off).
    response_owners: ResponseOwners | None = None
    # Who opened each MCP session and created each A2A task (None without a store).
    agent_owners: AgentOwners | None = None
    # Which failover attempt each request sent last (None without a store).
    attempts_in_flight: AttemptsInFlight | None = None
    # Notes quota subjects for the gauges read from the store (telemetry.quota_gauges).
    quota_subjects: SubjectTracker | None = None
    # Draws model groups' members; remembers the providers that failed lately, for this
    # process's life (extproc.model_groups).
    balancer: Balancer = field(default_factory=Balancer)


class RouteTable:
    """Maps a request path to a route: exact paths first, then the longest prefix."""

    def __init__(self, config: GatewayConfig) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []
        self._named: dict[str, Route] = {}
        lists: list[tuple[str, Route]] = []
        for spec in config.routes:
            route = Route(
                spec.name,
                spec.api,
                spec.model,
                prefix=spec.path_prefix.rstrip("/") if spec.path_prefix else None,
                model_from_path=spec.model_from_path,
                model_header=spec.model_header.lower() if spec.model_header else None,
                model_query=spec.model_query,
                provider=spec.provider,
                path=spec.path,
                max_request_body_bytes=spec.max_request_body_bytes,
            )
            self._named[spec.name] = route
            if spec.path is not None:
                self._exact[spec.path] = route
                if spec.api is RouteApi.OPENAI_MODELS:
                    # `<path>/{model}` is one model (the SDKs' models.retrieve): the list's
                    # route takes it before a shorter prefix (`/openai`, chat) would, and
                    # after a prefix route of the same path (Gemini's `/v1/models`).
                    lists.append((spec.path.rstrip("/"), route))
            elif spec.path_prefix is not None:
                self._prefixes.append((spec.path_prefix.rstrip("/"), route))
        # A stable sort: of two equal prefixes, the declared one stays first.
        self._prefixes.extend(lists)
        self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        # For case_twin: each exact path by its lower case (the first declared wins).
        self._folded_exact: dict[str, tuple[str, Route]] = {}
        for path, route in self._exact.items():
            self._folded_exact.setdefault(path.lower(), (path, route))

    def named(self, name: str) -> Route | None:
        """The route a Gateway API controller's route name or metadata points at."""
        return self._named.get(name)

    def resolve(self, path: str) -> Route | None:
        path = path.split("?", 1)[0]
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, route in self._prefixes:
            if _under(path, prefix):
                return route
        return None

    def case_twin(self, path: str) -> tuple[str, Route] | None:
        """The path (with its route) ``path`` is a miscased spelling of: the route its
        letters would reach ignoring case, where their case put it on a less specific
        route or none (``/openai/v1/Embeddings`` on the ``/openai`` prefix's chat
        rather than embeddings). Paths are case-sensitive, in Envoy as here."""
        path = path.split("?", 1)[0]
        if path in self._exact:
            return None
        folded = path.lower()
        twin = self._folded_exact.get(folded)
        if twin is not None:
            return twin
        for prefix, route in self._prefixes:
            if _under(path, prefix):
                return None  # as specific as any twin, or more (longest first)
            if _under(folded, prefix.lower()) and not any(
                len(other) == len(prefix) and _under(path, other) for other, _ in self._prefixes
            ):
                return prefix + path[len(prefix) :], route
        return None


class HostRoutes:
    """The route table split by host: exact names, wildcards, then every host."""

    def __init__(self, config: GatewayConfig) -> None:
        exact: dict[str, list[RouteConfig]] = {}
        wildcard: dict[str, list[RouteConfig]] = {}
        for spec in config.routes:
            for host in spec.hosts:
                if host.startswith("*."):
                    # `*.gateway.local` covers `a.gateway.local` and `a.b.gateway.local`,
                    # not `gateway.local` itself (as in Envoy and Gateway API).
                    wildcard.setdefault(host[1:], []).append(spec)
                else:
                    exact.setdefault(host, []).append(spec)
        self._exact = {host: _table(config, specs) for host, specs in exact.items()}
        self._wildcards = sorted(
            ((suffix, _table(config, specs)) for suffix, specs in wildcard.items()),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._any_host = _table(config, [spec for spec in config.routes if not spec.hosts])

    def resolve(self, host: str, path: str) -> Route | None:
        for table in self._tables(host):
            found = table.resolve(path)
            if found is not None:
                return found
        return None

    def case_twin(self, host: str, path: str) -> tuple[str, Route] | None:
        """``RouteTable.case_twin`` in the host's first table that serves either."""
        for table in self._tables(host):
            twin = table.case_twin(path)
            if twin is not None:
                return twin
            if table.resolve(path) is not None:
                return None
        return None

    def _tables(self, host: str) -> Iterator[RouteTable]:
        exact = self._exact.get(host)
        if exact is not None:
            yield exact
        for suffix, table in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                yield table
        yield self._any_host


def _under(path: str, prefix: str) -> bool:
    """Whether a prefix route of ``prefix`` serves ``path``."""
    return path == prefix or path.startswith(prefix + "/")


def _table(config: GatewayConfig, specs: list[RouteConfig]) -> RouteTable:
    return RouteTable(config.model_copy(update={"routes": tuple(specs)}))


class Runtime:
    def __init__(
        self, config: GatewayConfig, services: Services, *, admit_labels: bool = True
    ) -> None:
        """``admit_labels=False``: the caller admits the config's label values itself,
        and calls ``show_series``, once it serves (a reload), so a config refused on the
        way changes no label.

        Reads every file the config takes a secret from (org key files and directory,
        provider and moderation key files): a reload calls it off the event loop."""
        self.config = config
        self.services = services
        if admit_labels:
            services.metrics.admit_config(config)  # its names never fold into "other"
        self.routes = RouteTable(config)
        # None when no route names a host: the path alone decides.
        self.host_routes = HostRoutes(config) if any(spec.hosts for spec in config.routes) else None
        # (host, path) -> the exact route serving it, as the routing stage found it
        # (stages.routing._checked_route); "" for the host when no route names one.
        self.known_paths: dict[tuple[str, str], Route] = {}
        self.api_keys = ApiKeyStore(config.auth)
        # The proxy the gateway's own outbound calls go through (JWKS, guards, tokens).
        self.egress = EgressProxy(config.egress)
        self.jwt = (
            JwtVerifier(config.auth.jwt_providers, egress=self.egress)
            if config.auth.jwt_providers
            else None
        )
        # Alias -> the model's configured name, which access and quota rules name.
        self.canonical_model = {
            alias: model.name for model in config.models for alias in model.aliases
        }
        # Model group name -> the group (extproc.model_groups); its members' names, which a
        # rule naming the group covers.
        self.groups = groups_of(config)
        self.group_members = {name: group.member_names for name, group in self.groups.items()}
        self.access = AccessPolicy(
            config.auth.access_rules, self.canonical_model, self.group_members
        )
        # Model name or alias -> its kind, where the config says it (ModelConfig.kind).
        self.model_kind = {
            name: model.kind
            for model in config.models
            if model.kind is not None
            for name in (model.name, *model.aliases)
        }
        for name, group_members in self.group_members.items():
            # A group is of the kind its members state (the config refuses two kinds).
            kind = next((self.model_kind[m] for m in group_members if m in self.model_kind), None)
            if kind is not None:
                self.model_kind[name] = kind
        self.prices = PriceTable(config.pricing, config.models)
        if self.prices.unpriced_models:
            # Not an error: such requests cost 0 and are flagged unpriced in the reports,
            # unless their provider reports what it charged (docs/chargeback.md).
            log.warning(
                "models without a price (cost 0, reported as unpriced, unless their "
                "provider reports its charge): %s",
                ", ".join(self.prices.unpriced_models),
            )
        self.agents = AgentDirectory(config)
        if admit_labels:
            self.show_series()
        try:
            self.quota_rules = RuleSet(config.quotas, self.canonical_model, self.group_members)
        except ValueError as exc:
            raise ConfigError("config", [f"quotas: {exc}"]) from None
        self.route_auth: dict[str, RouteAuthConfig] = {
            route.name: _route_auth(route.name, route.auth or config.auth.default, config)
            for route in config.routes
        }
        # Every header that carries org keys on some route: a client that sends one to
        # a route reading others (an SDK wrapper adding the org's header to every call)
        # still sent a secret, which no provider or webhook may be handed.
        self.key_headers = frozenset(
            policy.api_key_header.lower()
            for policy in self.route_auth.values()
            if policy.api_key_header
        ) - set(headers.CLIENT_CREDENTIAL_HEADERS)
        self._keys = {p.name: _provider_key(p) for p in config.providers}
        # The phase answers requests share, kept for this config only (answer_cache).
        self.answers = AnswerCache()
        # The first answer names the method and path only for an Envoy that reads them.
        self.envoy_reads_request = envoy_reads_request(config)
        self.signers: dict[str, AwsSigner] = {
            p.name: AwsSigner(p.aws, p.base_url) for p in config.providers if p.aws is not None
        }
        self.token_sources = _token_sources(config, self.egress)
        self._refresh: asyncio.Task[None] | None = None
        self._obtaining: asyncio.Task[None] | None = None
        self.upstreams: dict[str, Upstream] = {}
        for model in config.models:
            provider = config.provider(model.provider)
            upstream = self._upstream(model.upstream_model or model.name, provider)
            for name in (model.name, *model.aliases):
                self.upstreams[name] = upstream
        self.model_names = tuple(model.name for model in config.models)
        # The configured names (and aliases) that are neither an org key nor shaped as a
        # key or token: for them the check of the model's name for a credential
        # (stages.model_credentials) has only the request's own credential left to look
        # for, not a hash and a pattern search per request.
        self.plain_model_names = frozenset(
            name
            for name in (*self.upstreams, *self.groups)
            if self.api_keys.lookup(name.strip()) is None and credential_shapes.kind(name) is None
        )
        # Primary model -> {provider name -> the chain member it serves}: how an
        # attempt of a failover request finds what to translate for.
        self.failover: dict[str, dict[str, tuple[str, Upstream]]] = {}
        for model in config.models:
            if model.fallbacks:
                members = [model.name, *model.fallbacks]
                self.failover[model.name] = {
                    self.upstreams[name].provider.name: (name, self.upstreams[name])
                    for name in members
                }
        # How long an attempt's record (store.attempts_in_flight) is kept: past the longest
        # a chain's attempts may wait for an answer to start (a client's hang-up comes
        # before any answer), with room for the read that follows the hang-up.
        self.attempt_record_ttl_s = longest_failover_wait_s(config) + ATTEMPT_RECORD_SLACK_S
        self._prefixes = tuple((p.prefix, p.provider) for p in config.model_prefixes)
        self.lean_routes = lean_routes(config)
        try:
            self.guardrails = Guardrails(
                config.guardrails,
                {route.name: (route.guardrails, route.enrichment) for route in config.routes},
                self.egress,
            )
        except ValueError as exc:
            raise ConfigError("config", [f"guardrails: {exc}"]) from None
        self._by_name = {p.name: p for p in config.providers}
        # Each provider's endpoint and credentials, for a failover attempt (stages.attempt).
        self.provider_upstreams = {p.name: self._upstream("", p) for p in config.providers}
        # Streams serving on this runtime; it closes once retired and back to zero.
        self._streams = 0
        # Made when the process stops and waits for its streams (streams_ended).
        self._idle: asyncio.Event | None = None
        self._retired = False
        self._closing: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def show_series(self) -> None:
        """Show this config's agent series at 0 from now on. Called once it serves: a
        reload builds its runtime off the event loop, where the metrics' label cache,
        which requests use meanwhile, must not be touched."""
        agents = self.services.metrics.agents
        agents.show_binding_refusals(
            dict.fromkeys(
                upstream.server.name
                for upstream in self.agents.by_route.values()
                if upstream.server.bind_to_caller
            )
        )
        agents.show_credential_echoes(
            upstream.server.name
            for upstream in self.agents.by_route.values()
            if upstream.credential_forms
        )

    @property
    def stored_keys(self) -> StoredKeys | None:
        """Keys created at run time: asked for a key the config does not know."""
        return self.services.stored_keys

    def lean_response(self, route: Route, named_model: str | None) -> bool:
        """Whether a request skips the response-headers message (``response_path``)."""
        if self.guardrails.guards_answers(route.name):
            return False  # masking changes the body's length: its headers must be answered
        group = self.groups.get(named_model) if named_model is not None else None
        if group is not None:
            # Any member may be drawn, each with its own provider and chain: the group's
            # requests skip the headers' message only where every member's would.
            return all(self._lean(route, member) for member in group.member_names)
        return self._lean(route, named_model)

    def _lean(self, route: Route, named_model: str | None) -> bool:
        if named_model is not None:
            # An alias takes its model's path (its failover chain included).
            named_model = self.canonical_model.get(named_model, named_model)
        return is_lean(
            self.config, route, named_model, self.lean_routes, self.resolve_upstream, self.failover
        )

    def group_asked(self, group: str | None, model: str) -> str | None:
        """``group`` (the model group a request asked for) when ``model`` is one of its
        members, else None: the name by which a caller's key or access rules may allow
        that member (``AccessPolicy.denial``'s ``canonical``) in a request for the group,
        as for the member drawn. Never for a model outside the group (a member's own
        fallback elsewhere): the group's name allows its members alone."""
        if group is not None and model in self.group_members.get(group, ()):
            return group
        return None

    def resolve_upstream(self, model: str, route: Route) -> Upstream | None:
        """The upstream serving ``model`` on ``route``: by name or alias, by prefix, or by
        the route's own provider; None when nothing serves it there."""
        found = self.upstreams.get(model)
        if found is None:
            provider = next((p for prefix, p in self._prefixes if model.startswith(prefix)), None)
            provider = provider or route.provider
            if provider is None:
                return None
            found = self._upstream(model, self._by_name[provider])
        if route.provider is not None and found.provider.name != route.provider:
            return None
        return found

    def _upstream(self, upstream_model: str, provider: ProviderConfig) -> Upstream:
        return _upstream(
            upstream_model,
            provider,
            self._keys[provider.name],
            self.signers.get(provider.name),
            self.token_sources.get(provider.name),
        )

    async def start(self, previous: Runtime | None = None) -> None:
        """Load what needs I/O (JWKS, AWS credentials, Google Cloud tokens) before
        serving with this config; ``previous``: the runtime a reload replaces, whose
        JWKS keys, AWS credentials and Google Cloud tokens this one falls back on
        when their source is out of reach."""
        if self.jwt is not None:
            await self.jwt.start(previous.jwt if previous is not None else None)
        await self._start_credentials(previous)
        self._show_pending(previous)
        if self.signers or self.token_sources:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_credentials())
        if any(each.pending for _, each in self._fetched_credentials()):
            self._obtaining = asyncio.get_running_loop().create_task(self._obtain_pending())
        await self.warn_of_shared_key_ids()

    async def warn_of_shared_key_ids(self) -> None:
        """Name the config's API keys whose id a key created at run time has too: the id
        would stand for two keys in logs, metrics and quotas. CreateKey refuses a config
        key's id, but a config written later can take a stored key's."""
        stored = self.stored_keys
        configured = {key.id for key in self.api_keys.records()}
        if stored is None or not configured:
            return
        try:
            async with asyncio.timeout(self.config.store.timeout_ms / 1000):
                created = {each.key.id for each in await stored.list()}
        except Exception as exc:
            # The store does not answer now: the check waits for the next load.
            log.debug("stored key ids not compared with the config's: %s", type(exc).__name__)
            return
        if shared := sorted(configured & created):
            log.warning(
                "API key ids %s are in the config and were also created at run time: "
                "each stands for two keys in logs, metrics and quotas; revoke the "
                "created one (extproc keys revoke --id ID) or rename the config's",
                ", ".join(shared),
            )
        try:
            async with asyncio.timeout(self.config.store.timeout_ms / 1000):
                retired = await stored.retired(sorted(configured - created))
        except Exception as exc:
            log.debug("retired key ids not compared with the config's: %s", type(exc).__name__)
            return
        if retired:
            # CreateKey refuses a retired id; the config cannot be refused for one.
            log.warning(
                "API key ids %s are in the config and belonged to keys created at run time"
                " and revoked within store.usage_retention_days: usage reports, metrics and"
                " quotas count the config key's requests with the revoked key's under one id;"
                " give the config's key another id",
                ", ".join(sorted(retired)),
            )

    async def _start_credentials(self, previous: Runtime | None) -> None:
        """Start every provider's fetched credentials at once: each may wait for its source
        (20 s for a first token or STS answer), and one after the other a config with
        several providers waited for the sum."""
        starts = [
            *(
                signer.start(previous.signers.get(name) if previous is not None else None)
                for name, signer in self.signers.items()
            ),
            *(
                source.start(previous.token_sources.get(name) if previous is not None else None)
                for name, source in self.token_sources.items()
            ),
        ]
        for outcome in await asyncio.gather(*starts, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    def _fetched_credentials(self) -> list[tuple[str, AwsSigner | GcpTokenSource]]:
        """The providers that fetch their credentials, by name."""
        return [*self.signers.items(), *self.token_sources.items()]

    def _show_pending(self, previous: Runtime | None) -> None:
        """Set ``aigw_provider_credentials_pending`` for this config's providers, and to 0
        for those of the replaced config it has no more."""
        metrics = self.services.metrics
        fetched = self._fetched_credentials()
        for name, each in fetched:
            metrics.credentials_pending(name, each.pending)
        if previous is not None:
            kept = {name for name, _ in fetched}
            for name, _ in previous._fetched_credentials():
                if name not in kept:
                    metrics.credentials_pending(name, False)

    async def _obtain_pending(self) -> None:
        """Try the sources of pending providers (credentials_pending) again, 1 s after the
        start, then 2 s, 4 s... up to every 30 s, until each has its credentials."""
        waiting = [(name, each) for name, each in self._fetched_credentials() if each.pending]
        for delay in credentials_pending.retry_delays():
            await asyncio.sleep(delay)
            outcomes = await asyncio.gather(
                *(each.obtain() for _, each in waiting), return_exceptions=True
            )
            still: list[tuple[str, AwsSigner | GcpTokenSource]] = []
            for (name, each), outcome in zip(waiting, outcomes, strict=True):
                if outcome is True:
                    self.services.metrics.credentials_pending(name, False)
                    continue
                if isinstance(outcome, Exception):
                    log.warning("pending credentials not obtained: %s", type(outcome).__name__)
                still.append((name, each))
            waiting = still
            if not waiting:
                return

    async def _refresh_credentials(self) -> None:
        # Temporary credentials (web identity, STS) and access tokens are refreshed off
        # the request path, in a thread, well before they expire.
        while True:
            await asyncio.sleep(CREDENTIAL_REFRESH_INTERVAL_S)
            for signer in self.signers.values():
                try:
                    await signer.refresh_if_needed()
                except Exception as exc:
                    log.warning("AWS credential refresh failed: %s", type(exc).__name__)
            for name, source in self.token_sources.items():
                try:
                    await source.refresh_if_needed()
                except Exception as exc:
                    log.warning(
                        "Google Cloud token refresh for provider %s failed: %s",
                        name,
                        source.failure(exc),
                    )

    def hold(self, stream: asyncio.Task[Any] | None) -> Runtime:
        """This runtime, counted as in use until ``stream`` (an ext_proc stream's task) ends.

        One increment now and one done callback per stream: nothing per message."""
        if stream is not None:
            self._streams += 1
            stream.add_done_callback(self._stream_ended)
        return self

    def _stream_ended(self, _stream: asyncio.Task[Any]) -> None:
        self._streams -= 1
        if self._streams == 0:
            if self._idle is not None:
                self._idle.set()
            if self._retired:
                self._close_soon()

    async def streams_ended(self, timeout_s: float) -> bool:
        """Wait until every stream serving on this runtime has ended, its ``finally``
        run (its log line, usage and settlement handed over); False when some had not
        within ``timeout_s``. For a stopping process whose server took no new streams."""
        if self._streams == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def retire(self, max_wait_s: float) -> None:
        """A reload replaced this runtime: close its clients once its last stream has ended.

        ``max_wait_s`` is a safety net only (a stream that never ends must not keep
        sessions open for the life of the process)."""
        self._retired = True
        if self._obtaining is not None:
            # The replacing runtime tries its own; this one's would set the gauge for it.
            self._obtaining.cancel()
        if self._streams == 0:
            self._close_soon()
            return
        self._deadline = asyncio.get_running_loop().call_later(
            max_wait_s, self._overdue, max_wait_s
        )

    def _overdue(self, waited_s: float) -> None:
        if self._closing is None:
            # Their guard calls (webhook, moderation) now fail and their failure mode applies.
            log.warning(
                "closing the clients of a config replaced %.0f s ago; %d streams still use it",
                waited_s,
                self._streams,
            )
        self._close_soon()

    def _close_soon(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    @property
    def closed(self) -> bool:
        """Its clients are closed (after ``retire`` or ``wait_closed``)."""
        return self._closing is not None and self._closing.done()

    async def wait_closed(self) -> None:
        """Close now, streams or not (the process is stopping), and wait until done."""
        self._close_soon()
        assert self._closing is not None
        await asyncio.gather(self._closing, return_exceptions=True)

    async def close(self) -> None:
        await background.stop(self._refresh)
        await background.stop(self._obtaining)
        for signer in self.signers.values():
            await signer.close()
        for source in self.token_sources.values():
            await source.close()
        await self.guardrails.close()
        if self.jwt is not None:
            await self.jwt.close()


def _route_auth(route: str, policy: RouteAuthConfig, config: GatewayConfig) -> RouteAuthConfig:
    """Drop methods nothing is configured for; with none left, the route is anonymous."""
    usable = tuple(
        method
        for method in policy.methods
        if method is AuthMethod.NONE
        or (method is AuthMethod.JWT and config.auth.jwt_providers)
        # With the management API on, keys can be created at any time.
        or (
            method is AuthMethod.API_KEY
            and (config.auth.api_keys or config.auth.api_key_directory or config.management.serving)
        )
    )
    asked = [m.value for m in policy.methods if m is not AuthMethod.NONE]
    if not usable and asked and "methods" in policy.model_fields_set:
        # The operator asked for credentials on this route and nothing can check them: a
        # route that fails open deserves a line at every load, not a line in the docs.
        log.warning(
            "route '%s' asks for %s, but nothing is configured to check them (no keys, no "
            "management API, no JWT providers): it serves anonymous callers",
            route,
            " or ".join(asked),
        )
    return policy.model_copy(update={"methods": usable or (AuthMethod.NONE,)})


def _token_sources(config: GatewayConfig, egress: EgressProxy) -> dict[str, GcpTokenSource]:
    """A token source for each Vertex provider. google-auth is imported only when one
    is configured."""
    vertex = [p for p in config.providers if p.gcp is not None]
    if not vertex:
        return {}
    from extproc.providers.gcp_tokens import GcpTokenSource

    return {
        p.name: GcpTokenSource(p.gcp, f"providers.{p.name}.gcp", egress)
        for p in vertex
        if p.gcp is not None
    }


def _upstream(
    upstream_model: str,
    provider: ProviderConfig,
    key: str | None,
    signer: AwsSigner | None,
    token_source: GcpTokenSource | None = None,
) -> Upstream:
    credentials: dict[str, str] = {}
    if provider.type is ProviderType.ANTHROPIC:
        # A client of Vertex's paths (Claude Code in its Vertex mode) names Claude as
        # Vertex does; Anthropic serves the same model by its own spelling.
        upstream_model = anthropic_spelling(upstream_model)
        endpoint = "/messages"
        if key:
            credentials["x-api-key"] = key
    else:
        endpoint = "/chat/completions"
        if key:
            credentials["authorization"] = f"Bearer {key}"
    return Upstream(
        provider=provider,
        cluster=cluster_name(provider),
        path=provider.path_prefix + endpoint,
        upstream_model=upstream_model,
        credential_headers=credentials,
        signer=signer,
        token_source=token_source,
    )


def _provider_key(provider: ProviderConfig) -> str | None:
    if provider.api_key is not None and provider.api_key.get_secret_value():
        return provider.api_key.get_secret_value()
    if provider.api_key_file:
        # Read once per (re)load; a rotated Kubernetes Secret is picked up on reload.
        where = f"providers.{provider.name}.api_key_file"
        try:
            return Path(provider.api_key_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError("config", [f"{where}: cannot read: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError("config", [f"{where}: not UTF-8 text"]) from None
    return None
