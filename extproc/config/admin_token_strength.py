"""Admin tokens someone who reaches the management API could guess: a load warning.

The management API listens on loopback by default, where only this host's users reach it.
On another address (``0.0.0.0`` in a container, a pod IP) anyone on the network can try
tokens: one shorter than ``MIN_TOKEN_CHARS``, or the documented demo token the shipped
configs fall back on when ``AIGW_ADMIN_TOKEN`` is unset, is then a guess away from every
quota and key. A warning, not a refusal: a lab network may be trusted, and refusing would
stop a gateway over a setting its operator chose. Tokens read from a file are read at run
time (and may rotate), so only inline ones are judged here. A warning names the token's
place and id, never the token.
"""

from __future__ import annotations

import ipaddress

from extproc.config.model import GatewayConfig

MIN_TOKEN_CHARS = 16
# The demo token of config/gateway.yaml, deploy/config/gateway.yaml and docker-compose.yml.
DEMO_TOKENS = frozenset({"dev-admin-token"})


def weak_admin_token_warnings(config: GatewayConfig) -> list[str]:
    management = config.management
    if not management.serving or _loopback(management.address):
        return []
    found = []
    for index, admin in enumerate(management.admin_tokens):
        if admin.token is None:
            continue
        value = admin.token.get_secret_value().strip()
        if value in DEMO_TOKENS:
            why = "is the documented demo token"
        elif len(value) < MIN_TOKEN_CHARS:
            why = f"is shorter than {MIN_TOKEN_CHARS} characters"
        else:
            continue
        found.append(
            f"management.admin_tokens[{index}] ({admin.id}): its token {why}, and"
            f" management.address {management.address} takes connections from other hosts:"
            " whoever reaches it could guess the token; set a random one (openssl rand -hex 32)"
        )
    return found


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, maybe another interface
