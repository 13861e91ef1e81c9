"""Shared fixtures: the fake upstream, apps built with their own settings, real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from bench.procs import BenchError, free_port, wait_healthy
from chatservice import create_app
from chatservice.settings import ALIASES, FIELDS, Settings
from tests.fakeupstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
#: Every environment variable the service reads, aliases included.
SETTING_NAMES = {field.env for field in FIELDS} | {
    alias for names in ALIASES.values() for alias in names
}


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def fake(upstream: FakeUpstream) -> FakeUpstream:
    """The fake upstream, emptied of earlier tests' requests and scripts."""
    upstream.reset()
    return upstream


def settings_from(env: dict[str, str]) -> Settings:
    """Settings from exactly ``env`` (no process environment, no .env file)."""
    return Settings.from_env(env, env_file=None)


@pytest.fixture
def make_app(fake: FakeUpstream) -> Callable[..., Flask]:
    """Build an app from environment-style settings; the upstream is the fake one."""

    def make(**env: str) -> Flask:
        env = {"UPSTREAM_BASE_URL": fake.url, "STORE_URL": "memory://", **env}
        app = create_app(settings_from(env))
        app.testing = True
        return app

    return make


@pytest.fixture
def client(make_app: Callable[..., Flask]):
    """A test client of an app whose upstream (with a configured key) is the fake one."""
    return make_app(API_KEY="sk-test-configured-0001").test_client()


class LiveServer:
    """``python3 app.py`` (gunicorn, gevent workers) on 127.0.0.1 in a subprocess, started and
    awaited as the benchmark starts it (:mod:`bench.procs`).

    ``args`` replaces ``app.py`` as the Python command line (``-m gunicorn ...``, flags);
    ``{port}`` in them is replaced by the server's port.
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = (), cwd: Path = ROOT
    ) -> None:
        self.log_path = log_path
        self._env, self._args, self._cwd = env, args, cwd
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The machine's own settings, locale and proxies are not the test's: tests set what
        # they need.
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in SETTING_NAMES and k != "LANG" and "proxy" not in k.lower()
        }
        full_env.update({"HOST": "127.0.0.1", "PORT": str(self.port), **self._env})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [arg.replace("{port}", str(self.port)) for arg in self._args or ("app.py",)]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=self._cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200; fails the test with the server's log when it exits
        or does not start in ``timeout`` seconds.

        A server that could not bind its port (another process took it between
        :func:`free_port` and the bind: gunicorn's "Connection in use") is started again on
        another port, twice at most."""
        for attempt in range(3):
            try:
                wait_healthy(self.port, self.proc, timeout, self.log_text)
                return
            except BenchError as exc:
                if attempt == 2 or "Connection in use" not in self.log_text():
                    raise AssertionError(str(exc)) from None
                self.stop()
                self._start()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # gunicorn's quick shutdown: a graceful one waits for idle keep-alive connections
            # (the graceful path has its own test).
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def live_server(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Callable[..., LiveServer]]:
    """Start real servers with the given environment; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(*args: str, **env: str) -> LiveServer:
        store = f"sqlite:///{tmp_path}/store.db"  # four slashes: an absolute path
        env = {"UPSTREAM_BASE_URL": upstream.url, "STORE_URL": store, **env}
        server = LiveServer(env, tmp_path / f"server-{len(servers)}.log", args)
        servers.append(server)
        server.wait_ready()
        return server

    upstream.reset()
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The test's Redis, emptied of earlier tests' keys."""
    import redis

    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    client.flushall()
    client.close()
    return redis_server


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """A real ``redis-server`` on 127.0.0.1:``port``, answering PING when this returns."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("redis-server did not start")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A real ``redis-server`` on a free loopback port (``.ci/run`` installs the package)."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


# --- several fake upstreams behind [[upstreams]] (the router and per-upstream state tests)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[FakeUpstream]]:
    started = [FakeUpstream() for _ in range(3)]
    yield started
    for server in started:
        server.close()


@pytest.fixture
def fakes(servers: list[FakeUpstream]) -> list[FakeUpstream]:
    for server in servers:
        server.reset()
    return servers


def entry(name: str, fake: FakeUpstream | str, **fields: Any) -> dict[str, Any]:
    """An ``[[upstreams]]`` entry; no retries, so a fault shows at once."""
    url = fake if isinstance(fake, str) else fake.url
    return {"name": name, "base_url": url, "retries": 0, "models": ["*"], **fields}


@pytest.fixture
def routed(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    def make(*entries: dict[str, Any], **env: str) -> Flask:
        return make_app(
            UPSTREAMS=json.dumps(list(entries)), ADMIN_TOKEN="admin-secret-token", **env
        )

    return make
