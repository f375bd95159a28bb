"""``extproc serve --workers N``: N gateway processes sharing only the store.

The supervisor (this process) owns what must exist once:

* the embedded Valkey when no ``store.url`` is set, so every worker shares it
  (started again on its port, the workers' URL, should it exit);
* prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``),
  emptied of the workers' files at start (``worker_metric_files``); each worker
  records its counters and histograms there and the supervisor's ``/metrics``
  merges them, applies the label budget once more
  over the merged values (``bounded_families``) and adds the quota gauges read
  from the store; ``/healthz`` and ``/readyz`` are served here too;
* the workers' lifetimes: worker ``i`` serves ext_proc on its own endpoint
  (``extproc.worker_endpoints``) so Envoy balances streams across them; the
  first worker also serves the management API.

Signals: SIGTERM/SIGINT stop every worker gracefully (each drains its open
streams within ``server.grace_period_s``; ``/readyz`` answers 503 from the
signal on), then the supervisor stops the embedded Valkey, last, and exits. A
worker whose supervisor dies without a word (SIGKILL) drains and stops by itself
(``server.stop_with_supervisor``). SIGHUP is
passed on to every worker that has started (each reloads its config; one still
starting reads the file once started, as SIGHUP would kill it before its
handler is in place) and reloads the supervisor's own copy (quota rules of the
gauges, label values the merged page keeps apart), once the supervisor has
started if it comes earlier.

A worker that dies is restarted (its counters stay in the merged totals, since
its metric files are kept; ``mark_process_dead`` drops only live gauges). A
worker that keeps dying (``MAX_RESTARTS`` within ``RESTART_WINDOW_S``) means
something is broken for good: the supervisor stops the others and exits 1, so
the container restarts or the operator sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector

from extproc import background, event_loop, http_endpoint
from extproc.config.load_warnings import ConfigWarnings
from extproc.config.loader import ConfigError
from extproc.config.model import GatewayConfig
from extproc.config.reload import ConfigReloader
from extproc.config.restart_only import as_started
from extproc.quota.rules import RuleSet
from extproc.quota.store import QuotaStore
from extproc.startup_check import check_startup_files
from extproc.store import orphaned
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry import worker_metric_files
from extproc.telemetry.metrics import LabelBudget, MergedWorkerMetrics
from extproc.telemetry.quota_gauges import QuotaGauges
from extproc.worker_endpoints import WorkerRole, gather_spools, listening_ports

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# A worker's exit status when it cannot start for a reason the operator must fix (its
# port taken, a file its config names unreadable), as `serve` exits without workers.
USER_ERROR_EXIT = 2
# Beyond the grace period: time to flush usage and close the store.
STOP_SLACK_S = 10.0
# Labels the budget does not fold (bucket bounds are part of a histogram's shape).
_STRUCTURAL_LABELS = frozenset({"le", "quantile"})


def run_worker(
    config: GatewayConfig, config_path: str, role: WorkerRole, ready: Event, log_level: str
) -> None:  # pragma: no cover - runs in the child process
    """A worker's entry point (spawned: a fresh interpreter, no inherited state).

    ``config`` is the one the supervisor validated last, not the file as it is now:
    a worker restarted while the file holds a mistake serves like its siblings
    (and the file's later changes reach it by reload, as they reach them)."""
    from extproc.management.service import ManagementListenError
    from extproc.server import ListenError, serve

    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker-{role.index} %(name)s: %(message)s",
    )
    from extproc.telemetry.diagnostic_log import DiagnosticLog

    # Written by a thread: a stderr nobody reads must not hold the worker's event loop.
    diagnostics = DiagnosticLog()
    # The parent's SIGINT handler is not inherited; a Ctrl-C reaches the whole
    # process group, and the supervisor decides how workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Until serve() takes SIGHUP over, its default action would kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        event_loop.run(
            serve(config, config_path, role, on_started=ready.set), config.server.event_loop
        )
    except (ConfigError, ListenError, ManagementListenError) as exc:
        # The reason, once, without a traceback: the supervisor decides what follows.
        log.error("worker %d cannot start: %s", role.index, exc)
        raise SystemExit(USER_ERROR_EXIT) from None
    finally:
        # A spawned process ends without atexit: the lines held are written now.
        diagnostics.close()


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: SpawnProcess | None = None
        self.ready: Event | None = None


