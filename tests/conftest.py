"""Settings every test process takes before any test runs."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

from hypothesis import settings

from extproc.store.embedded import FREE_PORTS_ENV

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

# No property test may fail for being slow: a shared two-core machine under the whole
# suite's load runs an example past Hypothesis's 200 ms deadline now and then, and how
# fast the code runs is the benchmarks' to measure, not the tests'.
settings.register_profile("aigw", deadline=None)
settings.load_profile("aigw")
