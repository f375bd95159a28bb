"""TLS between Envoy and the gateway: the gateway's credentials, Envoy's transport socket.

The server side reads its certificate files at start, and again whenever one of
them changes: gRPC asks for the certificate configuration before every new
handshake, so a rotated certificate (a renewed Kubernetes Secret) is served to
the next connection without a restart. A file that cannot be read at that
moment keeps the certificate in use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from extproc.config.loader import ConfigError
from extproc.config.tls_model import ListenerTlsConfig, ManagementTlsConfig, ServerTlsConfig
from extproc.envoy_values import is_ip

log = logging.getLogger(__name__)
_TYPE = "type.googleapis.com/"


def _read(path: str, field: str) -> bytes:
    """A certificate file's bytes; ``field`` names it in the error (``server.tls.key_file``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("config", [f"{field}: cannot read: {exc.strerror}"]) from None
    if not data.strip():
        raise ConfigError("config", [f"{field}: the file is empty"])
    return data


def _stamp(paths: list[str]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        found = Path(path).stat()
        stamps.append((found.st_mtime_ns, found.st_size, found.st_ino))
    return tuple(stamps)


class CertificateFiles:
    """The gateway's certificate, key and client CA, reloaded when the files change.
    ``section`` is where the config sets them (``server.tls``, ``management.tls``)."""

    def __init__(
        self, tls: ServerTlsConfig | ManagementTlsConfig, section: str = "server.tls"
    ) -> None:
        self._tls = tls
        self._section = section
        self._paths = [tls.cert_file, tls.key_file]
        if tls.client_ca_file:
            self._paths.append(tls.client_ca_file)
        try:
            self._stamp = _stamp(self._paths)
        except OSError:
            self._stamp = ()  # the read below names the file and why it cannot be read
        self.initial = self._configuration()

    def _configuration(self) -> Any:
        tls, section = self._tls, self._section
        pair = (
            _read(tls.key_file, f"{section}.key_file"),
            _read(tls.cert_file, f"{section}.cert_file"),
        )
        client_ca = (
            _read(tls.client_ca_file, f"{section}.client_ca_file") if tls.client_ca_file else None
        )
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=client_ca)

    def fetch(self) -> Any:
        """gRPC's hook before each handshake: a new configuration, or None for no change."""
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, ConfigError) as exc:
            log.warning("TLS certificate files not reloaded, keeping the current ones: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self._tls.cert_file)
        return configuration


def server_credentials(
    tls: ServerTlsConfig | ManagementTlsConfig, section: str = "server.tls"
) -> Any:
    """Credentials for the ext_proc port (or the management API's, ``section``
    ``management.tls``): TLS, with a client certificate required for mTLS."""
    files = CertificateFiles(tls, section)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=tls.mutual
    )


def envoy_transport_socket(tls: ServerTlsConfig, host: str) -> dict[str, Any]:
    """The TLS transport socket of Envoy's ext_proc cluster, dialling ``host``."""
    envoy = tls.envoy
    name = envoy.server_name or host
    name_is_ip = is_ip(name)
    context: dict[str, Any] = {
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            # gRPC needs HTTP/2, negotiated in the handshake.
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"filename": envoy.ca_file},
                "match_typed_subject_alt_names": [
                    {"san_type": "IP_ADDRESS" if name_is_ip else "DNS", "matcher": {"exact": name}}
                ],
            },
        },
    }
    if not name_is_ip:
        context["sni"] = name
    if envoy.cert_file and envoy.key_file:
        context["common_tls_context"]["tls_certificates"] = [
            {
                "certificate_chain": {"filename": envoy.cert_file},
                "private_key": {"filename": envoy.key_file},
            }
        ]
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def listener_transport_socket(tls: ListenerTlsConfig) -> dict[str, Any]:
    """The TLS transport socket of Envoy's public listener (``envoy.listener_tls``)."""
    context = {
        "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            # HTTP/2 where the client offers it (the codec is AUTO), else HTTP/1.1.
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": tls.cert_file},
                    "private_key": {"filename": tls.key_file},
                }
            ],
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
