"""The Redis-protocol store: connections (``connection``), the embedded Valkey (``embedded``),
Lua scripts (``scripts``) and the usage rollup (``usage``)."""
