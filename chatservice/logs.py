"""Logging set-up of the process, and log files written by one process (the log hub).

The access log itself (its fields and when a record is written) is :mod:`chatservice.access_log`;
this module turns its records and the application's into lines (LOG_FORMAT) on stderr and, with
LOG_DIR, in files.

**Log files** (daily request and usage logs). With LOG_DIR set, the access log goes to
``LOG_DIR/access.log`` and the application log (the ``chatservice`` loggers, every other
library logger that reaches the root logger, gunicorn's error log) to ``LOG_DIR/app.log``,
besides stderr, each a :class:`logging.handlers.TimedRotatingFileHandler` rotated at local
midnight keeping LOG_RETENTION_DAYS old files (``access.log.2024-05-01``, ...).

Several gunicorn workers must not write one file: their rotations would race and rename the
file under each other. So exactly one process writes: the gunicorn master (``python3 app.py``)
runs a :class:`LogHub` that owns the file handlers, and its workers send their records to it
with :class:`HubSender`, the standard library's ``SocketHandler`` on a Unix stream socket in a
private temporary directory (mode 0700: only this user can connect). Why that transport, given
gevent-patched workers:

- Each record is one frame (length, then JSON), written with one ``sendall`` on the C-level
  ``_socket.socket``, which gevent never patches: the send cannot yield to another greenlet
  half-way, so frames of concurrent greenlets never interleave, whatever lock the handler holds
  (a handler made before the patch holds a lock that is not greenlet-aware). Real threads (the
  embedded model's pool) are ordered by the handler's lock.
- The kernel buffers a few MiB per worker, so a worker waits only when the master is that far
  behind, with a timeout, so a stuck master cannot hang a worker: as a write to stderr would.
  A failed send drops that record and the connection; the master discards the partial frame.
- Records travel as JSON, not pickle: the master never unpickles bytes read from a socket.
- Rejected: Unix datagrams (whole messages too, but the kernel queues only
  ``net.unix.max_dgram_qlen``, 10 by default, so every burst stalled the workers: one sender
  got about 7,000 records/s through on the loaded 2-core CI machine, against 15,000 to 30,000
  with the stream socket); a ``multiprocessing``
  queue (its feeder thread turns into a greenlet and its POSIX semaphores block the whole
  gevent hub, and a queue made before the first fork could not follow a reload that moves
  LOG_DIR).

The master reads every worker's connection in one thread and writes its own records (gunicorn's
"Booting worker", reloads) directly. An ``os.register_at_fork`` hook holds the hub's lock across
``fork()`` (no half-written buffer is copied into a worker) and turns the child into a sender
before its first record. On exit the master reads each worker's connection to its end before
closing the files, so ``nohup python3 app.py >/dev/null 2>&1 &`` leaves complete logs.
"""

from __future__ import annotations

import _socket
import contextlib
import dataclasses
import datetime
import json
import logging
import logging.handlers
import os
import re
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from typing import Any

from chatservice.access_log import ACCESS_LOGGER, access_log
from chatservice.settings import ConfigError, Settings

# gunicorn's master imports this module to run the log hub: it must not import Flask (and so
# ssl and sockets users) before its gevent workers monkey-patch the standard library (see
# chatservice/__init__.py); chatservice.access_log imports Flask only inside its functions.

log = logging.getLogger(__name__)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FILE = "access.log"
APP_FILE = "app.log"
#: Seconds a worker waits for room in the socket to the master before dropping a record.
SEND_TIMEOUT = 5.0
#: Characters kept of a message or a traceback sent to the master.
MAX_FIELD_CHARS = 16_000
#: Loggers the files receive: everything that reaches the root logger (the ``chatservice``
#: loggers included), and gunicorn's error log, which does not propagate.
_FILE_LOGGERS = ("", "gunicorn.error")


# --- formatting -------------------------------------------------------------------------------


