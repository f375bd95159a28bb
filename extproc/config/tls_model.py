"""``server.tls``: TLS, and optionally mutual TLS, between Envoy and the gateway.

Both ends are rendered from this one section: the gateway serves its ext_proc
port (and Unix socket) with ``cert_file``/``key_file``, and requires a client
certificate signed by ``client_ca_file`` when that is set (mTLS); the rendered
Envoy bootstrap gets a TLS transport socket on its ext_proc cluster that trusts
``envoy.ca_file``, checks the gateway's certificate names ``server_name`` (or
the address' IP), and presents ``envoy.cert_file`` for mTLS. The paths on the
``envoy`` side are as Envoy sees them (another container may mount them
elsewhere).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from extproc.config.section import Section as _Section


class ClientTlsConfig(_Section):
    """How a client of one of the gateway's gRPC ports speaks TLS to it."""

    ca_file: str = Field(min_length=1)
    # The client's own certificate, required when the gateway asks for one (mTLS).
    cert_file: str | None = None
    key_file: str | None = None
    # SNI and the DNS name the client expects in the gateway's certificate; default:
    # the host it dials (matched as an IP SAN when it is an address).
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        return self


class EnvoyTlsConfig(ClientTlsConfig):
    """How Envoy, the client of the ext_proc port, speaks TLS to the gateway."""


class ServerTlsConfig(_Section):
    """The gateway's side: its certificate, and the CA of the clients it accepts."""

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    # Set: mutual TLS; a client without a certificate signed by this CA is refused.
    client_ca_file: str | None = None
    envoy: EnvoyTlsConfig

    @model_validator(mode="after")
    def _mutual(self) -> ServerTlsConfig:
        if self.client_ca_file is not None and self.envoy.cert_file is None:
            raise ValueError(
                "client_ca_file makes the gateway require a client certificate:"
                " set envoy.cert_file and envoy.key_file"
            )
        return self

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


class ManagementTlsConfig(_Section):
    """``management.tls``: the management API over TLS (and, with ``client_ca_file``,
    mutual TLS), for an address other hosts reach: the admin token and every answer (a
    new key's secret, usage reports) then cross the network encrypted. ``cli`` is how
    ``extproc quota|keys`` and ``usage --api`` connect when they read this config (paths
    as the CLI sees them); their ``--tls-*`` flags say it otherwise."""

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    # Set: a caller without a certificate signed by this CA is refused at the handshake.
    client_ca_file: str | None = None
    cli: ClientTlsConfig | None = None

    @model_validator(mode="after")
    def _mutual(self) -> ManagementTlsConfig:
        if self.client_ca_file is not None and self.cli is not None and self.cli.cert_file is None:
            raise ValueError(
                "client_ca_file makes the management API require a client certificate:"
                " set cli.cert_file and cli.key_file"
            )
        return self

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


class ListenerTlsConfig(_Section):
    """``envoy.listener_tls``: HTTPS on Envoy's public listener, for clients that send
    their key only over TLS (AWS SDKs refuse to send a Bedrock bearer token over plain
    HTTP) where no load balancer in front terminates it. The paths are as Envoy sees
    them; Envoy reads the files when it starts."""

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
