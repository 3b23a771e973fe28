"""A test backend that speaks only HTTP/2 without TLS (h2c, prior knowledge), and a client
for it: just enough of RFC 9113 framing, standard library only.

The server answers every request with ``:status 200`` and a JSON body saying who it is and
that it was HTTP/2. Anything that does not open with the HTTP/2 connection preface (an
HTTP/1.1 request, say) is hung up on, so a proxy that spoke HTTP/1.1 to it gets nothing.
Request headers are not decoded (HPACK with Huffman coding is more than a test needs): the
client's request reaching this server at all is the point.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
STATUS_200 = 0x88  # HPACK: static table entry 8, ":status: 200"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    head = read_exact(sock, 9)
    length = int.from_bytes(head[:3], "big")
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return head[3], head[4], stream, read_exact(sock, length)


def _literal(name_index: int, value: str) -> bytes:
    """HPACK literal header field without indexing, name from the static table (index
    >= 15), value not Huffman-coded (short values only)."""
    raw = value.encode()
    return bytes([0x0F, name_index - 15, len(raw)]) + raw


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            if read_exact(sock, len(PREFACE)) != PREFACE:
                return
            sock.sendall(frame(SETTINGS, 0, 0))
            answered = 0
            while True:
                kind, flags, stream, payload = read_frame(sock)
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    sock.sendall(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    return
                elif kind in (HEADERS, DATA) and flags & END_STREAM:
                    answered += 1
                    body = json.dumps(
                        {
                            "service": os.environ.get("SERVICE_NAME", ""),
                            "version": os.environ.get("SERVICE_VERSION", ""),
                            "name": os.environ.get("POD_NAME", ""),
                            "protocol": "HTTP/2",
                            "stream": stream,
                            "requests_on_connection": answered,
                        }
                    ).encode()
                    block = bytes([STATUS_200]) + _literal(31, "application/json")  # content-type
                    sock.sendall(
                        frame(HEADERS, END_HEADERS, stream, block)
                        + frame(DATA, END_STREAM, stream, body)
                    )
        except (EOFError, OSError):
            return


def request(port: int, authority: str, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    """One GET over h2c (prior knowledge) to 127.0.0.1:``port``: (status, body). The status
    is 200 when the response's header block starts with HPACK's indexed ``:status: 200``
    (as Envoy encodes it), else 0."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        # :method GET (2), :scheme http (6), :path and :authority as literals.
        block = (
            bytes([0x82, 0x86])
            + _literal_new(":path", path)
            + _literal_new(":authority", authority)
        )
        sock.sendall(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        status, body = 0, b""
        while True:
            kind, flags, stream, payload = read_frame(sock)
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == HEADERS and stream == 1:
                status = 200 if payload[:1] == bytes([STATUS_200]) else 0
                if flags & END_STREAM:
                    return status, body
            elif kind == DATA and stream == 1:
                body += payload
                if flags & END_STREAM:
                    return status, body
            elif kind == GOAWAY:
                return status, body


def _literal_new(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name; no Huffman coding."""
    n, v = name.encode(), value.encode()
    return bytes([0x00, len(n)]) + n + bytes([len(v)]) + v


if __name__ == "__main__":
    from _serve import serve  # as a script only: the tests import this module

    serve(Handler, http=False)
