"""The floor of gunicorn + gevent for a relayed stream: a bare WSGI app (no Flask, no urllib3)
that sends the request on a raw socket and passes each upstream chunk's payload on as it
arrives, run by bench/peers.py under gunicorn's gevent worker like the service.

What is left per chunk is what the stack itself costs: the event loop's wake-up on the
upstream socket, one ``recv``, the chunk-size line found with ``bytes`` searches, and
gunicorn's chunked write to the client. No keep-alive, no validation, no errors, no logs, and
no bound on the upstream's silences (its stream's socket has no timeout: under gevent a socket
timeout builds a ``gevent.Timeout`` for every wait, which is not the stack's floor); fit only
for bench/upstream.py's answers (chunked streams, or a ``Content-Length`` body).
"""

import os
import socket
from urllib.parse import urlsplit

UPSTREAM = urlsplit(os.environ["NAIVE_UPSTREAM"] + "/chat/completions")


def app(environ, start_response):  # noqa: ANN001, ANN201 - WSGI
    body = environ["wsgi.input"].read()
    sock = socket.create_connection((UPSTREAM.hostname, UPSTREAM.port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (UPSTREAM.path.encode(), UPSTREAM.netloc.encode(), len(body), body)
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, data = data.partition(b"\r\n\r\n")
    if b"chunked" not in head.lower():  # a whole answer
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(data) < length:
            data += sock.recv(65536)
        sock.close()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    sock.settimeout(None)
    return _chunks(sock, data)


def _chunks(sock, data):  # noqa: ANN001, ANN202
    try:
        while True:
            end = data.find(b"\r\n")
            if end >= 0:
                size = int(data[:end], 16)
                if size == 0:
                    return
                if len(data) >= end + size + 4:
                    yield data[end + 2 : end + 2 + size]
                    data = data[end + size + 4 :]
                    continue
            received = sock.recv(65536)
            if not received:
                return
            data += received
    finally:
        sock.close()
