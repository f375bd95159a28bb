"""Settings every test process takes before any test runs."""

from __future__ import annotations

import compileall
import functools
import os
import ssl
from pathlib import Path
from typing import Any

import httpx._transports.default as httpx_transports
import yaml
from hypothesis import settings

from extproc.store.embedded import FREE_PORTS_ENV
from tests.rewrite_cache import write_rewrite_cache

# `make test` runs several processes (pytest-xdist), each starting stacks whose ports it
# picks before the processes bind them: each process (and the servers it starts, which
# inherit its environment) picks from its own slice of the range, so one never picks a
# port the other chose and has not bound yet.
_FIRST_PORT, _LAST_PORT = 20000, 32000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.removeprefix("gw").isdigit():
    _count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    _index = int(_worker.removeprefix("gw")) % _count
    _span = (_LAST_PORT - _FIRST_PORT) // _count
    _start = _FIRST_PORT + _index * _span
    os.environ[FREE_PORTS_ENV] = f"{_start}-{_start + _span - 1}"

# Every stack a test starts runs `python -m extproc` several times (mock provider, gateway,
# workers, CLI commands). Where PYTHONDONTWRITEBYTECODE is set (CI machines set it), no
# process caches its compiled modules, and each one compiled the whole package again:
# about 0.9 s of CPU per process, a third of the suite's time on two cores. Compiled once
# here, before the test processes start, every later import reads the cache (which
# compileall writes whatever that variable says, and refreshes when a source changes).
if not _worker:
    compileall.compile_dir(Path(__file__).parents[1] / "extproc", quiet=1)
    # Likewise the test modules' rewritten asserts (tests/rewrite_cache.py).
    write_rewrite_cache(Path(__file__).parent)

# No property test may fail for being slow: a shared two-core machine under the whole
# suite's load runs an example past Hypothesis's 200 ms deadline now and then, and how
# fast the code runs is the benchmarks' to measure, not the tests'.
settings.register_profile("aigw", deadline=None)
settings.load_profile("aigw")

# Every httpx client (and so every openai, anthropic and google-genai client, and every
# `httpx.get`) loads the default trust store into a new SSL context: about 50 ms of CPU,
# though the tests speak plain HTTP to loopback nearly always. A test process makes
# thousands of them (a poll of the metrics page every 50 ms made one each time): one
# default context per process, shared, as SSL contexts can be. A test passing its own
# `verify` (a test CA, say) still gets a context of its own.
_create_ssl_context = httpx_transports.create_ssl_context


@functools.cache
def _default_ssl_context(trust_env: bool) -> ssl.SSLContext:
    return _create_ssl_context(True, None, trust_env)


def _shared_default_ssl_context(
    verify: Any = True, cert: Any = None, trust_env: bool = True
) -> ssl.SSLContext:
    if verify is True and cert is None:
        return _default_ssl_context(trust_env)
    return _create_ssl_context(verify, cert, trust_env)


httpx_transports.create_ssl_context = _shared_default_ssl_context


# The tests read YAML (the default config, mostly, to change and write back) thousands of
# times with `yaml.safe_load`, PyYAML's pure-Python parser: about 0.1 s of CPU for the
# default config each time. The gateway's own loader parses with libyaml (CSafeLoader),
# which builds the same objects several times faster: the tests read with it too.
if getattr(yaml, "__with_libyaml__", False):

    def _libyaml_safe_load(stream: Any) -> Any:
        return yaml.load(stream, Loader=yaml.CSafeLoader)

    yaml.safe_load = _libyaml_safe_load
