"""Small value formats shared by every renderer of Envoy and Gateway API config."""

from __future__ import annotations

import ipaddress


def is_ip(host: str) -> bool:
    """An IP literal (a STATIC cluster) rather than a name to resolve (STRICT_DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def duration(seconds: float) -> str:
    """Envoy's Duration string: ``300s``, ``0.25s``."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"
