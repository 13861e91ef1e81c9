"""Server-Sent Events, both ways: decoding an upstream's stream and writing a face's stream.

Framing follows the WHATWG HTML "server-sent events" section: lines end in CRLF, LF or CR, a
blank line dispatches the event, ``data:`` lines of one event are joined with LF, lines
starting with ``:`` are comments. Every event we write is one ``data:`` line holding JSON,
whose escaping guarantees that newlines inside an answer cannot break the framing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response

from chatservice.errors import InternalError, ServiceError
from chatservice.models import ChatChunk

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventTooLarge(ValueError):
    """One event's data grew past the decoder's ``max_event_bytes``."""


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get the completed events' data.

    Linear in its input: each byte is scanned once (``bytes`` searches, no per-byte Python
    loop, no rescan of a long partial line). Holds at most one partial line and one partial
    event, together at most ``max_event_bytes`` (else :class:`EventTooLarge`; None: no cap).
    """

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._max = max_event_bytes
        self._partial: list[bytes] = []  # pieces of the current, unfinished line
        self._partial_size = 0
        self._data_size = 0
        self._data: list[bytes] = []
        self._after_cr = False  # the last line ended in CR: a leading LF belongs to it

    def feed(self, chunk: bytes) -> list[str]:
        """Add ``chunk``; return the ``data`` of every event completed by it, in order.
        Invalid UTF-8 is replaced, not raised."""
        return [data.decode("utf-8", errors="replace") for data in self.feed_bytes(chunk)]

    def feed_bytes(self, chunk: bytes) -> list[bytes]:
        """Like :meth:`feed`, the events' ``data`` as the bytes the stream carried."""
        if (
            # The common case, one whole ``data: ...`` event per read, without the line loop.
            chunk[-2:] == b"\n\n"
            and chunk[:6] == b"data: "
            and not (self._partial or self._data or self._after_cr)
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            return [chunk[6:-2]]
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = False
        if not chunk:
            return []
        lines = chunk.splitlines(keepends=True)  # bytes: splits at CRLF, LF and CR only
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            lines.pop()
        else:
            last = b""
            self._after_cr = chunk[-1:] == b"\r"
        events: list[bytes] = []
        for line in lines:
            if self._partial:
                line = b"".join(self._partial) + line
                self._partial, self._partial_size = [], 0
            self._line(line.rstrip(b"\r\n"), events)
        if last:
            self._partial.append(last)
            self._partial_size += len(last)
        if self._max is not None and self._partial_size + self._data_size > self._max:
            raise EventTooLarge(self._partial_size + self._data_size)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data, self._data_size = [], 0
            return
        if line[:1] == b":":
            return
        field, _, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if value[:1] == b" " else value
            self._data.append(value)
            self._data_size += len(value)


def encode_event(payload: Any) -> bytes:
    """One ``data: <JSON>`` event, UTF-8, ending with the blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _event(rendered: Any) -> bytes:
    # bytes are an event's data as the upstream sent it, relayed without a JSON round trip;
    # data that spanned several lines goes out as several data lines again.
    if isinstance(rendered, bytes):
        return b"data: " + rendered.replace(b"\n", b"\ndata: ") + b"\n\n"
    return encode_event(rendered)


def event_stream(
    chunks: Iterator[ChatChunk],
    render_chunk: Callable[[ChatChunk], Any],
    render_error: Callable[[ServiceError], Any],
    final_event: Any = None,
) -> Response:
    """A ``text/event-stream`` response relaying ``chunks`` as they arrive.

    ``render_chunk`` returns the event's JSON payload, or ``bytes``: data relayed as is
    (:attr:`ChatChunk.event`). The first chunk is pulled before the response starts, so an
    error before any event is raised here and answered as a normal JSON error. After that,
    an error becomes one error event (``render_error``) and the stream closes without
    ``[DONE]``. A ``final_event`` is written after the last chunk, just before ``[DONE]``.
    When the client goes away, the WSGI server closes the response, which closes ``chunks``
    and so the upstream request or the local generation.
    """
    try:
        first: ChatChunk | None = next(chunks)
    except StopIteration:
        first = None

    def generate() -> Iterator[bytes]:
        try:
            if first is not None:
                yield _event(render_chunk(first))
            for chunk in chunks:
                yield _event(render_chunk(chunk))
        except ServiceError as err:
            log.warning("stream ended by %s", err.key)
            yield encode_event(render_error(err))
            return
        except Exception:  # noqa: BLE001 - the stream has started: report, never a traceback
            log.exception("stream failed")
            yield encode_event(render_error(InternalError()))
            return
        if final_event is not None:
            yield encode_event(final_event)
        yield DONE

    response = EventStreamResponse(generate(), mimetype="text/event-stream", headers=HEADERS)
    closer = getattr(chunks, "close", None)
    if closer is not None:
        response.call_on_close(closer)
    return response


class EventStreamResponse(Response):
    """A ``text/event-stream`` response whose WSGI body the server iterates as the events'
    own generator: werkzeug's closing iterator and encoding generator would add two Python
    frames to every relayed event. Closing the body is closing the response, as werkzeug
    does it (the events, then every ``call_on_close`` callback)."""

    def __init__(self, events: Iterator[bytes], **kwargs: Any) -> None:
        super().__init__(events, direct_passthrough=True, **kwargs)

    def get_app_iter(self, environ: dict[str, Any]) -> Any:
        """werkzeug's, but the events themselves instead of its wrappers (see the class)."""
        body = super().get_app_iter(environ)
        if body is self.response:  # not a HEAD request: werkzeug passes the body through
            return _Passthrough(self.response, self.close)
        return body


class _Passthrough:
    """The WSGI body: iterating it is iterating the events; closing it closes the response."""

    def __init__(self, events: Iterator[bytes], close: Callable[[], None]) -> None:
        self._events = events
        self.close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._events
