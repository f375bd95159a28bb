"""Load harness: Envoy direct vs a minimal ext_proc processor vs the gateway, in one run.

``python -m benchmarks.run`` (``make bench``) starts every process itself on
127.0.0.1, drives each scenario with ``wrk`` and prints one table; see
``benchmarks/README.md`` for how to read it.
"""
