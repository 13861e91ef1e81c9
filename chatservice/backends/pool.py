"""urllib3's pool managers for upstream calls, with connections that write a request at once,
shared by the upstreams on one host (:class:`SharedPools`).

urllib3 writes a request's head and its body with two ``send`` calls. On a keep-alive
connection to a fast upstream that costs a second system call and, worse, a second wake-up
of the upstream, which reads the head, finds no body yet and waits again: measurable in the
added latency of every call. :class:`OneWriteMixin` holds the head until the body's first
piece (or the end of the request) and sends them together, as ``http.client`` does for a
``bytes`` body.

Before reusing an idle keep-alive connection urllib3 asks whether the upstream closed it
(``is_connected``: is the socket readable, at a zero timeout?). Under gevent its ``select.poll``
is gevent's, which sets up a watcher and goes through the event loop even for a zero timeout;
:class:`NativePollMixin` asks the operating system's ``poll`` the same question, which
returns at once and so never blocks the loop.
"""

from __future__ import annotations

import functools
import select
import sys
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class OneWriteMixin:
    """Holds the request head back until the body's first piece, then sends both at once."""

    _held: bytes | None = None  # None: not holding; b"": holding, nothing yet

    def request(self, *args: Any, **kwargs: Any) -> None:
        """urllib3's ``request``, its writes gathered (see the class)."""
        self._held = b""
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
            held = self._held
        finally:
            self._held = None
        if held:  # no body: the head alone
            super().send(held)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        """Send ``data``, or hold it when it is the head of a request being written."""
        if self._held is None or not isinstance(data, bytes):
            super().send(data)  # type: ignore[misc]
        elif not self._held:
            self._held = data  # the head
        else:
            data, self._held = self._held + data, None
            super().send(data)  # type: ignore[misc]


class NativePollMixin:
    """urllib3's ``is_connected`` with the operating system's ``poll`` (see the module doc)."""

    sock: Any

    @property
    def is_connected(self) -> bool:
        """False when the connection is closed, or its socket is readable while no request
        is under way (the upstream closed it, reset it or sent stray bytes): urllib3 then
        opens a new one."""
        sock = self.sock
        if sock is None:
            return False
        poller = _native_poll()()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)


@functools.cache
def _native_poll() -> Callable[[], Any]:
    # gevent keeps the function it patched over; without gevent select.poll is native.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")  # type: ignore[no-any-return]
    return select.poll


class _HTTPConnection(NativePollMixin, OneWriteMixin, HTTPConnection):
    pass


class _HTTPSConnection(NativePollMixin, OneWriteMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def opener(manager: urllib3.PoolManager, base_url: str) -> Callable[..., Any]:
    """``urlopen(method, path, **kwargs)`` for paths below ``base_url``.

    The host's connection pool is called directly (the manager would parse the URL and
    look the pool up on every call) except through a plain HTTP proxy, which needs the
    manager's absolute request URIs and proxy headers.
    """
    url = urllib3.util.parse_url(base_url)
    if isinstance(manager, urllib3.ProxyManager) and url.scheme == "http":
        return lambda method, path, **kwargs: manager.urlopen(method, base_url + path, **kwargs)
    pool = manager.connection_from_url(base_url)
    prefix = (url.path or "").rstrip("/")
    return lambda method, path, **kwargs: pool.urlopen(method, prefix + path, **kwargs)


def pool_manager(proxy: str | None, maxsize: int, hosts: int = 1) -> urllib3.PoolManager:
    """A pool manager (a proxy manager with ``proxy``) keeping up to ``maxsize`` idle
    connections per host, for up to ``hosts`` hosts; never blocks waiting for a free one.

    Beyond ``hosts`` + 1 hosts urllib3 would close the least recently used host's pool,
    which an :func:`opener` still holds: size it for every host it will reach.
    """
    args: dict[str, Any] = {"num_pools": hosts + 1, "maxsize": maxsize, "block": False}
    manager = urllib3.ProxyManager(proxy, **args) if proxy else urllib3.PoolManager(**args)
    manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager


class SharedPools:
    """The pool managers of one app's upstreams, one per proxy (``None``: direct).

    Upstreams on the same host (two accounts at one provider, or one key through two base
    URLs) share that host's keep-alive connections: one warm set, sized for the worker's
    concurrency, instead of one set per upstream, each opened (TLS handshakes included)
    and kept on its own.

    :param maxsize: idle connections kept per host (UPSTREAM_POOL_SIZE).
    :param hosts: at most how many hosts the upstreams reach (their number will do).
    """

    def __init__(self, maxsize: int, hosts: int) -> None:
        self._maxsize = maxsize
        self._hosts = hosts
        self._managers: dict[str | None, urllib3.PoolManager] = {}

    def manager(self, proxy: str | None) -> urllib3.PoolManager:
        """The pool manager for calls through ``proxy`` (or direct), created on first use."""
        manager = self._managers.get(proxy)
        if manager is None:
            manager = self._managers[proxy] = pool_manager(proxy, self._maxsize, self._hosts)
        return manager
