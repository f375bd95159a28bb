"""The serving process: gRPC ext_proc service, HTTP side, store, reload, shutdown.

``serve()`` wires the parts together and owns their lifetimes: it starts the
embedded Valkey when no store URL is set, answers Envoy's ext_proc streams,
health checks and reflection on gRPC, serves metrics and probes over HTTP,
reloads the config on SIGHUP or file change, and on SIGTERM/SIGINT stops
accepting streams, lets open ones finish within the grace period, then flushes
usage and quota settlements (to the store, or the spool) before it stops the
store. A worker of ``serve --workers N`` stops the same way when its supervisor
dies, rather than serving on unsupervised.

A reload swaps the runtime new streams use; the process keeps the ``server``
and ``store`` settings it started with until it restarts (it warns on every
reload that changes them), and the replaced runtime closes its clients when
the last stream that started on it has ended.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from extproc import background, http_endpoint, worker_endpoints
from extproc.auth.stored_keys import StoredKeys
from extproc.config.load_warnings import ConfigWarnings
from extproc.config.model import (
    MAX_REQUEST_BODY_BYTES,
    GatewayConfig,
    KeepaliveConfig,
    ServerConfig,
    TelemetryConfig,
)
from extproc.config.reload import ConfigReloader
from extproc.config.restart_only import RESTART_ONLY_SECTIONS, STARTED_TELEMETRY_FIELDS
from extproc.config.watched_files import secret_files
from extproc.envoy_drift import bootstrap_changes
from extproc.management.audit import AuditLog
from extproc.management.guesses import FailedAttempts
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import (
    AdminTokens,
    KeyManagementService,
    QuotaManagementService,
    start_server,
)
from extproc.management.usage import UsageReportService
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.store import orphaned
from extproc.store.agent_owners import AgentOwners
from extproc.store.attempts_in_flight import AttemptsInFlight
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.response_owners import ResponseOwners
from extproc.store.spool import Spool
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.telemetry.quota_gauges import QuotaGauges, SubjectTracker
from extproc.transport_security import server_credentials
from extproc.worker_endpoints import (
    WorkerRole,
    gather_spools,
    spool_dir,
    worker_address,
    worker_socket,
)

log = logging.getLogger(__name__)

SERVICE_NAME = ext.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
# A replaced config's clients (webhook, moderation, JWKS) close when its last stream
# ends; this bound is only a safety net against a stream that never does. Far beyond
# any request Envoy lets run with the rendered timeouts (300 s per provider by default).
RETIRED_CONFIG_MAX_WAIT_S = 3600.0
# How long a stopping process waits, after the grace period, for the streams it cut to
# run their last lines; they end within a few loop turns unless a stage's clean-up hangs.
STREAMS_END_WAIT_S = 5.0
# Envoy's keepalive pings may come this share of server.keepalive.interval_s apart
# (keepalive_permission); pings closer than that count as strikes.
PERMITTED_INTERVAL_SHARE = 0.5
# gRPC's own default, spelt out: pings too close together tolerated before the
# server closes the connection (0 would tolerate any number).
MAX_PING_STRIKES = 2


class ExternalProcessorService(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        # The processor's generator is the gRPC method itself: no extra hop per message.
        self.Process = processor.process


class Gateway:
    """One serving process and everything it owns."""

    def __init__(
        self,
        config: GatewayConfig,
        config_path: str | Path | None,
        worker: WorkerRole | None = None,
    ) -> None:
        self.config = config
        # Made now, not once started: it stamps the files before this process reads
        # them (the key files below), so a change or a SIGHUP while it starts (its
        # store, its listeners) is applied once it serves, not lost.
        self._reloader: ConfigReloader | None = None
        if config_path is not None:
            self._reloader = ConfigReloader(
                config_path,
                self.apply,
                self._count_reload,
                watched=lambda: secret_files(self.config),
            )
        # A worker of `serve --workers N`: its own ext_proc endpoint, the shared
        # store; the supervisor serves HTTP and the quota gauges for all workers.
        self._worker = worker
        # What the config probably says wrong (a rule naming no model the gateway knows, a
        # threshold naming no category): said once, by the supervisor when
        # there are workers (each worker loads the same file).
        self._config_warnings = ConfigWarnings()
        if worker is None:
            self._config_warnings.loaded(config)
        self._quota_gauges: QuotaGauges | None = None
        telemetry = config.telemetry
        self.metrics = GatewayMetrics(telemetry.metrics.max_label_values)
        self.services = Services(
            metrics=self.metrics,
            access_log=AccessLog.from_config(telemetry.log, on_lost=self.metrics.log_lines_lost),
        )
        self.runtime = Runtime(config, self.services)
        self.processor = Processor(self._runtime_for_stream, default_stages(), attempt_stages())
        # Replaced by a reload, their clients not closed yet: closed at the latest on stop.
        self._retired: set[Runtime] = set()
        # The management listener as started: only a restart moves it.
        self._management_started = (
            config.management.address,
            config.management.serving,
            config.management.tls,
        )
        # The log sinks and metrics as set up above: a reload that changes them warns.
        self._telemetry_started = config.telemetry
        self._embedded: EmbeddedValkey | None = None
        # Starts the embedded Valkey again should it exit while the gateway serves.
        self._embedded_keeper: asyncio.Task[None] | None = None
        self._store_client: Any = None
        # A worker's hold on the supervisor's embedded store (orphaned.use_store).
        self._store_user: int | None = None
        self._server: grpc_aio.Server | None = None
        self._management: grpc_aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http: Any = None
        self._stopping = asyncio.Event()
        self._store_readiness = http_endpoint.StoreReadiness()

    async def apply(self, config: GatewayConfig) -> None:
        """Swap in a new config; new streams use it, open ones keep theirs."""
        if config.management.serving:
            # Token files read now: two ids sharing a secret (or an id that is a
            # token) refuse the whole config. A file that gives no token leaves its
            # token out, never the old one in force: emptying or deleting the file is
            # how an admin's access is taken away. Off the event loop, as every file
            # read below: a token file on a slow volume would otherwise hold every
            # open stream until it is read.
            tokens = await asyncio.to_thread(AdminTokens, config.management, reloaded=True)
            for problem in tokens.left_out:
                log.warning(
                    "%s: that admin token is no longer accepted, its caller is refused,"
                    " until the file gives a token again",
                    problem,
                )
        changed = restart_only_changes(self.config, config)
        # Off the event loop, as the file's parse was: a large config renders for a while.
        envoy_changes = await asyncio.to_thread(bootstrap_changes, self.config, config)
        # The store client, listeners and timeouts were made from the running sections:
        # requests, readiness and shutdown go on reading those until the restart.
        config = config.model_copy(
            update={name: getattr(self.config, name) for name in RESTART_ONLY_SECTIONS}
        )
        # Its names are admitted to the metrics' label budget only once it serves: the
        # admission replaces the running config's, and a refused reload must leave
        # those (a running model kept apart from `other` when the budget is full).
        # Built off the event loop: it reads every key file (a key directory of
        # thousands of mounted files, on a disk that may stall) and hashes every key
        # (53 ms for 5,000 keys), and every open stream would wait for it. Its clients
        # (sessions, refresh tasks) are made later, on the loop, by start().
        runtime = await asyncio.to_thread(Runtime, config, self.services, admit_labels=False)
        try:
            await runtime.start(previous=self.runtime)
        except BaseException:
            await runtime.close()  # its JWKS refresher and sessions must not outlive it
            raise
        if changed:
            # Field names only: a store URL may carry a password.
            log.warning(
                "server and store settings change only on restart; still running on the"
                " started values of: %s",
                ", ".join(changed),
            )
        if envoy_changes:
            log.warning(
                "the new config renders another Envoy bootstrap (%s): Envoy serves the one"
                " it started with until it is rendered again (extproc render-envoy, or"
                " render-gateway-api) and Envoy restarted, if that was not done already",
                ", ".join(envoy_changes),
            )
        management = config.management
        if (management.address, management.serving, management.tls) != self._management_started:
            log.warning(
                "management.address, management.enabled and management.tls change only on restart"
            )
        telemetry = started_telemetry_changes(self._telemetry_started, config)
        if telemetry:
            log.warning(
                "the request log's outputs and telemetry.metrics change only on restart;"
                " still running on the started values of: %s",
                ", ".join(telemetry),
            )
        self.metrics.admit_config(config)
        runtime.show_series()
        previous, self.config, self.runtime = self.runtime, config, runtime
        self._retire(previous)
        if self._worker is None:
            self._config_warnings.loaded(config)

    def _runtime_for_stream(self) -> Runtime:
        # Called once per ext_proc stream, from the task grpc.aio runs that stream in:
        # the runtime counts the stream as its user until that task ends.
        return self.runtime.hold(asyncio.current_task())

    def _retire(self, previous: Runtime) -> None:
        """Streams that started on ``previous`` keep it (and its clients) to their end."""
        self._retired = {runtime for runtime in self._retired if not runtime.closed}
        self._retired.add(previous)
        previous.retire(RETIRED_CONFIG_MAX_WAIT_S)

    async def start(self) -> None:
        await self.runtime.start()
        await self._start_store()
        # The runtime started before the store it compares the config's key ids with.
        await self.runtime.warn_of_shared_key_ids()
        self._server = grpc_aio.server(options=grpc_server_options(self.config.server))
        ext_grpc.add_ExternalProcessorServicer_to_server(
            ExternalProcessorService(self.processor), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        server_config = self.config.server
        add_port = self._server.add_insecure_port
        if server_config.tls is not None:
            credentials = await asyncio.to_thread(server_credentials, server_config.tls)

            def add_port(address: str) -> int:
                assert self._server is not None
                return int(self._server.add_secure_port(address, credentials))

        grpc_address, unix_socket = server_config.grpc_address, server_config.unix_socket
        worker = self._worker
        if worker is not None:
            grpc_address = worker_address(grpc_address, worker.index)
            if unix_socket:
                unix_socket = worker_socket(unix_socket, worker.index, worker.workers)
        _listen(add_port, grpc_address)
        if unix_socket:
            # A socket file left by a killed process would make the bind fail.
            await asyncio.to_thread(Path(unix_socket).unlink, missing_ok=True)
            _listen(add_port, f"unix:{unix_socket}")
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # Workers: the first serves the management API (it has one port).
        if self.config.management.serving and (worker is None or worker.index == 0):
            await self._start_management()
        if worker is None:
            app = http_endpoint.create_app(self.metrics.registry, self.readiness)
            self._http = await http_endpoint.start(app, server_config.http_address)
        if self._reloader is not None:
            self._reloader.start()
        # Everything allocated so far lives as long as the process: keep it out of
        # the collector's full passes, which otherwise rescan it over and over.
        gc.collect()
        gc.freeze()
        if worker is None:
            log.info(
                "extproc serving ext_proc on %s, metrics on http://%s/metrics",
                grpc_address,
                server_config.http_address,
            )
        else:
            log.info("extproc worker %d serving ext_proc on %s", worker.index, grpc_address)

    async def _start_management(self) -> None:
        # Its own server and port: the management API is never reachable through Envoy.
        admin = self.services.quota_admin
        assert admin is not None, "the store starts first"
        stored_keys = self.services.stored_keys
        assert stored_keys is not None, "the store starts first"
        audit = AuditLog()
        attempts = FailedAttempts()
        service = QuotaManagementService(lambda: self.runtime, admin, audit, attempts)
        keys = KeyManagementService(lambda: self.runtime, stored_keys, audit, attempts)
        usage_store = self.services.store
        assert usage_store is not None, "the store starts first"
        usage = UsageReportService(lambda: self.runtime, usage_store, audit, attempts)
        tls = self.config.management.tls
        credentials = None
        if tls is not None:
            # Read off the event loop, as the ext_proc port's; renewed files are served
            # from the next handshake on.
            credentials = await asyncio.to_thread(server_credentials, tls, "management.tls")
        address = self.config.management.address
        self._management = await start_server(address, service, keys, usage, credentials)
        log.info("management API on %s%s", address, " (TLS)" if tls is not None else "")

    def reload_config(self) -> None:
        if self._reloader is not None:
            self._reloader.schedule_reload()

    def catch_up_with_file(self) -> None:
        """Reload only if the file changed from the config this process started on."""
        if self._reloader is not None:
            self._reloader.schedule_catch_up(self.config)

    def _count_reload(self, ok: bool) -> None:
        self.metrics.config_reload(ok)

    async def _start_store(self) -> None:
        store = self.config.store
        url = self._worker.store_url if self._worker is not None else store.url
        spools = spool_dir(store.spool_dir, self._worker)
        if url is None:
            self._embedded = EmbeddedValkey(
                store.data_dir,
                avoid_ports=listening_ports(self.config),
                users_wait_s=self.config.server.grace_period_s + orphaned.USERS_SLACK_S,
            )
            url = await asyncio.to_thread(self._embedded.start)
            log.info("embedded Valkey started, data under %s", self._embedded.data_dir)
            self._embedded_keeper = asyncio.get_running_loop().create_task(
                self._embedded.keep_running()
            )
        elif self._worker is not None and store.url is None:
            # The supervisor's embedded store: should the supervisor be killed, its next
            # start waits for this worker's drain and flushes before stopping that store.
            self._store_user = await asyncio.to_thread(orphaned.use_store, store.data_dir)
        if self._worker is None:
            # After the store: a killed supervisor's workers, waited for there, may
            # have spooled into their own directories until they exited.
            await asyncio.to_thread(gather_spools, store.spool_dir, 1)
        self._store_client = connect(url, store.timeout_ms / 1000.0)
        self.services.store = UsageStore(
            self._store_client, store.key_prefix, store.usage_retention_days
        )
        self.services.usage_writer = UsageWriter(
            self.services.store,
            on_error=self._usage_spooled,
            timeout_s=store.timeout_ms / 1000.0,
            spool=Spool(spools, "usage", self.metrics),
        )
        self.services.usage_writer.start()
        self.services.quota_store = QuotaStore(
            self._store_client,
            store.key_prefix,
            spool=Spool(spools, "quota", self.metrics),
            on_spooled=self._quota_spooled,
        )
        await self.services.quota_store.start()
        self.services.quota_admin = QuotaAdmin(
            self._store_client, store.key_prefix, self.services.quota_store
        )
        self.services.stored_keys = StoredKeys(
            self._store_client,
            store.key_prefix,
            retire_ids_for_s=store.usage_retention_days * 86400.0,
        )
        self.services.stored_keys.start()  # auth freshness: hear revocations from any process
        if store.response_owner_retention_days:
            self.services.response_owners = ResponseOwners(
                self._store_client, store.key_prefix, store.response_owner_retention_days
            )
        self.services.attempts_in_flight = AttemptsInFlight(self._store_client, store.key_prefix)
        self.services.agent_owners = AgentOwners(self._store_client, store.key_prefix)
        self._start_quota_gauges()

    def _start_quota_gauges(self) -> None:
        settings = self.config.telemetry.metrics.quota_gauges
        quota_store = self.services.quota_store
        if not settings.enabled or quota_store is None:
            return
        prefix = self.config.store.key_prefix
        tracker = SubjectTracker(
            self._store_client,
            prefix,
            quota_store.now,
            settings.subject_flush_interval_s,
            on_error=lambda: self.metrics.store_error("quota_subjects"),
        )
        tracker.start()
        self.services.quota_subjects = tracker
        if self._worker is None:
            # Workers leave the gauges to the supervisor, which serves /metrics.
            self._quota_gauges = QuotaGauges(
                self._store_client, prefix, lambda: self.runtime.quota_rules, quota_store.now,
                settings,
            )  # fmt: skip
            self.metrics.registry.register(self._quota_gauges)
            self._quota_gauges.start()

    def _quota_spooled(self) -> None:
        self.metrics.store_error("quota_settle")

    def _usage_spooled(self) -> None:
        self.metrics.store_error("usage_record")

    async def readiness(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            # Draining: send no new traffic here (the gRPC health says the same).
            return False, "shutting down"
        store = self.services.store
        if store is None:
            return False, "store not started"
        ready, problem = await self._store_readiness.check(
            store.ping, self.config.store.timeout_ms / 1000.0
        )
        return ready, problem or "config loaded, store answers"

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        grace = self.config.server.grace_period_s
        await self._health.enter_graceful_shutdown()
        if self._reloader is not None:
            await self._reloader.stop()
        # Both stop accepting at once; their open calls share one grace period. One
        # after the other, a pod's stop could take twice the grace_period_s its
        # terminationGracePeriodSeconds allows for, and be killed before the flushes below.
        await asyncio.gather(
            *(server.stop(grace) for server in (self._server, self._management) if server)
        )
        await self._streams_ended()
        if self.services.usage_writer is not None:
            await self.services.usage_writer.close()
        if self.services.quota_store is not None:
            await self.services.quota_store.close()
        if self.services.quota_subjects is not None:
            await self.services.quota_subjects.close()
        if self._quota_gauges is not None:
            await self._quota_gauges.close()
        if self._http is not None:
            await self._http.cleanup()
        for retired in self._retired:
            await retired.wait_closed()
        await self.runtime.close()
        if self.services.stored_keys is not None:
            await self.services.stored_keys.close()
        if self.services.response_owners is not None:
            await self.services.response_owners.close()
        if self._store_client is not None:
            await self._store_client.aclose()
        if self._store_user is not None:
            os.close(self._store_user)  # done with the store: a new start need not wait
            self._store_user = None
        # Kept running until here: one that died during the drain is back for the flushes.
        await background.stop(self._embedded_keeper)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        self.services.access_log.close()

    async def _streams_ended(self) -> None:
        """Wait for the streams cut at the end of the grace period to end.

        grpc.aio's ``stop`` returns once it has cancelled the calls still open, before
        their tasks have run: a call waiting on a store or a guard then runs its
        ``finally`` (its log line, its usage, its quota settlement) later, and it must
        do so before the writers below close."""
        runtimes = (self.runtime, *self._retired)
        ended = await asyncio.gather(*(r.streams_ended(STREAMS_END_WAIT_S) for r in runtimes))
        if not all(ended):
            log.error(
                "ext_proc streams still running %.0f s after the grace period: their usage"
                " may be lost",
                STREAMS_END_WAIT_S,
            )


async def serve(
    config: GatewayConfig,
    config_path: str | Path | None,
    worker: WorkerRole | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    gateway = Gateway(config, config_path, worker)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, gateway.request_stop)
    if config_path is not None:
        # From the start: SIGHUP's default action would kill a gateway still starting
        # (and leave its embedded store behind). One received while starting reloads
        # once the gateway serves.
        loop.add_signal_handler(signal.SIGHUP, gateway.reload_config)
    if worker is not None:
        stop_with_supervisor(loop, gateway.request_stop)
    try:
        await gateway.start()
        if on_started is not None:
            on_started()
        if worker is not None and config_path is not None:
            # Started on the config the supervisor last validated: the file may
            # have changed since (its siblings reloaded it while this one started).
            gateway.catch_up_with_file()
        await gateway.wait()
        log.info("shutting down: finishing open streams")
    finally:
        await gateway.stop()


# One ext_proc message carries a whole body: the largest any limit allows and the
# message's other fields. At 64 MiB even, a body of the 64 MiB a limit allows was
# refused by gRPC and the client got a 500.
MAX_MESSAGE_BYTES = MAX_REQUEST_BODY_BYTES + 64 * 1024


def grpc_server_options(server: ServerConfig) -> list[tuple[str, int]]:
    """The ext_proc server's gRPC channel arguments."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # gRPC binds with SO_REUSEPORT by default: a second gateway on the same
        # address (an old process still running) would silently take a share of
        # Envoy's streams, and count them in its own store and metrics.
        ("grpc.so_reuseport", 0),
        *keepalive_permission(server.keepalive),
    ]


