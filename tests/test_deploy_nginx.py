"""deploy/nginx.conf in front of two real instances sharing one real redis-server.

Debian's nginx runs a private copy of the shipped file (only the instances' addresses, the
listening port and nginx's own paths are substituted); the instances are ``python3 app.py``
(tests/conftest.py's LiveServer) answered by the fake upstream.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import simple_websocket
from requests.adapters import HTTPAdapter

from tests.conftest import ROOT, free_port
from tests.fakeupstream import FakeUpstream, Reply

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SHIPPED_SERVERS = ("server chatservice-1:5000;", "server chatservice-2:5000;")


def nginx_binary() -> str:
    # .ci/run installs Debian's nginx; a missing one is a failed set-up, not a skip.
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(path).exists(), "nginx is not installed (.ci/run installs Debian's nginx)"
    return path


class Nginx:
    """Debian's nginx with a copy of deploy/nginx.conf proxying to ``backends``."""

    def __init__(self, workdir: Path, backends: list[str]) -> None:
        text = NGINX_CONF.read_text()
        assert len(backends) == len(SHIPPED_SERVERS)
        for shipped, backend in zip(SHIPPED_SERVERS, backends, strict=True):
            assert shipped in text
            text = text.replace(shipped, f"server {backend};")
        self.port = free_port()
        assert "listen 80;" in text
        text = text.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        paths = "\n".join(
            f"    {directive} {workdir}/{name};"
            for directive, name in (
                ("access_log", "access.log"),
                ("client_body_temp_path", "body"),
                ("proxy_temp_path", "proxy"),
                ("fastcgi_temp_path", "fastcgi"),
                ("uwsgi_temp_path", "uwsgi"),
                ("scgi_temp_path", "scgi"),
            )
        )
        text = text.replace("http {\n", "http {\n" + paths + "\n", 1)
        conf = workdir / "nginx.conf"
        conf.write_text(text)
        self.error_log = workdir / "error.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                nginx_binary(),
                "-p",
                str(workdir),
                "-c",
                str(conf),
                "-e",
                str(self.error_log),
                "-g",
                f"daemon off; pid {workdir}/nginx.pid;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.errors()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {self.errors()}")
            time.sleep(0.05)

    def errors(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Stack:
    """nginx, two instances, one Redis: ``url`` is nginx's."""

    def __init__(self, nginx: Nginx, instances: list[Any]) -> None:
        self.nginx = nginx
        self.instances = instances
        self.url = nginx.url


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[str]], Nginx]]:
    started: list[Nginx] = []

    def start(backends: list[str]) -> Nginx:
        workdir = tmp_path / f"nginx-{len(started)}"
        workdir.mkdir()
        server = Nginx(workdir, backends)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def stack(live_server, redis_url, nginx) -> Callable[..., Stack]:
    """Start the stack; keyword arguments are settings for both instances."""

    def start(**env: str) -> Stack:
        env = {
            "API_KEY": "sk-test-configured-0001",
            "STORE_URL": redis_url,
            "SHARED_STATE_URL": redis_url,
            "TRUSTED_PROXIES": "1",  # as deploy/nginx.conf says
            "LOG_FORMAT": "json",
            **env,
        }
        instances = [live_server(**env), live_server(**env)]
        proxy = nginx([f"127.0.0.1:{server.port}" for server in instances])
        return Stack(proxy, instances)

    return start


class SourceAddressAdapter(HTTPAdapter):
    """Connections from a given loopback address (127.0.0.2, 127.0.0.3, ...)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(address))
    return session


def access_records(server: Any) -> list[dict[str, Any]]:
    """The instance's JSON access-log records (LOG_FORMAT=json), those with a route."""
    records = []
    for line in server.log_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line[line.find("{") :])
            if isinstance(record, dict) and "route" in record:
                records.append(record)
    return records


def stream_text(event: dict[str, Any], face: str) -> str:
    if face == "openai":
        return event["choices"][0]["delta"].get("content") or ""
    return event["data"]["response"] or ""


STREAM_REQUESTS = {
    "api": ("/api", {"user_content": "hi", "stream": True}),
    "openai": (
        "/api/v1/chat/completions",
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ),
}