class Supervisor:
    def __init__(self, config: GatewayConfig, config_path: str, workers: int) -> None:
        self.config = config
        self._config_path = config_path
        self._count = workers
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(index) for index in range(workers)]
        self._restarts: list[float] = []
        self._stopping = asyncio.Event()
        self._store_readiness = http_endpoint.StoreReadiness()
        self._failed = False
        self._embedded: EmbeddedValkey | None = None
        # Starts the embedded Valkey again, on its port (the workers' URL), should it exit.
        self._embedded_keeper: asyncio.Task[None] | None = None
        self._client: Any = None
        self._quota_store: QuotaStore | None = None
        self._gauges: QuotaGauges | None = None
        self._http: Any = None
        self._bounded: _BoundedCollector | None = None
        # Made now: a change to the file or a SIGHUP while the workers start is
        # applied once they are up (ConfigReloader), not lost.
        self._reloader = ConfigReloader(config_path, self._apply, lambda ok: None)
        # The config last found valid, for workers (re)started from now on.
        self._latest = config
        self._rules = RuleSet(config.quotas)
        # The workers load the same file: the supervisor alone says what it names wrong.
        self._config_warnings = ConfigWarnings()
        self._config_warnings.loaded(config)
        self._log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.multiprocess_dir = Path(
            config.telemetry.metrics.multiprocess_dir or tempfile.mkdtemp(prefix="extproc-metrics-")
        )

    # --- start ------------------------------------------------------------------

    async def start(self) -> None:
        self._prepare_multiprocess_dir()
        store = self.config.store
        url = store.url
        if url is None:
            # Started before the workers and this process bind their ports: free now,
            # they must not become the store's.
            self._embedded = EmbeddedValkey(
                store.data_dir,
                avoid_ports=listening_ports(self.config, self._count),
                users_wait_s=self.config.server.grace_period_s + orphaned.USERS_SLACK_S,
            )
            url = await asyncio.to_thread(self._embedded.start)
            log.info("embedded Valkey started, data under %s", self._embedded.data_dir)
            self._embedded_keeper = asyncio.get_running_loop().create_task(
                self._embedded.keep_running()
            )
        self._store_url = url
        # Each worker spools to its own directory; leftovers go to worker 0. After the
        # store: the workers of a killed supervisor, waited for there, may have spooled
        # until they exited.
        await asyncio.to_thread(gather_spools, store.spool_dir, self._count)
        self._client = connect(url, store.timeout_ms / 1000.0)
        # Only its clock estimate is used: quota windows as the workers compute them.
        self._quota_store = QuotaStore(self._client, store.key_prefix)
        await self._quota_store.start()
        for worker in self._workers:
            self._spawn(worker)
        registry = CollectorRegistry(auto_describe=False)
        self._bounded = _BoundedCollector(
            MergedWorkerMetrics(str(self.multiprocess_dir)),
            self.config.telemetry.metrics.max_label_values,
            self.config,
        )
        registry.register(self._bounded)
        settings = self.config.telemetry.metrics.quota_gauges
        if settings.enabled:
            self._gauges = QuotaGauges(
                self._client, store.key_prefix, lambda: self._rules, self._quota_store.now,
                settings,
            )  # fmt: skip
            registry.register(self._gauges)
            self._gauges.start()
        app = http_endpoint.create_app(registry, self.readiness)
        self._http = await http_endpoint.start(app, self.config.server.http_address)
        self._reloader.start()
        log.info(
            "extproc supervising %d workers; metrics on http://%s/metrics",
            self._count,
            self.config.server.http_address,
        )

    def _prepare_multiprocess_dir(self) -> None:
        # Files of an earlier run would add its counts to this one's. Their files
        # only: the directory may be a mount point, and may hold others' files.
        directory = self.multiprocess_dir
        try:
            worker_metric_files.empty(directory)
        except (OSError, worker_metric_files.ForeignMetricFilesError) as exc:
            # The operator's to fix, like a config mistake: one line, exit 2.
            raise ConfigError(
                self._config_path, [f"telemetry.metrics.multiprocess_dir: {exc}"]
            ) from exc
        # Read by prometheus_client when a worker imports it; this process
        # records no metric of its own, so its values never go to the files.
        os.environ[MULTIPROC_ENV] = str(directory)

    def _spawn(self, worker: _Worker) -> None:
        role = WorkerRole(worker.index, self._count, self._store_url)
        worker.ready = self._context.Event()
        # What changes only on restart stays as the supervisor started: a restarted
        # worker shares its siblings' store, key prefix and addresses, management
        # listener, request log outputs and label budget.
        config = as_started(self.config, self._latest)
        process = self._context.Process(
            target=run_worker,
            args=(config, self._config_path, role, worker.ready, self._log_level),
            name=f"extproc-worker-{worker.index}",
        )
        process.start()
        worker.process = process
        log.info("worker %d started (pid %s)", worker.index, process.pid)

    async def _apply(self, config: GatewayConfig) -> None:
        # Workers watch the same file and reload themselves; this keeps the
        # gauges' rules in step with theirs, and restarted workers on it.
        try:
            rules = RuleSet(config.quotas)
        except ValueError as exc:  # what the workers' reload refuses as well
            raise ConfigError("quotas", [str(exc)]) from None
        # What the workers read at start, too: a worker restarted on this config
        # must not fail where its siblings' reload refused it. Not the listener's
        # files: a restarted worker listens as started, like its siblings.
        # Off the event loop, which answers /healthz and /metrics: a key file on a slow
        # network volume held those until it was read.
        await asyncio.to_thread(check_startup_files, config, listener_files=False)
        self._rules, self._latest = rules, config
        self._config_warnings.loaded(config)
        if self._bounded is not None:
            self._bounded.admit_config(config)

    # --- run --------------------------------------------------------------------

    async def run(self) -> int:
        """Watch the workers until told to stop; the exit status of the whole server."""
        while not self._stopping.is_set():
            for worker in self._workers:
                process = worker.process
                if process is None or process.is_alive():
                    continue
                self._worker_exited(worker, process)
                if self._crash_looping():
                    log.error(
                        "workers died %d times within %.0fs: stopping", MAX_RESTARTS,
                        RESTART_WINDOW_S,
                    )  # fmt: skip
                    self._failed = True
                    self._stopping.set()
                    break
                self._spawn(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        return 1 if self._failed else 0

    def _worker_exited(self, worker: _Worker, process: SpawnProcess) -> None:
        log.error("worker %d (pid %s) exited with %s: restarting it",
                  worker.index, process.pid, process.exitcode)  # fmt: skip
        if process.pid is not None:
            mark_process_dead(process.pid, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        process.close()
        worker.process = None
        self._restarts.append(time.monotonic())

    def _crash_looping(self) -> bool:
        since = time.monotonic() - RESTART_WINDOW_S
        self._restarts = [moment for moment in self._restarts if moment >= since]
        return len(self._restarts) >= MAX_RESTARTS

    def request_stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        """SIGHUP: to every worker that has started, and to this process's own copy.

        A worker still starting is left alone: until its handler is in place, SIGHUP's
        default action kills it (and a few of them at once are a crash loop). Once
        started, each worker reads the file anyway (``serve``), so it misses nothing."""
        for worker in self._workers:
            process, ready = worker.process, worker.ready
            if process is None or process.pid is None or ready is None or not ready.is_set():
                continue
            os.kill(process.pid, signal.SIGHUP)
        self._reloader.schedule_reload()

    async def readiness(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            # Draining (or crash-looping): send no new traffic here; each worker's
            # gRPC health says the same. The page stays up until the workers are gone.
            return False, "shutting down"
        starting = [
            worker.index
            for worker in self._workers
            if worker.process is None or worker.ready is None or not worker.ready.is_set()
        ]
        if starting:
            return False, f"workers not serving yet: {starting}"
        ready, problem = await self._store_readiness.check(
            self._client.ping, self.config.store.timeout_ms / 1000.0
        )
        return ready, problem or f"{self._count} workers serving, store answers"

    # --- stop -------------------------------------------------------------------

    async def stop(self) -> None:
        processes = [w.process for w in self._workers if w.process is not None]
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.grace_period_s + STOP_SLACK_S
        for process in processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in time: killing it", process.pid)
                process.kill()
                await asyncio.to_thread(process.join)
        await self._reloader.stop()
        if self._gauges is not None:
            await self._gauges.close()
        if self._http is not None:
            await self._http.cleanup()
        if self._quota_store is not None:
            await self._quota_store.close()
        if self._client is not None:
            await self._client.aclose()
        await background.stop(self._embedded_keeper)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        if self.config.telemetry.metrics.multiprocess_dir is None:
            # Our own temporary directory: nothing reads it once the page is gone.
            await asyncio.to_thread(shutil.rmtree, self.multiprocess_dir, True)


class _BoundedCollector(Collector):
    """The merged worker metrics, with the label budget applied across all workers.

    Each worker bounds its own labels; two workers may admit different values,
    so the merged page would hold up to N times the cap. Folding again here,
    over the merged values, keeps the page within the cap whatever N is.
    Counters and histogram buckets fold by summing, which keeps them exact.
    """

    def __init__(
        self, source: Collector, max_values: int, config: GatewayConfig | None = None
    ) -> None:
        self._source = source
        self._budget = LabelBudget(max_values, keep_admitted=True)
        if config is not None:
            self.admit_config(config)

    def admit_config(self, config: GatewayConfig) -> None:
        """Keep the values ``config`` names apart, as each worker does (GatewayMetrics)
        for each config it loads: a model added by a reload must not show under `other`
        here while the workers record it under its name."""
        self._budget.admit_config(config)

    def collect(self) -> Iterator[Metric]:
        bound = self._budget.bound
        for family in self._source.collect():
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = tuple(
                    (name, value if name in _STRUCTURAL_LABELS else bound(name, value))
                    for name, value in sorted(sample.labels.items())
                )
                key = (sample.name, labels)
                merged[key] = merged.get(key, 0.0) + sample.value
            folded = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in merged.items():
                folded.add_sample(name, dict(labels), value)
            yield folded


async def supervise(config: GatewayConfig, config_path: str, workers: int) -> int:
    supervisor = Supervisor(config, config_path, workers)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.request_stop)
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
    try:
        await supervisor.start()
        status = await supervisor.run()
        log.info("shutting down: stopping %d workers", workers)
    finally:
        await supervisor.stop()
    return status
