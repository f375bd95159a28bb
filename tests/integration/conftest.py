"""One real stack for the integration tests: mock provider, gateway, embedded Valkey, Envoy.

Started once per session on free ports with ``extproc.devstack`` (what ``make run``
uses); helpers here read what users read: the gateway's JSON log lines, its
metrics page, the mock provider's record of what reached it, Envoy's stats.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from prometheus_client.parser import text_string_to_metric_families

from extproc.devstack import DEFAULT_CONFIG, LocalStack, Ports
from tests.integration.forked import ForkedStack, run_extproc, run_extproc_text
from tests.integration.otlp_receiver import OtlpReceiver, otlp_receiver
from tests.integration.valkey_cluster import ValkeyCluster

# A Prometheus page's samples: value by name and sorted labels.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Every stack started in this session; their logs are checked against the schema at the end.
STARTED: list[LocalStack] = []


# The stacks of this test process running now (the earlier_requests_counted fixture).
RUNNING: list[LocalStack] = []
# How long a test's start waits for the earlier tests' requests to be counted.
EARLIER_REQUESTS_WAIT_S = 3.0


# A loopback port nothing ever listens on (a privileged port no test or server binds):
# a connection there is refused. A port free_port() picked and left unbound is not that:
# a stack or mock started later may be given it, and answer.
REFUSED_PORT = 1


@contextmanager
def running_stack(
    workdir: Path,
    config_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    gateways: int = 1,
    workers: int = 1,
    stack_type: type[LocalStack] = ForkedStack,
) -> Iterator[LocalStack]:
    """A whole stack on free ports, stopped on exit; ``stack_type``: a LocalStack that
    starts its processes its own way (a gateway at DEBUG, say). By default its gateways
    and mock are forked from a process that imported the package once
    (tests/integration/forked.py)."""
    running = stack_type(
        workdir=workdir,
        ports=Ports.free(),
        extra_env=extra_env or {},
        gateways=gateways,
        workers=workers,
    )
    if config_path is not None:
        running.config_path = config_path
    STARTED.append(running)
    try:
        running.start()
        RUNNING.append(running)
        yield running
    finally:
        if running in RUNNING:
            RUNNING.remove(running)
        running.stop()


@pytest.fixture(autouse=True)
def earlier_requests_counted() -> None:
    """Each test starts with the requests of the tests before it counted by every gateway
    still running: a gateway counts a request when Envoy closes its stream, which can be
    just after the client read the answer, and a test that reads its "before" counts
    then took the previous test's last request in (it failed on the delta)."""
    for running in RUNNING:
        for url in running.metrics_urls:
            _wait_counted(url)


def _wait_counted(url: str) -> None:
    """Wait, briefly, for ``url`` to show no request in progress; a gateway a test
    stopped, or one still serving a long request on purpose, is left as it is."""
    deadline = time.monotonic() + EARLIER_REQUESTS_WAIT_S
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=1.0).text
        except httpx.HTTPError:
            return
        found = re.search(r"^aigw_requests_in_progress (\S+)$", text, re.MULTILINE)
        if found is None or float(found.group(1)) == 0:
            return
        time.sleep(0.02)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """A three-primary Valkey Cluster for one test module (``store.url:
    redis+cluster://``); a module that needs other nodes or options defines its own."""
    valkeys = ValkeyCluster(tmp_path_factory.mktemp("valkey-cluster"))
    valkeys.start()
    try:
        yield valkeys
    finally:
        valkeys.stop()


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    """An OTLP/gRPC trace receiver for one test module's stacks to export their spans to
    (``otlp_endpoint: collector.endpoint``)."""
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30.0) as client:
        yield client


