"""Prometheus metrics: every name and label set is defined here, once.

Identity labels (``api_key_id``, ``user_id``, ``group_id``) stay empty until a
request is authenticated. Label values are bounded per label name: past
``max_label_values`` distinct values, new ones are counted under ``other`` so a
flood of made-up model names cannot blow up the series count. Every metric with
a free-form label is recorded through ``_child``, which applies that budget.
Values the config names (its models and aliases, routes, providers, keys) are
admitted outside the budget (``admit_config``): made-up names that use the
budget up must not push the configured models into ``other``. A request that
reached no provider (401, 403, 404...) has no model label at all: its model may
be any string the client sent.

With ``extproc serve --workers N`` each worker records into prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``) and the supervisor merges them
(``MergedWorkerMetrics``, served by ``extproc.workers``); nothing here changes
for that, except that a Gauge added here needs a ``multiprocess_mode`` saying
how workers' values combine (``livesum`` for in-flight counts, ``max`` for
shared facts, ``livemin`` for "all of them are fine"). Quota gauges are not
recorded here: they are read from the shared store (``quota_gauges``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from extproc.agents.limits import COUNTER_PREFIX
from extproc.agents.metrics import AgentMetrics
from extproc.store.spool import REJECT_REASONS, SPOOL_KINDS
from extproc.telemetry.span_attributes import GEN_AI_PROVIDER_NAMES

if TYPE_CHECKING:
    from extproc.config.model import GatewayConfig

# No `<name>_created` series beside each counter and histogram: one more series per
# label set that no alert reads, absent from the merged page of `serve --workers N`, so
# one process and several would show different pages.
disable_created_metrics()  # type: ignore[no-untyped-call]

TOKEN_LABELS = ("api_key_id", "user_id", "group_id", "model", "provider", "token_type")
# aigw_token_parts_total's token types: the parts of a request's prompt and completion
# that its log line and the usage rollups count apart, each billed at a price of its own
# (docs/logging.md), named as the log line's counts less "_tokens". A part of the prompt
# or the completion, so never a token type of tokens_consumed_total, whose types add up
# to a request's total (the dashboards and the docs' queries sum them).
TOKEN_PARTS = (
    "cached",  # of the prompt: read from the provider's prompt cache
    "cache_write",  # of the prompt: written to it
    "cache_write_1h",  # of cache_write: to Claude's 1-hour cache
    "prompt_audio",  # of the prompt: audio
    "cached_audio",  # of cached: audio
    "completion_audio",  # of the completion: audio
    "completion_image",  # of the completion: images
    "prompt_image",  # of the prompt: images
    # The image generation tool's pictures, at the image model's prices: of the prompt,
    # its input and the input's images; of the completion, its output and its pictures.
    "image_generation_input",
    "image_generation_input_image",
    "image_generation_output",
    "image_generation_output_image",
)
REQUEST_LABELS = ("route", "provider", "model", "status_code")
COST_LABELS = ("api_key_id", "user_id", "group_id", "model", "provider")
# OpenTelemetry GenAI semantic conventions, attribute names with dots as underscores.
GEN_AI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_token_type",
)
OVERFLOW_VALUE = "other"
# Labels that name a model the client asked for: the config's models and aliases.
MODEL_LABELS = ("model", "to_model", "gen_ai_request_model")
# Labels whose values the gateway picks from a few fixed ones (docs/metrics.md, "Where
# each label's values come from"), or from the config (a rule's subject kind, a provider
# type): no client can add one, so they take no budget. Folded, they would hide what
# alerts and dashboards select (a guard's `fail_closed`, a store operation) once a low
# `max_label_values` filled up.
FIXED_LABELS = frozenset(
    {
        "token_type",
        "gen_ai_token_type",
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "subject_kind",
        "phase",
        "action",
        "operation",
        "kind",
        "reason",
        "result",
        # The request log's sinks (file, stdout).
        "sink",
        # Agent metrics: the outcome of a call (extproc.agents.call), the A2A message
        # methods counted (A2A_MESSAGE_METHODS) and A2A's task states (TASK_STATES, else
        # "other"), what docs/agents.md's queries select.
        "status",
        "method",
        "state",
    }
)
# The gateway's words in `status_code` beside the HTTP statuses (a cut stream, a
# provider's error event after its 200, a 200 whose body was the provider's error).
STATUS_WORDS = frozenset({"aborted", "stream_error", "error_body"})
COST_METRIC = "aigw_cost_usd"
# Why a request log line was lost (extproc.telemetry.log_writer), and where.
LOG_SINKS = ("file", "stdout")
LOG_LOSS_REASONS = ("queue_full", "write_error")
PICODOLLARS_PER_USD = 10**12
# Below 2**13 USD a float's spacing is under half a picodollar, so a worker's float
# (the one nearest its exact picodollar sum) gives that sum back exactly.
_EXACT_USD_BELOW = float(2**13)

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# The semantic conventions' advice for gen_ai.client.token.usage (powers of four).
TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# The semantic conventions' advice for gen_ai.server.time_to_first_token.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

# What a finished request used, for record_finished: its operation, provider type and
# response model (gen_ai_client_token_usage's labels), then its prompt and completion
# tokens.
TokenUse = tuple[str, str, str, int, int]

# Label-value combinations remembered as sent, for the fast path of _child.
_RAW_CACHE_SIZE = 10_000


@dataclass(slots=True)
class _FinishedSeries:
    """The series a finished request of one label set records (``record_finished``), each
    found the first time it gets a value, as ``_child`` finds it: no series appears any
    sooner than before, and none past the label budget."""

    requests: Any = None
    duration: Any = None
    ttft: Any = None
    input_tokens: Any = None
    output_tokens: Any = None
    prompt_tokens: Any = None
    completion_tokens: Any = None
    cost: Any = None


class LabelBudget:
    """Caps the distinct values each label may take; admitted values are always kept."""

    def __init__(self, max_values: int, keep_admitted: bool = False) -> None:
        self.max_values = max_values
        self._seen: dict[str, set[str]] = {}
        # Values the config names, per label: kept whatever the budget, not counted in it.
        self._admitted: dict[str, frozenset[str]] = {}
        # The supervisor of `serve --workers N` bounds cumulative values at every
        # scrape: a value no longer admitted would move its whole history into
        # `other` (its series gone, `other` jumping), so there admission is for good.
        self._keep_admitted = keep_admitted
        self._lock = threading.Lock()

    def admit(self, label: str, values: Iterable[str]) -> None:
        """Keep these values of ``label`` outside the budget (replacing those admitted
        before: a reload names the config's values anew; series made stay), or adding to
        them with ``keep_admitted``."""
        with self._lock:
            kept = self._admitted.get(label, frozenset()) if self._keep_admitted else frozenset()
            self._admitted[label] = kept | frozenset(values)

    def admit_config(self, config: GatewayConfig) -> None:
        """Admit the values the config names in labels a client can fill with made-up
        values: its models, aliases and model groups, routes and providers. Bounded by
        the config, they cannot blow up the series; admitted, they cannot be pushed into
        ``other`` by made-up values that came first.

        Identity labels stay within the budget: their values come from authenticated
        callers only, and admitting every configured key would give a gateway with
        10,000 keys 10,000 series per metric (some 15 MB per process)."""
        models = [name for model in config.models for name in (model.name, *model.aliases)]
        models.extend(group.name for group in config.model_groups)
        for label in MODEL_LABELS:
            self.admit(label, models)
        self.admit("route", (route.name for route in config.routes))
        self.admit("provider", (provider.name for provider in config.providers))
        # Rules and guards the config names: an operator with more of them than the cap
        # alerts on each one's refusals.
        self.admit(
            "rule",
            [
                *(rule.name for rule in config.quotas.rules),
                *(COUNTER_PREFIX + rule.name for rule in config.agents.limits),
            ],
        )
        policies = config.guardrails.policies
        self.admit(
            "guard",
            (guard.name for policy in policies for guard in (*policy.request, *policy.response)),
        )

    def bound(self, label: str, value: str) -> str:
        if not value:
            return value  # "unknown" (no provider, anonymous): one value, not a budget's worth
        if label in FIXED_LABELS or (label == "status_code" and _is_status(value)):
            return value
        seen = self._seen.get(label)
        if seen is not None and value in seen:
            return value
        admitted = self._admitted.get(label)
        if admitted is not None and value in admitted:
            return value
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) >= self.max_values:
                return OVERFLOW_VALUE
            seen.add(value)
            return value


class GatewayMetrics:
    def __init__(self, max_label_values: int = 1000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = LabelBudget(max_label_values)
        self.tokens_consumed = Counter(
            "tokens_consumed",
            "LLM tokens consumed, by identity, model, provider and token type (prompt, completion)",
            TOKEN_LABELS,
            registry=self.registry,
        )
        self.token_parts = Counter(
            "aigw_token_parts",
            "Parts of tokens_consumed_total billed at prices of their own (cache reads and"
            " writes, audio, images), by identity, model, provider and token type",
            TOKEN_LABELS,
            registry=self.registry,
        )
        self.gen_ai_token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per request (OpenTelemetry gen_ai.client.token.usage)",
            GEN_AI_LABELS,
            buckets=TOKEN_USAGE_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "aigw_requests",
            "AI requests handled by the gateway, by route, provider, model and HTTP status",
            REQUEST_LABELS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "aigw_request_duration_seconds",
            "Time from the request reaching the gateway to the end of its response",
            ("route", "provider", "model"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "aigw_time_to_first_token_seconds",
            "Streamed responses: time from the request reaching the gateway to the first "
            "response body chunk",
            ("route", "provider", "model"),
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "aigw_upstream_errors",
            "Provider answers with an error status (including Envoy's own 503/504 when the "
            "provider is unreachable or slow), by provider, model and status",
            ("provider", "model", "status_code"),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "aigw_store_errors",
            "Failed operations against the Redis-protocol store, by operation",
            ("operation",),
            registry=self.registry,
        )
        self.spooled = Counter(
            "aigw_spooled_batches",
            "Batches the store could not take, written to the local spool for replay, by kind",
            ("kind",),
            registry=self.registry,
        )
        self.spool_write_errors = Counter(
            "aigw_spool_write_errors",
            "Batches the store could not take that the spool's disk refused too (full, "
            "read-only, failing): held in memory and retried, lost if the process dies first",
            ("kind",),
            registry=self.registry,
        )
        self.spool_rejected_records = Counter(
            "aigw_spool_rejected_records",
            "Spooled lines the replay could not apply, set aside in <kind>.rejected.jsonl: "
            "the store never gets their usage or settlement, by kind and reason",
            ("kind", "reason"),
            registry=self.registry,
        )
        # At 0 from the start: the first line set aside (often by the replay right after
        # a restart, before any scrape) must show as an increase for the alerts.
        for kind in SPOOL_KINDS:
            self.spool_write_errors.labels(kind)
            for reason in REJECT_REASONS:
                self.spool_rejected_records.labels(kind, reason)
        self.request_log_lost = Counter(
            "aigw_request_log_lost_lines",
            "Request log lines a sink lost: its queue full (the sink stuck), or its write "
            "failed (a closed pipe, a full disk), by sink and reason",
            ("sink", "reason"),
            registry=self.registry,
        )
        # At 0 from the start, as the spool's: the first line lost is an increase.
        for sink in LOG_SINKS:
            for reason in LOG_LOSS_REASONS:
                self.request_log_lost.labels(sink, reason)
        self.failovers = Counter(
            "aigw_failovers",
            "Requests answered by a fallback model after the primary's provider failed",
            ("model", "to_model"),
            registry=self.registry,
        )
        self.group_passed_over = Counter(
            "aigw_model_group_passed_over",
            "Requests for a model group drawn among its other members because its member on"
            " this provider was cooling down after the provider failed",
            ("model", "provider"),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "aigw_rate_limited",
            "Requests refused by a quota or rate limit, by rule and subject kind",
            ("rule", "subject_kind"),
            registry=self.registry,
        )
        self.cost = Counter(
            "aigw_cost_usd",
            "Cost of the requests in USD from the pricing table, by identity, model and provider",
            COST_LABELS,
            registry=self.registry,
        )
        # Exact picodollar sums behind each cost series (see count_cost).
        self._cost_picousd: dict[Any, int] = {}
        # Not a token type: a search is no token, and no part of tokens_consumed_total,
        # whose types add up to the tokens consumed (docs/metrics.md).
        self.search_units = Counter(
            "aigw_search_units",
            "Searches a rerank's provider billed instead of tokens (Cohere's search units),"
            " by identity, model and provider",
            COST_LABELS,
            registry=self.registry,
        )
        self.guardrail_decisions = Counter(
            "aigw_guardrail_decisions",
            "Guardrail decisions, by guard, phase (request, response) and action "
            "(pass, mask, reject, fail_open, fail_closed)",
            ("guard", "phase", "action"),
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "aigw_config_reloads",
            "Config reload attempts, by result (success, failure)",
            ("result",),
            registry=self.registry,
        )
        # Both results shown from the start, at 0: the first failed reload is then an
        # increase an alert can see, not a series that appears already at 1.
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        # Whether the file on disk is the config serving: a failure count cannot say,
        # since a later good reload does not take it back, and an alert on it kept
        # firing after the fix. Workers reload each on their own: the merged page
        # shows the lowest of the live ones, 0 while any of them refused the file.
        self.config_last_reload_ok = Gauge(
            "aigw_config_last_reload_successful",
            "1 when the last config reload succeeded (or none was tried yet), 0 when it "
            "was refused and the previous config still serves",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.config_last_reload_ok.set(1)
        # What a stopping gateway still has to finish, and what a test waits on before
        # it reads counts: a request counts until its log line is queued and its tokens
        # are on this page, a few milliseconds after its client read the answer.
        self.requests_in_progress = Gauge(
            "aigw_requests_in_progress",
            "Requests the gateway has started and not finished counting (log line,"
            " metrics, usage rollup), every route's",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

        # Which providers answer 503 for want of credentials their source did not hand
        # over when the config loaded (providers.credentials_pending): an alert's only
        # sign of it besides the 503s. Any worker's pending provider is the page's.
        self.provider_credentials_pending = Gauge(
            "aigw_provider_credentials_pending",
            "1 while a provider's credentials (AWS, Google Cloud) could not be fetched since"
            " its config loaded and its requests get 503, else 0",
            ("provider",),
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        self.agents = AgentMetrics(self.registry, self._child)

        # Label children cached: prometheus_client's labels() is the costliest
        # part of recording a request otherwise. The fast path looks the raw
        # values up; that cache stops growing at _RAW_CACHE_SIZE entries, so
        # made-up label values cannot grow memory; past it, values are bounded
        # first and looked up in the cache of bounded values (itself bounded by
        # the label budget).
        self._by_raw: dict[tuple[str, ...], Any] = {}
        self._children: dict[tuple[str, ...], Any] = {}
        # A finished request's series by its labels' raw values (record_finished): one
        # lookup for the seven or so series every request records. Bounded as _by_raw.
        self._finished: dict[tuple[str, ...], _FinishedSeries] = {}

    def admit_config(self, config: GatewayConfig) -> None:
        """Admit the values ``config`` names (called for each config the gateway loads)."""
        self.labels.admit_config(config)
        # Values folded into `other` before they were admitted are looked up anew.
        self._by_raw.clear()
        self._finished.clear()

    def _child(self, metric: Any, *values: str) -> Any:
        raw = (metric._name, *values)
        child = self._by_raw.get(raw)
        if child is not None:
            return child
        bound = self.labels.bound
        bounded = tuple(
            bound(name, exposable(value))
            for name, value in zip(metric._labelnames, values, strict=True)
        )
        key = (metric._name, *bounded)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*bounded)
        if len(self._by_raw) < _RAW_CACHE_SIZE:
            self._by_raw[raw] = child
        return child

    def observe_request(
        self,
        *,
        route: str,
        provider: str,
        model: str,
        status: str,
        duration_s: float | None,
        ttft_s: float | None = None,
    ) -> None:
        if not provider:
            # Refused before a provider was chosen (401, 403, 404...): the model may be
            # any string the client sent, so it names no series (the log line has it).
            model = ""
        self._child(self.requests, route, provider, model, status).inc()
        if duration_s is not None:
            self._child(self.request_duration, route, provider, model).observe(duration_s)
        if ttft_s is not None:
            self._child(self.time_to_first_token, route, provider, model).observe(ttft_s)

    def record_finished(
        self,
        *,
        route: str,
        provider: str,
        model: str,
        status: str,
        duration_s: float | None,
        ttft_s: float | None,
        identity: tuple[str, str, str],
        usage: TokenUse | None,
        picousd: int,
        parts: Mapping[str, int] | None = None,
        search_units: int = 0,
    ) -> None:
        """A finished request's series: ``observe_request``, then, with ``usage``,
        ``observe_token_usage`` and ``count_tokens`` (``parts`` its cache and audio
        parts), then ``count_cost`` when it cost
        anything; the same series and values as those four calls, found in one lookup.
        Then the searches its provider billed (``search_units``), when any.

        Found one by one, each series cost a call and a label tuple's hash (about 3 us of
        a request's 10 us of metrics)."""
        if usage is None:
            key: tuple[str, ...] = (route, provider, model, status, *identity)
        else:
            key = (route, provider, model, status, *identity, *usage[:3])
        series = self._finished.get(key)
        if series is None:
            series = _FinishedSeries()
            if len(self._finished) < _RAW_CACHE_SIZE:
                self._finished[key] = series
        # Refused before a provider was chosen: no model label (observe_request).
        labelled = model if provider else ""
        if series.requests is None:
            series.requests = self._child(self.requests, route, provider, labelled, status)
        series.requests.inc()
        if duration_s is not None:
            if series.duration is None:
                series.duration = self._child(self.request_duration, route, provider, labelled)
            series.duration.observe(duration_s)
        if ttft_s is not None:
            if series.ttft is None:
                series.ttft = self._child(self.time_to_first_token, route, provider, labelled)
            series.ttft.observe(ttft_s)
        if usage is not None:
            operation, provider_type, response_model, prompt, completion = usage
            if series.input_tokens is None:
                name = GEN_AI_PROVIDER_NAMES.get(provider_type, provider_type)
                labels = (operation, name, model, response_model)
                series.input_tokens = self._child(self.gen_ai_token_usage, *labels, "input")
                series.output_tokens = self._child(self.gen_ai_token_usage, *labels, "output")
            series.input_tokens.observe(prompt)
            series.output_tokens.observe(completion)
            if prompt:
                if series.prompt_tokens is None:
                    series.prompt_tokens = self._child(
                        self.tokens_consumed, *identity, model, provider, "prompt"
                    )
                series.prompt_tokens.inc(prompt)
            if completion:
                if series.completion_tokens is None:
                    series.completion_tokens = self._child(
                        self.tokens_consumed, *identity, model, provider, "completion"
                    )
                series.completion_tokens.inc(completion)
            # The cache and audio parts: most requests have none, so no series is kept.
            for token_type, amount in (parts or {}).items():
                if amount:
                    self._child(self.token_parts, *identity, model, provider, token_type).inc(
                        amount
                    )
        if picousd:
            if series.cost is None:
                series.cost = self._child(self.cost, *identity, model, provider)
            self._add_cost(series.cost, picousd)
        if search_units:
            # A rerank billed by searches (Cohere): rare, so no series is kept.
            self._child(self.search_units, *identity, model, provider).inc(search_units)

    def count_guardrail_decision(self, guard: str, phase: str, action: str) -> None:
        self._child(self.guardrail_decisions, guard, phase, action).inc()

    def count_tokens(
        self,
        *,
        identity: tuple[str, str, str],
        model: str,
        provider: str,
        prompt: int,
        completion: int,
        parts: Mapping[str, int] | None = None,
    ) -> None:
        """A request's tokens: its prompt and completion, and ``parts`` of them by
        ``TOKEN_PARTS`` type (a series only for a part the request had)."""
        if prompt:
            self._child(self.tokens_consumed, *identity, model, provider, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens_consumed, *identity, model, provider, "completion").inc(
                completion
            )
        for token_type, amount in (parts or {}).items():
            if amount:
                self._child(self.token_parts, *identity, model, provider, token_type).inc(amount)

    def observe_token_usage(
        self,
        *,
        operation: str,
        provider_type: str,
        request_model: str,
        response_model: str,
        prompt: int,
        completion: int,
    ) -> None:
        """One request's usage in the OpenTelemetry-named histogram (one sample per type)."""
        provider = GEN_AI_PROVIDER_NAMES.get(provider_type, provider_type)
        for token_type, amount in (("input", prompt), ("output", completion)):
            self._child(
                self.gen_ai_token_usage,
                operation, provider, request_model, response_model, token_type,
            ).observe(amount)  # fmt: skip

    def count_cost(
        self, *, identity: tuple[str, str, str], model: str, provider: str, picousd: int
    ) -> None:
        """Add a request's cost. The series holds the float nearest the exact picodollar
        sum (int / int rounds correctly), not a float sum of floats, so it equals the sum
        of the log lines' ``cost_usd`` exactly, however many requests it counts. With
        workers, each worker's file holds its own exact sum and the merge adds them."""
        self._add_cost(self._child(self.cost, *identity, model, provider), picousd)

    def _add_cost(self, child: Any, picousd: int) -> None:
        known = self._cost_picousd.get(child)
        if known is None:
            # What the series already holds: 0, unless this process took over the
            # multiprocess file of a dead one with the same pid, which prometheus_client
            # reopens with its values; starting from 0 would set that counter back.
            known = picodollars(child._value.get())
        total = known + picousd
        self._cost_picousd[child] = total
        # prometheus_client has no public way to set a counter; its value holder (in
        # memory or the multiprocess file) has one.
        child._value.set(total / PICODOLLARS_PER_USD)

    def upstream_error(self, *, provider: str, model: str, status: str) -> None:
        self._child(self.upstream_errors, provider, model, status).inc()

    def store_error(self, operation: str) -> None:
        self._child(self.store_errors, operation).inc()

    def spool(self, kind: str) -> None:
        self._child(self.spooled, kind).inc()

    def spool_write_error(self, kind: str) -> None:
        self._child(self.spool_write_errors, kind).inc()

    def spool_rejected(self, kind: str, reason: str) -> None:
        self._child(self.spool_rejected_records, kind, reason).inc()

    def log_lines_lost(self, sink: str, reason: str, count: int) -> None:
        """Count request log lines ``sink`` lost (called from its writer thread too)."""
        self.request_log_lost.labels(sink, reason).inc(count)

    def group_member_passed_over(self, group: str, provider: str) -> None:
        self._child(self.group_passed_over, group, provider).inc()

    def failover(self, model: str, to_model: str) -> None:
        self._child(self.failovers, model, to_model).inc()

    def rate_limit(self, rule: str, subject_kind: str) -> None:
        self._child(self.rate_limited, rule, subject_kind).inc()

    def credentials_pending(self, provider: str, pending: bool) -> None:
        self.provider_credentials_pending.labels(provider).set(1 if pending else 0)

    def config_reload(self, ok: bool) -> None:
        self._child(self.config_reloads, "success" if ok else "failure").inc()
        self.config_last_reload_ok.set(1 if ok else 0)


def _is_status(value: str) -> bool:
    """An HTTP status (Envoy passes three digits at most) or one of the gateway's words:
    at most a thousand values, whatever a client or a provider sends."""
    return (len(value) <= 3 and value.isascii() and value.isdigit()) or value in STATUS_WORDS


def exposable(value: str) -> str:
    """A label value the UTF-8 exposition can hold: a lone surrogate (JSON's ``\\udcff``
    in a JWT claim) would make every scrape fail, so it becomes U+FFFD."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in value)
    return value


def picodollars(usd: float) -> int:
    """The picodollar sum behind a cost series' float (exact below ``_EXACT_USD_BELOW``)."""
    return round(Fraction(usd) * PICODOLLARS_PER_USD)


def worker_cost_sum(values: Iterable[float]) -> float:
    """The cost series of several workers added up: the float nearest the exact sum.

    Each worker's float is the one nearest its own exact picodollar sum; adding the
    floats would round twice (0.1 + 0.2 gives 0.30000000000000004 where the log
    lines add up to 0.3). So each is turned back into its picodollars and the sum
    is rounded once. A worker's series past 8192 USD cannot be turned back (its float
    is coarser than a picodollar); it adds as the exact value of its float.
    """
    total = Fraction(0)
    for usd in values:
        if 0.0 <= usd < _EXACT_USD_BELOW:
            total += Fraction(picodollars(usd), PICODOLLARS_PER_USD)
        else:
            total += Fraction(usd)
    return float(total)


class MergedWorkerMetrics(Collector):
    """What every worker of ``serve --workers N`` recorded, as one process would show it.

    prometheus_client's merge of the workers' multiprocess files sums counters and
    histograms across workers (a dead worker's file stays, so its counts do too);
    the cost series is summed again from the same files, exactly (``worker_cost_sum``).
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def collect(self) -> Iterator[Metric]:
        files = sorted(self._path.glob("*.db"))
        # Read first: a series created between the two reads keeps the merge's
        # value until the next scrape, which reads it here too.
        exact = _exact_costs(path for path in files if path.name.startswith("counter_"))
        names = [str(path) for path in files]
        for family in MultiProcessCollector.merge(names, accumulate=True):  # type: ignore[no-untyped-call]
            if family.name == COST_METRIC:
                family.samples = [_exact_sample(sample, exact) for sample in family.samples]
            yield family


# A sample's name and sorted labels.
_Series = tuple[str, tuple[tuple[str, str], ...]]


def _series(name: str, labels: dict[str, str]) -> _Series:
    return name, tuple(sorted(labels.items()))


def _exact_sample(sample: Sample, exact: dict[_Series, float]) -> Sample:
    return sample._replace(value=exact.get(_series(sample.name, sample.labels), sample.value))


def _exact_costs(files: Iterable[Path]) -> dict[_Series, float]:
    """Each cost series summed exactly over the workers' counter files."""
    by_series: dict[_Series, list[float]] = {}
    for path in files:
        try:
            entries = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            continue
        for key, value, _, _ in entries:
            if f'"{COST_METRIC}"' not in key:
                continue  # most entries: spare decoding them
            # prometheus_client's key: [metric name, sample name, labels, help].
            metric_name, name, labels, _ = json.loads(key)
            if metric_name == COST_METRIC:
                by_series.setdefault(_series(name, labels), []).append(value)
    return {series: worker_cost_sum(values) for series, values in by_series.items()}
