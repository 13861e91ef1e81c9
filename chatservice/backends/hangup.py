"""Noticing a client that hangs up while its request still waits for the upstream.

A gevent worker only learns that a client went away when it writes to it, so a request
waiting for a slow upstream's first byte would hold the upstream call open until the read
timeout. :func:`abort_on_hang_up` watches the client's socket (gunicorn's
``gunicorn.socket``) with a read watcher on the gevent loop while the block runs: end of file
or a reset raises :class:`~chatservice.errors.ClientGone` in the waiting greenlet, the way
``gevent.Timeout`` interrupts a wait, and the upstream connection is closed by the code
unwinding. Outside a gevent worker's request (tests' client, threads) it does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import Any

from flask import has_request_context, request

from chatservice.errors import ClientGone

log = logging.getLogger(__name__)

_READ = 1  # libev/libuv read event


def sockets_cooperative() -> bool:
    """True in a process whose sockets gevent has monkey-patched (a gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def _client_socket() -> Any:
    if not has_request_context():
        return None
    return request.environ.get("gunicorn.socket")


@contextlib.contextmanager
def abort_on_hang_up() -> Iterator[None]:
    """Run the block; raise ``ClientGone`` in it when the client's socket reaches its end.

    A client that sends more bytes (a pipelined request) is not gone: watching stops.
    """
    sock = _client_socket()
    if sock is None or not sockets_cooperative():
        yield
        return
    import gevent

    waiting = gevent.getcurrent()
    watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)

    def readable() -> None:
        try:
            peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            peeked = b""
        watcher.stop()
        if not peeked:
            log.info("client hung up before the upstream answered; abandoning the call")
            waiting.throw(ClientGone())

    watcher.start(readable)
    try:
        yield
    finally:
        watcher.stop()
        watcher.close()
