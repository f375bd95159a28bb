"""Keep the client's credentials away from providers, and put the provider's key in.

The client's headers are removed in the request-headers phase, before anything
else can forward them; the provider key is set with the routing decision in
the body phase, once the model (and so the provider) is known.
"""

from __future__ import annotations

from extproc import headers
from extproc.context import PhaseOutput, RequestContext

# Cookies too: set for the gateway's own site (an SSO session, say), they are
# credentials no provider has any use for. And the client's choice of the provider
# account the gateway's key bills.
_REMOVED = (*headers.CLIENT_CREDENTIAL_HEADERS, "cookie", *headers.PROVIDER_ACCOUNT_HEADERS)


class CredentialStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        if ctx.route is None:
            return
        # Every route's key header, not only this route's: one sent here is still a key.
        names = (*_REMOVED, *ctx.runtime.key_headers)
        out.remove_headers.extend(name for name in names if name in ctx.request_headers)
        # AWS's signing headers (x-amz-security-token, x-amz-date, ...) are the gateway's
        # to set for Bedrock: a client's would be sent unsigned beside the signature, and
        # AWS would refuse the request as if the gateway's own credentials were wrong.
        out.remove_headers.extend(name for name in ctx.request_headers if name.startswith("x-amz-"))
