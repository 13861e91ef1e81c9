"""Bounding an upstream stream's silences with one timer per stream.

A stream's idle timeout (``UPSTREAM_STREAM_IDLE_TIMEOUT``, seconds) bounds each wait for the
upstream's next bytes. Set as the socket's timeout, it makes gevent build a new
``gevent.Timeout`` (a timer watcher, a ``TimeoutError`` and their callbacks) for every wait of
every read, that is for every relayed chunk. Each lives until the next chunk arrives, a fifth
of a second later in a typical answer, long enough to pass through the garbage collector's
young generations: with 2,000 open streams, tens of thousands of objects that every young
collection scans again. :class:`IdleTimer` instead leaves the socket without a timeout and
arms one repeating libev timer per stream afresh around each read (a cancelled
``gevent.Timeout`` would not do: started again, it resumes with what was left of its time
rather than the whole timeout). The behaviour is the same: a read that waits longer than the
timeout raises ``TimeoutError``.

Outside a gevent worker (threads, Flask's test client) a timer on the event loop cannot
interrupt a blocking read, so there the socket keeps its timeout, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatservice.backends.hangup import sockets_cooperative


def _gevent_socket(sock: Any) -> bool:
    """True when ``sock`` is gevent's cooperative socket (a monkey-patched process)."""
    if not sockets_cooperative():
        return False
    from gevent.socket import socket as cooperative

    return isinstance(sock, cooperative)


class IdleTimer:
    """Each :meth:`read` of a stream may wait at most ``seconds`` (float) for bytes.

    ``sock`` is the stream's connected socket (None: nothing to bound, reads are as they
    are). Under gevent its timeout is cleared and a per-stream timer bounds the reads; else
    its timeout is set to ``seconds``. :meth:`read` raises ``TimeoutError`` on a silence
    past ``seconds`` (as a socket timeout does), and whatever the read raises.
    Call :meth:`close` when the stream ends.
    """

    def __init__(self, sock: Any, seconds: float) -> None:  # noqa: D107
        self._timer: Any = None
        self._reader: Any = None
        if sock is None:
            return
        if not _gevent_socket(sock):
            sock.settimeout(seconds)
            return
        import gevent

        self._getcurrent = gevent.getcurrent
        # Repeating, so that ``again`` arms it for the whole ``seconds`` each time (see the
        # module's doc).
        self._timer = gevent.get_hub().loop.timer(seconds, seconds)
        sock.settimeout(None)

    def read(self, read1: Callable[[int], bytes], size: int) -> bytes:
        """``read1(size)``, bounded by the idle timeout."""
        timer = self._timer
        if timer is None:
            return read1(size)
        self._reader = self._getcurrent()
        timer.again(self._expire, update=True)
        try:
            return read1(size)
        finally:
            timer.stop()
            self._reader = None

    def _expire(self) -> None:
        # Called by the event loop: the read is still waiting, interrupt it as a socket
        # timeout would.
        timer, reader = self._timer, self._reader
        if timer is not None:
            timer.stop()
        if reader is not None:
            reader.throw(TimeoutError("timed out"))

    def close(self) -> None:
        """Free the timer (idempotent)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
