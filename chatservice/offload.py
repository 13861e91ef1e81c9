"""Work run on a gevent thread pool, its exception handed back to the greenlet that waits.

A task that raises out of gevent's ``ThreadPool`` is also reported through the hub's
``handle_error``, which prints it as uncaught (a traceback on stderr) before the waiting
greenlet raises it. Tasks submitted here catch their exception on the pool's thread and
return it as a value; :func:`result` raises it in the waiting greenlet, with its traceback
from the pool's thread. Used for the embedded model's calls and tiktoken's encoding loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent.event
import gevent.threadpool


def submit(
    pool: gevent.threadpool.ThreadPool, func: Callable[..., Any], *args: Any
) -> gevent.event.AsyncResult:
    """Queue ``func(*args)`` on ``pool`` (waiting while all its threads are busy); read it
    with :func:`result`."""
    return pool.spawn(_caught, func, args)


def result(pending: gevent.event.AsyncResult) -> Any:
    """What the task :func:`submit` queued returned, once done; raises what it raised."""
    value, exc = pending.get()
    if exc is not None:
        raise exc
    return value


def run(pool: gevent.threadpool.ThreadPool, func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` run on ``pool`` while the hub serves others; raises what it raises."""
    return result(submit(pool, func, *args))


def _caught(func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Exception | None]:
    try:
        return func(*args), None
    except Exception as exc:  # noqa: BLE001 - handed to the waiting greenlet, raised there
        return None, exc
