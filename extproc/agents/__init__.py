"""Agent traffic through the gateway: MCP (tools) and A2A (agents calling agents).

The same pipeline as LLM calls: a route with ``api: mcp`` or ``api: a2a`` leads
to one upstream of ``agents.servers``; the caller is authenticated as on any
route; JSON-RPC bodies are read once to apply per-tool and per-agent access
rules and request limits (the quota store's counters); answers, JSON or SSE,
are read as they stream to filter tool lists, rewrite agent cards and record
each call's outcome in the log line and the metrics.

Modules: ``jsonrpc`` (wire shapes, error objects), ``sse`` (event framing),
``access`` (who may call what), ``limits`` (rules to quota counters),
``answers`` (readers of upstream answers), ``call`` (the per-request record),
``directory`` (what a loaded config means), ``stages`` (the pipeline hooks), which
hand each phase to ``routing`` (where a request goes), ``caller`` (who the upstream
is told is calling), ``admission`` and ``limit_check`` (the body's checks and
counts), ``refusals`` (the gateway's JSON-RPC errors), ``answer_reading`` and
``upstream_status`` (the answer as it comes) and ``final_outcome`` (the log line's
status and the metrics), ``metrics`` and ``envoy`` (clusters and routes in the
bootstrap).
"""
