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


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get the completed events' data.

    Holds at most one partial line between calls. Invalid UTF-8 is replaced, not raised.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add ``chunk``; return the ``data`` of every event completed by it, in order."""
        self._buffer += chunk
        events = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, after = cut
            line = self._buffer[:end].decode("utf-8", errors="replace")
            self._buffer = self._buffer[after:]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line of ``buffer`` ends and the next starts, or None if incomplete."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return index, index + 1
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return None  # a CR at the end may be the first half of CRLF
            return index, index + (2 if buffer[index + 1] == 0x0A else 1)
    return None


def encode_event(payload: Any) -> bytes:
    """One ``data: <JSON>`` event, UTF-8, ending with the blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


def event_stream(
    chunks: Iterator[ChatChunk],
    render_chunk: Callable[[ChatChunk], Any],
    render_error: Callable[[ServiceError], Any],
    final_event: Any = None,
) -> Response:
    """A ``text/event-stream`` response relaying ``chunks`` as they arrive.

    The first chunk is pulled before the response starts, so an error before any event is
    raised here and answered as a normal JSON error. After that, an error becomes one error
    event (``render_error``) and the stream closes without ``[DONE]``. A ``final_event``
    is written after the last chunk, just before ``[DONE]``. When the client goes
    away, the WSGI server closes the response, which closes ``chunks`` and so the upstream
    request or the local generation.
    """
    try:
        first: ChatChunk | None = next(chunks)
    except StopIteration:
        first = None

    def generate() -> Iterator[bytes]:
        try:
            if first is not None:
                yield encode_event(render_chunk(first))
            for chunk in chunks:
                yield encode_event(render_chunk(chunk))
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

    response = Response(generate(), mimetype="text/event-stream", headers=HEADERS)
    closer = getattr(chunks, "close", None)
    if closer is not None:
        response.call_on_close(closer)
    return response