class LineFormatter(logging.Formatter):
    """One line per record: ``text`` (:data:`TEXT_FORMAT`) or ``json`` (one JSON object).

    A JSON application line is ``{"time", "level", "logger", "pid", "message"[, "exc"]}``; a
    JSON access line is ``{"time", <the access fields>, "pid"}`` (the fields:
    :mod:`chatservice.access_log`).
    ``time`` is ISO 8601 local time with milliseconds and the UTC offset.
    """

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.json_lines = json_lines

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The text line, control characters of the message escaped (``\\n``, ``\\x1b``):
        a client's value in it (a model name) must not start a forged line or drive a
        terminal. JSON lines are escaped by JSON itself.
        """
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (a text traceback continues on the following lines)."""
        if not self.json_lines:
            return super().format(record)
        stamp = (
            datetime.datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds")
        )
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            return _dumps({"time": stamp, **access, "pid": record.process})
        payload: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        return _dumps(payload)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1, line and paragraph separators) written
    as Python escapes: ``"a\\nb"`` for a newline, ``\\x1b``, ``\\u2028``.
    """
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, default=str)


def file_handler(
    directory: str, filename: str, retention_days: int, json_lines: bool
) -> logging.handlers.TimedRotatingFileHandler:
    """A handler writing ``directory/filename``, rotated at local midnight, keeping
    ``retention_days`` rotated files (``filename.YYYY-MM-DD``); older ones are deleted at
    rotation. Lines are formatted by :class:`LineFormatter`. Raises ``OSError`` when the
    file cannot be opened.
    """
    handler = logging.handlers.TimedRotatingFileHandler(
        os.path.join(directory, filename),
        when="midnight",
        backupCount=retention_days,
        encoding="utf-8",
    )
    handler.setFormatter(LineFormatter(json_lines))
    return handler


# --- one writer for LOG_DIR -------------------------------------------------------------------


def encode_record(record: logging.LogRecord) -> bytes:
    """``record`` as one frame: a 4-byte big-endian length, then UTF-8 JSON of its name,
    level, final message, time, process, traceback text and access fields (long texts cut to
    :data:`MAX_FIELD_CHARS`). The framing is ``SocketHandler``'s; the payload is not pickle.
    """
    exc_text = record.exc_text
    if record.exc_info and not exc_text:
        exc_text = logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        exc_text = f"{exc_text}\n{record.stack_info}" if exc_text else record.stack_info
    data: dict[str, Any] = {
        "name": record.name,
        "levelno": record.levelno,
        "levelname": record.levelname,
        "msg": _clip(record.getMessage()),
        "created": record.created,
        "msecs": record.msecs,
        "process": record.process,
        "exc_text": _clip(exc_text) if exc_text else None,
    }
    access = getattr(record, "access", None)
    if isinstance(access, dict):
        data["access"] = access
    payload = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8", "replace")
    return struct.pack(">L", len(payload)) + payload


def decode_record(payload: bytes) -> logging.LogRecord | None:
    """The record whose JSON :func:`encode_record` framed, or ``None`` for anything else."""
    try:
        fields = json.loads(payload)
    except ValueError:
        return None
    if not (
        isinstance(fields, dict)
        and isinstance(fields.get("name"), str)
        and isinstance(fields.get("levelno"), int)
        and isinstance(fields.get("msg"), str)
        and isinstance(fields.get("created"), int | float)
    ):
        return None
    fields["args"] = None
    fields["exc_info"] = None
    return logging.makeLogRecord(fields)


def _clip(text: str) -> str:
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return text[:MAX_FIELD_CHARS] + " ...[cut]"


class LogHub:
    """The single writer of LOG_DIR: owns ``access.log`` and ``app.log`` and receives the
    workers' records on a Unix stream socket at :attr:`address`, one connection per worker,
    all read by one thread.

    :meth:`write` sends a record to the right file; :meth:`configure` opens (or re-opens, on
    a reload) the files; :meth:`close` writes every record already sent, then closes.
    Thread-safe. Raises ``OSError`` when the socket cannot be made.
    """

    def __init__(self, drain_timeout: float = 5.0) -> None:
        self.lock = threading.RLock()
        self._drain_timeout = drain_timeout
        self._directory = _private_directory()
        self.address = os.path.join(self._directory, "hub.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: dict[socket.socket, bytearray] = {}
        self._handlers: dict[str, logging.Handler] = {}
        self._key: tuple[str, int, bool] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="chatservice-log-hub")
        self._thread.daemon = True
        self._thread.start()

    @property
    def has_files(self) -> bool:
        """True while LOG_DIR is set and its files are open."""
        return bool(self._handlers)

    def configure(self, log_dir: str, retention_days: int, json_lines: bool) -> None:
        """Write to ``log_dir`` (empty: nowhere) from now on.

        The new files are opened before the old ones are closed, so a failure changes nothing:
        raises :class:`ConfigError` naming LOG_DIR when the folder or a file cannot be made.
        """
        key = (log_dir, retention_days, json_lines)
        if key == self._key:
            return
        handlers: dict[str, logging.Handler] = {}
        if log_dir:
            try:
                os.makedirs(log_dir, exist_ok=True)
                for name, filename in (("access", ACCESS_FILE), ("app", APP_FILE)):
                    handlers[name] = file_handler(log_dir, filename, retention_days, json_lines)
            except OSError as exc:
                for handler in handlers.values():
                    handler.close()
                reason = exc.strerror or str(exc)
                raise ConfigError(
                    f"LOG_DIR: cannot write log files in {log_dir}: {reason}"
                ) from None
        with self.lock:
            old, self._handlers, self._key = self._handlers, handlers, key
        for handler in old.values():
            handler.close()

    def write(self, record: logging.LogRecord) -> None:
        """Append ``record`` to ``access.log`` (the access logger) or ``app.log``."""
        name = "access" if record.name == ACCESS_LOGGER else "app"
        with self.lock:
            handler = self._handlers.get(name)
            if handler is not None:
                handler.handle(record)

    def close(self) -> None:
        """Stop accepting senders, write everything they sent until each hung up (at most
        ``drain_timeout`` seconds: the master calls this once its workers are gone), then
        close the socket and the files and remove the private directory.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(self._drain_timeout + 1)
        for sock in (self._listener, self._wake_r, self._wake_w, *self._connections):
            sock.close()
        shutil.rmtree(self._directory, ignore_errors=True)
        with self.lock:
            handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.close()

    def abandon(self) -> None:
        """In a forked child: let go of the master's sockets and files without touching them
        on disk (the master keeps using them). The fork hook held :attr:`lock`, so no write
        was half done and the file buffers are empty.
        """
        self.lock = threading.RLock()
        self._closed = True
        for sock in (self._listener, self._wake_r, self._wake_w, *list(self._connections)):
            sock.close()
        self._connections = {}
        handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        deadline: float | None = None
        while deadline is None or (self._connections and time.monotonic() < deadline):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, _events in selector.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:  # close(): read what the senders sent, then stop
                    selector.unregister(self._wake_r)
                    selector.unregister(self._listener)
                    deadline = time.monotonic() + self._drain_timeout
                elif sock is self._listener:
                    with contextlib.suppress(OSError):
                        conn, _ = self._listener.accept()
                        conn.setblocking(False)
                        self._connections[conn] = bytearray()
                        selector.register(conn, selectors.EVENT_READ)
                else:
                    self._read(selector, sock)  # type: ignore[arg-type]
        selector.close()

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffer = self._connections[conn]
        if not data:  # the sender is gone; a frame it did not finish is dropped
            selector.unregister(conn)
            del self._connections[conn]
            conn.close()
            return
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            (size,) = struct.unpack_from(">L", buffer, start)
            if len(buffer) - start - 4 < size:
                break
            record = decode_record(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
            if record is not None:
                self.write(record)
        del buffer[:start]


def _private_directory() -> str:
    # A Unix socket path has a ~100-byte limit; a long TMPDIR falls back to /tmp.
    directory = tempfile.mkdtemp(prefix="chatservice-log-")
    if len(directory) > 80:
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="chatservice-log-", dir="/tmp")  # noqa: S108
    return directory


