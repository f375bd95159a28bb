"""Providers whose credentials could not be obtained when their config loaded.

A Bedrock provider signs with credentials the AWS default chain fetches (STS, instance
metadata); a Vertex provider with an access token Google's token endpoint mints. When that
source is out of reach as a config loads (STS down, GKE's metadata server not up yet) and
no replaced config holds credentials to carry over, the config is applied all the same:
refusing it would stop a starting gateway, and every other provider with it, for an outage
of one. The provider is then *pending*: its requests get a 503 the SDKs retry
(``provider_credentials_unavailable``), and the runtime tries its source again, sooner at
first (``retry_delays``), until credentials come. A source that answers and refuses the
credentials (a deleted key, a role that does not trust the token) still refuses the config:
that is a mistake to fix, not an outage to wait out.
"""

from __future__ import annotations

from collections.abc import Iterator

from extproc.errors import ServiceUnavailableError

CODE = "provider_credentials_unavailable"
# The first retry of a pending source, doubled after each failure up to the last.
FIRST_RETRY_S = 1.0
LAST_RETRY_S = 30.0


def unavailable() -> ServiceUnavailableError:
    """The client's answer while the provider's credentials are pending."""
    return ServiceUnavailableError(
        "the gateway has no credentials for this model's provider yet (its credential"
        " source is out of reach); try again shortly",
        code=CODE,
    )


def retry_delays() -> Iterator[float]:
    """The pauses between tries of a pending source: 1 s, 2 s, 4 s... then 30 s each."""
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(delay * 2, LAST_RETRY_S)
