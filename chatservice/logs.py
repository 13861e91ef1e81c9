"""Logging set-up of the process, and the log files in LOG_DIR.

The access log itself (its fields and when a record is written) is :mod:`chatservice.access_log`;
this module turns its records and the application's into lines (LOG_FORMAT) on stderr and, with
LOG_DIR, in files.

**Log files** (daily request and usage logs). With LOG_DIR set, the access log goes to
``LOG_DIR/access.log`` and the application log (the ``chatservice`` loggers, every other
library logger that reaches the root logger, gunicorn's error log) to ``LOG_DIR/app.log``,
besides stderr, rotated at local midnight keeping LOG_RETENTION_DAYS old files
(``access.log.2024-05-01``, ...).

The standard design: every process writes the files itself, and one process rotates them.

- **Writing.** Each file is opened ``O_APPEND`` and each record goes out as one ``write()``
  of its whole line (:class:`AppendFileHandler`: formatted, encoded, then one ``os.write`` on an
  unbuffered file, a 100 KiB traceback included). The kernel appends each ``write()`` to a
  regular file whole at the current end, so lines of several workers never interleave and
  none is lost, and nothing sits in a buffer: a worker's last line is on disk when it exits,
  so ``nohup python3 app.py >/dev/null 2>&1 &`` leaves complete logs. gevent never patches
  ``os.write`` or ``os.stat``: a greenlet cannot yield half-way through a record. The
  handler's lock stays a native one (:class:`AppendFileHandler`), which orders real threads
  (the embedded model's pool) and never makes a greenlet wait for another.
- **Rotating.** Only the gunicorn master (``python3 app.py``) rotates, with the standard
  library's :class:`logging.handlers.TimedRotatingFileHandler` (:func:`file_handler`): at the
  first record after midnight, or from a timer thread (:class:`LogFiles`) when the master has
  nothing to say, it renames ``access.log`` to ``access.log.<date>`` and deletes the files
  beyond retention. Its workers write with :class:`WatchedAppendHandler`, the standard
  library's :class:`logging.handlers.WatchedFileHandler`: before each record it compares the
  path's inode with its open file and reopens when the master has rotated. A record a worker
  writes between the rename and its next check lands at the end of the day's renamed file:
  whole, a moment late, never lost. An ``os.register_at_fork`` hook gives each forked worker its
  writing handlers instead of the master's rotating ones.
- **Without the master's hooks** (``gunicorn -k gevent app:app`` run directly, or any program
  that calls ``create_app`` with LOG_DIR): the process writes the files with
  :class:`WatchedAppendHandler` and nobody here rotates them; rotation is the platform's
  (logrotate's default rename-and-create, not ``copytruncate``: each worker reopens the new
  file at its next line).
- **A reload** (SIGHUP) that moves LOG_DIR: the master and the new workers write to the new
  folder; the old workers write their last lines (the requests they finish) to the old one.

Why not a single writer: until this design, the master ran a log hub (a Unix socket server
reading every worker's records as JSON frames and writing the files alone, with fork hooks and
drain-on-exit, about 350 lines). Every test of the log files passes with the direct writes
above: two workers' 200 concurrent requests each logged once and whole; three gevent-patched
processes (two greenlets and a real thread each, 100 KiB lines among 3 KB ones) appending across
three rotations, no line lost, torn or doubled; rotation and retention, also with no record to
trigger it; the master's and the workers' last lines after SIGTERM under nohup. So the hub
guaranteed nothing that ``O_APPEND`` does not. Measured with ``bench/log_rate.py`` (100,000
access lines, 2 shared cores, three runs each): one worker writes 27,000 to 31,000 lines per CPU
second here against 28,000 to 35,000 with the hub, which then spent another 0.9 master CPU
second per worker CPU second decoding and writing them (in all, about 45% less CPU per line now); a
worker's private memory is 0.3 MB smaller, and a real worker's resident memory after 500
requests is the same (56.9 MB) in both designs.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import datetime
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from typing import Any

from chatservice.access_log import ACCESS_LOGGER, access_log
from chatservice.settings import ConfigError, Settings

# gunicorn's master imports this module to set logging up: it must not import Flask (and so
# ssl and sockets users) before its gevent workers monkey-patch the standard library (see
# chatservice/__init__.py); chatservice.access_log imports Flask only inside its functions.

log = logging.getLogger(__name__)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FILE = "access.log"
APP_FILE = "app.log"
#: Longest wait, in seconds, of the master's rotation timer between two looks at the clock
#: (a suspended machine or a clock step can move midnight).
ROTATION_CHECK_SECONDS = 60.0
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


# --- the files --------------------------------------------------------------------------------


class NativeLock:
    """A handler mixin whose lock is always a native one, whatever is assigned (gevent's
    monkey-patch swaps its own lock into every handler that exists when it patches).

    The handlers here never yield while they hold it (gevent patches neither ``os.write``,
    ``os.stat`` nor a file's ``write``), so no greenlet waits behind another, and a real thread
    (the embedded model's pool) waits for one line at most. With gevent's lock, greenlets
    waiting while a real thread held it were never woken (LoopExit:
    test_workers_appending_across_rotations_lose_and_tear_no_line), and every record paid for
    gevent's lock in Python (two frames per acquire and per release) instead of a C call.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        # On assignment rather than as a property: logging reads ``lock`` four times per
        # record, and a property getter would be a Python call each time.
        if name == "lock":
            value = _thread.RLock()
        super().__setattr__(name, value)


class StderrHandler(NativeLock, logging.StreamHandler):  # type: ignore[type-arg]
    """The process's stderr handler (logging's ``StreamHandler``) with a native lock
    (:class:`NativeLock`)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)


class AppendFileHandler(NativeLock, logging.FileHandler):
    """Writes each record as one line with one ``write()`` to a file opened ``O_APPEND``.

    The file is unbuffered (nothing waits in memory for a flush, so nothing is lost at exit or
    copied into a forked child); the line is UTF-8, characters it cannot encode (a lone
    surrogate) written as backslash escapes. Errors go to :meth:`logging.Handler.handleError`,
    never into the caller. Its lock is a native one (:class:`NativeLock`).
    """

    def _open(self) -> Any:
        return open(self.baseFilename, "ab", buffering=0)  # noqa: SIM115 - the handler closes it

    def write_line(self, record: logging.LogRecord) -> None:
        """Append ``record``'s line; raises ``OSError`` when the file cannot be written."""
        if self.stream is None:
            self.stream = self._open()
        data = memoryview(
            (self.format(record) + self.terminator).encode("utf-8", "backslashreplace")
        )
        # One write() for a regular file unless the disk is full; go on after a partial one.
        while data:
            data = data[os.write(self.stream.fileno(), data) :]

    def emit(self, record: logging.LogRecord) -> None:
        """Append ``record``'s line to the file."""
        try:
            self.write_line(record)
        except Exception:  # noqa: BLE001 - logging must not break the caller
            self.handleError(record)


class WatchedAppendHandler(AppendFileHandler, logging.handlers.WatchedFileHandler):
    """:class:`AppendFileHandler` that reopens its file when the path names another one
    (the standard library's ``WatchedFileHandler``: a rotation renamed the file)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Reopen the file if it was rotated, then append ``record``'s line."""
        try:
            self.reopenIfNeeded()
            if self.stream is None:  # opened late (``delay``): remember which file it is
                self.stream = self._open()
                self._statstream()
            self.write_line(record)
        except Exception:  # noqa: BLE001 - logging must not break the caller
            self.handleError(record)


class RotatingAppendHandler(AppendFileHandler, logging.handlers.TimedRotatingFileHandler):
    """:class:`AppendFileHandler` that rotates its file at local midnight first (the standard
    library's ``TimedRotatingFileHandler``), for the one process that rotates."""

    def emit(self, record: logging.LogRecord) -> None:
        """Rotate when midnight has passed, then append ``record``'s line."""
        try:
            if self.shouldRollover(record):
                self.doRollover()
            self.write_line(record)
        except Exception:  # noqa: BLE001 - logging must not break the caller
            self.handleError(record)

    def rotate_if_due(self) -> None:
        """Rotate now if midnight has passed since the last rotation (the master's timer).
        Raises ``OSError`` when the files cannot be renamed or deleted."""
        with self.lock:
            if self.shouldRollover(None):
                self.doRollover()


def file_handler(
    directory: str, filename: str, retention_days: int, json_lines: bool
) -> RotatingAppendHandler:
    """The rotating handler of ``directory/filename``: rotated at local midnight, keeping
    ``retention_days`` rotated files (``filename.YYYY-MM-DD``); older ones are deleted at
    rotation. Lines are formatted by :class:`LineFormatter`. Raises ``OSError`` when the
    file cannot be opened.
    """
    handler = RotatingAppendHandler(
        os.path.join(directory, filename), when="midnight", backupCount=retention_days
    )
    handler.setFormatter(LineFormatter(json_lines))
    return handler


class LogFiles:
    """``access.log`` (the access logger's records) and ``app.log`` (every other record) in
    one folder, attached to the loggers by :meth:`attach`.

    Made by :meth:`open`, rotating (the master: :class:`RotatingAppendHandler` and a timer
    thread), or by :meth:`for_worker` / :meth:`open` with ``rotate=False``, writing only
    (:class:`WatchedAppendHandler`).
    """

    def __init__(
        self, key: tuple[str, int, bool], access: AppendFileHandler, app: AppendFileHandler
    ) -> None:
        self.key = key
        self.access = access
        self.app = app
        # app.log takes what reaches the root logger except the access records.
        self.app.addFilter(lambda record: record.name != ACCESS_LOGGER)
        self._stop: threading.Event | None = None
        self._timer: threading.Thread | None = None

    @classmethod
    def open(cls, directory: str, retention_days: int, json_lines: bool, rotate: bool) -> LogFiles:
        """The files of ``directory`` (made if missing), opened now; with ``rotate``, rotated at
        midnight by a timer thread too. Raises :class:`ConfigError` naming LOG_DIR when the
        folder or a file cannot be made.
        """
        key = (directory, retention_days, json_lines)
        handlers: list[AppendFileHandler] = []
        try:
            os.makedirs(directory, exist_ok=True)
            for filename in (ACCESS_FILE, APP_FILE):
                if rotate:
                    handlers.append(file_handler(directory, filename, retention_days, json_lines))
                else:
                    handlers.append(_watched(directory, filename, json_lines, delay=False))
        except OSError as exc:
            for handler in handlers:
                handler.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"LOG_DIR: cannot write log files in {directory}: {reason}") from None
        files = cls(key, *handlers)
        if rotate:
            files._start_timer()
        return files

    def for_worker(self) -> LogFiles:
        """Writing-only handlers of the same files, opened at their first record (in a forked
        worker: the master rotates)."""
        directory, _days, json_lines = self.key
        return LogFiles(
            self.key,
            _watched(directory, ACCESS_FILE, json_lines, delay=True),
            _watched(directory, APP_FILE, json_lines, delay=True),
        )

    def attach(self) -> None:
        """Send the access logger's records to ``access.log`` and the rest to ``app.log``."""
        logging.getLogger(ACCESS_LOGGER).addHandler(self.access)
        for name in _FILE_LOGGERS:
            logging.getLogger(name).addHandler(self.app)

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        logging.getLogger(ACCESS_LOGGER).removeHandler(self.access)
        for name in _FILE_LOGGERS:
            logging.getLogger(name).removeHandler(self.app)

    def close(self) -> None:
        """Stop the rotation timer and close the files."""
        if self._stop is not None and self._timer is not None:
            self._stop.set()
            if self._timer is not threading.current_thread():
                self._timer.join(5)
        self._stop = self._timer = None
        self.access.close()
        self.app.close()

    def _start_timer(self) -> None:
        self._stop = threading.Event()
        self._timer = threading.Thread(
            target=self._rotate_at_midnight, args=(self._stop,), name="chatservice-log-rotation"
        )
        self._timer.daemon = True
        self._timer.start()

    def _rotate_at_midnight(self, stop: threading.Event) -> None:
        # Rotation also happens at the master's first record after midnight; this thread makes
        # it happen when the master has nothing to say (the workers write, but never rotate).
        handlers = [h for h in (self.access, self.app) if isinstance(h, RotatingAppendHandler)]
        wait = 0.0
        while not stop.wait(wait):
            failed = False
            for handler in handlers:
                try:
                    handler.rotate_if_due()
                except OSError as exc:
                    failed = True
                    log.error("cannot rotate %s: %s", handler.baseFilename, exc)
            due = min(h.rolloverAt for h in handlers) - time.time()
            # A failed rotation is tried again at the next look, not at once.
            wait = ROTATION_CHECK_SECONDS if failed else min(max(due, 0.05), ROTATION_CHECK_SECONDS)


def _watched(directory: str, filename: str, json_lines: bool, delay: bool) -> WatchedAppendHandler:
    handler = WatchedAppendHandler(os.path.join(directory, filename), delay=delay)
    handler.setFormatter(LineFormatter(json_lines))
    return handler


# --- the process's logging (python3 app.py, create_app) ---------------------------------------


@dataclasses.dataclass
class _ProcessLogging:
    """What :func:`apply_settings` or :func:`configure_logging` installed in this process."""

    stderr: logging.Handler | None = None
    files: LogFiles | None = None
    #: True in the master of ``python3 app.py`` (it rotates; its forks get writing handlers).
    master: bool = False


_process: _ProcessLogging | None = None


def _state() -> _ProcessLogging:
    global _process
    if _process is None:
        _process = _ProcessLogging()
    return _process


def apply_settings(settings: Settings) -> None:
    """Set up this process's logging from ``settings``: the entry point (``python3 app.py``)
    calls it in gunicorn's master before gunicorn starts and again on each accepted reload
    (SIGHUP).

    One stderr handler on the root logger (LOG_FORMAT), LOG_LEVEL on the ``chatservice``
    loggers, and with LOG_DIR the rotating :class:`LogFiles`. Workers forked afterwards get
    writing-only handlers of the same files. Raises :class:`ConfigError` (LOG_DIR) when the
    files cannot be opened; nothing is changed then.
    """
    state = _state()
    json_lines = settings.log_format == "json"
    key = (settings.log_dir, settings.log_retention_days, json_lines)
    if state.files is None or state.files.key != key:
        files = None
        if settings.log_dir:
            files = LogFiles.open(settings.log_dir, settings.log_retention_days, json_lines, True)
        _replace_files(state, files)
    if not state.master:
        state.master = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
    root = logging.getLogger()
    if state.stderr is None:
        for handler in list(root.handlers):  # a bootstrap basicConfig is replaced
            root.removeHandler(handler)
        state.stderr = StderrHandler()
        root.addHandler(state.stderr)
    root.setLevel(logging.INFO)
    state.stderr.setFormatter(LineFormatter(json_lines))
    _set_levels(settings)
    # No line shows a thread or a process name (gunicorn's show the process id, kept), so
    # records need not look them up (the logging HOWTO's "Optimization"). Under gevent the
    # current thread of a request's greenlet is a dummy Thread made on its first record:
    # one per request, for nothing.
    logging.logThreads = False
    logging.logMultiprocessing = False


def shutdown() -> None:
    """At process exit: stop rotating and close the files (every line is already written)."""
    if _process is not None:
        _replace_files(_process, None)


def _replace_files(state: _ProcessLogging, files: LogFiles | None) -> None:
    old, state.files = state.files, files
    if files is not None:
        files.attach()
    if old is not None:
        old.detach()
        old.close()


def _after_fork_in_child() -> None:
    # A gunicorn worker (or any child of the master): it writes the same files, the master
    # alone rotates them. The child's copies of the master's files are closed (the master's
    # stay open), and no rotation timer runs here (fork copies only the calling thread).
    state = _process
    if state is None or not state.master:
        return
    state.master = False
    if state.files is not None:
        master_files, state.files = state.files, state.files.for_worker()
        master_files.detach()
        state.files.attach()
        with contextlib.suppress(OSError):
            master_files.access.close()
            master_files.app.close()


def _set_levels(settings: Settings) -> None:
    logging.getLogger("chatservice").setLevel(settings.log_level.upper())
    access_log.setLevel(logging.INFO)


def configure_logging(settings: Settings) -> None:
    """Set LOG_LEVEL on the ``chatservice`` loggers; in a process nobody set logging up in
    (a bare ``gunicorn app:app``), also send them to stderr in LOG_FORMAT, and write LOG_DIR's
    files without rotating them (rotation is then the platform's: see the module docstring).

    ``python3 app.py`` sets logging up itself (:func:`apply_settings`); test runners and
    embedding programs do too, and their handlers receive our records through propagation.
    Raises :class:`ConfigError` (LOG_DIR) when the files cannot be opened.
    """
    _set_levels(settings)
    state = _state()
    logger = logging.getLogger("chatservice")
    bare = not logging.getLogger().handlers and not any(
        getattr(h, "_chatservice", False) for h in logger.handlers
    )
    if settings.log_dir and state.files is None:
        json_lines = settings.log_format == "json"
        files = LogFiles.open(settings.log_dir, settings.log_retention_days, json_lines, False)
        _replace_files(state, files)
    if not bare:
        return
    handler = StderrHandler()
    handler.setFormatter(LineFormatter(settings.log_format == "json"))
    handler._chatservice = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