class HubHandler(logging.Handler):
    """In the master: hands records straight to its :class:`LogHub`."""

    def __init__(self, hub: LogHub) -> None:
        super().__init__()
        self.hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the hub's files."""
        try:
            self.hub.write(record)
        except Exception:  # noqa: BLE001 - logging must not break the caller
            self.handleError(record)


class HubSender(logging.handlers.SocketHandler):
    """In a worker: sends each record as one frame (:func:`encode_record`) to the master's
    :class:`LogHub` over a Unix stream socket.

    The socket is the C-level ``_socket.socket``, which gevent's monkey-patch never replaces:
    ``sendall`` does not yield to another greenlet in the middle of a frame, so frames cannot
    interleave, whatever kind of lock the handler holds; the handler's lock orders real
    threads (the embedded model's thread pool). The kernel buffers up to a few MiB, so a send
    waits only when the master is that far behind, and at most :data:`SEND_TIMEOUT` seconds.
    A send that fails drops that record and the connection (the master discards the partial
    frame); the next record reconnects (``SocketHandler``'s back-off), never raising into the
    caller.
    """

    def __init__(self, address: str) -> None:
        super().__init__(address, None)

    def makeSocket(self, timeout: float = SEND_TIMEOUT) -> Any:  # noqa: N802 - stdlib name
        """A connected, unpatched Unix stream socket with a send timeout and a large buffer.
        Raises ``OSError`` when the hub cannot be reached."""
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            with contextlib.suppress(OSError):  # the kernel caps it at wmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def makePickle(self, record: logging.LogRecord) -> bytes:  # noqa: N802 - stdlib name
        """The frame: length and JSON (:func:`encode_record`), not pickle."""
        return encode_record(record)


