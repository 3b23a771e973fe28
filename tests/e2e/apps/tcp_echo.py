"""A TCP echo server, like Istio's tcp-echo sample: each line it receives comes back
prefixed with its version (``SERVICE_VERSION``, as ``tsunagi run --version`` sets it) and
a space. Listens on 127.0.0.1:$PORT until SIGTERM. With ``TCP_ECHO_CERT`` and
``TCP_ECHO_KEY`` (PEM files) it speaks TLS, for routing by SNI."""

from __future__ import annotations

import os
import socketserver
import ssl

from _serve import serve


def _tls() -> ssl.SSLContext | None:
    cert, key = os.environ.get("TCP_ECHO_CERT"), os.environ.get("TCP_ECHO_KEY")
    if not cert or not key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


TLS = _tls()


class Handler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        if TLS is not None:  # the handshake in the connection's own thread
            self.request = TLS.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        prefix = os.environ.get("SERVICE_VERSION", "v1").encode() + b" "
        for line in self.rfile:
            self.wfile.write(prefix + line)
            self.wfile.flush()


if __name__ == "__main__":
    serve(Handler, http=False)
