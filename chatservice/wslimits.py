"""Bounds on what one WebSocket client can make a worker hold (the WebSocket face's DoS guard).

Two places buffer a client's frames: simple-websocket's reader thread (every complete message
goes to the socket's ``input_buffer``) and the face's own queue of frames waiting for their
answer. Both are bounded by WS_MAX_BACKLOG frames and twice MAX_BODY_BYTES; going over closes
the socket with 1008 (policy violation). Without the first bound one burst of compressed
frames (permessage-deflate turns 900 KB of one letter into 1 KB) is inflated and queued
before any other greenlet runs: 400 such frames took a worker from 58 to 399 MB.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from simple_websocket import Server
from wsproto.events import CloseConnection, Event

log = logging.getLogger(__name__)

#: WebSocket close code for a client that breaks the backlog policy (RFC 6455, 7.4.1).
POLICY_VIOLATION = 1008
TOO_MANY = "too many frames waiting"


def server_options(max_frames: int, max_bytes: int, max_message_size: int) -> dict[str, Any]:
    """flask-sock's SOCK_SERVER_OPTIONS: messages up to ``max_message_size`` bytes, and a
    reader thread whose buffer holds at most ``max_frames`` messages of ``max_bytes`` in all.
    """
    return {
        "max_message_size": max_message_size,
        "thread_class": functools.partial(
            _bounded_reader, max_frames=max_frames, max_bytes=max_bytes
        ),
    }


def _bounded_reader(
    target: Callable[[], None], *, max_frames: int, max_bytes: int
) -> threading.Thread:
    """simple-websocket's reader thread, its protocol events cut off at the bound.

    simple-websocket builds the thread with ``thread_class(target=self._thread)`` after the
    handshake and before the first frame is read; ``target.__self__`` is its Server.
    """
    server: Server = target.__self__  # type: ignore[attr-defined]
    events = server.ws.events

    def bounded() -> Iterator[Event]:
        for event in events():
            waiting = server.input_buffer
            if len(waiting) >= max_frames or sum(map(len, waiting)) > max_bytes:
                log.warning("websocket closed: %s (reader buffer)", TOO_MANY)
                # Handled like the client's own close: simple-websocket answers it with a
                # close frame carrying this code, stops reading and closes the socket.
                yield CloseConnection(code=POLICY_VIOLATION, reason=TOO_MANY)
                return
            yield event

    server.ws.events = bounded  # type: ignore[method-assign]
    return threading.Thread(target=target, daemon=True)


@dataclasses.dataclass
class Backlog:
    """The frames of one socket waiting for their answer, bounded in number and bytes.

    Items are the face's frame objects (anything with a ``raw`` payload), ``None`` ends it.
    """

    max_frames: int
    max_bytes: int
    inbox: queue.Queue[Any] = dataclasses.field(default_factory=queue.Queue)
    waiting_bytes: int = 0

    def put(self, frame: Any) -> bool:
        """Queue ``frame``; False (and nothing queued) when it would break the bound."""
        size = len(frame.raw)
        if self.inbox.qsize() >= self.max_frames or self.waiting_bytes + size > self.max_bytes:
            return False
        self.waiting_bytes += size
        self.inbox.put(frame)
        return True

    def get(self) -> Any:
        """The next frame, waiting for one; None once the reader stopped."""
        frame = self.inbox.get()
        if frame is not None:
            self.waiting_bytes -= len(frame.raw)
        return frame

    def end(self) -> None:
        """No more frames will come."""
        self.inbox.put(None)