def keepalive_permission(keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
    """Let Envoy's keepalive PINGs through, and nothing much faster.

    gRPC's defaults refuse pings on a connection without calls, and pings less
    than 5 minutes apart while no data flows: each counts as a strike, and past
    ``MAX_PING_STRIKES`` the server answers GOAWAY ENHANCE_YOUR_CALM
    ("too_many_pings") and closes the connection, failing the streams open on it
    (a request waiting on a slow provider among them). Envoy's pings come at least
    ``interval_s`` apart (its jitter only adds, and it waits for each answer), so
    half the interval lets every one through with room for the network, while a
    client pinging faster than that is still sent away. Data or headers the server
    sends reset gRPC's count, so a busy connection never strikes.
    """
    permitted_ms = round(keepalive.interval_s * 1000 * PERMITTED_INTERVAL_SHARE)
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", permitted_ms),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ]


class ListenError(RuntimeError):
    """The ext_proc server cannot take its address (in use, or not this host's)."""


def listening_ports(config: GatewayConfig) -> frozenset[int]:
    """The TCP ports the gateway's processes listen on (``worker_endpoints``)."""
    return worker_endpoints.listening_ports(config, config.server.workers)


def _listen(add_port: Callable[[str], int], address: str) -> None:
    try:
        add_port(address)
    except RuntimeError:
        # gRPC's own message says only "Failed to bind" (and logs the reason).
        raise ListenError(
            f"ext_proc server cannot listen on {address}: the address is in use (another"
            " gateway with the same server.grpc_address?) or not one of this host's"
        ) from None


def restart_only_changes(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The ``server`` and ``store`` fields ``loaded`` sets otherwise than ``running``."""
    changed: list[str] = []
    for section in RESTART_ONLY_SECTIONS:
        before, after = getattr(running, section), getattr(loaded, section)
        changed += [
            f"{section}.{field}"
            for field in type(before).model_fields
            if getattr(before, field) != getattr(after, field)
        ]
    return changed


def started_telemetry_changes(started: TelemetryConfig, loaded: GatewayConfig) -> list[str]:
    """The ``telemetry`` fields set up at start that ``loaded`` sets otherwise."""
    return [
        f"telemetry.{section}.{field}"
        for section, fields in STARTED_TELEMETRY_FIELDS.items()
        for field in fields
        if getattr(getattr(started, section), field)
        != getattr(getattr(loaded.telemetry, section), field)
    ]


def stop_with_supervisor(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call ``stop`` when the supervisor that spawned this worker is gone.

    A supervisor killed outright (SIGKILL, the OOM killer) tells its workers
    nothing; left alone they would serve on unsupervised, holding their ports so
    that no new supervisor can start, until someone kills them without a drain.
    multiprocessing's parent sentinel is a pipe the supervisor holds open: it
    reads as closed the moment the supervisor dies, and the worker then drains
    and flushes as on SIGTERM.
    """
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    if parent is None or sentinel is None:
        return  # not a spawned worker (a test running serve() in-process)

    def supervisor_gone() -> None:
        loop.remove_reader(sentinel)
        log.error("the supervisor (pid %s) is gone: stopping", parent.pid)
        stop()

    loop.add_reader(sentinel, supervisor_gone)
