"""gunicorn's gevent worker, answering the requests gunicorn itself refuses in JSON.

gunicorn rejects a malformed request line (400), a request line over its limit (414) or too
many or too large headers (431) before any WSGI app runs, with an HTML page. This worker
sends the service's own JSON envelope instead (the Docker ChatGPT API platform's, the
default of every path),
with the stable key and the English message: the request never got far enough to choose a
language. Everything else -- status, logging, closing the connection -- stays gunicorn's.

It also tunes two things for the tail latency of many long streams in one process:

- Fairer accepts. gevent's server accepts up to 100 waiting connections in one turn of its
  event loop and starts them all before it reads any socket again; under a burst of new
  streams the chunks of the open ones then wait for every new request's handling (tens of
  ms). This worker accepts at most 8 per turn, a compromise: a relayed chunk waits behind 8
  openings at most. One per turn (what gunicorn does with several workers) kept chunks
  waiting least but starved the openings: with 2,000 streams relaying, the last ones opened
  6-8 s late.
- Garbage collection. Python's full collections scan every tracked object, and each open
  stream holds a hundred or so: with 2,000 streams open one took 50-180 ms, and a burst of
  new streams (a growing heap) set off one after another. The objects that exist once the
  app is loaded are frozen out of the collector's scans (``gc.freeze``, as CPython's docs
  advise for pre-fork servers); the middle generation is collected every 3 young
  collections instead of 10, so each of its pauses scans a third as much (2-7 ms instead of
  up to 30 with 2,000 streams open); and a full collection waits for 3,000 of those instead
  of 10 (about 6 million allocations): cyclic garbage that lived long is found later, young
  garbage is collected as before.

And one for the cost of a request: prometheus-client guards each metric value with the
``threading.Lock`` it bound when it was imported. Imported after gevent's patch, that is
gevent's lock, written in Python: some forty Python calls for a request's seven metric
updates. This worker imports it just before the patch, so it keeps the native lock, which is
right under gevent too: no update yields while it holds the lock (an addition or two), so a
greenlet never waits on it, and real threads (the embedded model's pool) are ordered as before.

Imported by gunicorn's master (``worker_class``), so it stays light: gevent's worker and the
message catalogs only.
"""

from __future__ import annotations

import gc
import json
import re
from typing import Any

from gevent.server import StreamServer
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from chatservice.i18n import Catalogs

#: Our key for the statuses gunicorn answers by itself; others are ``http_error``.
KEYS = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large", 500: "internal_error"}
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
#: gc thresholds (CPython's defaults: 700, 10, 10); see the module's doc.
GC_THRESHOLDS = (700, 3, 3000)


class FairStreamServer(StreamServer):
    """gevent's server accepting at most 8 waiting connections per turn of the event loop
    (gevent's default: 100); see the module's doc."""

    max_accept = 8


class JsonErrorWorker(GeventWorker):
    """gunicorn's ``gevent`` worker with JSON error pages (see the module's doc)."""

    _catalogs: Catalogs | None = None

    def run(self) -> None:
        """gunicorn's loop, after the app is loaded: freeze it out of the collector's scans,
        space out full collections and accept fairly (see the module's doc)."""
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        # gunicorn builds its server from this module global; patched only in this worker
        # process, after the fork.
        ggevent.StreamServer = FairStreamServer
        super().run()

    def patch(self) -> None:
        """gunicorn's gevent patching, prometheus-client imported just before it so that its
        metrics keep native locks (see the module's doc)."""
        import prometheus_client  # noqa: F401 - imported for its binding of threading.Lock

        super().patch()

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's own handling, its page rewritten to JSON on the way out."""
        if JsonErrorWorker._catalogs is None:
            JsonErrorWorker._catalogs = Catalogs.load()
        super().handle_error(req, _JsonPages(client, JsonErrorWorker._catalogs), addr, exc)


class _JsonPages:
    """The client socket, turning gunicorn's HTML error response into JSON as it is sent."""

    def __init__(self, sock: Any, catalogs: Catalogs) -> None:
        self._sock = sock
        self._catalogs = catalogs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def send(self, data: bytes) -> int:
        """Send the rewritten response (gunicorn sends its error page in one call)."""
        return self._sock.send(self._json(data))

    def sendall(self, data: bytes) -> None:
        """Like :meth:`send`, all of it."""
        self._sock.sendall(self._json(data))

    def _json(self, data: bytes) -> bytes:
        match = _STATUS_LINE.match(data)
        if match is None:
            return data
        status = int(match.group(1))
        key = KEYS.get(status, "http_error")
        message = self._catalogs.translate(key, "en", status_code=status)
        body = json.dumps(
            {"code": status, "msg": "failed", "data": {"response": message, "error": key}},
            ensure_ascii=False,
        ).encode()
        head = (
            f"HTTP/1.1 {status} {match.group(2).decode('latin-1')}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body
