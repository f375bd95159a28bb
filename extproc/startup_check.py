"""What a valid config still needs to serve: the files ``serve`` reads at start.

Validation checks the file itself; this reads what it names (key files, JWKS
files, admin token files, a Vertex provider's service account key, a Bedrock
provider's AWS credential files, the gateway's own certificate files), without
the network. ``extproc check-config``
runs it, and so does the workers' supervisor before it hands a reloaded config
to the workers it restarts: a config the workers would refuse must not become
theirs. The supervisor leaves out the listener's files: a reload never changes
the listener, so a restarted worker reads the ones its siblings started with.
"""

from __future__ import annotations

from extproc.config.model import GatewayConfig
from extproc.management.service import AdminTokens
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.transport_security import CertificateFiles


def check_startup_files(config: GatewayConfig, *, listener_files: bool = True) -> None:
    """Raise ``ConfigError`` naming what ``serve`` could not read at start."""
    if listener_files and config.server.tls is not None:
        CertificateFiles(config.server.tls)
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    if runtime.jwt is not None:
        runtime.jwt.load_static()
    for source in runtime.token_sources.values():
        source.check_key_file()
    for signer in runtime.signers.values():
        signer.check_key_files()
    if config.management.serving:
        AdminTokens(config.management)
        if listener_files and config.management.tls is not None:
            # Read at start only (management.tls applies on restart), as the listener's.
            CertificateFiles(config.management.tls, "management.tls")