class GatewayLog:
    """The gateway's stdout, read as JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        text = self.path.read_bytes() if self.path.exists() else b""
        # Only whole lines: the gateway may be halfway through writing the last one.
        text = text[: text.rfind(b"\n") + 1]
        return [orjson.loads(line) for line in text.splitlines() if line.startswith(b"{")]

    def for_request(self, request_id: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """All lines of one request, once at least one is there."""
        return wait_for(
            lambda: [line for line in self.lines() if line.get("request_id") == request_id],
            timeout_s,
        )


def config_with_keys(workdir: Path, keys: dict[str, str], tail: str = "") -> Path:
    """The default config with API keys ``{id: secret}`` added (and ``tail`` appended: a
    ``quotas:`` section, say), written to ``workdir``."""
    text = DEFAULT_CONFIG.read_text()
    entries = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in keys.items())
    config = workdir / "gateway.yaml"
    config.write_text(text.replace("  api_keys:\n", "  api_keys:\n" + entries, 1) + tail)
    return config


def config_with_admin_token(workdir: Path, token: str, tail: str = "") -> Path:
    """The default config with ``token`` as the management API's admin token (in place of
    ``${AIGW_ADMIN_TOKEN:-dev-admin-token}``; ``tail`` appended: a ``quotas:`` section,
    say), written to ``workdir``."""
    text = DEFAULT_CONFIG.read_text().replace("${AIGW_ADMIN_TOKEN:-dev-admin-token}", token)
    config = workdir / "gateway.yaml"
    config.write_text(text + tail)
    return config


def run_cli(stack: LocalStack, *args: str, admin_token: str) -> subprocess.CompletedProcess[str]:
    """`extproc <args> --config <the stack's config>` as an operator runs it, with
    ``admin_token`` in AIGW_ADMIN_TOKEN; the caller checks the exit code."""
    argv = [sys.executable, "-m", "extproc", *args, "--config", str(stack.config_path)]
    return run_extproc_text(argv, {**stack.env, "AIGW_ADMIN_TOKEN": admin_token})


def default_config() -> dict[str, Any]:
    """The default config (what ``make run`` serves), parsed, for a test to change."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    return raw


def guarded_config(policy: dict[str, Any], *routes: str) -> dict[str, Any]:
    """The default config with one guardrail ``policy``, applied to the default routes
    named ``routes``."""
    raw = default_config()
    raw["guardrails"] = {"policies": [policy]}
    unknown = set(routes) - {route["name"] for route in raw["routes"]}
    # A misspelt name would leave its route unguarded and the test checking nothing.
    assert not unknown, f"no such route in the default config: {sorted(unknown)}"
    for route in raw["routes"]:
        if route["name"] in routes:
            route["guardrails"] = policy["name"]
    return raw


def write_config(workdir: Path, raw: dict[str, Any]) -> Path:
    """``raw`` written as ``workdir``'s gateway.yaml, in the order the test built it."""
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


class JsonStandIn(BaseHTTPRequestHandler):
    """The handler of a stand-in service that reads and answers JSON (a guardrail webhook,
    say): a subclass writes only its ``do_POST``."""

    def json_body(self) -> Any:
        return orjson.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))

    def answer_json(self, payload: Any, status: int = 200) -> None:
        body = orjson.dumps(payload)
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up waiting (a guard's timeout): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line on stderr for every call would bury the test's own output


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A stand-in for a service the gateway calls (a guardrail webhook, a moderation
    endpoint): ``handler`` on a free port of 127.0.0.1, in a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_stack_calling(
    handler: type[BaseHTTPRequestHandler],
    workdir: Path,
    config_for: Callable[[int], dict[str, Any]],
) -> Iterator[LocalStack]:
    """A stack whose config, ``config_for(port)``, calls the stand-in ``handler`` serves
    on that port; both stopped on exit."""
    with (
        serving(handler) as port,
        running_stack(workdir, write_config(workdir, config_for(port))) as running,
    ):
        yield running


def wait_for(probe: Callable[[], Any], timeout_s: float = 10.0, every_s: float = 0.05) -> Any:
    """Poll until ``probe`` returns something truthy (for work done after the response).
    A probe that presents a token the management API may refuse polls slower (``every_s``
    0.5): each refusal counts against the address's guesses (30 a minute)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(every_s)


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus page, keyed by name and sorted labels."""
    text = httpx.get(url, timeout=5.0).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def counted_page(url: str, timeout_s: float = 10.0) -> Samples:
    """The page at ``url`` once no request is in progress (``aigw_requests_in_progress``
    0): every request whose answer a client has read is counted on it. A gateway counts a
    request when Envoy closes its stream, which can be just after the client read the
    answer.

    The page read after one that showed 0: a page is not read at one instant (with
    workers, file by file), and the one that saw the gauge at 0 may have read a counter
    before the last request's count reached it; every request started before that page
    is counted whole before the next one is read."""
    page: Samples = {}
    idle = False

    def counted() -> bool:
        nonlocal page, idle
        page = scrape(url)
        was_idle, idle = idle, metric(page, "aigw_requests_in_progress") == 0
        return was_idle and idle

    assert wait_for(counted, timeout_s), "requests still in progress on the gateway"
    return page


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value for (found, pairs), value in samples.items() if found == name and wanted <= set(pairs)
    )