@pytest.mark.parametrize("face", sorted(STREAM_REQUESTS))
def test_first_event_arrives_through_nginx_while_the_upstream_is_held(stack, upstream, face):
    proxy = stack()
    held = threading.Event()
    upstream.push(Reply(text="one two three", pause_after=1, hold=held))
    path, body = STREAM_REQUESTS[face]
    try:
        with requests.post(proxy.url + path, json=body, stream=True, timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = response.iter_lines(chunk_size=None, decode_unicode=True)
            texts = []
            for line in lines:
                if line.startswith("data: {"):
                    texts.append(stream_text(json.loads(line[6:]), face))
                    if "".join(texts):
                        break
            # "one" is here while the fake upstream still holds " two three": nothing buffers.
            assert "".join(texts) == "one"
            assert not held.is_set() and upstream.received[-1].finished is None
            held.set()
            rest = [line for line in lines if line.startswith("data: ")]
    finally:
        held.set()
    assert rest[-1] == "data: [DONE]"
    texts += [stream_text(json.loads(line[6:]), face) for line in rest[:-1]]
    assert "".join(texts) == "one two three"


def test_websocket_conversation_through_nginx(stack):
    proxy = stack()
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{proxy.nginx.port}/api/ws")
    try:
        for seq, question in (("1", "first"), ("2", "second")):
            ws.send(json.dumps({"seq": seq, "data": {"query": question, "origin_stream": True}}))
            frames = [json.loads(ws.receive(timeout=10))]
            while frames[-1]["data"]["finish_reason"] is None:
                frames.append(json.loads(ws.receive(timeout=10)))
            assert {frame["seq"] for frame in frames} == {seq}
            assert all(frame["code"] == 0 for frame in frames)
            assert "".join(frame["data"]["contents"] for frame in frames) == f"echo: {question}"
    finally:
        ws.close()


def test_minute_limit_counts_once_across_instances_per_real_client_ip(stack, upstream):
    proxy = stack(MINUTE_LIMIT="5")
    alice, bob = client_from("127.0.0.2"), client_from("127.0.0.3")

    def ask(session: requests.Session, **headers: str) -> int:
        response = session.post(
            proxy.url + "/api", json={"user_content": "hi"}, headers=headers, timeout=10
        )
        return response.status_code

    assert [ask(alice) for _ in range(5)] == [200] * 5
    # A forged X-Forwarded-For does not buy a new budget: nginx appends the real address and
    # TRUSTED_PROXIES=1 trusts only that one.
    assert ask(alice) == 429
    assert ask(alice, **{"X-Forwarded-For": "203.0.113.9"}) == 429
    # Another client address has its own 5, although nginx is one address to the instances.
    assert [ask(bob) for _ in range(6)] == [200] * 5 + [429]
    assert len(upstream.received) == 10

    # Both instances answered, and both saw the clients' own addresses.
    seen = [
        {r["ip"] for r in access_records(server) if "healthz" not in str(r["route"])}
        for server in proxy.instances
    ]
    assert all(seen), seen
    assert set().union(*seen) == {"127.0.0.2", "127.0.0.3"}


def test_conversation_created_through_one_instance_continues_through_the_other(stack, upstream):
    proxy = stack()
    created = requests.post(proxy.url + "/api/chatgpt/createTurbo", data="Be brief.", timeout=10)
    cid = created.text
    answers = [
        requests.post(
            proxy.url + "/api/chatgpt/chat",
            data=question,
            headers={"conversation": cid},
            timeout=10,
        ).text
        for question in ("first question", "second question", "third question")
    ]
    assert answers == ["echo: first question", "echo: second question", "echo: third question"]
    assert [m["content"] for m in upstream.received[-1].json["messages"]] == [
        "Be brief.",
        "first question",
        "echo: first question",
        "second question",
        "echo: second question",
        "third question",
    ]
    # nginx spread the four calls over both instances.
    served = [
        [r for r in access_records(server) if "chatgpt" in str(r["route"])]
        for server in proxy.instances
    ]
    assert all(served), served


def streams_in_flight(server: Any) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("chatservice_streams_in_flight")
    ]
    return sum(values)


def test_stopping_one_instance_loses_no_request(stack, upstream):
    proxy = stack(GRACEFUL_TIMEOUT="20")
    held = threading.Event()
    upstream.push(Reply(text="a b c", pause_after=1, hold=held))
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}]}
    try:
        with requests.post(
            proxy.url + "/api/v1/chat/completions",
            json={**body, "stream": True},
            stream=True,
            timeout=30,
        ) as stream:
            lines = stream.iter_lines(chunk_size=None, decode_unicode=True)
            first = next(line for line in lines if '"content": "a"' in line)
            assert first
            stopping = next(s for s in proxy.instances if streams_in_flight(s) == 1)
            stopping.proc.send_signal(signal.SIGTERM)
            # Once the stopping instance refuses connections, nginx sends new requests to the
            # other one (a refused connection is retried).
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", stopping.port), timeout=1).close()
                except ConnectionRefusedError:
                    break
                assert time.monotonic() < deadline, "the stopping instance still accepts"
                time.sleep(0.05)
            statuses = [
                requests.post(
                    proxy.url + "/api/v1/chat/completions", json=body, timeout=10
                ).status_code
                for _ in range(6)
            ]
            assert statuses == [200] * 6
            # The stream in flight on the stopping instance finishes there.
            held.set()
            rest = [line for line in lines if line.startswith("data: ")]
    finally:
        held.set()
    assert rest[-1] == "data: [DONE]"
    assert stopping.proc.wait(timeout=30) == 0
    # Each request reached the upstream once: nothing was lost and nothing repeated.
    assert len(upstream.received) == 7


def test_nginx_does_not_repeat_a_request_that_reached_an_instance(nginx):
    # Two "instances" that count calls and hang up without answering, like a crash mid-request.
    instances = [FakeUpstream(), FakeUpstream()]
    try:
        for instance in instances:
            instance.default = Reply(drop=True)
        backends = [
            instance.url.removeprefix("http://").removesuffix("/v1") for instance in instances
        ]
        proxy = nginx(backends)
        # Two requests: nginx then counts both instances as failed for 10 s (max_fails=1) and
        # would answer a third without trying either.
        for attempt in (1, 2):
            response = requests.post(proxy.url + "/api", json={"user_content": "hi"}, timeout=10)
            assert response.status_code == 502
            # One call per request in all: nginx did not try the other instance.
            assert sum(len(instance.received) for instance in instances) == attempt
    finally:
        for instance in instances:
            instance.close()


def test_a_refused_instance_is_skipped(nginx, tmp_path):
    # The other half of nginx's retry policy: a connection that fails (an instance that is down)
    # goes to the next instance, so the request is not lost.
    instance = FakeUpstream()
    try:
        down = f"127.0.0.1:{free_port()}"
        address = instance.url.removeprefix("http://").removesuffix("/v1")
        proxy = nginx([down, address])
        for attempt in range(1, 5):
            response = requests.post(
                proxy.url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert response.status_code == 200
            assert len(instance.received) == attempt
    finally:
        instance.close()
