"""AWS STS as botocore's web identity provider calls it (AssumeRoleWithWebIdentity), for
tests of a Kubernetes service account's credentials: an answering STS, and an address
that refuses connections until an STS comes up there (an outage that ends)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def sts_answer(access_key_id: str, secret_access_key: str, session_token: str) -> bytes:
    """STS's answer handing out these credentials, valid far into the future."""
    return f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials>
<AccessKeyId>{access_key_id}</AccessKeyId>
<SecretAccessKey>{secret_access_key}</SecretAccessKey>
<SessionToken>{session_token}</SessionToken>
<Expiration>2099-01-01T00:00:00Z</Expiration>
</Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/gateway/pod</Arn>
<AssumedRoleId>AROATESTS:pod</AssumedRoleId></AssumedRoleUser>
</AssumeRoleWithWebIdentityResult>
<ResponseMetadata><RequestId>tests</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>""".encode()


def answering(answer: bytes) -> type[BaseHTTPRequestHandler]:
    """An STS handler giving ``answer`` (``sts_answer``) to every call."""

    class Sts(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-type", "text/xml")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Sts


class DownSts:
    """An STS address that refuses connections (a port bound and not listening) until
    ``come_up``, then answers as ``handler`` does, at the same address."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self._server: ThreadingHTTPServer | None = None

    def come_up(self, handler: type[BaseHTTPRequestHandler]) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self.socket
        server.server_address = self.socket.getsockname()
        server.server_activate()  # listen()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self.socket.close()