# --- the process's logging (python3 app.py) ---------------------------------------------------


@dataclasses.dataclass
class _ProcessLogging:
    """What :func:`apply_settings` installed in this process."""

    stderr: logging.Handler | None = None
    hub: LogHub | None = None
    hub_handler: HubHandler | None = None
    sender: HubSender | None = None
    fork_hooks: bool = False


_process = _ProcessLogging()


def apply_settings(settings: Settings) -> None:
    """Set up this process's logging from ``settings``: the entry point (``python3 app.py``)
    calls it before gunicorn starts and again on each accepted reload (SIGHUP).

    One stderr handler on the root logger (LOG_FORMAT), LOG_LEVEL on the ``chatservice``
    loggers, and with LOG_DIR the :class:`LogHub` and its files. Workers forked afterwards
    inherit all of it and send their records to the hub. Raises :class:`ConfigError`
    (LOG_DIR) when the files cannot be opened; nothing is changed then.
    """
    json_lines = settings.log_format == "json"
    root = logging.getLogger()
    if settings.log_dir or _process.hub is not None:
        if _process.hub is None:
            hub = LogHub()
            try:
                hub.configure(settings.log_dir, settings.log_retention_days, json_lines)
            except ConfigError:
                hub.close()
                raise
            _process.hub, _process.hub_handler = hub, HubHandler(hub)
            _register_fork_hooks()
        else:
            _process.hub.configure(settings.log_dir, settings.log_retention_days, json_lines)
    if _process.stderr is None:
        for handler in list(root.handlers):  # a bootstrap basicConfig is replaced
            root.removeHandler(handler)
        _process.stderr = logging.StreamHandler(sys.stderr)
        root.addHandler(_process.stderr)
    if _process.hub_handler is not None and _process.hub_handler not in root.handlers:
        _attach(_process.hub_handler)
    root.setLevel(logging.INFO)
    _process.stderr.setFormatter(LineFormatter(json_lines))
    _set_levels(settings)


def shutdown() -> None:
    """At process exit: a master writes every record its workers sent and closes the files;
    a worker closes its sender."""
    if _process.sender is not None:
        _detach(_process.sender)
        _process.sender.close()
        _process.sender = None
    if _process.hub is not None:
        hub, _process.hub = _process.hub, None
        if _process.hub_handler is not None:
            _detach(_process.hub_handler)
            _process.hub_handler = None
        hub.close()


def _attach(handler: logging.Handler) -> None:
    for name in _FILE_LOGGERS:
        logging.getLogger(name).addHandler(handler)


def _detach(handler: logging.Handler) -> None:
    for name in _FILE_LOGGERS:
        logging.getLogger(name).removeHandler(handler)


def _register_fork_hooks() -> None:
    if not _process.fork_hooks:
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        _process.fork_hooks = True


def _before_fork() -> None:
    if _process.hub is not None:
        _process.hub.lock.acquire()


def _after_fork_in_parent() -> None:
    if _process.hub is not None:
        _process.hub.lock.release()


def _after_fork_in_child() -> None:
    hub, handler = _process.hub, _process.hub_handler
    if hub is None:
        return
    _process.hub = _process.hub_handler = None
    if handler is not None:
        _detach(handler)
    sends = hub.has_files
    hub.abandon()
    if sends:
        _process.sender = HubSender(hub.address)
        _attach(_process.sender)


def _set_levels(settings: Settings) -> None:
    logging.getLogger("chatservice").setLevel(settings.log_level.upper())
    access_log.setLevel(logging.INFO)


def configure_logging(settings: Settings) -> None:
    """Set LOG_LEVEL on the ``chatservice`` loggers; in a process nobody set logging up in
    (a bare ``gunicorn app:app``), also send them to stderr in LOG_FORMAT.

    ``python3 app.py`` sets logging up itself (:func:`apply_settings`); test runners and
    embedding programs do too, and their handlers receive our records through propagation.
    LOG_DIR files need the entry point's master (one writer): elsewhere LOG_DIR is ignored
    with a warning.
    """
    _set_levels(settings)
    if settings.log_dir and _process.sender is None and _process.hub is None:
        log.warning("LOG_DIR is written by python3 app.py only; here logs go to stderr")
    logger = logging.getLogger("chatservice")
    if logging.getLogger().handlers or any(
        getattr(h, "_chatservice", False) for h in logger.handlers
    ):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(settings.log_format == "json"))
    handler._chatservice = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
