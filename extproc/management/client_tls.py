"""How the admin CLI speaks TLS to a management API served with ``management.tls``.

The ``--tls-*`` flags say it; without them, the config the command reads does
(``management.tls.cli``, paths as the CLI sees them). A config whose management API
serves TLS but says nothing of the CLI's side is a usage error naming both ways, never
a plaintext call the server would drop at the handshake (the CLI said only "cannot
reach the management API").
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from pydantic import ValidationError

from extproc.config.model import GatewayConfig
from extproc.config.tls_model import ClientTlsConfig
from extproc.management.client import ManagementError


@dataclass(frozen=True, slots=True)
class TlsFlags:
    """The command line's ``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


def client_tls(flags: TlsFlags, config: GatewayConfig | None) -> ClientTlsConfig | None:
    """The TLS the CLI speaks to the management API, None for plaintext."""
    given = {
        "--tls-ca": flags.ca,
        "--tls-cert": flags.cert,
        "--tls-key": flags.key,
        "--tls-server-name": flags.server_name,
    }
    for flag, value in given.items():
        if value is not None and not value.strip():
            raise _usage(f"{flag} is empty")
    if flags.ca is not None:
        try:
            return ClientTlsConfig(
                ca_file=flags.ca,
                cert_file=flags.cert,
                key_file=flags.key,
                server_name=flags.server_name,
            )
        except ValidationError:
            raise _usage("--tls-cert and --tls-key go together (mutual TLS)") from None
    if flags.cert is not None or flags.key is not None or flags.server_name is not None:
        raise _usage("--tls-cert, --tls-key and --tls-server-name need --tls-ca (TLS)")
    served = config.management.tls if config is not None else None
    if served is None:
        return None
    if served.cli is None:
        raise _usage(
            "the management API serves TLS (management.tls): pass --tls-ca (the CA that"
            " signed its certificate), or set management.tls.cli.ca_file in the config"
        )
    return served.cli


def _usage(message: str) -> ManagementError:
    return ManagementError(grpc.StatusCode.INVALID_ARGUMENT, message)
