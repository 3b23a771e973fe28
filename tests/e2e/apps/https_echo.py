"""An HTTPS server standing for a service outside the mesh: on 127.0.0.1:$PORT, with the
certificate and key in $TLS_CERT and $TLS_KEY, it answers every GET with
``NAME sni=SERVER_NAME`` (``$NAME``; the SNI of the client's hello, ``-`` when none), so a
test sees which server answered and what name the client asked for. Each hello's SNI is also
printed (``hello sni=SERVER_NAME``), answered or not. With $TLS_CLIENT_CA it accepts only
clients whose certificate that CA signed, and the answer adds `` client=CN`` (the common name
the client presented), so a test sees that the server saw it."""

from __future__ import annotations

import os
import ssl
from typing import Any

from _serve import QuietHandler, serve

NAME = os.environ["NAME"]
CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
CONTEXT.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
CLIENT_CA = os.environ.get("TLS_CLIENT_CA")
if CLIENT_CA:
    CONTEXT.load_verify_locations(CLIENT_CA)
    CONTEXT.verify_mode = ssl.CERT_REQUIRED


def _remember_sni(sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
    sock.sni = server_name or "-"
    # Every hello, answered or not (the client may refuse the certificate): on stdout.
    print(f"hello sni={sock.sni}", flush=True)


CONTEXT.sni_callback = _remember_sni


class Handler(QuietHandler):
    def setup(self) -> None:
        # The handshake in the connection's own thread: a slow client delays no other.
        self.request = CONTEXT.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_GET(self) -> None:
        sni = getattr(self.request, "sni", "-")
        answer = f"{NAME} sni={sni}"
        if CLIENT_CA:
            peer = self.request.getpeercert() or {}
            names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
            answer += f" client={names[0] if names else '-'}"
        body = f"{answer}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    serve(Handler)