def mock_answers(url: str) -> bool:
    """Whether the mock provider at ``url`` (``http://host:port``) answers yet."""
    try:
        return httpx.get(f"{url}/_mock/health").status_code == 200
    except httpx.HTTPError:
        return False


def mock_requests(stack: LocalStack) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = httpx.get(f"{stack.mock_url}/_mock/requests").json()
    return result


def envoy_stat(stack: LocalStack, name: str) -> int:
    text = httpx.get(f"{stack.envoy_admin_url}/stats", params={"filter": name}).text
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key.endswith(name) and value.strip().isdigit():
            total += int(value)
    return total


def worker_streams(stack: LocalStack) -> dict[str, int]:
    """How many ext_proc streams Envoy opened to each gateway worker so far, by address:
    a test that needs every worker to serve its requests compares two readings."""
    text = httpx.get(f"{stack.envoy_admin_url}/clusters").text
    found = re.findall(r"^extproc::([\d.]+:\d+)::rq_total::(\d+)$", text, re.MULTILINE)
    return {endpoint: int(count) for endpoint, count in found}


def envoy_access_log(stack: LocalStack) -> str:
    """Envoy's access log with every line Envoy has formatted so far. Envoy buffers the
    file and writes it out every 10 s (``--file-flush-interval-msec``): a test waiting
    for a line waited that out. A reopen (the admin's /reopen_logs; SIGUSR1 for
    logrotate) writes the buffer out at once; the buffered-bytes gauge says when."""
    httpx.post(f"{stack.envoy_admin_url}/reopen_logs", timeout=5.0).raise_for_status()
    wait_for(lambda: envoy_stat(stack, "filesystem.write_total_buffered") == 0, 5.0)
    return stack.envoy_access_log.read_text(errors="replace")


def envoy_access_line(stack: LocalStack, request_id: str) -> dict[str, Any] | None:
    """Envoy's access log line of one request; None until Envoy has logged it."""
    for text in envoy_access_log(stack).splitlines():
        if text.startswith("{") and request_id in text:
            found: dict[str, Any] = orjson.loads(text)
            return found
    return None


LOG_SCHEMA = orjson.loads(Path("docs/log-schema.json").read_bytes())


@pytest.fixture(scope="session", autouse=True)
def every_log_line_matches_the_schema() -> Iterator[None]:
    """After the whole session, every line any gateway wrote must validate against schema v1."""
    yield
    validator = Draft202012Validator(LOG_SCHEMA, format_checker=FormatChecker())
    lines = [line for started in STARTED for line in GatewayLog(started.gateway_log).lines()]
    assert lines or not STARTED, "the gateways wrote no log line"
    for line in lines:
        errors = [error.message for error in validator.iter_errors(line)]
        assert not errors, f"log line breaks docs/log-schema.json: {errors} in {line}"


def usage_rows(stack: LocalStack, by: str) -> dict[str, dict[str, Any]]:
    """`extproc usage report --by <by>` as the operator runs it, keyed by that dimension."""
    dimension = {"api_key": "api_key_id", "user": "user_id", "group": "group_id"}.get(by, by)
    result = run_extproc(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", by, "--format", "json",
         "--config", str(stack.config_path)],
        stack.env,
    )  # fmt: skip
    result.check_returncode()
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)["rows"]
    return {row[dimension]: row for row in rows}


def readable_places(stack: LocalStack, collector: OtlpReceiver, shown: list[str]) -> dict[str, str]:
    """Every place an operator or a client can read, by name; ``shown``: what clients and
    the CLI were shown (error bodies, management output)."""
    workdir = stack.workdir

    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    admin = stack.envoy_admin_url
    return {
        "gateway request log": read(stack.gateway_log),
        "request log file": read(workdir / "requests.log"),
        "traces": "\n".join(repr(span) for span in collector.spans),
        "gateway stderr": read(workdir / "gateway.err"),
        "envoy access log": envoy_access_log(stack),
        "envoy stderr": read(workdir / "envoy.err"),
        "metrics page": httpx.get(stack.metrics_url).text,
        "envoy stats": httpx.get(f"{admin}/stats").text,
        "envoy clusters": httpx.get(f"{admin}/clusters").text,
        "envoy config dump": httpx.get(f"{admin}/config_dump").text,
        "rendered bootstrap": read(workdir / "envoy.yaml"),
        "error bodies and management output": "\n".join(shown),
    }
