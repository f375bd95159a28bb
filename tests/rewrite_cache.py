"""Every test module's assertion-rewritten code, compiled once before the test processes start.

pytest rewrites each test module's ``assert`` statements on import and caches the result
beside the module (``__pycache__/<name>.<tag>-pytest-<version>.pyc``), but only where
Python may write bytecode: with PYTHONDONTWRITEBYTECODE set (CI machines set it) every
test process rewrote every module on every run, about 40 s of CPU each, and `make test`
starts three. It still reads a cache it finds: this module writes it, once, on every core,
in the format pytest reads (PEP 552's checked-hash pyc). Where pytest's format or tag
changes, pytest finds no cache it can read and rewrites as before: only time is lost.
"""

from __future__ import annotations

import ast
import importlib.util
import marshal
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from _pytest.assertion.rewrite import rewrite_asserts

# pytest's tag for its rewritten pycs (PYC_TAIL in _pytest.assertion.rewrite).
_TAG = f"{sys.implementation.cache_tag}-pytest-{pytest.__version__}"
# A hash-based pyc whose hash is always checked: pytest reads no other kind.
_CHECKED_HASH_FLAGS = b"\x03\x00\x00\x00"


def _cached_pyc(module: Path) -> Path:
    return module.parent / "__pycache__" / f"{module.stem}.{_TAG}.pyc"


def _is_current(pyc: Path, source_hash: bytes) -> bool:
    try:
        with pyc.open("rb") as file:
            header = file.read(16)
    except OSError:
        return False
    return header == importlib.util.MAGIC_NUMBER + _CHECKED_HASH_FLAGS + source_hash[:8]


def _rewrite(module: Path) -> None:
    source = module.read_bytes()
    source_hash = importlib.util.source_hash(source)
    pyc = _cached_pyc(module)
    if _is_current(pyc, source_hash):
        return
    tree = ast.parse(source, filename=str(module))
    rewrite_asserts(tree, source, str(module), None)
    code = compile(tree, str(module), "exec", dont_inherit=True)
    pyc.parent.mkdir(exist_ok=True)
    # Written aside, then renamed: a test process reading it finds a whole file or none.
    partial = pyc.with_name(f"{pyc.name}.{os.getpid()}")
    partial.write_bytes(
        importlib.util.MAGIC_NUMBER + _CHECKED_HASH_FLAGS + source_hash[:8] + marshal.dumps(code)
    )
    partial.replace(pyc)


def _rewrite_all(modules: list[Path]) -> None:
    for module in modules:
        _rewrite(module)


def write_rewrite_cache(tests: Path) -> None:
    """Write the cache of every ``test_*.py`` and ``conftest.py`` under ``tests``."""
    modules = sorted([*tests.rglob("test_*.py"), *tests.rglob("conftest.py")])
    cores = os.cpu_count() or 1
    shares = [modules[index::cores] for index in range(cores)]
    with ProcessPoolExecutor(max_workers=cores) as pool:
        for done in [pool.submit(_rewrite_all, share) for share in shares]:
            done.result()
